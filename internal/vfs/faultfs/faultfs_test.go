package faultfs

import (
	"bytes"
	"errors"
	"testing"
)

func TestPowerCutKeepsSyncedWritesAndDropsTheRest(t *testing.T) {
	f := New(4096)
	f.WriteAt(bytes.Repeat([]byte{1}, 1024), 0)
	f.Sync()
	f.WriteAt(bytes.Repeat([]byte{2}, 1024), 512)
	after := f.PowerCut(nil).Bytes()
	if !bytes.Equal(after[:1024], bytes.Repeat([]byte{1}, 1024)) || after[1500] != 0 {
		t.Fatalf("power cut kept an unsynced write or lost a synced one")
	}
	if got := f.Bytes(); got[600] != 2 {
		t.Fatal("the running file lost its own write")
	}
}

func TestPowerCutTearsUnsyncedWritesBySector(t *testing.T) {
	f := New(4096)
	f.WriteAt(bytes.Repeat([]byte{9}, 2048), 0)
	after := f.PowerCut(func(off int64) bool { return off == 512 }).Bytes()
	for i, b := range after[:2048] {
		want := byte(0)
		if i >= 512 && i < 1024 {
			want = 9
		}
		if b != want {
			t.Fatalf("byte %d = %d, want %d", i, b, want)
		}
	}
}

func TestInjectedSyncFailuresAndDirectAlignment(t *testing.T) {
	f := New(8192)
	f.Align = 4096
	if _, err := f.WriteAt(make([]byte, 100), 0); err == nil {
		t.Fatal("unaligned write accepted")
	}
	f.WriteAt(bytes.Repeat([]byte{5}, 4096), 4096)
	f.FailSync = func() error { return ErrInjected }
	if err := f.Sync(); !errors.Is(err, ErrInjected) || f.Unsynced() != 4096 {
		t.Fatalf("failed sync: %v, %d unsynced", err, f.Unsynced())
	}
	if _, err := f.ReadAt(make([]byte, 4096), 8192); err == nil {
		t.Fatal("read past the end accepted")
	}
}
