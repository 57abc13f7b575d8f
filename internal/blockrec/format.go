package blockrec

import (
	"fmt"

	"github.com/jvol-io/jvol/internal/journal"
)

// String renders op as the journal dumper shows it: write(off=O,len=N),
// discard(off=O,len=N) or resize(SIZE).
func (op Op) String() string {
	if op.Kind == Resize {
		return fmt.Sprintf("resize(%d)", op.Size)
	}
	return fmt.Sprintf("%s(off=%d,len=%d)", op.Kind, op.Off, op.Len)
}

// FormatSub renders sub-record s if it is a block record, or why it does
// not decode; ok is false if it is none. It is what journal.FormatRecord
// takes to show block records.
func FormatSub(s journal.Sub) (text string, ok bool) {
	op, ok, err := Parse(s)
	switch {
	case !ok:
		return "", false
	case err != nil:
		return fmt.Sprintf("%s(%v)", Kind(s.Kind()), err), true
	}
	return op.String(), true
}
