package volume

import "github.com/jvol-io/jvol/internal/journal"

// A hold keeps journal records that a reader of the journal (the sink's
// sender) still needs: commits checkpoint no further than the hold, so the
// ring space of those records is not reused. The journal is the spool of
// the stream beyond the memory FIFO.
//
// A hold never stops writers for long: once the records it keeps fill
// SpoolShare of the ring, the next commit drops it and calls the holder's
// onDrop; the holder has lost its place in the stream and must start over
// (a baseline copy). Writers would otherwise stall for as long as a remote
// machine is away.
type hold struct {
	on           bool
	pos, transid uint64
	onDrop       func()
}

// SpoolShare is the part of the ring, in eighths, that held records may
// fill before the hold is dropped.
const SpoolShare = 6

// Hold pins the journal at its checkpoint, or keeps the hold already set
// (by Config.Hold or an earlier Hold), and returns the position and the
// last record id before it: every record after that id is in the ring from
// that position on, until MoveHold or Release. onDrop (which must not
// block) is called if the hold is dropped because the spool filled.
func (v *Volume) Hold(onDrop func()) (pos, transid uint64) {
	v.commitMu.Lock()
	defer v.commitMu.Unlock()
	if !v.hold.on {
		st := v.j.Stats()
		v.hold = hold{on: true, pos: st.Checkpoint, transid: st.CheckpointTransid}
	}
	v.hold.onDrop = onDrop
	return v.hold.pos, v.hold.transid
}

// MoveHold moves the hold forward to ring position pos, after the record
// with id transid (the last one before pos that is not a pad). A position
// behind the hold, or a hold that was dropped, is left alone.
func (v *Volume) MoveHold(pos, transid uint64) {
	v.commitMu.Lock()
	defer v.commitMu.Unlock()
	if v.hold.on && pos > v.hold.pos {
		v.hold.pos, v.hold.transid = pos, transid
	}
}

// Release drops the hold.
func (v *Volume) Release() {
	v.commitMu.Lock()
	defer v.commitMu.Unlock()
	v.hold.on = false
}

// held returns where a commit up to durable position pos must stop instead,
// if the hold stops it; commitMu is held. It drops a hold whose records
// fill the spool.
func (v *Volume) held(pos uint64) (uint64, uint64, bool) {
	if !v.hold.on || v.hold.pos >= pos {
		return 0, 0, false
	}
	if pos-v.hold.pos > v.ring/8*SpoolShare {
		v.hold.on = false
		if v.hold.onDrop != nil {
			v.hold.onDrop()
		}
		return 0, 0, false
	}
	return v.hold.pos, v.hold.transid, true
}

// Journal returns the volume's journal, for readers of its ring.
func (v *Volume) Journal() *journal.Journal { return v.j }
