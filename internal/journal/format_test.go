package journal

import (
	"encoding/binary"
	"testing"
)

func TestFormatRecord(t *testing.T) {
	sub := func(typ uint16, body []byte) []byte {
		b := make([]byte, SubSize(len(body)))
		dst, _ := PutSub(b, typ, len(body))
		copy(dst, body)
		return b
	}
	join := func(subs ...[]byte) []byte {
		var b []byte
		for _, s := range subs {
			b = append(b, s...)
		}
		return b
	}
	syncPoint := binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, 77), 12345)
	known := join(sub(SubFlush, nil), sub(SubSyncPoint, syncPoint), sub(SubAnnotate|SubLast, []byte("jvol")))
	record := func(stream uint16, payload []byte) Record {
		return Record{Header: Header{Magic: BeginMagic, Stream: stream, Size: uint32(Overhead + len(payload)), Transid: 100}, Payload: payload}
	}
	// other renders type 0x30 as the caller's own.
	other := func(s Sub) (string, bool) { return "other", s.Kind() == 0x30 }
	for _, c := range []struct {
		name string
		r    Record
		sub  func(Sub) (string, bool)
		want string
	}{
		{"every type the journal knows is shown by name", record(StreamFirstTx|FlagBegin|FlagEnd, known), nil,
			`pos=64 transid=100 stream=0x100 flags=BEGIN|END size=80 flush,syncpoint(transid=77,pos=12345),annotate("jvol")`},
		{"a pad is shown as a pad", Record{Header: Header{Magic: BeginMagic, Stream: StreamPad | FlagBegin | FlagEnd, Size: 48, Transid: 100}}, nil,
			"pos=64 transid=100 stream=0x1 flags=BEGIN|END size=48 pad"},
		{"a record without flags shows a dash", record(StreamFirstTx, sub(SubFlush|SubLast, nil)), nil,
			"pos=64 transid=100 stream=0x100 flags=- size=40 flush"},
		{"an aborted record says so", record(StreamFirstTx|FlagEnd|FlagAborted, sub(SubFlush|SubLast, nil)), nil,
			"pos=64 transid=100 stream=0x100 flags=END|ABORTED size=40 flush"},
		{"a type the journal does not know goes to sub", record(StreamFirstTx, sub(0x30|SubLast, []byte("xyz"))), other,
			"pos=64 transid=100 stream=0x100 flags=- size=48 other"},
		{"a type neither knows shows its number and length", record(StreamFirstTx, sub(0x31|SubLast, []byte("xyz"))), other,
			"pos=64 transid=100 stream=0x100 flags=- size=48 type0x31(len=3)"},
		{"a nested list is shown in braces after its sub-record", record(StreamFirstTx, sub(0x30|SubNested|SubLast, known)), other,
			`pos=64 transid=100 stream=0x100 flags=- size=88 other{flush,syncpoint(transid=77,pos=12345),annotate("jvol")}`},
		{"a body that does not decode is shown as such", record(StreamFirstTx, sub(SubSyncPoint|SubLast, syncPoint[:8])), nil,
			"pos=64 transid=100 stream=0x100 flags=- size=48 syncpoint(sub-record body has the wrong length)"},
		{"a payload that does not parse says why after what did", record(StreamFirstTx, sub(SubFlush, nil)), nil,
			"pos=64 transid=100 stream=0x100 flags=- size=40 flush (payload: sub-record list does not end with a last sub-record)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := FormatRecord(64, c.r, c.sub); got != c.want {
				t.Fatalf("got  %s\nwant %s", got, c.want)
			}
		})
	}
}
