// Package fsmount mounts file systems on block devices: mount-utils'
// SafeFormatAndMount (a device with no file system is formatted first),
// which also grows a file system smaller than its device: an ext2/3/4 one
// before mounting it, an XFS one after. Growing a mounted ext4 (resize2fs online) needs
// CAP_SYS_RESOURCE, which a node plugin's container may lack; growing one
// that is not mounted needs nothing, so a volume grown while no pod used
// it gets its space at the next mount.
package fsmount

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"
	"k8s.io/utils/exec"
)

// Mounter is mount-utils' SafeFormatAndMount with the growth of ext file
// systems before they are mounted.
type Mounter struct {
	*mount.SafeFormatAndMount
}

// New returns the machine's Mounter.
func New() *Mounter {
	return &Mounter{mount.NewSafeFormatAndMount(mount.New(""), exec.New())}
}

// FormatAndMount mounts source at target, formatting it first if it holds
// no file system, and growing an ext one to the device first. An XFS one
// is mounted with nouuid (a clone, or a volume made from a snapshot, has
// its source's UUID, and XFS refuses to mount a second file system of one
// UUID), and grown to the device once mounted, as XFS grows only then.
func (m *Mounter) FormatAndMount(source, target, fstype string, options []string) error {
	if err := m.GrowExt(source); err != nil {
		return err
	}
	format, err := m.GetDiskFormat(source)
	if err != nil {
		return err
	}
	xfs := format == "xfs" || format == "" && fstype == "xfs"
	if xfs && !slices.Contains(options, "nouuid") {
		options = append(slices.Clone(options), "nouuid")
	}
	if err := m.SafeFormatAndMount.FormatAndMount(source, target, fstype, options); err != nil {
		return err
	}
	if xfs {
		// -d: the data section to the device's size; nothing if it is.
		if out, err := m.Exec.Command("xfs_growfs", "-d", target).CombinedOutput(); err != nil {
			return fmt.Errorf("xfs_growfs -d %s: %w: %s", target, err, out)
		}
	}
	return nil
}

// GrowExt grows the ext2/3/4 file system on the unmounted device to the
// device's size, if it is smaller by a block or more. Any other content
// is left alone.
func (m *Mounter) GrowExt(device string) error {
	format, err := m.GetDiskFormat(device)
	if err != nil {
		return err
	}
	switch format {
	case "ext2", "ext3", "ext4":
	default:
		return nil
	}
	out, err := m.Exec.Command("dumpe2fs", "-h", device).Output()
	if err != nil {
		return fmt.Errorf("dumpe2fs -h %s: %w", device, err)
	}
	fsSize, blockSize, err := ParseExtSize(out)
	if err != nil {
		return fmt.Errorf("dumpe2fs -h %s: %w", device, err)
	}
	devSize, err := deviceSize(device)
	if err != nil {
		return err
	}
	if fsSize+blockSize > devSize {
		return nil
	}
	klog.InfoS("Growing a file system that is smaller than its device", "device", device, "fsType", format, "from", fsSize, "to", devSize)
	// resize2fs wants a forced check first on a file system not mounted.
	// e2fsck -p exits 1 when it corrected errors, which is a success.
	out, err = m.Exec.Command("e2fsck", "-f", "-p", device).CombinedOutput()
	var ee exec.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitStatus() == 1) {
		return fmt.Errorf("e2fsck -f -p %s before growing it: %w: %s", device, err, out)
	}
	if out, err := m.Exec.Command("resize2fs", device).CombinedOutput(); err != nil {
		return fmt.Errorf("resize2fs %s: %w: %s", device, err, out)
	}
	return nil
}

// ParseExtSize reads the file system's size and block size, in bytes, from
// what `dumpe2fs -h` prints ("Block count:" and "Block size:").
func ParseExtSize(out []byte) (size, blockSize int64, err error) {
	var count int64 = -1
	blockSize = -1
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		switch k {
		case "Block count":
			count, err = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		case "Block size":
			blockSize, err = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %w", k, err)
		}
	}
	if count < 0 || blockSize <= 0 || count > (1<<62)/blockSize {
		return 0, 0, fmt.Errorf("no block count and size (%d, %d)", count, blockSize)
	}
	return count * blockSize, blockSize, nil
}

// deviceSize is a block device's size in bytes, from sysfs.
func deviceSize(device string) (int64, error) {
	var st unix.Stat_t
	if err := unix.Stat(device, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", device, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return 0, fmt.Errorf("%s is not a block device", device)
	}
	b, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/size", unix.Major(st.Rdev), unix.Minor(st.Rdev)))
	if err != nil {
		return 0, err
	}
	sectors, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return sectors * 512, err
}
