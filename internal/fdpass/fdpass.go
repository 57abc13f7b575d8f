// Package fdpass carries messages and open files between processes of one
// machine: the node plugin, its FUSE connection holder and its successor.
// A message is one datagram of a SOCK_SEQPACKET unix socket, with at most
// one file in its SCM_RIGHTS control data. Its bytes:
//
//	0..3  magic "JVFD"
//	4     version, 1
//	5     type, a byte the protocol using the package defines
//	6..7  length N of the name, little endian, at most MaxName
//	8..   the name (a volume id, or text the type defines), N bytes
//
// Anything else (another magic or version, a length that does not match
// the datagram, two files) is refused, and a file that came with it is
// closed.
package fdpass

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

const (
	magic   = "JVFD"
	version = 1
	header  = 8
	// MaxName bounds a message's name.
	MaxName = 1024
)

// Msg is one message.
type Msg struct {
	Type byte
	Name string
	// File, if not nil, is sent with the message (the receiver gets its own
	// copy of the open file); received files are the caller's to close.
	File *os.File
}

// ErrBadMessage: a datagram that is not a message of this format.
var ErrBadMessage = errors.New("fdpass: bad message")

// Send sends m.
func Send(c *net.UnixConn, m Msg) error {
	if len(m.Name) > MaxName {
		return fmt.Errorf("%w: name of %d bytes", ErrBadMessage, len(m.Name))
	}
	b := make([]byte, header+len(m.Name))
	copy(b, magic)
	b[4], b[5] = version, m.Type
	binary.LittleEndian.PutUint16(b[6:], uint16(len(m.Name)))
	copy(b[header:], m.Name)
	var oob []byte
	if m.File != nil {
		oob = unix.UnixRights(int(m.File.Fd()))
	}
	_, _, err := c.WriteMsgUnix(b, oob, nil)
	return err
}

// Recv receives a message; io.EOF once the peer is gone.
func Recv(c *net.UnixConn) (Msg, error) {
	b := make([]byte, header+MaxName+1)
	oob := make([]byte, unix.CmsgSpace(2*4))
	n, oobn, flags, _, err := c.ReadMsgUnix(b, oob)
	if errors.Is(err, io.EOF) {
		return Msg{}, io.EOF
	}
	if err != nil {
		return Msg{}, err
	}
	files, ferr := files(oob[:oobn])
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	if ferr != nil || flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 || len(files) > 1 {
		closeAll()
		return Msg{}, fmt.Errorf("%w: truncated, or more than one file (%v)", ErrBadMessage, ferr)
	}
	if n == 0 && len(files) == 0 {
		return Msg{}, io.EOF // a zero-length datagram: the peer closed
	}
	m, err := decode(b[:n])
	if err != nil {
		closeAll()
		return Msg{}, err
	}
	if len(files) == 1 {
		m.File = files[0]
	}
	return m, nil
}

// decode decodes a datagram's bytes.
func decode(b []byte) (Msg, error) {
	if len(b) < header || string(b[:4]) != magic || b[4] != version || int(binary.LittleEndian.Uint16(b[6:])) != len(b)-header || len(b)-header > MaxName {
		return Msg{}, fmt.Errorf("%w: %d bytes", ErrBadMessage, len(b))
	}
	return Msg{Type: b[5], Name: string(b[header:])}, nil
}

func files(oob []byte) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	cmsgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var fs []*os.File
	for _, cm := range cmsgs {
		fds, err := unix.ParseUnixRights(&cm)
		if err != nil {
			return fs, err
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
			fs = append(fs, os.NewFile(uintptr(fd), "fdpass"))
		}
	}
	return fs, nil
}

// Dial connects to the socket at path.
func Dial(path string) (*net.UnixConn, error) {
	return net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
}

// Listen listens at path (a stale socket there is replaced): see
// ListenUnix.
func Listen(path string) (*Listener, error) { return ListenUnix("unixpacket", path) }

// Listener is a unix socket listener that, closed, removes its path only
// while the path is still its socket: a successor that bound the same path
// keeps its own.
type Listener struct {
	*net.UnixListener
	path string
	// sock is the socket file as bound (O_PATH): held open, its inode
	// number is not given to another file, so a file at path with the
	// same device and inode is this socket.
	sock *os.File
}

// ListenUnix listens on a unix socket of network ("unix" or "unixpacket")
// at path, replacing whatever socket is there.
func ListenUnix(network, path string) (*Listener, error) {
	unlock, err := lockDir(path)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	l, err := net.ListenUnix(network, &net.UnixAddr{Name: path, Net: network})
	if err != nil {
		return nil, err
	}
	l.SetUnlinkOnClose(false)
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("fdpass: %w", err)
	}
	return &Listener{UnixListener: l, path: path, sock: os.NewFile(uintptr(fd), path)}, nil
}

// lockDir locks path's directory (flock, exclusive) until the returned
// func is called. Replacing a socket (remove, bind) and removing one only
// while it is still the listener's own (stat, remove) are each one step to
// the other, also across processes: a plugin that closes while its
// successor binds the same path must not remove the successor's socket.
func lockDir(path string) (func(), error) {
	fd, err := unix.Open(filepath.Dir(path), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("fdpass: %w", err)
	}
	for {
		err = unix.Flock(fd, unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("fdpass: locking %s: %w", filepath.Dir(path), err)
	}
	return func() { unix.Close(fd) }, nil
}

// Serve passes each connection accepted to handle until ctx ends (then it
// closes l and returns false) or handle returns true (then it returns
// true; l is closed when ctx ends).
func (l *Listener) Serve(ctx context.Context, handle func(*net.UnixConn) bool) (bool, error) {
	context.AfterFunc(ctx, func() { l.Close() })
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return false, nil
			}
			return false, err
		}
		if handle(c) {
			return true, nil
		}
	}
}

// Close closes the listener and removes its path if it is still its socket.
func (l *Listener) Close() error {
	err := l.UnixListener.Close()
	defer l.sock.Close()
	unlock, lerr := lockDir(l.path)
	if lerr != nil {
		return errors.Join(err, lerr)
	}
	defer unlock()
	var at, own unix.Stat_t
	if unix.Stat(l.path, &at) == nil && unix.Fstat(int(l.sock.Fd()), &own) == nil && at.Dev == own.Dev && at.Ino == own.Ino {
		os.Remove(l.path)
	}
	return err
}
