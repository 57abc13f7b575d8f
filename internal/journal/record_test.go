package journal

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// field is one documented field of a golden encoding.
type field struct {
	off  int
	hex  string
	name string
}

func checkFields(t *testing.T, b []byte, fields []field) {
	t.Helper()
	for _, f := range fields {
		want, err := hex.DecodeString(strings.ReplaceAll(f.hex, " ", ""))
		if err != nil {
			t.Fatal(err)
		}
		if got := b[f.off : f.off+len(want)]; !bytes.Equal(got, want) {
			t.Errorf("%s at %d: % x, want % x", f.name, f.off, got, want)
		}
	}
}

// golden compares b with testdata/name.hex, the seeds of the fuzzers.
func golden(t *testing.T, name string, b []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".hex")
	if *update {
		if err := os.WriteFile(path, []byte(hex.Dump(b)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := readHexDump(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, want) {
		t.Errorf("%s differs from %s:\n%s", name, path, hex.Dump(b))
	}
}

// readHexDump parses the output of hex.Dump.
func readHexDump(path string) ([]byte, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []byte
	for _, line := range strings.Split(string(text), "\n") {
		if len(line) < 10 {
			continue
		}
		body := line[10:min(len(line), 58)]
		b, err := hex.DecodeString(strings.ReplaceAll(body, " ", ""))
		if err != nil {
			return nil, err
		}
		out = append(out, b...)
	}
	return out, nil
}

// The sub-record types of block records, which package blockrec owns: the
// tests here take them as sample payloads.
const (
	subWrite   = 0x0001
	subDiscard = 0x0002
	subResize  = 0x0004
)

func TestRecordGoldenBytes(t *testing.T) {
	payload := make([]byte, SubSize(8+5))
	body, _ := PutSub(payload, subWrite|SubLast, 8+5)
	binary.LittleEndian.PutUint64(body, 0x1122334455667788)
	copy(body[8:], "hello")
	b := make([]byte, AlignedSize(len(payload)))
	n := EncodeRecord(b, StreamFirstTx|FlagBegin|FlagEnd, 0x0102030405060708, payload)
	if n != 64 {
		t.Fatalf("aligned size %d, want 64", n)
	}
	checkFields(t, b, []field{
		{0, "764a", "begin magic 0x4A76"},
		{2, "00c1", "stream 0x100 | BEGIN | END"},
		{4, "38000000", "size 56 = 16 + 24 (sub-record with fill) + 16"},
		{8, "0807060504030201", "transid"},
		{16, "0140", "sub-record type BLOCKWRITE | LAST"},
		{18, "0000", "sub-record reserved"},
		{20, "15000000", "sub-record size 21 = 8 + 8 + 5"},
		{24, "8877665544332211", "block write offset"},
		{32, "68656c6c6f", "block write data"},
		{37, "000000", "sub-record fill to 8"},
		{40, "0000000000000000", "record fill to 16"},
		{48, "4a76", "end magic 0x764A"},
		{50, "01", "format version"},
		{51, "00", "trailer reserved byte"},
		{52, "465ec281", "crc32c of header and payload (checked with an independent implementation)"},
		{56, "38000000", "size repeated"},
		{60, "00000000", "trailer reserved word"},
	})
	golden(t, "record-blockwrite", b)
	r, err := DecodeRecord(b)
	if err != nil {
		t.Fatal(err)
	}
	if r.Transid != 0x0102030405060708 || r.ID() != StreamFirstTx || !bytes.Equal(r.Payload, payload) {
		t.Fatalf("round trip: %+v", r)
	}
}

func TestEverySubRecordTypeGoldenBytes(t *testing.T) {
	var b []byte
	add := func(typ uint16, body []byte) {
		buf := make([]byte, SubSize(len(body)))
		dst, _ := PutSub(buf, typ, len(body))
		copy(dst, body)
		b = append(b, buf...)
	}
	u64 := func(v ...uint64) []byte {
		var out []byte
		for _, x := range v {
			out = binary.LittleEndian.AppendUint64(out, x)
		}
		return out
	}
	add(SubNested, nil) // patched below: a nested list holding the rest
	add(subWrite, append(u64(4096), 0xAA, 0xBB))
	add(subDiscard, u64(8192, 65536))
	add(SubFlush, nil)
	add(subResize, u64(1<<30))
	add(SubSyncPoint, u64(77, 12345))
	add(SubAnnotate|SubLast, []byte("jvol"))
	// Make the first sub-record a nested container of the others.
	copy(b[4:8], []byte{byte(len(b)), 0, 0, 0})
	b[1] |= (SubNested | SubLast) >> 8
	checkFields(t, b, []field{
		{0, "00c0 0000 78000000", "nested|last container, size 120"},
		{8, "0100 0000 12000000 0010000000000000 aabb 000000000000", "block write 2 bytes at 4096"},
		{32, "0200 0000 18000000 0020000000000000 0000010000000000", "discard 64 KiB at 8192"},
		{56, "0300 0000 08000000", "flush barrier"},
		{64, "0400 0000 10000000 0000004000000000", "resize to 1 GiB"},
		{80, "0500 0000 18000000 4d00000000000000 3930000000000000", "sync point: transid 77, position 12345"},
		{104, "0640 0000 0c000000 6a766f6c 00000000", "annotation, last of its list"},
	})
	golden(t, "subrecords", b)

	var kinds []uint16
	err := ParseSubs(b, func(s Sub) error {
		if s.Type&SubNested == 0 {
			t.Fatalf("outer sub-record %#x is not nested", s.Type)
		}
		return ParseSubs(b[8:], func(s Sub) error {
			kinds = append(kinds, s.Kind())
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []uint16{subWrite, subDiscard, SubFlush, subResize, SubSyncPoint, SubAnnotate}
	if !slices.Equal(kinds, want) {
		t.Fatalf("parsed %v, want %v", kinds, want)
	}
}

func TestPadGoldenBytes(t *testing.T) {
	f, err := NewFIFO(MinFIFOSize, Half, 0x10)
	if err != nil {
		t.Fatal(err)
	}
	r, err := f.Reserve(t.Context(), StreamFirstTx, 100)
	if err != nil {
		t.Fatal(err)
	}
	r.Commit(20) // 52 bytes -> 64; the reserved 144 leave an 80-byte pad
	pad := f.buf[64:144]
	checkFields(t, pad, []field{
		{0, "764a 01c0 50000000 1100000000000000", "pad header: PAD|BEGIN|END, 80 bytes, transid+1"},
		{64, "4a76 01 00", "pad trailer magic and version"},
		{72, "50000000 00000000", "pad size repeated"},
	})
	if _, err := DecodeRecord(pad); err != nil {
		t.Fatalf("pad does not decode: %v", err)
	}
	lone := make([]byte, 16)
	putHeader(lone, Header{Magic: BeginMagic, Stream: StreamPad | FlagBegin | FlagEnd, Size: 16, Transid: 3})
	if rec, err := DecodeRecord(lone); err != nil || !rec.IsPad() {
		t.Fatalf("16-byte pad: %v", err)
	}
	golden(t, "pad", pad)
}

func TestDecodeRecordRejects(t *testing.T) {
	good := make([]byte, AlignedSize(40))
	EncodeRecord(good, StreamFirstTx|FlagBegin|FlagEnd, 9, bytes.Repeat([]byte{7}, 40))
	cases := []struct {
		name   string
		mutate func(b []byte) []byte
		want   error
	}{
		{"a flipped payload bit", func(b []byte) []byte { b[20] ^= 1; return b }, ErrChecksum},
		{"a flipped transid bit", func(b []byte) []byte { b[9] ^= 0x80; return b }, ErrChecksum},
		{"a record still being written", func(b []byte) []byte { b[0], b[1] = 0xFF, 0xFF; return b }, ErrIncomplete},
		{"zeros", func(b []byte) []byte { clear(b); return b }, ErrMagic},
		{"a size below the minimum", func(b []byte) []byte { b[4] = 20; return b }, ErrSize},
		{"a size beyond the maximum", func(b []byte) []byte { b[7] = 0x7F; return b }, ErrSize},
		{"a size past the buffer", func(b []byte) []byte { return b[:48] }, ErrShort},
		{"a wrong end magic", func(b []byte) []byte { b[len(b)-16] ^= 1; return b }, ErrTrailer},
		{"a wrong version", func(b []byte) []byte { b[len(b)-14] = 2; return b }, ErrTrailer},
		{"a trailer size that disagrees", func(b []byte) []byte { b[len(b)-8]++; return b }, ErrTrailer},
		{"a 16-byte record that is not a pad", func(b []byte) []byte { b[4] = 16; return b }, ErrSize},
		{"a header shorter than 16 bytes", func(b []byte) []byte { return b[:10] }, ErrShort},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := c.mutate(append([]byte(nil), good...))
			if _, err := DecodeRecord(b); !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}

func TestParseSubsRejects(t *testing.T) {
	ok := make([]byte, SubSize(16))
	PutSub(ok, subDiscard|SubLast, 16)
	cases := []struct {
		name string
		b    []byte
		want error
	}{
		{"a list without a last sub-record", func() []byte { b := append([]byte(nil), ok...); b[1] = 0; return b }(), ErrSubNoLast},
		{"a size past the list", func() []byte { b := append([]byte(nil), ok...); b[4] = 200; return b }(), ErrSubSize},
		{"a size below the header", func() []byte { b := append([]byte(nil), ok...); b[4] = 4; return b }(), ErrSubSize},
		{"bytes after the last", append(append([]byte(nil), ok...), 1, 0, 0, 0, 0, 0, 0, 0), ErrSubFill},
		{"an empty list", nil, ErrSubNoLast},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := ParseSubs(c.b, func(Sub) error { return nil }); !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}

func TestSuperblockGoldenBytesAndTornCopy(t *testing.T) {
	sb := Superblock{
		Version: FormatVersion, BlockSize: SuperblockSize, RingOffset: RingOffset, RingSize: 64 << 20,
		Sequence: 7, CkptPos: 0x1000, CkptTransid: 0x2000, TornWindow: 8 << 20, Flags: FlagClean, CleanEnd: 0x3000,
		UUID: [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
	}
	b := make([]byte, SuperblockSize)
	sb.Encode(b)
	checkFields(t, b, []field{
		{0, "4a564f4c4a524e4c", "magic JVOLJRNL"},
		{8, "01000000", "version"},
		{12, "00100000", "block size"},
		{16, "0102030405060708090a0b0c0d0e0f10", "uuid"},
		{32, "0020000000000000", "ring offset 8192"},
		{40, "0000000400000000", "ring size 64 MiB"},
		{48, "0700000000000000", "sequence"},
		{56, "0010000000000000", "checkpoint position"},
		{64, "0020000000000000", "checkpoint transid"},
		{72, "00008000", "torn window 8 MiB"},
		{76, "01000000", "flags: clean"},
		{80, "0030000000000000", "clean end"},
	})
	golden(t, "superblock", b[:128])
	got, err := DecodeSuperblock(b)
	if err != nil || got != sb {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	b[60] ^= 1
	if _, err := DecodeSuperblock(b); !errors.Is(err, ErrSuperblock) {
		t.Fatalf("torn superblock accepted: %v", err)
	}
}
