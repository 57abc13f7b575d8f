package driver

import (
	"testing"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Any CSI name becomes an id that is a DNS label: a valid object name, and
// never a path.
func FuzzVolumeID(f *testing.F) {
	for _, s := range []string{"pvc-1", "", "..", "a/b", "Upper", "jvol-x", "sanity-Node-ABCDEF01-23456789", string(make([]byte, 300))} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		id := volumeID(name)
		if errs := validation.IsDNS1123Label(id); len(errs) > 0 {
			t.Fatalf("volumeID(%q) = %q: %v", name, id, errs)
		}
	})
}

// StorageClass parameters never panic the parser, nor does Validate panic
// on whatever the parser accepts.
func FuzzParseParams(f *testing.F) {
	f.Add("64Mi", "16Mi", "half", "5s", "ext4", "")
	f.Add("1e3", "3Mi", "FULL", "-1s", "btrfs", "tls://sink:7070")
	f.Add("", "", "", "", "", "tcp://[::1]:1#x")
	f.Fuzz(func(t *testing.T, journal, fifo, duplex, interval, fs, sinkURL string) {
		s, err := parseParams(map[string]string{
			ParamJournalSize: journal, ParamFIFOSize: fifo, ParamDuplex: duplex,
			ParamCommitInterval: interval, ParamFSType: fs, ParamSinkURL: sinkURL,
		})
		if err != nil {
			return
		}
		s.Node, s.Capacity = "n", resource.MustParse("1Gi")
		_ = s.Validate() // must not panic
	})
}
