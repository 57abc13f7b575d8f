package blockrec

import (
	"encoding/hex"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/jvol-io/jvol/internal/journal"
)

func write(off uint64, n int) []byte {
	b := make([]byte, WriteSize(n))
	PutWrite(b, off, make([]byte, n))
	return b
}

func discard(off, n uint64) []byte {
	b := make([]byte, DiscardSize)
	PutDiscard(b, off, n)
	return b
}

func resize(size uint64) []byte {
	b := make([]byte, ResizeSize)
	PutResize(b, size)
	return b
}

// sub encodes a sub-record of type typ (flags included) with body.
func sub(typ uint16, body []byte) []byte {
	b := make([]byte, journal.SubSize(len(body)))
	dst, _ := journal.PutSub(b, typ, len(body))
	copy(dst, body)
	return b
}

// list joins sub-records, each encoded as the last of its list, into one
// list: only the last keeps journal.SubLast.
func list(subs ...[]byte) []byte {
	var b []byte
	for i, s := range subs {
		if i < len(subs)-1 {
			s[1] &^= journal.SubLast >> 8
		}
		b = append(b, s...)
	}
	return b
}

type boundsCase struct {
	name    string
	payload []byte
	size    uint64
	want    error  // nil: accepted
	after   uint64 // the size after an accepted list
}

// boundsCases are the decoder's checks, one case each side of every bound;
// they also seed the fuzzer.
func boundsCases() []boundsCase {
	const mib = 1 << 20
	return []boundsCase{
		{"a write inside the volume is accepted", write(4096, 4096), mib, nil, mib},
		{"a write of one byte at an odd offset is accepted", write(4097, 1), mib, nil, mib},
		{"a write that ends at the end of the volume is accepted", write(mib-4096, 4096), mib, nil, mib},
		{"a write one byte past the end of the volume is refused", write(mib-4095, 4096), mib, ErrRange, 0},
		{"a write that starts past the end of the volume is refused", write(2*mib, 1), mib, ErrRange, 0},
		{"a write whose end overflows 64 bits is refused", write(math.MaxUint64-1, 4), math.MaxUint64, ErrRange, 0},
		{"an empty write is refused", write(0, 0), mib, ErrEmpty, 0},
		{"a write body shorter than its offset is refused", sub(uint16(Write)|journal.SubLast, make([]byte, 7)), mib, journal.ErrSubBody, 0},
		{"a discard inside the volume is accepted", discard(0, mib), mib, nil, mib},
		{"a discard one byte past the end of the volume is refused", discard(1, mib), mib, ErrRange, 0},
		{"a discard whose end overflows 64 bits is refused", discard(4096, math.MaxUint64-4095), math.MaxUint64, ErrRange, 0},
		{"an empty discard is refused", discard(4096, 0), mib, ErrEmpty, 0},
		{"a discard body of 8 bytes is refused", sub(uint16(Discard)|journal.SubLast, make([]byte, 8)), mib, journal.ErrSubBody, 0},
		{"a discard body of 24 bytes is refused", sub(uint16(Discard)|journal.SubLast, make([]byte, 24)), mib, journal.ErrSubBody, 0},
		{"a resize to a larger multiple of 4096 is accepted", resize(2 * mib), mib, nil, 2 * mib},
		{"a resize below the size is accepted and changes nothing", resize(4096), mib, nil, mib},
		{"a resize to the largest size is accepted", resize(MaxSize), mib, nil, MaxSize},
		{"a resize above the largest size is refused", resize(MaxSize + 4096), mib, ErrResize, 0},
		{"a resize to a size not a multiple of 4096 is refused", resize(2*mib + 512), mib, ErrResize, 0},
		{"a resize body of 16 bytes is refused", sub(uint16(Resize)|journal.SubLast, make([]byte, 16)), mib, journal.ErrSubBody, 0},
		{"a write after a resize in the same list may use the new size", list(resize(2*mib), write(mib, 4096)), mib, nil, 2 * mib},
		{"a write before a resize in the same list may not use the new size", list(write(mib, 4096), resize(2*mib)), mib, ErrRange, 0},
		{"a list refused after a resize keeps the size it had", list(resize(2*mib), discard(4*mib, 4096)), mib, ErrRange, 0},
		{"a bad record after a good one refuses the whole list", list(write(0, 4096), discard(mib, 4096)), mib, ErrRange, 0},
		{"a block record flagged nested is refused", sub(uint16(Write)|journal.SubNested|journal.SubLast, write(0, 8)), mib, ErrNested, 0},
		{"sub-records of other types are left alone", list(sub(journal.SubFlush, nil), sub(journal.SubAnnotate|journal.SubLast, []byte("x"))), mib, nil, mib},
		{"a list without a last sub-record is refused", list(write(0, 1), nil /* the write is not the last */), mib, journal.ErrSubNoLast, 0},
	}
}

func TestDecodeBounds(t *testing.T) {
	for _, c := range boundsCases() {
		t.Run(c.name, func(t *testing.T) {
			calls := 0
			after, err := Decode(c.payload, c.size, func(Op) error { calls++; return nil })
			switch {
			case c.want == nil && err != nil:
				t.Fatalf("refused: %v", err)
			case c.want != nil && !errors.Is(err, c.want):
				t.Fatalf("got %v, want %v", err, c.want)
			case c.want != nil && calls > 0:
				t.Fatalf("refused with %v, yet handed out %d records", err, calls)
			case c.want != nil && after != c.size:
				t.Fatalf("refused, yet the size moved from %d to %d", c.size, after)
			case c.want == nil && after != c.after:
				t.Fatalf("size after the list %d, want %d", after, c.after)
			}
		})
	}
}

func TestDecodeHandsOutEveryBlockRecordInOrder(t *testing.T) {
	data := []byte("hello")
	w := make([]byte, WriteSize(len(data)))
	PutWrite(w, 8192, data)
	payload := list(discard(0, 4096), sub(journal.SubFlush, nil), resize(1<<30), w)
	var got []string
	after, err := Decode(payload, 1<<20, func(op Op) error {
		got = append(got, op.String())
		if op.Kind == Write && string(op.Data) != "hello" {
			t.Errorf("write data %q", op.Data)
		}
		return nil
	})
	want := "discard(off=0,len=4096) resize(1073741824) write(off=8192,len=5)"
	if err != nil || after != 1<<30 || strings.Join(got, " ") != want {
		t.Fatalf("got %q, size %d, %v; want %q, size %d", got, after, err, want, 1<<30)
	}
}

func TestDecodeStopsAtTheFirstErrorOfFn(t *testing.T) {
	stop := errors.New("stop")
	calls := 0
	_, err := Decode(list(write(0, 1), write(1, 1)), 4096, func(Op) error { calls++; return stop })
	if err != stop || calls != 1 {
		t.Fatalf("got %v after %d calls, want fn's error after 1", err, calls)
	}
}

func TestEncodingGoldenBytes(t *testing.T) {
	w := make([]byte, WriteSize(5))
	PutWrite(w, 0x1122334455667788, []byte("hello"))
	for _, c := range []struct {
		name string
		b    []byte
		want string
	}{
		{"write of 5 bytes", w, "0140 0000 15000000 8877665544332211 68656c6c6f 000000"},
		{"discard of 64 KiB at 8192", discard(8192, 65536), "0240 0000 18000000 0020000000000000 0000010000000000"},
		{"resize to 1 GiB", resize(1 << 30), "0440 0000 10000000 0000004000000000"},
	} {
		if got, want := hex.EncodeToString(c.b), strings.ReplaceAll(c.want, " ", ""); got != want {
			t.Errorf("%s: %s, want %s", c.name, got, want)
		}
	}
}

func TestFormatSub(t *testing.T) {
	for _, c := range []struct {
		sub  []byte
		want string
	}{
		{write(4096, 5), "write(off=4096,len=5)"},
		{discard(4096, 8192), "discard(off=4096,len=8192)"},
		{resize(1 << 30), "resize(1073741824)"},
		{sub(uint16(Discard)|journal.SubLast, make([]byte, 8)), "discard(sub-record body has the wrong length)"},
		{sub(uint16(Resize)|journal.SubLast, []byte{1, 0, 0, 0, 0, 0, 0, 0}), "resize(bad resize: to 1 bytes, not a multiple of 4096 up to 1125899906842624)"},
		{sub(journal.SubFlush|journal.SubLast, nil), ""},
	} {
		var got string
		journal.ParseSubs(c.sub, func(s journal.Sub) error {
			got, _ = FormatSub(s)
			return nil
		})
		if got != c.want {
			t.Errorf("got %q, want %q", got, c.want)
		}
	}
}
