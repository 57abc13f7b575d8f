package writecheck

import (
	"path/filepath"
	"testing"
)

// Lap reports the longest write since the last lap and starts the next.
func TestLapStartsAfresh(t *testing.T) {
	w, err := Open(filepath.Join(t.TempDir(), "f"), 64*Block)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if d := w.Lap(); d != 0 {
		t.Errorf("lap before any write: %v", d)
	}
	progress, stop := w.Start(1)
	for seq := range progress {
		if seq >= 2*Batch {
			break
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if d := w.Lap(); d <= 0 || d > w.Longest() {
		t.Errorf("lap after %d writes: %v, the longest write %v", w.Writes(), d, w.Longest())
	}
	if d := w.Lap(); d != 0 {
		t.Errorf("the next lap, with no write: %v", d)
	}
	if err := w.Verify(); err != nil {
		t.Error(err)
	}
}
