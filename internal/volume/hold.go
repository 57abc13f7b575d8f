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

// A pin is a hold of a reader inside this package (a snapshot's copy),
// beside the sink's: the ring keeps the records from pos on until unpin.
// It is dropped, like the sink's, once its records fill the spool share.
type pin struct {
	pos, transid uint64
	dropped      bool
}

// pinApplied pins the journal where the data image holds every record
// before (not yet synced) and returns the pin.
func (v *Volume) pinApplied() *pin {
	v.commitMu.Lock()
	defer v.commitMu.Unlock()
	p := &pin{pos: v.appliedPos, transid: v.appliedID}
	if v.pins == nil {
		v.pins = map[*pin]struct{}{}
	}
	v.pins[p] = struct{}{}
	return p
}

// unpin releases p and reports whether it held until then.
func (v *Volume) unpin(p *pin) bool {
	v.commitMu.Lock()
	defer v.commitMu.Unlock()
	delete(v.pins, p)
	return !p.dropped
}

// held returns where a commit up to durable position pos must stop instead,
// if the hold or a pin stops it; commitMu is held. It drops a hold or pin
// whose records fill the spool.
func (v *Volume) held(pos uint64) (uint64, uint64, bool) {
	spool := v.ring / 8 * SpoolShare
	at, id, held := pos, uint64(0), false
	if v.hold.on && v.hold.pos < pos {
		if pos-v.hold.pos > spool {
			v.hold.on = false
			if v.hold.onDrop != nil {
				v.hold.onDrop()
			}
		} else {
			at, id, held = v.hold.pos, v.hold.transid, true
		}
	}
	for p := range v.pins {
		switch {
		case p.pos >= pos:
		case pos-p.pos > spool:
			p.dropped = true
			delete(v.pins, p)
		case p.pos < at:
			at, id, held = p.pos, p.transid, true
		}
	}
	return at, id, held
}

// Journal returns the volume's journal, for readers of its ring.
func (v *Volume) Journal() *journal.Journal { return v.j }
