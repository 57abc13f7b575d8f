package blockrec

import (
	"bytes"
	"testing"

	"github.com/jvol-io/jvol/internal/journal"
)

// encode encodes op as the last of its list.
func encode(op Op) []byte {
	switch op.Kind {
	case Write:
		b := make([]byte, WriteSize(len(op.Data)))
		PutWrite(b, op.Off, op.Data)
		return b
	case Discard:
		return discard(op.Off, op.Len)
	}
	return resize(op.Size)
}

// FuzzDecode feeds sub-record lists and volume sizes to Decode (seeded from
// testdata/fuzz and the bounds table): whatever it accepts is inside the
// volume and encodes back to the bytes it came from; whatever it refuses
// changes nothing.
func FuzzDecode(f *testing.F) {
	for _, c := range boundsCases() {
		f.Add(c.payload, c.size)
	}
	f.Fuzz(func(t *testing.T, payload []byte, size uint64) {
		var ops []Op
		after, err := Decode(payload, size, func(op Op) error {
			ops = append(ops, op)
			return nil
		})
		if err != nil {
			if len(ops) > 0 || after != size {
				t.Fatalf("refused (%v), yet handed out %d records and moved the size to %d", err, len(ops), after)
			}
			return
		}
		end := size
		for _, op := range ops {
			switch op.Kind {
			case Resize:
				if op.Size%SizeAlign != 0 || op.Size > MaxSize {
					t.Fatalf("accepted a resize to %d", op.Size)
				}
				end = max(end, op.Size)
			case Write, Discard:
				if op.Len == 0 || op.Off > end || op.Len > end-op.Off {
					t.Fatalf("accepted %v in a volume of %d bytes", op, end)
				}
				if op.Kind == Write && uint64(len(op.Data)) != op.Len {
					t.Fatalf("%v with %d bytes of data", op, len(op.Data))
				}
			default:
				t.Fatalf("handed out a record of kind %v", op.Kind)
			}
		}
		if after != end {
			t.Fatalf("size after the list %d, want %d", after, end)
		}
		// Round trip: each block record encodes back to its bytes, but for
		// the last flag (the encoders set it) and the zero fill.
		i := 0
		journal.ParseSubs(payload, func(s journal.Sub) error {
			if _, ok, _ := Parse(s); !ok {
				return nil
			}
			b := encode(ops[i])
			i++
			n := journal.SubHeaderSize + len(s.Body)
			b[1] = b[1]&^(journal.SubLast>>8) | payload[s.Start+1]&(journal.SubLast>>8)
			if !bytes.Equal(b[:n], payload[s.Start:s.Start+n]) {
				t.Fatalf("%v encodes to %x, decoded from %x", ops[i-1], b[:n], payload[s.Start:s.Start+n])
			}
			return nil
		})
		if i != len(ops) {
			t.Fatalf("%d block records handed out, %d in the list", len(ops), i)
		}
	})
}
