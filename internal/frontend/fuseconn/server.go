package fuseconn

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
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

	// stop, an eventfd, is signalled once by Stop: every worker waits on
	// it beside the connection, and returns.
	stop     int
	stopping atomic.Bool
	done     sync.WaitGroup
	mu       sync.Mutex // guards stop's closing
}

// Serve starts serving dev as the file name on conn, a mounted connection.
// Unless o.Resume is set, it first answers the kernel's INIT, so the file
// is usable once Serve returns.
func Serve(conn *os.File, name string, dev frontend.Device, o Options) (*Server, error) {
	s := &Server{conn: conn, fd: int(conn.Fd()), name: name, dev: dev}
	// Non-blocking, so that a worker waiting for a request can also wait
	// for Stop. The flag is the open file's: every copy of it, in any
	// process, shares it; every server of a connection waits this way.
	if err := unix.SetNonblock(s.fd, true); err != nil {
		return nil, err
	}
	var err error
	if s.stop, err = unix.Eventfd(0, unix.EFD_CLOEXEC); err != nil {
		return nil, err
	}
	if !o.Resume {
		if err := s.init(); err != nil {
			unix.Close(s.stop)
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

// Stop returns once every worker has returned: each answers the request it
// holds, and none reads another. Requests that come later wait in the
// kernel for the next server of the connection, which needs no resend.
func (s *Server) Stop() {
	if !s.stopping.Swap(true) {
		var one [8]byte
		binary.NativeEndian.PutUint64(one[:], 1)
		s.mu.Lock()
		if s.stop >= 0 {
			unix.Write(s.stop, one[:])
		}
		s.mu.Unlock()
	}
	s.Wait()
}

// Wait returns once the connection has ended (the file system was
// unmounted), or Stop was called, and every worker has returned.
func (s *Server) Wait() {
	s.done.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stop >= 0 {
		unix.Close(s.stop)
		s.stop = -1
	}
}

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
	ep, err := s.waiter()
	if err != nil {
		klog.ErrorS(err, "Waiting on the FUSE device; this worker stops")
		return
	}
	defer unix.Close(ep)
	for !s.stopping.Load() {
		n, err := s.next(w, ep)
		if err != nil {
			if !errors.Is(err, errStopped) && !errors.Is(err, unix.ENODEV) { // ENODEV: unmounted, or aborted
				klog.ErrorS(err, "Reading the FUSE device; this worker stops")
			}
			return
		}
		s.handle(w, w.in[:n])
	}
}

var errStopped = errors.New("fuse: server stopped")

// waiter returns an epoll instance that wakes this worker when a request
// may be read, or when Stop was called. The connection is registered
// EPOLLEXCLUSIVE: one request wakes one idle worker, not all of them.
func (s *Server) waiter() (int, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return -1, err
	}
	err = unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, s.fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(s.fd)})
	if err == nil {
		err = unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, s.stop, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(s.stop)})
	}
	if err != nil {
		unix.Close(ep)
		return -1, fmt.Errorf("fuse: epoll: %w", err)
	}
	return ep, nil
}

// next reads the next request into w.in; while there is none, it waits on
// ep. A busy connection costs one read per request, an idle one a read
// that finds nothing and a wait.
func (s *Server) next(w *worker, ep int) (int, error) {
	var ev [2]unix.EpollEvent
	for {
		n, err := unix.Read(s.fd, w.in)
		switch {
		case err == nil:
			return n, nil
		case errors.Is(err, unix.EINTR), errors.Is(err, unix.ENOENT):
			continue // ENOENT: the request was interrupted before we read it
		case !errors.Is(err, unix.EAGAIN):
			return 0, err
		}
		if s.stopping.Load() {
			return 0, errStopped
		}
		if _, err := unix.EpollWait(ep, ev[:], -1); err != nil && !errors.Is(err, unix.EINTR) {
			return 0, err
		}
	}
}

// init reads the kernel's INIT and answers it.
func (s *Server) init() error {
	w := newWorker()
	ep, err := s.waiter()
	if err != nil {
		return err
	}
	defer unix.Close(ep)
	n, err := s.next(w, ep)
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
