package sink

import (
	"bytes"
	"testing"
)

func FuzzDecodeHello(f *testing.F) {
	h := Hello{Full: true, Size: 1 << 30, Oldest: 5, Newest: 9, Volume: "pvc-1", Token: []byte("secret")}
	f.Add(h.Encode())
	f.Add([]byte("JVSK"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := DecodeHello(b)
		if err != nil {
			return
		}
		if !ValidVolumeID(h.Volume) || len(h.Token) > MaxToken || h.Oldest > h.Newest || h.Size%4096 != 0 {
			t.Fatalf("accepted a bad hello: %+v", h)
		}
		if again := h.Encode(); !bytes.Equal(again, b) {
			t.Fatalf("hello does not round-trip: %x vs %x", again, b)
		}
	})
}

func FuzzDecodeWelcome(f *testing.F) {
	w := Welcome{Mode: ModeResume, After: 77, MaxRecord: MaxWireRecord}
	f.Add(w.Encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		w, err := DecodeWelcome(b)
		if err != nil {
			return
		}
		if w.MaxRecord > MaxWireRecord || w.Mode != ModeResume && w.Mode != ModeBaseline {
			t.Fatalf("accepted a bad welcome: %+v", w)
		}
		if again := w.Encode(); !bytes.Equal(again, b) {
			t.Fatalf("welcome does not round-trip")
		}
	})
}

func FuzzDecodeAck(f *testing.F) {
	f.Add(appendRecord(nil, StreamAck, 12345, nil))
	f.Add(appendRecord(nil, StreamAck, 1, []byte("x")))
	f.Fuzz(func(t *testing.T, b []byte) {
		id, err := DecodeAck(b)
		if err != nil {
			return
		}
		if again := appendRecord(nil, StreamAck, id, nil); !bytes.Equal(again, b) {
			t.Fatalf("ack %d does not round-trip: %x vs %x", id, again, b)
		}
	})
}

func TestProtoRoundTrip(t *testing.T) {
	h := Hello{Size: 4096, Epoch: [16]byte{1, 2}, Oldest: 1, Newest: 2, Volume: "a.b-c"}
	got, err := DecodeHello(h.Encode())
	if err != nil || got.Volume != h.Volume || got.Epoch != h.Epoch || got.Full {
		t.Fatalf("%+v %v", got, err)
	}
	for _, id := range []string{"", "../x", "A", "a/b", "-a", ".", string(make([]byte, 254))} {
		h.Volume = id
		if len(id) <= MaxVolumeID && len(id) > 0 {
			if _, err := DecodeHello(h.Encode()); err == nil {
				t.Errorf("volume id %q accepted", id)
			}
		}
		if ValidVolumeID(id) {
			t.Errorf("ValidVolumeID(%q)", id)
		}
	}
	if _, err := DecodeAck(appendRecord(nil, StreamHello, 1, nil)); err == nil {
		t.Error("a hello decoded as an ack")
	}
}
