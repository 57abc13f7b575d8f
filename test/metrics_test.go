package test

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"golang.org/x/sys/unix"
)

// scrape reads the metrics at addr with the text-format parser and
// returns the value of each counter and gauge of volume, and each
// histogram's count as NAME_count.
func scrape(t *testing.T, addr, volume string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			if !hasLabel(m, "volume", volume) {
				continue
			}
			switch {
			case m.GetCounter() != nil:
				got[name] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				got[name] = m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				got[name+"_count"] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return got
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

// TestAttachServesMetrics: `jvol attach --metrics-address`, writes and
// fsyncs through the device, and two scrapes: written bytes, flushes, the
// flush duration histogram's count and the transaction id grow, reads
// count; the sizes are the volume's.
func TestAttachServesMetrics(t *testing.T) {
	requireRoot(t)
	dir := filepath.Join(t.TempDir(), "vol")
	a := attach(t, "--dir", dir, "--size", "16Mi", "--fifo-size", "2Mi", "--metrics-address", "127.0.0.1:0")
	f, err := os.OpenFile(a.device, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	write := func(off int64) {
		t.Helper()
		if _, err := f.WriteAt(make([]byte, 1<<20), off); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	var m map[string]float64
	// The metrics are the status the server publishes once a second.
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		poll(t, func() string { return fmt.Sprintf("%s: %v", what, m) }, func() bool {
			m = scrape(t, a.metrics, "vol")
			return cond()
		})
	}
	write(0)
	waitFor("1 MiB written", func() bool { return m["jvol_volume_written_bytes_total"] >= 1<<20 })
	first := m
	if first["jvol_volume_size_bytes"] != 16<<20 || first["jvol_volume_fifo_size_bytes"] != 2<<20 || first["jvol_volume_flushes_total"] < 1 ||
		first["jvol_volume_flush_duration_seconds_count"] < 1 {
		t.Errorf("first scrape: %v", first)
	}
	write(4 << 20)
	// Past the page cache (the device's), so the volume serves the read.
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(make([]byte, 1<<20), 8<<20); err != nil {
		t.Fatal(err)
	}
	waitFor("2 MiB written, 1 MiB read", func() bool {
		return m["jvol_volume_written_bytes_total"] >= 2<<20 && m["jvol_volume_read_bytes_total"] >= 1<<20
	})
	for _, name := range []string{"jvol_volume_flushes_total", "jvol_volume_flush_duration_seconds_count", "jvol_volume_transid"} {
		if m[name] <= first[name] {
			t.Errorf("%s went from %v to %v", name, first[name], m[name])
		}
	}
	f.Close()
	a.stop(t)
}

// TestSinkServesMetrics: `jvol sink --metrics-address` while a volume
// streams to it in full duplex, and two scrapes: the stream stored and
// the id synced grow, the sender is connected, nobody was cut off; the
// volume's own metrics say its link is Connected.
func TestSinkServesMetrics(t *testing.T) {
	requireRoot(t)
	base := t.TempDir()
	rc := startReceiver(t, filepath.Join(base, "sink"), "127.0.0.1:0", "--metrics-address", "127.0.0.1:0")
	a := attach(t, "--dir", filepath.Join(base, "vol"), "--size", "16Mi", "--sink", "tcp://"+rc.addr, "--duplex", "full",
		"--metrics-address", "127.0.0.1:0")
	f, err := os.OpenFile(a.device, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var m map[string]float64
	// round writes 1 MiB at off and fsyncs, then waits for the volume's
	// metrics (published once a second) to count written bytes in all,
	// and for the receiver's to have synced the id the volume has acked.
	round := func(off int64, written float64, what string) map[string]float64 {
		t.Helper()
		if _, err := f.WriteAt(make([]byte, 1<<20), off); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil { // full duplex: acknowledged by the receiver
			t.Fatal(err)
		}
		var vm map[string]float64
		poll(t, func() string { return fmt.Sprintf("%s: receiver %v, volume %v", what, m, vm) }, func() bool {
			m = scrape(t, rc.metrics, "vol")
			vm = scrape(t, a.metrics, "vol")
			return vm["jvol_volume_written_bytes_total"] >= written && vm["jvol_volume_acked_transid"] > 0 &&
				m["jvol_receiver_synced_transid"] >= vm["jvol_volume_acked_transid"]
		})
		return m
	}
	first := round(0, 1<<20, "the first round synced")
	second := round(4<<20, 2<<20, "the second round synced")
	if second["jvol_receiver_stored_bytes_total"] <= first["jvol_receiver_stored_bytes_total"] || second["jvol_receiver_stored_bytes_total"] < 2<<20 {
		t.Errorf("stored bytes went from %v to %v", first["jvol_receiver_stored_bytes_total"], second["jvol_receiver_stored_bytes_total"])
	}
	if second["jvol_receiver_connected"] != 1 || second["jvol_receiver_sync_duration_seconds_count"] < 1 {
		t.Errorf("receiver: %v", second)
	}
	vm := scrape(t, a.metrics, "vol")
	if vm["jvol_sink_connects_total"] < 1 {
		t.Errorf("volume: %v", vm)
	}
	f.Close()
	a.stop(t)
	rc.stop(t)
}
