package driver

import (
	"reflect"
	"strings"
	"testing"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"

	v1 "github.com/jvol-io/jvol/pkg/apis/jvol/v1alpha1"
)

func TestParseParams(t *testing.T) {
	s, err := parseParams(map[string]string{
		"journalSize": "128Mi", "fifoSize": "32Mi", "duplex": "half",
		"commitInterval": "10s", "csi.storage.k8s.io/fstype": "xfs",
		"csi.storage.k8s.io/pvc/name": "data", // added by the provisioner: ignored
	})
	if err != nil {
		t.Fatal(err)
	}
	if s.JournalSize.Value() != 128<<20 || s.FIFOSize.Value() != 32<<20 || s.Duplex != v1.Half ||
		s.CommitInterval.Duration != 10*time.Second || s.FSType != "xfs" {
		t.Errorf("parsed %+v", s)
	}
	if s, err := parseParams(nil); err != nil || s.Duplex != v1.Half || s.Sink != nil {
		t.Errorf("defaults: %+v %v", s, err)
	}
	for p, want := range map[string]string{
		"journalSize=lots":    "journalSize",
		"fifoSize=1x":         "fifoSize",
		"duplex=triple":       "want half or full",
		"commitInterval=soon": "commitInterval",
		"jornalSize=64Mi":     "unknown parameter",
		"duplex=full":         "duplex=full needs a sinkURL",
	} {
		k, v, _ := strings.Cut(p, "=")
		if _, err := parseParams(map[string]string{k: v}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error mentioning %q", p, err, want)
		}
	}
}

func TestParseSinkParams(t *testing.T) {
	s, err := parseParams(map[string]string{
		"sinkURL": "tls://sink.example:7070", "duplex": "Full",
		"sinkSecretName": "sink-creds", "sinkSecretNamespace": "backup",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := v1.SinkSpec{URL: "tls://sink.example:7070", CredentialsSecretRef: &v1.SecretReference{Name: "sink-creds", Namespace: "backup"}}
	if s.Duplex != v1.Full || s.Sink == nil || !reflect.DeepEqual(*s.Sink, want) {
		t.Errorf("parsed duplex %q, sink %+v; want Full, %+v", s.Duplex, s.Sink, want)
	}
	s, err = parseParams(map[string]string{"sinkURL": "tcp://10.0.0.1:7070", "duplex": "half"})
	if err != nil || s.Duplex != v1.Half || s.Sink == nil || s.Sink.URL != "tcp://10.0.0.1:7070" || s.Sink.CredentialsSecretRef != nil {
		t.Errorf("half duplex over tcp: %+v %v", s, err)
	}
	if s, err := parseParams(map[string]string{"sinkURL": ""}); err != nil || s.Sink != nil {
		t.Errorf("an empty sinkURL is no sink: %+v %v", s.Sink, err)
	}

	for _, c := range []struct {
		params map[string]string
		want   string
	}{
		{map[string]string{"sinkURL": "http://sink.example/x"}, "want tcp://host:port or tls://host:port"},
		{map[string]string{"sinkURL": "tcp://sink.example"}, "want tcp://host:port or tls://host:port"},
		{map[string]string{"duplex": "full", "sinkURL": ""}, "duplex=full needs a sinkURL: duplex Full needs a sink"},
		{map[string]string{"sinkURL": "tcp://s:1", "sinkSecretName": "creds"}, "go together"},
		{map[string]string{"sinkURL": "tcp://s:1", "sinkSecretNamespace": "backup"}, "go together"},
		{map[string]string{"sinkSecretName": "creds", "sinkSecretNamespace": "backup"}, "need a sinkURL"},
		{map[string]string{"sinkURL": "tcp://s:1", "sinkSecretName": "Creds/x", "sinkSecretNamespace": "backup"}, "sinkSecretName"},
		{map[string]string{"sinkURL": "tcp://s:1", "sinkSecretName": "creds", "sinkSecretNamespace": "back.up"}, "sinkSecretNamespace"},
	} {
		if _, err := parseParams(c.params); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want an error mentioning %q", c.params, err, c.want)
		}
	}
}

func TestCapacity(t *testing.T) {
	for _, c := range []struct {
		req, lim, want int64
		err            bool
	}{
		{0, 0, DefaultCapacity, false},
		{0, 100 << 20, 100 << 20, false},
		{1, 0, 1 << 20, false},                      // at least 1Mi
		{(1 << 20) + 1, 0, (1 << 20) + 4096, false}, // rounded up to 4Ki
		{5 << 20, 4 << 20, 0, true},                 // required over limit
		{(1 << 20) + 1, (1 << 20) + 100, 0, true},   // rounding passes the limit
		{-1, 0, 0, true},
	} {
		got, err := capacity(&csi.CapacityRange{RequiredBytes: c.req, LimitBytes: c.lim})
		if (err != nil) != c.err || got != c.want {
			t.Errorf("capacity(%d, %d) = %d, %v; want %d, error %v", c.req, c.lim, got, err, c.want, c.err)
		}
	}
}

func TestVolumeID(t *testing.T) {
	if id := volumeID("pvc-0f1e2d3c"); id != "pvc-0f1e2d3c" {
		t.Errorf("a DNS label is kept: %s", id)
	}
	for _, name := range []string{"Upper-Case", "../../etc", "a/b", strings.Repeat("x", 200), "jvol-0123"} {
		id := volumeID(name)
		if !strings.HasPrefix(id, "jvol-") || len(id) != 45 || id != volumeID(name) {
			t.Errorf("volumeID(%q) = %q: want a stable jvol-<hash>", name, id)
		}
	}
	if volumeID("a/b") == volumeID("a-b") {
		t.Error("different names, one id")
	}
}

func TestCheckCapability(t *testing.T) {
	mode := func(m csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability_AccessMode {
		return &csi.VolumeCapability_AccessMode{Mode: m}
	}
	mount := func(fs string) *csi.VolumeCapability_Mount {
		return &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs}}
	}
	ok := []*csi.VolumeCapability{
		{AccessMode: mode(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER), AccessType: mount("")},
		{AccessMode: mode(csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER), AccessType: mount("xfs")},
		{AccessMode: mode(csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY), AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}},
	}
	for _, c := range ok {
		if err := checkCapability(c); err != nil {
			t.Errorf("%v: %v", c, err)
		}
	}
	bad := []*csi.VolumeCapability{
		nil,
		{AccessMode: mode(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER), AccessType: mount("")},
		{AccessMode: mode(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER), AccessType: mount("btrfs")},
		{AccessMode: mode(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)},
		{AccessType: mount("")},
	}
	for _, c := range bad {
		if err := checkCapability(c); err == nil {
			t.Errorf("%v accepted", c)
		}
	}
}
