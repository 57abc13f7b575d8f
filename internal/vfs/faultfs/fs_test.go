package faultfs

import (
	"errors"
	"io/fs"
	"testing"

	"github.com/jvol-io/jvol/internal/vfs"
)

func TestFSPowerCutUndoesUnsyncedDirectoryChanges(t *testing.T) {
	const gone = "(gone)"
	write := func(t *testing.T, fsys *FS, name, data string, sync bool) {
		t.Helper()
		f, err := fsys.Create(name)
		if err == nil {
			_, err = f.WriteAt([]byte(data), 0)
		}
		if err == nil && sync {
			err = f.Sync()
		}
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	cases := []struct {
		name string
		do   func(t *testing.T, fsys *FS)
		want map[string]string // file: contents after the cut, or gone
	}{
		{"a file created but not synced into its directory is lost", func(t *testing.T, fsys *FS) {
			write(t, fsys, "/d/a", "new", true)
		}, map[string]string{"/d/a": gone, "/d/old": "old"}},
		{"a file synced into its directory stays with its synced data", func(t *testing.T, fsys *FS) {
			write(t, fsys, "/d/a", "new", true)
			fsys.SyncDir("/d")
		}, map[string]string{"/d/a": "new"}},
		{"a file's unsynced data is dropped though its entry stays", func(t *testing.T, fsys *FS) {
			write(t, fsys, "/d/a", "new", false)
			fsys.SyncDir("/d")
		}, map[string]string{"/d/a": ""}},
		{"a rename not synced is undone", func(t *testing.T, fsys *FS) {
			fsys.Rename("/d/old", "/d/b")
		}, map[string]string{"/d/old": "old", "/d/b": gone}},
		{"a rename over a file, not synced, leaves the file replaced", func(t *testing.T, fsys *FS) {
			write(t, fsys, "/d/tmp", "new", true)
			fsys.Rename("/d/tmp", "/d/old")
		}, map[string]string{"/d/old": "old", "/d/tmp": gone}},
		{"a rename synced stays", func(t *testing.T, fsys *FS) {
			write(t, fsys, "/d/tmp", "new", true)
			fsys.Rename("/d/tmp", "/d/old")
			fsys.SyncDir("/d")
		}, map[string]string{"/d/old": "new", "/d/tmp": gone}},
		{"a remove not synced is undone", func(t *testing.T, fsys *FS) {
			fsys.Remove("/d/old")
		}, map[string]string{"/d/old": "old"}},
		{"a remove synced stays", func(t *testing.T, fsys *FS) {
			fsys.Remove("/d/old")
			fsys.SyncDir("/d")
		}, map[string]string{"/d/old": gone}},
		{"syncing one directory leaves another's changes undone", func(t *testing.T, fsys *FS) {
			fsys.MkdirAll("/e")
			write(t, fsys, "/e/a", "new", true)
			fsys.SyncDir("/d")
		}, map[string]string{"/e/a": gone}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fsys := NewFS()
			if err := fsys.MkdirAll("/d"); err != nil {
				t.Fatal(err)
			}
			write(t, fsys, "/d/old", "old", true)
			fsys.SyncDir("/d")
			c.do(t, fsys)
			cut := fsys.PowerCut(nil)
			for name, want := range c.want {
				b, err := vfs.ReadFile(cut, name)
				if want == gone {
					if !errors.Is(err, fs.ErrNotExist) {
						t.Errorf("%s: %q, %v; want it gone", name, b, err)
					}
					continue
				}
				if err != nil || string(b) != want {
					t.Errorf("%s: %q, %v; want %q", name, b, err, want)
				}
			}
		})
	}
}

func TestFSLocksExcludeAndList(t *testing.T) {
	fsys := NewFS()
	fsys.MkdirAll("/d")
	ex, err := fsys.Lock("/d/lock", false, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fsys.Lock("/d/lock", true, false); !errors.Is(err, vfs.ErrLocked) {
		t.Fatalf("shared lock beside an exclusive one: %v", err)
	}
	ex.Unlock()
	sh, err := fsys.Lock("/d/lock", true, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fsys.Lock("/d/lock", false, false); !errors.Is(err, vfs.ErrLocked) {
		t.Fatalf("exclusive lock beside a shared one: %v", err)
	}
	sh.Unlock()
	if names, err := fsys.List("/"); err != nil || len(names) != 1 || names[0] != "d" {
		t.Fatalf("list of the root: %v %v", names, err)
	}
	if _, err := fsys.Create("/nodir/a"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("create in a missing directory: %v", err)
	}
}
