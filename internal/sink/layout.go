package sink

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/jvol-io/jvol/internal/vfs"
)

// recvDir is a receiver's directory: it owns the names in it, and every
// access to it goes through its FS.
//
//	.lock       the receiver holds it while it runs
//	<volume>/   one directory per volume (volDir)
type recvDir struct {
	fs   vfs.FS
	path string
}

func (d recvDir) lock() string { return filepath.Join(d.path, ".lock") }

// volume returns the directory of volume vol (a ValidVolumeID).
func (d recvDir) volume(vol string) volDir { return volDir{fs: d.fs, path: filepath.Join(d.path, vol)} }

// volDir is a volume's directory at a receiver:
//
//	base.img, base.json    the image at the start of the oldest segment kept,
//	                       and the stream's state there (segments older than
//	                       the retention are folded into it)
//	seg-NNNN.jseg          the received stream: a segment header record, then
//	                       the records as received, in the journal format
//	mirror.img, mirror.json
//	                       the image with every stored record applied; the
//	                       JSON names the segment and offset it is synced up to
//	lock                   restore holds it shared, folding exclusively
type volDir struct {
	fs   vfs.FS
	path string
}

const (
	segPrefix = "seg-"
	segSuffix = ".jseg"
)

func (d volDir) file(name string) string { return filepath.Join(d.path, name) }
func (d volDir) baseImage() string       { return d.file("base.img") }
func (d volDir) baseMeta() string        { return d.file("base.json") }
func (d volDir) mirrorImage() string     { return d.file("mirror.img") }
func (d volDir) mirrorMeta() string      { return d.file("mirror.json") }
func (d volDir) lock() string            { return d.file("lock") }
func (d volDir) seg(seq uint64) string   { return d.file(segName(seq)) }

func segName(seq uint64) string { return fmt.Sprintf("%s%016d%s", segPrefix, seq, segSuffix) }

// segments lists the sequence numbers of the segments kept, in order.
func (d volDir) segments() ([]uint64, error) {
	names, err := d.fs.List(d.path)
	if err != nil {
		return nil, err
	}
	var seqs []uint64
	for _, n := range names {
		if !strings.HasPrefix(n, segPrefix) || !strings.HasSuffix(n, segSuffix) {
			continue
		}
		var seq uint64
		if _, err := fmt.Sscanf(strings.TrimSuffix(strings.TrimPrefix(n, segPrefix), segSuffix), "%d", &seq); err == nil && n == segName(seq) {
			seqs = append(seqs, seq)
		}
	}
	slices.Sort(seqs)
	return seqs, nil
}

func (d volDir) readJSON(name string, v any) error {
	b, err := vfs.ReadFile(d.fs, name)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

func (d volDir) writeJSON(name string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return vfs.WriteFileAtomic(d.fs, name, append(b, '\n'))
}
