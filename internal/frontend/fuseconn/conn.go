// Package fuseconn serves one file over a FUSE connection, and lets a new
// process take the connection over: the file system is a root directory
// (node 1) holding one regular file (node 2), and the server keeps no state
// between requests, so a server started on a connection that another one
// initialised answers whatever the kernel sends.
//
// The connection is the open file of /dev/fuse. The kernel aborts it only
// when the last copy of that open file is closed, so a process that keeps a
// copy (see internal/keeper) keeps the mount, the loop device on it and the
// file system above alive while the server dies and another starts. The
// new server sends FUSE_NOTIFY_RESEND (protocol 7.40) once the old one is
// gone, and the kernel queues again every request the old one had read and
// not answered: no request fails, and none runs twice at the same time.
//
// The wire format is the kernel's, include/uapi/linux/fuse.h; this package
// uses go-fuse's exported structs for it. It speaks protocol 7.31 (see
// Minor) and handles the operations in ops.go; anything else is ENOSYS.
package fuseconn

import (
	"encoding/binary"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// MaxRequest is the largest read or write the kernel sends: 1 MiB, as
// measured to matter in ../shared/notes/frontend-performance.md.
const MaxRequest = 1 << 20

// Open opens /dev/fuse: a new connection, not yet mounted. The file is
// closed on exec unless passed on explicitly; Serve makes it non-blocking.
func Open() (*os.File, error) {
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/fuse: %w", err)
	}
	return os.NewFile(uintptr(fd), "/dev/fuse"), nil
}

// Mount mounts the connection dev at dir (an existing directory), as root,
// with mount(2). The kernel queues INIT at once; Serve answers it.
func Mount(dir string, dev *os.File) error {
	opts := fmt.Sprintf("fd=%d,rootmode=40000,user_id=0,group_id=0,max_read=%d", dev.Fd(), MaxRequest)
	if err := unix.Mount("jvol", dir, "fuse.jvol", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		return fmt.Errorf("fuse mount at %s: %w", dir, err)
	}
	return nil
}

// notifyResend is FUSE_NOTIFY_RESEND, sent as the error field of a
// notification (unique 0).
const notifyResend = 7

// Resend asks the kernel to queue again every request that was read from
// the connection and not answered; their unique ids come back with bit 63
// set. Send it only once every process that read requests from dev is gone
// (or they would be answered twice).
func Resend(dev *os.File) error {
	var b [16]byte // fuse_out_header: len, error, unique
	binary.LittleEndian.PutUint32(b[0:], 16)
	binary.LittleEndian.PutUint32(b[4:], notifyResend)
	if _, err := unix.Write(int(dev.Fd()), b[:]); err != nil {
		return fmt.Errorf("fuse: notify resend: %w", err)
	}
	return nil
}

// NoPoll makes the kernel learn, before anything else opens the file at
// path (on a connection this process serves), that the server does not
// poll. Go registers every file it opens with epoll, and epoll_ctl on a
// FUSE file asks the server (FUSE_POLL) inside the Go scheduler: a process
// that serves a file and opens it through package os can stop the world
// (a garbage collection waits for that thread forever). poll(2) asks the
// same question through a plain system call; the answer, ENOSYS, holds for
// the connection's life, so a resumed server need not ask again.
func NoPoll(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("fuse: open %s: %w", path, err)
	}
	defer unix.Close(fd)
	_, err = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 0)
	if err != nil {
		return fmt.Errorf("fuse: poll %s: %w", path, err)
	}
	return nil
}
