package fuseconn

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/jvol-io/jvol/internal/frontend"
	"github.com/jvol-io/jvol/internal/vfs"
)

// Minor is the protocol minor version the server speaks: 7.31 has every
// field it uses at its current size (max_pages came in 7.28). The kernel
// speaks the lower of its version and this one.
const Minor = 31

// DefaultWorkers is how many requests are served at once: the loop device
// issues direct I/O with a queue depth of up to 128, and each worker blocks
// in the volume for the duration of one.
const DefaultWorkers = 16

// Options for Serve.
type Options struct {
	// Resume serves a connection that another server initialised: no INIT
	// is expected.
	Resume bool
	// Workers is the number of requests served at once (DefaultWorkers).
	Workers int
}

// Server answers the requests of one connection.
type Server struct {
	conn *os.File // kept referenced: its finalizer would close the fd
	fd   int
	name string
	dev  frontend.Device

	// serving is held shared while a request is handled; Stop takes it
	// for good.
	serving sync.RWMutex
	done    sync.WaitGroup
}

// Serve starts serving dev as the file name on conn, a mounted connection.
// Unless o.Resume is set, it first answers the kernel's INIT, so the file
// is usable once Serve returns.
func Serve(conn *os.File, name string, dev frontend.Device, o Options) (*Server, error) {
	s := &Server{conn: conn, fd: int(conn.Fd()), name: name, dev: dev}
	if !o.Resume {
		if err := s.init(); err != nil {
			return nil, err
		}
	}
	if o.Workers <= 0 {
		o.Workers = DefaultWorkers
	}
	for range o.Workers {
		s.done.Add(1)
		go s.work()
	}
	return s, nil
}

// Stop returns once no request is being handled, and none will be: the
// requests read afterwards stay unanswered until the process exits and a
// later server has them resent. It is for a process about to exit.
func (s *Server) Stop() { s.serving.Lock() }

// Wait returns once the connection has ended (the file system was
// unmounted) and every worker has returned.
func (s *Server) Wait() { s.done.Wait() }

// worker is one request at a time: its buffers are reused, so serving
// allocates nothing.
type worker struct {
	// out is the reply header and its fixed-size arguments (at most an
	// EntryOut); first in the struct, so 8-byte aligned.
	out [outHeaderSize + 128]byte
	iov [2]unix.Iovec
	in  []byte // a request: header, arguments and write data
	// data is where read data goes: in past its first block (a READ
	// request fits there), block-aligned for the data image's direct I/O.
	data []byte
}

const (
	inHeaderSize  = int(unsafe.Sizeof(fuse.InHeader{}))
	outHeaderSize = int(unsafe.Sizeof(fuse.OutHeader{}))
	// bufSize is what a read of the device needs: the largest write and
	// its header (the kernel refuses smaller buffers).
	bufSize = MaxRequest + vfs.BlockSize
)

func newWorker() *worker {
	in := vfs.AlignedBuffer(bufSize)
	return &worker{in: in, data: in[vfs.BlockSize:]}
}

func (s *Server) work() {
	defer s.done.Done()
	w := newWorker()
	for {
		n, err := unix.Read(s.fd, w.in)
		switch {
		case err == nil:
		case errors.Is(err, unix.EINTR), errors.Is(err, unix.ENOENT), errors.Is(err, unix.EAGAIN):
			continue // ENOENT: the request was interrupted before we read it
		case errors.Is(err, unix.ENODEV): // unmounted, or the connection aborted
			return
		default:
			klog.ErrorS(err, "Reading the FUSE device; this worker stops")
			return
		}
		s.serving.RLock()
		s.handle(w, w.in[:n])
		s.serving.RUnlock()
	}
}

// init reads the kernel's INIT and answers it.
func (s *Server) init() error {
	w := newWorker()
	n, err := unix.Read(s.fd, w.in)
	if err != nil {
		return fmt.Errorf("fuse: reading INIT: %w", err)
	}
	in, ok := args[fuse.InitIn](w.in[:n])
	if !ok || in.Opcode != opInit {
		return fmt.Errorf("fuse: first request of a new connection is not INIT")
	}
	if in.Major != 7 || in.Minor < Minor {
		s.send(w, in.Unique, syscall.EPROTO, 0, nil)
		return fmt.Errorf("fuse: kernel speaks protocol %d.%d; jvol needs 7.%d or later", in.Major, in.Minor, Minor)
	}
	out := reply[fuse.InitOut](w)
	out.Major, out.Minor = 7, Minor
	out.MaxReadAhead = in.MaxReadAhead
	out.Flags = in.Flags & initFlags
	out.MaxBackground, out.CongestionThreshold = 64, 48
	out.MaxWrite = MaxRequest
	out.TimeGran = 1
	out.MaxPages = MaxRequest / 4096
	return s.send(w, in.Unique, 0, int(unsafe.Sizeof(*out)), nil)
}

// initFlags are the capabilities asked for, of those the kernel offers:
// asynchronous direct I/O (the loop device's queue reaches the server
// whole), large requests; no splice, no caching.
const initFlags = fuse.CAP_ASYNC_READ | fuse.CAP_BIG_WRITES | fuse.CAP_ASYNC_DIO | fuse.CAP_MAX_PAGES

// args views the start of a request as T (which begins with the header).
func args[T any](req []byte) (*T, bool) {
	var t T
	if uintptr(len(req)) < unsafe.Sizeof(t) {
		return nil, false
	}
	return (*T)(unsafe.Pointer(&req[0])), true
}

// reply returns the worker's reply arguments, zeroed, viewed as T.
func reply[T any](w *worker) *T {
	var t T
	clear(w.out[outHeaderSize : outHeaderSize+int(unsafe.Sizeof(t))])
	return (*T)(unsafe.Pointer(&w.out[outHeaderSize]))
}

// send writes a reply: the header, n bytes of arguments from w.out and
// data, in one writev. An error carries no arguments.
func (s *Server) send(w *worker, unique uint64, errno syscall.Errno, n int, data []byte) error {
	if errno != 0 {
		n, data = 0, nil
	}
	total := outHeaderSize + n + len(data)
	binary.LittleEndian.PutUint32(w.out[0:], uint32(total))
	binary.LittleEndian.PutUint32(w.out[4:], uint32(-int32(errno)))
	binary.LittleEndian.PutUint64(w.out[8:], unique)
	w.iov[0].Base = &w.out[0]
	w.iov[0].SetLen(outHeaderSize + n)
	iovs := 1
	if len(data) > 0 {
		w.iov[1].Base = &data[0]
		w.iov[1].SetLen(len(data))
		iovs = 2
	}
	_, _, e := unix.Syscall(unix.SYS_WRITEV, uintptr(s.fd), uintptr(unsafe.Pointer(&w.iov[0])), uintptr(iovs))
	if e != 0 && e != unix.ENOENT { // ENOENT: the request was interrupted
		return fmt.Errorf("fuse: reply: %w", e)
	}
	return nil
}
