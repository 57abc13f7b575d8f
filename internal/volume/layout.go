package volume

import "path/filepath"

// The names of a volume directory's entries. Layout is the one place that
// names them; each is written by one package only.
const (
	MetaFile           = "volume.json"      // metadata (volume; atomic replace)
	DataFile           = "data.img"         // the data image (volume)
	JournalFile        = "journal.img"      // the journal image (volume)
	LockFile           = "lock"             // the directory's OFD lock (volume)
	FuseDir            = "fuse"             // the fuseloop frontend's FUSE mount (attach)
	StatusFile         = "status.json"      // live figures of the attach process (attach; replaced once a second)
	SinkFile           = "sink.json"        // sink settings for the next attach (attach; atomic replace)
	SinkResyncFile     = "sink-resync"      // present: the sink needs a baseline copy (attach; empty, durable)
	StageFile          = "csi.json"         // how the CSI node staged and published it (host; atomic replace)
	SinkCredentialsDir = "sink-credentials" // keys of the sink's credentials Secret, a file each (reconciler)
)

// Layout is a volume directory: the paths of its entries.
type Layout string

func (l Layout) join(name string) string { return filepath.Join(string(l), name) }

func (l Layout) Meta() string            { return l.join(MetaFile) }
func (l Layout) Data() string            { return l.join(DataFile) }
func (l Layout) Journal() string         { return l.join(JournalFile) }
func (l Layout) Lock() string            { return l.join(LockFile) }
func (l Layout) Fuse() string            { return l.join(FuseDir) }
func (l Layout) Status() string          { return l.join(StatusFile) }
func (l Layout) Sink() string            { return l.join(SinkFile) }
func (l Layout) SinkResync() string      { return l.join(SinkResyncFile) }
func (l Layout) Stage() string           { return l.join(StageFile) }
func (l Layout) SinkCredentials() string { return l.join(SinkCredentialsDir) }
