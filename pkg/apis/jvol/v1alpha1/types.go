package v1alpha1

import (
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Duplex says when FIFO space is freed: Half once a record is written to the
// journal image; Full only once the sink has acknowledged its transaction id.
// +kubebuilder:validation:Enum=Half;Full
type Duplex string

const (
	Half Duplex = "Half"
	Full Duplex = "Full"
)

// Provisioning says when a volume's data image gets its disk blocks.
// +kubebuilder:validation:Enum=Thick;Thin
type Provisioning string

const (
	// Thick: all when the volume is made and when it grows, so making or
	// growing it fails when the node lacks the space, and no write can.
	Thick Provisioning = "Thick"
	// Thin: as it is written, 8Mi at a time, for overcommitting on
	// purpose; a write the node has no space for fails.
	Thin Provisioning = "Thin"
)

// Phase is where a Journal is in its life.
type Phase string

const (
	PhasePending  Phase = "Pending"  // not yet made by its node
	PhaseReady    Phase = "Ready"    // images exist, not attached
	PhaseAttached Phase = "Attached" // served as a block device on its node
	PhaseDegraded Phase = "Degraded" // serving, but something needs attention (sink out of sync, say)
	PhaseDeleting Phase = "Deleting" // images being removed
	PhaseFailed   Phase = "Failed"   // the node cannot make or serve it; see conditions
)

// Finalizer keeps a Journal until its node has removed the backing images.
const Finalizer = "jvol.io/backing-images"

// Condition types.
const (
	// ConditionReady is true when the images exist at spec.capacity.
	ConditionReady = "Ready"
	// ConditionSinkInSync is true while the link to the sink is up (reason
	// Connected or CatchingUp), false when it is down (Disconnected) or the
	// sink has lost the stream (OutOfSync); absent without a sink.
	ConditionSinkInSync = "SinkInSync"
	// ConditionConnectionHeld is true (reason Held) while the node pod's
	// holder keeps a copy of the attached volume's FUSE connection, so
	// that its I/O outlives the node plugin; false (HolderGone) while no
	// holder does, when the plugin's death would fail the volume's I/O.
	// Absent when the volume is not attached or the node runs no holder.
	ConditionConnectionHeld = "ConnectionHeld"
	// ConditionSpaceAvailable, on an attached Thin volume, is false
	// (reason SpaceLow) while the node's file system has less free than
	// the volume may still take, up to a tenth of its capacity (at
	// least 64Mi): writes may soon fail for want of space.
	ConditionSpaceAvailable = "SpaceAvailable"
)

// Reasons of the SpaceAvailable condition.
const (
	ReasonEnoughSpace = "Enough"
	ReasonSpaceLow    = "SpaceLow"
)

// Reasons of the ConnectionHeld condition.
const (
	ReasonHeld       = "Held"
	ReasonHolderGone = "HolderGone"
)

// Reasons of the Ready condition; the controller turns them into gRPC codes.
const (
	ReasonCreated    = "Created"
	ReasonOutOfSpace = "OutOfSpace" // ResourceExhausted
	ReasonStaged     = "Staged"     // FailedPrecondition
	ReasonError      = "Error"      // Internal
	// ReasonSourceNotFound: what a volume or snapshot is to be made from
	// is not on the node, or its receiver keeps no stream of it (NotFound).
	ReasonSourceNotFound = "SourceNotFound"
	// ReasonNotKept: the receiver does not keep the point asked for; the
	// message names what it keeps (OutOfRange).
	ReasonNotKept = "NotKept"
	// ReasonRefused: the receiver refused the credentials
	// (FailedPrecondition).
	ReasonRefused = "Refused"
	// ReasonCatchingUp: a Sink snapshot waits for its receiver to have
	// every write acknowledged before it was asked for.
	ReasonCatchingUp = "CatchingUp"
)

// Events recorded on Journals.
const (
	// EventSinkOutOfSync (Warning): the sink has lost the stream and needs
	// a new baseline.
	EventSinkOutOfSync = "SinkOutOfSync"
	// EventAttached (Normal): the volume is served as a block device on
	// its node; EventDetached (Normal): no longer.
	EventAttached = "Attached"
	EventDetached = "Detached"
	// EventFailed (Warning): the node cannot make or serve the volume;
	// the message says why.
	EventFailed = "Failed"
	// EventSinkCatchingUp (Normal): the sink is being brought up to date
	// (after a time away, or a baseline after it lost the stream);
	// EventSinkInSync (Normal): it has everything again.
	EventSinkCatchingUp = "SinkCatchingUp"
	EventSinkInSync     = "SinkInSync"
	// EventJournalFull (Warning): writers waited for room in the FIFO
	// since the last report: the journal (or, in full duplex, the sink)
	// falls behind the writes.
	EventJournalFull = "JournalFull"
	// EventHolderGone (Warning): no holder keeps the volume's FUSE
	// connection; until one does again, the node plugin's death fails
	// the volume's I/O.
	EventHolderGone = "HolderGone"
	// EventSpaceLow (Warning): a Thin volume's node is running out of
	// space (see ConditionSpaceAvailable); EventOutOfSpace (Warning):
	// writes were refused for want of it.
	EventSpaceLow   = "SpaceLow"
	EventOutOfSpace = "OutOfSpace"
)

// Limits, in bytes, that the schema and Validate both enforce.
const (
	MinCapacity    = 1 << 20
	MinJournalSize = 64 << 20
	MinFIFOSize    = 1 << 20
	MaxFIFOSize    = 1 << 30
)

// JournalSpec is what the volume should be. Sizes are in bytes (quantities
// such as 10Gi are accepted).
//
// +kubebuilder:validation:XValidation:rule="!has(self.duplex) || self.duplex != 'Full' || has(self.sink)",message="duplex Full needs a sink: acknowledgements come from the sink"
// +kubebuilder:validation:XValidation:rule="self.node == oldSelf.node",message="node is immutable"
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.capacity) || quantity(string(self.capacity)).compareTo(quantity(string(oldSelf.capacity))) >= 0",message="capacity never shrinks"
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.journalSize) ? !has(self.journalSize) : (has(self.journalSize) && quantity(string(self.journalSize)).compareTo(quantity(string(oldSelf.journalSize))) == 0)",message="journalSize is immutable"
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.provisioning) ? !has(self.provisioning) : (has(self.provisioning) && self.provisioning == oldSelf.provisioning)",message="provisioning is immutable"
// +kubebuilder:validation:XValidation:rule="has(self.source) == has(oldSelf.source) && (!has(self.source) || self.source == oldSelf.source)",message="source is immutable"
type JournalSpec struct {
	// Node is the name of the node that holds the volume.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Node string `json:"node"`

	// Capacity of the volume: a multiple of 4Ki, at least 1Mi. It may grow,
	// never shrink.
	// +kubebuilder:validation:XValidation:rule="quantity(string(self)).isGreaterThan(quantity('1Mi')) || quantity(string(self)).compareTo(quantity('1Mi')) == 0",message="capacity must be at least 1Mi"
	// +kubebuilder:validation:XValidation:rule="quantity(string(self)).asInteger() % 4096 == 0",message="capacity must be a multiple of 4Ki"
	Capacity resource.Quantity `json:"capacity"`

	// JournalSize is the size of the journal image: default 10% of the
	// capacity, at least 64Mi; a multiple of 4Ki. Fixed at creation.
	// +optional
	// +kubebuilder:validation:XValidation:rule="quantity(string(self)).compareTo(quantity('64Mi')) >= 0",message="journalSize must be at least 64Mi"
	// +kubebuilder:validation:XValidation:rule="quantity(string(self)).asInteger() % 4096 == 0",message="journalSize must be a multiple of 4Ki"
	JournalSize *resource.Quantity `json:"journalSize,omitempty"`

	// FIFOSize is the size of the memory FIFO: a power of two from 1Mi to
	// 1Gi; default 16Mi.
	// +optional
	// +kubebuilder:validation:XValidation:rule="quantity(string(self)).asInteger() in [1048576, 2097152, 4194304, 8388608, 16777216, 33554432, 67108864, 134217728, 268435456, 536870912, 1073741824]",message="fifoSize must be a power of two from 1Mi to 1Gi"
	FIFOSize *resource.Quantity `json:"fifoSize,omitempty"`

	// Duplex is Half (default) or Full.
	// +optional
	// +kubebuilder:default=Half
	Duplex Duplex `json:"duplex,omitempty"`

	// Sink is where the journal stream also goes; none if empty.
	// +optional
	Sink *SinkSpec `json:"sink,omitempty"`

	// CommitInterval is how often the journal is committed to the data
	// image at the latest, 1s to 1h; default 5s.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s') && duration(self) <= duration('1h')",message="commitInterval must be from 1s to 1h"
	CommitInterval *metav1.Duration `json:"commitInterval,omitempty"`

	// Provisioning is Thick or Thin; fixed when the volume is made. A
	// Journal without it is made Thick (one made before the field existed
	// is Thin, as volumes were then: status.provisioning says).
	// +optional
	Provisioning Provisioning `json:"provisioning,omitempty"`

	// FSType is the file system of a Filesystem volume (ext4 or xfs);
	// empty for a raw block volume.
	// +optional
	// +kubebuilder:validation:Enum="";ext4;xfs
	FSType string `json:"fsType,omitempty"`

	// Source, if set, is what the volume starts as when it is made; fixed.
	// +optional
	Source *VolumeSource `json:"source,omitempty"`
}

// VolumeSource is what a new volume starts as: exactly one of a
// JournalSnapshot's image or a copy of another Journal (a clone), either
// on the volume's node.
//
// +kubebuilder:validation:XValidation:rule="has(self.snapshot) != has(self.journal)",message="source names exactly one of snapshot and journal"
type VolumeSource struct {
	// Snapshot names a JournalSnapshot.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	Snapshot string `json:"snapshot,omitempty"`
	// Journal names the Journal to clone.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	Journal string `json:"journal,omitempty"`
}

// SinkSpec names an off-site receiver of the journal stream.
type SinkSpec struct {
	// URL of the receiver: tcp://host:port or tls://host:port.
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:Pattern=`^(tcp|tls)://[^/?#\s]+:[0-9]{1,5}$`
	URL string `json:"url"`
	// CredentialsSecretRef names a Secret holding the token (key "token")
	// and, for tls, the client certificate ("tls.crt", "tls.key") and the
	// receiver's CA ("ca.crt").
	// +optional
	CredentialsSecretRef *SecretReference `json:"credentialsSecretRef,omitempty"`
}

// SecretReference names a Secret.
type SecretReference struct {
	// +kubebuilder:validation:MinLength=1
	Name string `json:"name"`
	// +kubebuilder:validation:MinLength=1
	Namespace string `json:"namespace"`
}

// JournalStatus is what the node last saw. The node refreshes the figures
// every few seconds, not on every write.
type JournalStatus struct {
	// +optional
	Phase Phase `json:"phase,omitempty"`
	// ObservedGeneration is the generation of the spec the node last acted on.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Capacity the images have now.
	// +optional
	Capacity *resource.Quantity `json:"capacity,omitempty"`
	// Device is the block device while attached, such as /dev/loop3.
	// +optional
	Device string `json:"device,omitempty"`
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// Provisioning is the volume's, as its node made it: Thick or Thin.
	// +optional
	Provisioning Provisioning `json:"provisioning,omitempty"`
	// AllocatedBytes is the disk the data image holds on its node.
	// +optional
	AllocatedBytes int64 `json:"allocatedBytes,omitempty"`
	// SpaceErrors counts writes and grows refused for want of space since
	// the volume was last staged.
	// +optional
	SpaceErrors int64 `json:"spaceErrors,omitempty"`

	// FIFOSize is the size of the memory FIFO the volume is served with: a
	// fifoSize edited while attached applies when the volume is next staged.
	// +optional
	FIFOSize int64 `json:"fifoSize,omitempty"`
	// FIFOUsed is the memory FIFO's reserved, not yet freed bytes.
	// +optional
	FIFOUsed int64 `json:"fifoUsed,omitempty"`
	// FIFOStalls counts writers that waited for FIFO space.
	// +optional
	FIFOStalls int64 `json:"fifoStalls,omitempty"`
	// JournalUsed is the journal image's bytes not yet committed.
	// +optional
	JournalUsed int64 `json:"journalUsed,omitempty"`
	// Transid is the last transaction id handed out.
	// +optional
	Transid int64 `json:"transid,omitempty"`
	// AckedTransid is the last transaction id that is durable: in the
	// journal image, or at the sink in full duplex.
	// +optional
	AckedTransid int64 `json:"ackedTransid,omitempty"`
	// BytesUnacked is what has been written to the FIFO and not yet
	// acknowledged.
	// +optional
	BytesUnacked int64 `json:"bytesUnacked,omitempty"`
	// Lag is BytesUnacked for people, such as 12Mi.
	// +optional
	Lag string `json:"lag,omitempty"`
	// LastAckTime is when AckedTransid last moved.
	// +optional
	LastAckTime *metav1.Time `json:"lastAckTime,omitempty"`
	// SinkState is the sink's link: empty without a sink.
	// +optional
	SinkState string `json:"sinkState,omitempty"`
	// Updated is when the node last refreshed the figures.
	// +optional
	Updated *metav1.Time `json:"updated,omitempty"`
}

// Journal is one jvol volume: its backing images on a node, its journal and
// where the journal's stream goes.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=jnl
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.spec.node`
// +kubebuilder:printcolumn:name="Capacity",type=string,JSONPath=`.spec.capacity`
// +kubebuilder:printcolumn:name="FIFO",type=string,JSONPath=`.spec.fifoSize`
// +kubebuilder:printcolumn:name="Duplex",type=string,JSONPath=`.spec.duplex`
// +kubebuilder:printcolumn:name="Sink",type=string,JSONPath=`.spec.sink.url`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Lag",type=string,JSONPath=`.status.lag`
// +kubebuilder:printcolumn:name="Provisioning",type=string,JSONPath=`.status.provisioning`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Journal struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   JournalSpec   `json:"spec"`
	Status JournalStatus `json:"status,omitempty"`
}

// JournalList is a list of Journals.
//
// +kubebuilder:object:root=true
type JournalList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Journal `json:"items"`
}

// SnapshotKind says where a snapshot is kept.
// +kubebuilder:validation:Enum=Local;Sink
type SnapshotKind string

const (
	// Local: an image on the source volume's node, independent of the
	// volume (it outlives it); volumes made from it are made there.
	Local SnapshotKind = "Local"
	// SinkKind: a point of the source's stream, pinned at its receiver
	// (kept from folding until the snapshot is deleted); it outlives the
	// node, and volumes made from it are restored from the receiver on
	// any node.
	SinkKind SnapshotKind = "Sink"
)

// SnapshotPoint is a point of a volume's stream: a transaction id, or
// the point of a time (the volume after every write handed an id before
// it).
//
// +kubebuilder:validation:XValidation:rule="has(self.transid) != has(self.time)",message="point names exactly one of transid and time"
type SnapshotPoint struct {
	// +optional
	// +kubebuilder:validation:Minimum=1
	Transid int64 `json:"transid,omitempty"`
	// +optional
	Time *metav1.Time `json:"time,omitempty"`
}

// Finalizer of a JournalSnapshot: its node has not removed its image.
const SnapshotFinalizer = "jvol.io/snapshot-image"

// JournalSnapshotSpec is what the snapshot is of. It is immutable.
//
// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec is immutable"
// +kubebuilder:validation:XValidation:rule="!has(self.kind) || self.kind != 'Sink' || has(self.sink)",message="a Sink snapshot needs a sink"
// +kubebuilder:validation:XValidation:rule="!has(self.point) || (has(self.kind) && self.kind == 'Sink')",message="only a Sink snapshot has a point"
type JournalSnapshotSpec struct {
	// Source is the name of the Journal the snapshot is taken of.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Source string `json:"source"`
	// Node is the source's node, which takes the snapshot and, for a Local
	// one, keeps it.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Node string `json:"node"`
	// Kind is Local (the default) or Sink.
	// +optional
	// +kubebuilder:default=Local
	Kind SnapshotKind `json:"kind,omitempty"`
	// Sink is the receiver a Sink snapshot is pinned at: the source's, as
	// its spec said when the snapshot was asked for.
	// +optional
	Sink *SinkSpec `json:"sink,omitempty"`
	// Point, of a Sink snapshot, is the point of the source's stream it
	// holds; without one, the newest the receiver has once it has every
	// write acknowledged before the snapshot was asked for.
	// +optional
	Point *SnapshotPoint `json:"point,omitempty"`
}

// JournalSnapshotStatus is what the node did.
type JournalSnapshotStatus struct {
	// Phase is Pending until the node has taken the snapshot, then Ready;
	// Failed if it cannot (see conditions).
	// +optional
	Phase Phase `json:"phase,omitempty"`
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// ReadyToUse: volumes can be made from it.
	// +optional
	ReadyToUse bool `json:"readyToUse,omitempty"`
	// Size is the source's size when the snapshot was taken: the least a
	// volume made from it has.
	// +optional
	Size *resource.Quantity `json:"size,omitempty"`
	// Transid is the source's last transaction id the snapshot holds:
	// every write acknowledged before it was taken, and none after.
	// +optional
	Transid int64 `json:"transid,omitempty"`
	// TakenAt is when the node took it.
	// +optional
	TakenAt *metav1.Time `json:"takenAt,omitempty"`
	// AllocatedBytes is the disk its image holds on its node.
	// +optional
	AllocatedBytes int64 `json:"allocatedBytes,omitempty"`
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// JournalSnapshot is a point-in-time copy of a Journal's volume.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=jsnap
// +kubebuilder:printcolumn:name="Source",type=string,JSONPath=`.spec.source`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.spec.node`
// +kubebuilder:printcolumn:name="Kind",type=string,JSONPath=`.spec.kind`
// +kubebuilder:printcolumn:name="Size",type=string,JSONPath=`.status.size`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Transid",type=integer,JSONPath=`.status.transid`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type JournalSnapshot struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   JournalSnapshotSpec   `json:"spec"`
	Status JournalSnapshotStatus `json:"status,omitempty"`
}

// JournalSnapshotList is a list of JournalSnapshots.
//
// +kubebuilder:object:root=true
type JournalSnapshotList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []JournalSnapshot `json:"items"`
}
