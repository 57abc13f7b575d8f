package journal

import (
	"bytes"
	"encoding/binary"
	"path/filepath"
	"testing"

	"github.com/jvol-io/jvol/internal/vfs/faultfs"
)

// seed adds every golden encoding in testdata to the corpus.
func seed(f *testing.F) {
	paths, _ := filepath.Glob(filepath.Join("testdata", "*.hex"))
	if len(paths) == 0 {
		f.Fatal("no seeds in testdata")
	}
	for _, p := range paths {
		b, err := readHexDump(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

func FuzzDecodeRecord(f *testing.F) {
	seed(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeRecord(b)
		if err != nil || r.Size == HeaderSize {
			return
		}
		n := r.Aligned()
		crc := binary.LittleEndian.Uint32(b[n-12:])
		covered := r.Payload
		if recordCRC(b, covered) != crc {
			t.Fatalf("accepted a record whose checksum is wrong")
		}
		if r.IsPad() {
			return
		}
		out := make([]byte, AlignedSize(len(r.Payload)))
		EncodeRecord(out, r.Stream, r.Transid, r.Payload)
		// The encoder writes zero fill; the decoder need not insist on it.
		if !bytes.Equal(out[:HeaderSize+len(r.Payload)], b[:HeaderSize+len(r.Payload)]) || !bytes.Equal(out[n-TrailerSize:], b[n-TrailerSize:n]) {
			t.Fatalf("re-encoding differs")
		}
	})
}

func FuzzParseSubs(f *testing.F) {
	seed(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = ParseSubs(b, func(s Sub) error {
			if s.Start < 0 || s.Start+SubHeaderSize+len(s.Body) > len(b) {
				t.Fatalf("sub-record outside its list")
			}
			s.Uint64s(2)
			if s.Type&SubNested != 0 {
				return ParseSubs(s.Body, func(Sub) error { return nil })
			}
			return nil
		})
	})
}

func FuzzDecodeSuperblock(f *testing.F) {
	seed(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < SuperblockSize {
			b = append(b, make([]byte, SuperblockSize-len(b))...)
		}
		sb, err := DecodeSuperblock(b)
		if err != nil {
			return
		}
		out := make([]byte, SuperblockSize)
		sb.Encode(out)
		if !bytes.Equal(out[:superCRCOffset+4], b[:superCRCOffset+4]) {
			t.Fatalf("re-encoding differs")
		}
	})
}

// FuzzScan recovers from arbitrary ring contents behind a valid superblock:
// it must never panic or loop, and the records it returns follow one another
// without overlapping, inside one lap of the ring.
func FuzzScan(f *testing.F) {
	seed(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		img := faultfs.New(RingOffset + MinRingSize)
		if _, err := Format(img); err != nil {
			t.Fatal(err)
		}
		img.Mutate(RingOffset, func(ring []byte) { copy(ring, b) })
		var first, next uint64
		n := 0
		Dump(img, func(pos uint64, r Record) error {
			if n > 0 && pos < next {
				t.Fatalf("record at %d overlaps the one ending at %d", pos, next)
			}
			if n == 0 {
				first = pos
			}
			n++
			next = pos + uint64(r.Aligned())
			if next-first > MinRingSize {
				t.Fatalf("records span %d bytes, more than the ring", next-first)
			}
			return nil
		})
	})
}
