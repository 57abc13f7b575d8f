package v1alpha1

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"time"
)

// The schema (CEL and OpenAPI) enforces these on a cluster; Validate and
// ValidateUpdate enforce the same where there is no API server (standalone).

var sinkURL = regexp.MustCompile(`^(tcp|tls)://[^/?#\s]+:[0-9]{1,5}$`)

// Validate checks a spec on its own.
func (s *JournalSpec) Validate() error {
	switch {
	case s.Node == "" || len(s.Node) > 253:
		return fmt.Errorf("spec.node: must be 1 to 253 characters")
	case s.Capacity.Value() < MinCapacity:
		return fmt.Errorf("spec.capacity: must be at least 1Mi")
	case s.Capacity.Value()%4096 != 0:
		return fmt.Errorf("spec.capacity: must be a multiple of 4Ki")
	}
	if q := s.JournalSize; q != nil {
		if q.Value() < MinJournalSize || q.Value()%4096 != 0 {
			return fmt.Errorf("spec.journalSize: must be a multiple of 4Ki, at least 64Mi")
		}
	}
	if q := s.FIFOSize; q != nil {
		if v := q.Value(); v < MinFIFOSize || v > MaxFIFOSize || v&(v-1) != 0 {
			return fmt.Errorf("spec.fifoSize: must be a power of two from 1Mi to 1Gi")
		}
	}
	switch s.Duplex {
	case "", Half, Full:
	default:
		return fmt.Errorf("spec.duplex: %q: must be Half or Full", s.Duplex)
	}
	if s.Duplex == Full && s.Sink == nil {
		return fmt.Errorf("spec.duplex: %w", ErrFullDuplexWithoutSink)
	}
	if s.Sink != nil && !sinkURL.MatchString(s.Sink.URL) {
		return fmt.Errorf("spec.sink.url: %q: must be tcp://host:port or tls://host:port", s.Sink.URL)
	}
	if d := s.CommitInterval; d != nil && (d.Duration < time.Second || d.Duration > time.Hour) {
		return fmt.Errorf("spec.commitInterval: must be from 1s to 1h")
	}
	switch s.FSType {
	case "", "ext4", "xfs":
	default:
		return fmt.Errorf("spec.fsType: %q: must be ext4 or xfs", s.FSType)
	}
	switch s.Provisioning {
	case "", Thick, Thin:
	default:
		return fmt.Errorf("spec.provisioning: %q: must be Thick or Thin", s.Provisioning)
	}
	if src := s.Source; src != nil && (src.Snapshot == "") == (src.Journal == "") {
		return fmt.Errorf("spec.source: source names exactly one of snapshot and journal")
	}
	return nil
}

// ErrFullDuplexWithoutSink: full duplex frees journal space on the sink's
// acknowledgements, so it needs a sink.
var ErrFullDuplexWithoutSink = errors.New("duplex Full needs a sink: acknowledgements come from the sink")

// ValidateUpdate checks a change from old to s.
func (s *JournalSpec) ValidateUpdate(old *JournalSpec) error {
	switch {
	case s.Node != old.Node:
		return fmt.Errorf("spec.node: node is immutable")
	case s.Capacity.Cmp(old.Capacity) < 0:
		return fmt.Errorf("spec.capacity: capacity never shrinks")
	case (s.JournalSize == nil) != (old.JournalSize == nil) ||
		s.JournalSize != nil && s.JournalSize.Cmp(*old.JournalSize) != 0:
		return fmt.Errorf("spec.journalSize: journalSize is immutable")
	case s.Provisioning != old.Provisioning:
		return fmt.Errorf("spec.provisioning: provisioning is immutable")
	case (s.Source == nil) != (old.Source == nil) || s.Source != nil && *s.Source != *old.Source:
		return fmt.Errorf("spec.source: source is immutable")
	}
	return s.Validate()
}

// Validate checks a snapshot's spec on its own.
func (s *JournalSnapshotSpec) Validate() error {
	switch {
	case s.Source == "" || len(s.Source) > 253:
		return fmt.Errorf("spec.source: must be 1 to 253 characters")
	case s.Node == "" || len(s.Node) > 253:
		return fmt.Errorf("spec.node: must be 1 to 253 characters")
	case s.Kind != "" && s.Kind != Local && s.Kind != SinkKind:
		return fmt.Errorf("spec.kind: %q: must be Local or Sink", s.Kind)
	case s.Kind == SinkKind && s.Sink == nil:
		return fmt.Errorf("spec: a Sink snapshot needs a sink")
	case s.Point != nil && s.Kind != SinkKind:
		return fmt.Errorf("spec: only a Sink snapshot has a point")
	case s.Point != nil && (s.Point.Transid != 0) == (s.Point.Time != nil):
		return fmt.Errorf("spec.point: point names exactly one of transid and time")
	case s.Point != nil && s.Point.Transid < 0:
		return fmt.Errorf("spec.point.transid: must be at least 1")
	}
	if s.Sink != nil && !sinkURL.MatchString(s.Sink.URL) {
		return fmt.Errorf("spec.sink.url: %q: must be tcp://host:port or tls://host:port", s.Sink.URL)
	}
	return nil
}

// ValidateUpdate checks a change from old to s: there may be none.
func (s *JournalSnapshotSpec) ValidateUpdate(old *JournalSnapshotSpec) error {
	if !reflect.DeepEqual(s, old) {
		return fmt.Errorf("spec: spec is immutable")
	}
	return nil
}
