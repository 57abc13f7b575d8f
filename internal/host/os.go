package host

import (
	mount "k8s.io/mount-utils"
	"k8s.io/utils/exec"

	"github.com/jvol-io/jvol/internal/frontend"
	"github.com/jvol-io/jvol/internal/fsmount"
)

// Mounter is what Volumes needs to mount file systems: mount-utils'
// interface (mount, unmount, is it a mount point), and formatting a device
// that holds no file system yet before mounting it.
type Mounter interface {
	mount.Interface
	FormatAndMount(source, target, fstype string, options []string) error
}

// Resizer grows a mounted file system to its device.
type Resizer interface {
	Resize(devicePath, deviceMountPath string) (bool, error)
}

// OS is the machine's side of Volumes: how a volume becomes a block device,
// and how file systems are made, mounted and grown. A zero field is the
// real one; tests without root substitute fakes (hosttest).
type OS struct {
	// Frontend makes block devices; nil: attach's own (fuseloop), which
	// can serve a connection this package opened, and resume one.
	Frontend frontend.Opener
	Mounter  Mounter
	Resizer  Resizer
}

// withDefaults is o with the machine's implementation for every field not
// set.
func (o OS) withDefaults() OS {
	if o.Mounter == nil {
		o.Mounter = fsmount.New()
	}
	if o.Resizer == nil {
		o.Resizer = mount.NewResizeFs(exec.New())
	}
	return o
}
