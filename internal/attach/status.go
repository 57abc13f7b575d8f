package attach

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/jvol-io/jvol/internal/hist"
	"github.com/jvol-io/jvol/internal/journal"
	"github.com/jvol-io/jvol/internal/vfs"
	"github.com/jvol-io/jvol/internal/volume"
)

// Status is what `jvol status` shows.
type Status struct {
	Volume   string `json:"volume"`
	Attached bool   `json:"attached"`
	PID      int    `json:"pid,omitempty"`
	// ServerPID is the process serving the device's requests now (PID is
	// the attach command's, its keeper if it has one); ServerRestarts
	// counts handovers and restarts of the server since the attach.
	ServerPID      int    `json:"serverPid,omitempty"`
	ServerRestarts int    `json:"serverRestarts"`
	Device         string `json:"device,omitempty"`
	Mount          string `json:"mount,omitempty"`
	Size           int64  `json:"size"`

	// Provisioning is thick or thin (volume.Provisioning). Allocated is
	// the bytes of disk the data image holds, Available what its file
	// system can still give. SpaceLow: a thin volume may need more than
	// that; SpaceErrors counts writes and grows refused for want of space.
	Provisioning volume.Provisioning `json:"provisioning"`
	Allocated    int64               `json:"allocated"`
	Available    int64               `json:"available"`
	SpaceLow     bool                `json:"spaceLow,omitempty"`
	SpaceErrors  uint64              `json:"spaceErrors"`

	Transid           uint64 `json:"transid"`      // last assigned
	AckedTransid      uint64 `json:"ackedTransid"` // last durable in the journal
	CheckpointTransid uint64 `json:"checkpointTransid"`

	BytesWritten uint64 `json:"bytesWritten"`
	Flushes      uint64 `json:"flushes"`
	Syncs        uint64 `json:"syncs"`
	Commits      uint64 `json:"commits"`

	// Requests since the server started, and how long flushes and
	// commits took.
	Reads        uint64        `json:"reads"`
	ReadBytes    uint64        `json:"readBytes"`
	Writes       uint64        `json:"writes"`
	Discards     uint64        `json:"discards"`
	DiscardBytes uint64        `json:"discardBytes"`
	FlushTimes   hist.Snapshot `json:"flushTimes"`
	CommitTimes  hist.Snapshot `json:"commitTimes"`

	FIFOSize   int    `json:"fifoSize"`
	FIFOUsed   uint64 `json:"fifoUsed"`
	FIFOStalls uint64 `json:"fifoStalls"`

	JournalSize       uint64 `json:"journalSize"` // of the ring
	JournalUsed       uint64 `json:"journalUsed"`
	JournalStalls     uint64 `json:"journalStalls"`
	CommittedPosition uint64 `json:"committedPosition"`

	// The sink, if the volume streams to one.
	Sink *SinkStatus `json:"sink,omitempty"`

	Updated string `json:"updated"`
	// Stale: the volume's server has not refreshed these figures for
	// StaleAfter, though it holds the volume: its status file cannot be
	// written (a full file system?), or it hangs. They are as of Updated.
	Stale bool `json:"stale,omitempty"`
}

// StaleAfter is how old a held volume's status may be before ReadStatus
// calls it stale: its server refreshes it every second.
const StaleAfter = 5 * time.Second

// SinkStatus is the link to the sink.
type SinkStatus struct {
	URL    string         `json:"url"`
	Duplex journal.Duplex `json:"duplex"`
	// State is Connected, CatchingUp, OutOfSync or Disconnected.
	State string `json:"state"`
	// AckedTransid is the last id the receiver has (acknowledged in full
	// duplex, sent in half).
	AckedTransid uint64  `json:"ackedTransid"`
	LagBytes     uint64  `json:"lagBytes"`
	LagSeconds   float64 `json:"lagSeconds"`
	LastAck      string  `json:"lastAck,omitempty"`
	LastError    string  `json:"lastError,omitempty"`
	// Connects counts the handshakes with the receiver, Baselines the
	// full copies begun, since the server started.
	Connects  uint64 `json:"connects"`
	Baselines uint64 `json:"baselines"`
}

// Status returns the attachment's figures.
func (a *Attachment) Status() Status {
	s := a.dir.Volume.Stats()
	j := s.Journal
	st := Status{
		Volume: a.Name(), Attached: true, PID: a.pid, ServerPID: os.Getpid(), ServerRestarts: a.restarts, Device: a.Device, Mount: a.MountPath, Size: s.Size,
		Provisioning: s.Space.Provisioning, Allocated: s.Space.Allocated, Available: s.Space.Available, SpaceLow: s.Space.Low, SpaceErrors: s.Space.Errors,
		Transid: j.LastTransid, AckedTransid: j.AckedTransid, CheckpointTransid: j.CheckpointTransid,
		BytesWritten: j.BytesWritten, Flushes: j.Flushes, Syncs: j.Syncs, Commits: s.Commits,
		Reads: s.Reads, ReadBytes: s.ReadBytes, Writes: s.Writes, Discards: s.Discards, DiscardBytes: s.DiscardBytes,
		FlushTimes: s.FlushTimes, CommitTimes: s.CommitTimes,
		FIFOSize: j.FIFO.Size, FIFOUsed: j.FIFO.Used, FIFOStalls: j.FIFO.Stalls,
		JournalSize: j.RingSize, JournalUsed: j.Used, JournalStalls: j.RingStalls, CommittedPosition: j.Checkpoint,
		Updated: time.Now().UTC().Format(time.RFC3339Nano),
	}
	if a.sender != nil {
		ss := a.sender.Stats()
		st.Sink = &SinkStatus{URL: a.sink.URL, Duplex: a.sink.Duplex, State: ss.State, AckedTransid: ss.AckedTransid,
			LagBytes: ss.LagBytes, LagSeconds: ss.LagSeconds, LastError: ss.LastError, Connects: ss.Connects, Baselines: ss.Baselines}
		if !ss.LastAck.IsZero() {
			st.Sink.LastAck = ss.LastAck.UTC().Format(time.RFC3339Nano)
		}
		if a.sink.Duplex == journal.Full {
			st.AckedTransid = ss.AckedTransid // durable at the sink
		}
	}
	return st
}

// PublishStatus writes the status file.
func (a *Attachment) PublishStatus() error {
	b, err := json.MarshalIndent(a.Status(), "", "  ")
	if err != nil {
		return err
	}
	// Once a second: readers need it whole, not durable.
	return vfs.ReplaceFile(vfs.OS, volume.Layout(a.dir.Path).Status(), append(b, '\n'))
}

// ReadStatus returns the status of the volume in dir: what its attach
// process publishes if one holds it, otherwise what is on disk.
func ReadStatus(dir string) (Status, error) {
	meta, err := volume.ReadMeta(dir)
	if err != nil {
		return Status{}, err
	}
	if held, err := volume.IsLocked(dir); err != nil {
		return Status{}, err
	} else if held {
		var s Status
		b, err := os.ReadFile(volume.Layout(dir).Status())
		if err != nil {
			return Status{}, fmt.Errorf("volume %s is attached but has published no status yet: %w", dir, err)
		}
		if err := json.Unmarshal(b, &s); err != nil {
			return Status{}, fmt.Errorf("status of %s: %w", dir, err)
		}
		updated, err := time.Parse(time.RFC3339Nano, s.Updated)
		s.Stale = err != nil || time.Since(updated) > StaleAfter
		return s, nil
	}
	f, err := vfs.OpenReadOnly(volume.Layout(dir).Journal())
	if err != nil {
		return Status{}, err
	}
	defer f.Close()
	sb, rec, err := journal.Dump(f, func(uint64, journal.Record) error { return nil })
	if err != nil {
		return Status{}, err
	}
	st := Status{
		Volume: meta.Name, Size: meta.Size, Provisioning: meta.Provisioned(),
		Transid: rec.LastTransid, AckedTransid: rec.LastTransid,
		CheckpointTransid: sb.CkptTransid, JournalSize: sb.RingSize, JournalUsed: rec.End - rec.Start,
		CommittedPosition: sb.CkptPos, FIFOSize: meta.FIFOSize,
	}
	var fs unix.Stat_t
	if unix.Stat(volume.Layout(dir).Data(), &fs) == nil {
		st.Allocated = fs.Blocks * 512
	}
	var sfs unix.Statfs_t
	if unix.Statfs(dir, &sfs) == nil {
		st.Available = int64(sfs.Bavail) * sfs.Bsize
	}
	return st, nil
}

// WriteText prints the status as aligned "key: value" lines.
func (s Status) WriteText(w io.Writer) {
	line := func(k string, v any) { fmt.Fprintf(w, "%-20s %v\n", k+":", v) }
	line("volume", s.Volume)
	if s.Stale {
		line("STALE", fmt.Sprintf("not refreshed since %s: the status file cannot be written (is its file system full?), or its server hangs", s.Updated))
	}
	line("attached", s.Attached)
	if s.Attached {
		line("device", s.Device)
		if s.Mount != "" {
			line("mount", s.Mount)
		}
		line("pid", s.PID)
		line("server", fmt.Sprintf("pid %d, %d restarts", s.ServerPID, s.ServerRestarts))
	}
	line("size", s.Size)
	line("provisioning", s.Provisioning)
	line("data image holds", fmt.Sprintf("%d bytes; its file system has %d free", s.Allocated, s.Available))
	if s.SpaceLow {
		line("LOW ON SPACE", "this thin volume may need more than its file system has free; a write it cannot store fails")
	}
	if s.SpaceErrors > 0 {
		line("space errors", fmt.Sprintf("%d writes or grows refused for want of space", s.SpaceErrors))
	}
	line("transid", s.Transid)
	line("acked transid", s.AckedTransid)
	line("checkpoint transid", s.CheckpointTransid)
	line("journal used", fmt.Sprintf("%d of %d", s.JournalUsed, s.JournalSize))
	line("committed position", s.CommittedPosition)
	if s.Attached {
		line("fifo used", fmt.Sprintf("%d of %d", s.FIFOUsed, s.FIFOSize))
		line("bytes written", s.BytesWritten)
		line("flushes", s.Flushes)
		line("syncs", s.Syncs)
		line("commits", s.Commits)
		line("fifo stalls", s.FIFOStalls)
		line("journal stalls", s.JournalStalls)
		if k := s.Sink; k != nil {
			line("sink", fmt.Sprintf("%s (%s duplex)", k.URL, k.Duplex))
			line("sink state", k.State)
			line("sink acked transid", k.AckedTransid)
			line("sink lag", fmt.Sprintf("%d bytes, %.1f s", k.LagBytes, k.LagSeconds))
			if k.LastAck != "" {
				line("sink last ack", k.LastAck)
			}
			if k.LastError != "" {
				line("sink last error", k.LastError)
			}
		}
		line("updated", s.Updated)
	}
}
