// Package frontend defines how a volume becomes a block device the kernel
// can use. This kernel has FUSE and loop but no nbd, ublk or device-mapper,
// so the one frontend today is fuseloop; another can take its place where
// the kernel offers more.
package frontend

import "context"

// Device is what a frontend serves: a volume.
type Device interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// Flush makes every completed write durable.
	Flush(ctx context.Context) error
	// Discard deallocates a range: it reads as zeros afterwards.
	Discard(off, n int64) error
	Size() int64
}

// Frontend is a device exposed as a block device node.
type Frontend interface {
	// Path is the block device, e.g. /dev/loop3.
	Path() string
	// Resized makes the block device take the Device's new size.
	Resized() error
	// Close removes the block device; the Device stays open.
	Close() error
}

// Opener exposes dev as a block device named name. dir is the opener's
// own (the caller holds the volume's lock): whatever it finds there was
// left by a process that died, and is cleared first.
type Opener func(dir, name string, dev Device) (Frontend, error)
