package driver

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/jvol-io/jvol/internal/journal"
	"github.com/jvol-io/jvol/internal/sink"
	"github.com/jvol-io/jvol/internal/volume"
	v1 "github.com/jvol-io/jvol/pkg/apis/jvol/v1alpha1"
)

// StorageClass parameters.
const (
	ParamJournalSize    = "journalSize"
	ParamFIFOSize       = "fifoSize"
	ParamDuplex         = "duplex"
	ParamSinkURL        = "sinkURL"
	ParamCommitInterval = "commitInterval"
	ParamProvisioning   = "provisioning" // thick (default) or thin
	ParamFSType         = "csi.storage.k8s.io/fstype"
	// The Secret with the sink's credentials, which the node reads when it
	// stages the volume: both or neither.
	ParamSinkSecretName      = "sinkSecretName"
	ParamSinkSecretNamespace = "sinkSecretNamespace"
)

// DefaultCapacity is a new volume's size when the request names none.
const DefaultCapacity = 1 << 30

// volumeID is the id, and the Journal's name, of the volume called name: the
// name itself when it is a DNS label (as the external-provisioner's
// pvc-<uid> names are), else "jvol-" and a hash of it.
func volumeID(name string) string {
	if len(validation.IsDNS1123Label(name)) == 0 && !strings.HasPrefix(name, "jvol-") {
		return name
	}
	h := sha256.Sum256([]byte(name))
	return "jvol-" + hex.EncodeToString(h[:20])
}

// parseParams turns StorageClass parameters into a spec (without node and
// capacity). Unknown keys are refused, so a typo does not go unnoticed;
// the csi.storage.k8s.io/ keys the sidecars add are ignored.
func parseParams(p map[string]string) (v1.JournalSpec, error) {
	// Defaults are written out, so the Journal shows what the volume runs with.
	s := v1.JournalSpec{Duplex: v1.Half, FIFOSize: resource.NewQuantity(journal.DefaultFIFOSize, resource.BinarySI), Provisioning: v1.Thick}
	var secret v1.SecretReference
	for k, val := range p {
		var err error
		switch k {
		case ParamJournalSize:
			s.JournalSize, err = quantity(val)
		case ParamFIFOSize:
			s.FIFOSize, err = quantity(val)
		case ParamDuplex:
			var d journal.Duplex
			d, err = journal.ParseDuplex(val)
			s.Duplex = v1.Duplex(d.String())
		case ParamSinkURL:
			if val != "" {
				_, _, err = sink.ParseURL(val)
				s.Sink = &v1.SinkSpec{URL: val}
			}
		case ParamSinkSecretName:
			secret.Name = val
			err = checkName(val, validation.IsDNS1123Subdomain)
		case ParamSinkSecretNamespace:
			secret.Namespace = val
			err = checkName(val, validation.IsDNS1123Label)
		case ParamCommitInterval:
			var d time.Duration
			d, err = time.ParseDuration(val)
			s.CommitInterval = &metav1.Duration{Duration: d}
		case ParamFSType:
			s.FSType = val
		case ParamProvisioning:
			var p volume.Provisioning
			p, err = volume.ParseProvisioning(val)
			s.Provisioning = v1.Thick
			if p == volume.Thin {
				s.Provisioning = v1.Thin
			}
		default:
			if strings.HasPrefix(k, "csi.storage.k8s.io/") {
				continue
			}
			err = fmt.Errorf("unknown parameter")
		}
		if err != nil {
			return s, fmt.Errorf("parameter %s=%q: %w", k, val, err)
		}
	}
	switch {
	case (secret.Name == "") != (secret.Namespace == ""):
		return s, fmt.Errorf("parameters %s and %s go together", ParamSinkSecretName, ParamSinkSecretNamespace)
	case secret.Name != "" && s.Sink == nil:
		return s, fmt.Errorf("parameter %s: the sink's credentials need a %s", ParamSinkSecretName, ParamSinkURL)
	case secret.Name != "":
		s.Sink.CredentialsSecretRef = &secret
	}
	if s.Duplex == v1.Full && s.Sink == nil {
		return s, fmt.Errorf("parameter %s=full needs a %s: %w", ParamDuplex, ParamSinkURL, v1.ErrFullDuplexWithoutSink)
	}
	return s, nil
}

// checkName checks a name with check; an empty one is as good as unset.
func checkName(name string, check func(string) []string) error {
	if errs := check(name); name != "" && len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

func quantity(s string) (*resource.Quantity, error) {
	q, err := resource.ParseQuantity(s)
	if err != nil {
		return nil, err
	}
	return &q, nil
}

// capacity picks a volume size from a range: the required bytes rounded up
// to 4 KiB, or the default (bounded by the limit).
func capacity(r *csi.CapacityRange) (int64, error) {
	req, lim := r.GetRequiredBytes(), r.GetLimitBytes()
	if req < 0 || lim < 0 {
		return 0, fmt.Errorf("negative capacity")
	}
	if lim > 0 && req > lim {
		return 0, fmt.Errorf("required bytes %d exceed limit bytes %d", req, lim)
	}
	size := req
	if size == 0 {
		size = DefaultCapacity
		if lim > 0 && lim < size {
			size = lim
		}
	}
	size = max(size, v1.MinCapacity)
	size = (size + 4095) &^ 4095
	if lim > 0 && size > lim {
		return 0, fmt.Errorf("no size that is a multiple of 4Ki and at least 1Mi fits under limit bytes %d", lim)
	}
	return size, nil
}

// checkCapabilities refuses capabilities jvol does not offer: a volume
// lives on one node; any file system must be ext4 or xfs.
func checkCapabilities(caps []*csi.VolumeCapability) error {
	if len(caps) == 0 {
		return fmt.Errorf("volume capabilities missing")
	}
	for _, c := range caps {
		if err := checkCapability(c); err != nil {
			return err
		}
	}
	return nil
}

func checkCapability(c *csi.VolumeCapability) error {
	if c == nil {
		return fmt.Errorf("volume capability missing")
	}
	switch c.GetAccessMode().GetMode() {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:
	case csi.VolumeCapability_AccessMode_UNKNOWN:
		return fmt.Errorf("access mode missing")
	default:
		return fmt.Errorf("access mode %s: a jvol volume lives on one node", c.GetAccessMode().GetMode())
	}
	switch {
	case c.GetBlock() != nil:
	case c.GetMount() != nil:
		if fs := c.GetMount().GetFsType(); fs != "" && fs != "ext4" && fs != "xfs" {
			return fmt.Errorf("file system %q: want ext4 or xfs", fs)
		}
	default:
		return fmt.Errorf("access type missing: want block or mount")
	}
	return nil
}

// nodeFromTopology picks the node: the first preferred segment, else the
// first requisite one.
func nodeFromTopology(t *csi.TopologyRequirement) string {
	for _, list := range [][]*csi.Topology{t.GetPreferred(), t.GetRequisite()} {
		for _, top := range list {
			if n := top.GetSegments()[TopologyKey]; n != "" {
				return n
			}
		}
	}
	return ""
}
