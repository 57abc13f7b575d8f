package attach

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jvol-io/jvol/internal/volume"
)

// A held volume's status that its server has not refreshed for
// StaleAfter is called stale, and the text says so plainly.
func TestReadStatusSaysWhenTheFiguresAreStale(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "v")
	d, err := volume.OpenDir(dir, volume.Options{Size: 1 << 20, JournalSize: volume.MinJournalSize, Provisioning: volume.Thin})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, c := range []struct {
		age   time.Duration
		stale bool
	}{{time.Second, false}, {StaleAfter + time.Second, true}} {
		b, err := json.Marshal(Status{Volume: "v", Attached: true, Updated: time.Now().Add(-c.age).UTC().Format(time.RFC3339Nano)})
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(volume.Layout(dir).Status(), b, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := ReadStatus(dir)
		if err != nil {
			t.Fatal(err)
		}
		if s.Stale != c.stale {
			t.Errorf("a status %s old: stale %v, want %v", c.age, s.Stale, c.stale)
		}
		var text strings.Builder
		s.WriteText(&text)
		if strings.Contains(text.String(), "STALE") != c.stale {
			t.Errorf("a status %s old reads:\n%s", c.age, &text)
		}
	}
	d.Close()
	// Not held, it is read from the images: never stale.
	s, err := ReadStatus(dir)
	if err != nil {
		t.Fatal(err)
	}
	if s.Stale || s.Attached || s.Provisioning != volume.Thin {
		t.Errorf("detached: %+v", s)
	}
}
