package journal

import (
	"encoding/json"
	"testing"
)

func TestParseDuplexTakesEitherCaseAndRefusesTheRest(t *testing.T) {
	for in, want := range map[string]Duplex{"": Half, "half": Half, "Half": Half, "FULL": Full, "full": Full} {
		if d, err := ParseDuplex(in); err != nil || d != want {
			t.Errorf("ParseDuplex(%q) = %v, %v; want %v", in, d, err, want)
		}
	}
	for _, in := range []string{"quarter", "ful", " full"} {
		if _, err := ParseDuplex(in); err == nil {
			t.Errorf("ParseDuplex(%q) accepted", in)
		}
	}
}

func TestDuplexRoundTripsAsJSONText(t *testing.T) {
	for _, d := range []Duplex{Half, Full} {
		b, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		var got Duplex
		if err := json.Unmarshal(b, &got); err != nil || got != d {
			t.Errorf("%s: %s read back as %v, %v", d, b, got, err)
		}
	}
	var d Duplex
	if err := json.Unmarshal([]byte(`"sideways"`), &d); err == nil {
		t.Error("an unknown duplex was read")
	}
}
