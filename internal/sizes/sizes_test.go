package sizes

import "testing"

func TestParse(t *testing.T) {
	good := map[string]int64{"0": 0, "4096": 4096, "4Ki": 4096, "64Mi": 64 << 20, "2Gi": 2 << 30, "1Ti": 1 << 40}
	for in, want := range good {
		if got, err := Parse(in); err != nil || got != want {
			t.Errorf("Parse(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "1.5Gi", "4k", "4KB", "Mi", "9999999999Ti", "0x10"} {
		if _, err := Parse(in); err == nil {
			t.Errorf("Parse(%q) succeeded", in)
		}
	}
}

func TestFlag(t *testing.T) {
	var f Flag
	if err := f.Set("16Mi"); err != nil || f != 16<<20 || f.String() != "16777216" {
		t.Fatalf("16Mi: %d %v", f, err)
	}
	if err := f.Set("1GB"); err == nil {
		t.Fatal("1GB accepted")
	}
}
