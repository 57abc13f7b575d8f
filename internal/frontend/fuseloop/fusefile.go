package fuseloop

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/jvol-io/jvol/internal/frontend"
	"github.com/jvol-io/jvol/internal/frontend/fuseconn"
)

// mountGoFuse mounts, with go-fuse, a file system at dir (an existing directory) whose only
// entry is the file name, serving dev, and returns once the kernel can use
// it (fs.Mount waits for that). It mounts directly (mount(2), as root), not
// through fusermount. The options are the ones measured to matter
// (../shared/notes/frontend-performance.md): asynchronous direct I/O,
// parallel direct writes, 1 MiB requests, no splice.
func mountGoFuse(dir, name string, dev frontend.Device) (server, error) {
	root := &root{name: name, dev: dev}
	zero := time.Duration(0)
	srv, err := fs.Mount(dir, root, &fs.Options{
		// No caching of the size: it changes when the volume grows.
		AttrTimeout:  &zero,
		EntryTimeout: &zero,
		MountOptions: fuse.MountOptions{
			FsName:            "jvol",
			Name:              "jvol",
			DirectMount:       true,
			DirectMountStrict: true,
			MaxWrite:          fuseconn.MaxRequest,
			MaxBackground:     64,
			DisableSplice:     true,
			DisableXAttrs:     true,
			ExtraCapabilities: fuse.CAP_ASYNC_DIO,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("fuse mount at %s: %w", dir, err)
	}
	return srv, nil
}

type root struct {
	fs.Inode
	name string
	dev  frontend.Device
}

var _ = (fs.NodeOnAdder)((*root)(nil))

func (r *root) OnAdd(ctx context.Context) {
	f := r.NewPersistentInode(ctx, &file{dev: r.dev}, fs.StableAttr{Mode: syscall.S_IFREG, Ino: 2})
	r.AddChild(r.name, f, false)
}

type file struct {
	fs.Inode
	dev frontend.Device
}

var (
	_ = (fs.NodeGetattrer)((*file)(nil))
	_ = (fs.NodeSetattrer)((*file)(nil))
	_ = (fs.NodeOpener)((*file)(nil))
	_ = (fs.NodeReader)((*file)(nil))
	_ = (fs.NodeWriter)((*file)(nil))
	_ = (fs.NodeFsyncer)((*file)(nil))
	_ = (fs.NodeFlusher)((*file)(nil))
	_ = (fs.NodeAllocater)((*file)(nil))
)

func (f *file) fill(out *fuse.Attr) {
	size := uint64(f.dev.Size())
	out.Mode = syscall.S_IFREG | 0o600
	out.Size = size
	out.Blocks = size / 512
	out.Blksize = 4096
	out.Nlink = 1
}

func (f *file) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.fill(&out.Attr)
	return 0
}

// Setattr accepts what does not change the file (the kernel sends mode and
// time updates); the size changes only through the volume.
func (f *file) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if size, ok := in.GetSize(); ok && int64(size) != f.dev.Size() {
		return syscall.EPERM
	}
	f.fill(&out.Attr)
	return 0
}

func (f *file) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return nil, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_PARALLEL_DIRECT_WRITES, 0
}

func (f *file) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	size := f.dev.Size()
	if off >= size {
		return fuse.ReadResultData(nil), 0
	}
	n := min(int64(len(dest)), size-off)
	if _, err := f.dev.ReadAt(dest[:n], off); err != nil {
		return nil, fuseconn.Errno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (f *file) Write(ctx context.Context, fh fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	n, err := f.dev.WriteAt(data, off)
	if err != nil {
		return uint32(n), fuseconn.Errno(err)
	}
	return uint32(n), 0
}

// Fsync is what a loop device's flush (and FUA) becomes.
func (f *file) Fsync(ctx context.Context, fh fs.FileHandle, flags uint32) syscall.Errno {
	return fuseconn.Errno(f.dev.Flush(ctx))
}

// Flush is close(2), not fsync(2): nothing to do.
func (f *file) Flush(ctx context.Context, fh fs.FileHandle) syscall.Errno { return 0 }

// Allocate is fuseconn.Fallocate.
func (f *file) Allocate(ctx context.Context, fh fs.FileHandle, off, size uint64, mode uint32) syscall.Errno {
	return fuseconn.Fallocate(f.dev, off, size, mode)
}
