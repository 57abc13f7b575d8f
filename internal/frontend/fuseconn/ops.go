package fuseconn

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"syscall"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/jvol-io/jvol/internal/frontend"
)

// Opcodes, from include/uapi/linux/fuse.h.
const (
	opLookup      = 1
	opForget      = 2
	opGetattr     = 3
	opSetattr     = 4
	opOpen        = 14
	opRead        = 15
	opWrite       = 16
	opStatfs      = 17
	opRelease     = 18
	opFsync       = 20
	opFlush       = 25
	opInit        = 26
	opOpendir     = 27
	opReaddir     = 28
	opReleasedir  = 29
	opFsyncdir    = 30
	opAccess      = 34
	opInterrupt   = 36
	opDestroy     = 38
	opBatchForget = 42
	opFallocate   = 43
)

// The two nodes: the root directory and the file.
const (
	rootNode = 1
	fileNode = 2
)

// handle answers one request. Nothing it does depends on an earlier
// request: a resent request is answered as the first time.
func (s *Server) handle(w *worker, req []byte) {
	h, ok := args[fuse.InHeader](req)
	if !ok || int(h.Length) != len(req) {
		klog.ErrorS(nil, "Short FUSE request", "bytes", len(req))
		return
	}
	var (
		n     int
		data  []byte
		errno syscall.Errno
	)
	switch h.Opcode {
	case opForget, opBatchForget, opInterrupt: // no reply
		return
	case opLookup:
		name, _, _ := bytes.Cut(req[inHeaderSize:], []byte{0})
		if h.NodeId != rootNode || string(name) != s.name {
			errno = syscall.ENOENT
			break
		}
		out := reply[fuse.EntryOut](w)
		out.NodeId, out.Generation = fileNode, 1
		s.fill(&out.Attr, fileNode)
		n = int(unsafe.Sizeof(*out))
	case opGetattr:
		n, errno = s.attr(w, h.NodeId)
	case opSetattr:
		in, ok := args[fuse.SetAttrIn](req)
		if !ok {
			errno = syscall.EINVAL
			break
		}
		// What does not change the file is accepted (the kernel sends mode
		// and time updates); its size changes only through the volume.
		if size, set := in.GetSize(); set && int64(size) != s.dev.Size() {
			errno = syscall.EPERM
			break
		}
		n, errno = s.attr(w, h.NodeId)
	case opOpen:
		out := reply[fuse.OpenOut](w)
		out.OpenFlags = fuse.FOPEN_DIRECT_IO | fuse.FOPEN_PARALLEL_DIRECT_WRITES
		n = int(unsafe.Sizeof(*out))
	case opOpendir:
		n = int(unsafe.Sizeof(*reply[fuse.OpenOut](w)))
	case opRead:
		data, errno = s.read(w, req)
	case opWrite:
		n, errno = s.write(w, req)
	case opFsync:
		// What a loop device's flush (and FUA) becomes.
		errno = Errno(s.dev.Flush(context.Background()))
	case opFallocate:
		errno = s.fallocate(req)
	case opReaddir:
		data, errno = s.readdir(w, req)
	case opStatfs:
		out := reply[fuse.StatfsOut](w)
		out.Bsize, out.Frsize, out.NameLen = 4096, 4096, 255
		out.Blocks = uint64(s.dev.Size()) / 4096
		n = int(unsafe.Sizeof(*out))
	case opRelease, opReleasedir, opFlush, opFsyncdir, opAccess, opDestroy:
		// Nothing is kept per open file; FLUSH is close(2), not fsync(2).
	case opInit:
		errno = syscall.EPROTO // only the first request of a connection
	default:
		errno = syscall.ENOSYS
	}
	if err := s.send(w, h.Unique, errno, n, data); err != nil {
		klog.ErrorS(err, "Answering a FUSE request", "opcode", h.Opcode)
	}
}

// fill sets the attributes of node.
func (s *Server) fill(a *fuse.Attr, node uint64) {
	a.Ino, a.Nlink, a.Blksize = node, 1, 4096
	if node == rootNode {
		a.Mode, a.Nlink = syscall.S_IFDIR|0o755, 2
		return
	}
	size := uint64(s.dev.Size())
	a.Mode = syscall.S_IFREG | 0o600
	a.Size, a.Blocks = size, size/512
}

// attr answers with the attributes of node, uncached: the size changes
// when the volume grows.
func (s *Server) attr(w *worker, node uint64) (int, syscall.Errno) {
	if node != rootNode && node != fileNode {
		return 0, syscall.ENOENT
	}
	out := reply[fuse.AttrOut](w)
	s.fill(&out.Attr, node)
	return int(unsafe.Sizeof(*out)), 0
}

func (s *Server) read(w *worker, req []byte) ([]byte, syscall.Errno) {
	in, ok := args[fuse.ReadIn](req)
	if !ok {
		return nil, syscall.EINVAL
	}
	size, off := s.dev.Size(), int64(in.Offset)
	if off >= size {
		return nil, 0
	}
	n := min(int64(in.Size), int64(len(w.data)), size-off)
	if _, err := s.dev.ReadAt(w.data[:n], off); err != nil {
		return nil, Errno(err)
	}
	return w.data[:n], 0
}

func (s *Server) write(w *worker, req []byte) (int, syscall.Errno) {
	in, ok := args[fuse.WriteIn](req)
	hdr := int(unsafe.Sizeof(fuse.WriteIn{}))
	if !ok || len(req)-hdr < int(in.Size) {
		return 0, syscall.EINVAL
	}
	done, err := s.dev.WriteAt(req[hdr:hdr+int(in.Size)], int64(in.Offset))
	if err != nil {
		return 0, Errno(err)
	}
	out := reply[fuse.WriteOut](w)
	out.Size = uint32(done)
	return int(unsafe.Sizeof(*out)), 0
}

// fallocate answers FALLOCATE (see Fallocate).
func (s *Server) fallocate(req []byte) syscall.Errno {
	in, ok := args[fuse.FallocateIn](req)
	if !ok {
		return syscall.EINVAL
	}
	return Fallocate(s.dev, in.Offset, in.Length, in.Mode)
}

// Fallocate takes the punch-hole a loop device's discard becomes; plain
// allocation within the file is a no-op (the volume's space is its own),
// and the file's size changes only through the volume.
func Fallocate(dev frontend.Device, off, length uint64, mode uint32) syscall.Errno {
	size, start, end := dev.Size(), int64(off), int64(off+length)
	if end > size && mode&unix.FALLOC_FL_KEEP_SIZE == 0 {
		return syscall.ENOSPC
	}
	switch {
	case mode&(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_ZERO_RANGE) != 0:
		end = min(end, size)
		if start >= end {
			return 0
		}
		return Errno(dev.Discard(start, end-start))
	case mode&^unix.FALLOC_FL_KEEP_SIZE == 0:
		return 0
	}
	return syscall.EOPNOTSUPP
}

// readdir lists the one file (no "." or "..": the kernel does not need
// them). A fuse_dirent is ino, off, namelen, type, then the name padded to
// 8 bytes.
func (s *Server) readdir(w *worker, req []byte) ([]byte, syscall.Errno) {
	in, ok := args[fuse.ReadIn](req)
	if !ok {
		return nil, syscall.EINVAL
	}
	need := (24 + len(s.name) + 7) &^ 7
	if in.Offset != 0 || int(in.Size) < need {
		return nil, 0
	}
	d := w.data[:need]
	clear(d)
	binary.LittleEndian.PutUint64(d[0:], fileNode)
	binary.LittleEndian.PutUint64(d[8:], 1) // the next entry's offset
	binary.LittleEndian.PutUint32(d[16:], uint32(len(s.name)))
	binary.LittleEndian.PutUint32(d[20:], syscall.DT_REG)
	copy(d[24:], s.name)
	return d, 0
}

// Errno maps an error to what the kernel is told; anything unknown is EIO.
func Errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var e syscall.Errno
	switch {
	case errors.As(err, &e):
		return e
	case errors.Is(err, context.Canceled):
		return syscall.EINTR
	}
	return syscall.EIO
}
