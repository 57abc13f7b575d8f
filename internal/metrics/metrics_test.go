package metrics

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/jvol-io/jvol/internal/attach"
	"github.com/jvol-io/jvol/internal/hist"
	"github.com/jvol-io/jvol/internal/journal"
	"github.com/jvol-io/jvol/internal/sink"
)

// Each family has its type, help and labels, reads the live status at
// every scrape, and follows Prometheus' naming rules.
func TestVolumesCollectLiveFigures(t *testing.T) {
	written := uint64(4096)
	var flushes hist.Durations
	flushes.Observe(10 * time.Microsecond)
	flushes.Observe(20 * time.Microsecond)
	flushes.Observe(time.Hour)
	statuses := func() []attach.Status {
		return []attach.Status{
			{Volume: "pvc-a", Attached: true, Size: 1 << 30, BytesWritten: written, Flushes: 3, Syncs: 2, Commits: 1,
				FIFOSize: 16 << 20, FIFOUsed: 4096, FIFOStalls: 5, JournalSize: 64 << 20, JournalUsed: 8192, JournalStalls: 6,
				Transid: 9, AckedTransid: 8, CheckpointTransid: 7, ServerRestarts: 2, FlushTimes: flushes.Snapshot(),
				Sink: &attach.SinkStatus{URL: "tcp://sink:7070", Duplex: journal.Full, State: sink.CatchingUp, LagBytes: 4096, LagSeconds: 1.5, LastAck: "2026-01-02T03:04:05Z"}},
			{Volume: "pvc-b", Attached: false}, // not attached: nothing
		}
	}
	v := NewVolumes(statuses, func(volume string) (string, string) { return "apps", "data-" + volume })
	want := `
# HELP jvol_volume_written_bytes_total Bytes written to the volume since its server started.
# TYPE jvol_volume_written_bytes_total counter
jvol_volume_written_bytes_total{namespace="apps",persistentvolumeclaim="data-pvc-a",volume="pvc-a"} 4096
# HELP jvol_volume_fifo_used_bytes Bytes in the memory FIFO not yet freed.
# TYPE jvol_volume_fifo_used_bytes gauge
jvol_volume_fifo_used_bytes{namespace="apps",persistentvolumeclaim="data-pvc-a",volume="pvc-a"} 4096
# HELP jvol_sink_state 1 for the state the volume's link to its sink is in, 0 for the others.
# TYPE jvol_sink_state gauge
jvol_sink_state{namespace="apps",persistentvolumeclaim="data-pvc-a",state="CatchingUp",volume="pvc-a"} 1
jvol_sink_state{namespace="apps",persistentvolumeclaim="data-pvc-a",state="Connected",volume="pvc-a"} 0
jvol_sink_state{namespace="apps",persistentvolumeclaim="data-pvc-a",state="Disconnected",volume="pvc-a"} 0
jvol_sink_state{namespace="apps",persistentvolumeclaim="data-pvc-a",state="OutOfSync",volume="pvc-a"} 0
# HELP jvol_sink_last_ack_timestamp_seconds When the sink last acknowledged (0: never).
# TYPE jvol_sink_last_ack_timestamp_seconds gauge
jvol_sink_last_ack_timestamp_seconds{namespace="apps",persistentvolumeclaim="data-pvc-a",volume="pvc-a"} 1.767323045e+09
`
	// Buckets of 16 µs, 32 µs, ...: one flush in the first, one in the
	// second, one beyond them all.
	want += "# HELP jvol_volume_flush_duration_seconds How long flushes took: until every earlier write was durable.\n" +
		"# TYPE jvol_volume_flush_duration_seconds histogram\n"
	for i := range hist.Buckets {
		want += fmt.Sprintf("jvol_volume_flush_duration_seconds_bucket{namespace=\"apps\",persistentvolumeclaim=\"data-pvc-a\",volume=\"pvc-a\",le=\"%g\"} %d\n", hist.Bound(i).Seconds(), min(i+1, 2))
	}
	want += "jvol_volume_flush_duration_seconds_bucket{namespace=\"apps\",persistentvolumeclaim=\"data-pvc-a\",volume=\"pvc-a\",le=\"+Inf\"} 3\n" +
		"jvol_volume_flush_duration_seconds_sum{namespace=\"apps\",persistentvolumeclaim=\"data-pvc-a\",volume=\"pvc-a\"} 3600.00003\n" +
		"jvol_volume_flush_duration_seconds_count{namespace=\"apps\",persistentvolumeclaim=\"data-pvc-a\",volume=\"pvc-a\"} 3\n"
	if err := testutil.CollectAndCompare(v, strings.NewReader(want), "jvol_volume_written_bytes_total", "jvol_volume_fifo_used_bytes",
		"jvol_sink_state", "jvol_sink_last_ack_timestamp_seconds", "jvol_volume_flush_duration_seconds"); err != nil {
		t.Error(err)
	}
	if n, want := testutil.CollectAndCount(v), len(volumeFamilies)+len(histograms)+len(sinkFamilies)+len(SinkStates); n != want {
		t.Errorf("%d series, want %d", n, want)
	}
	written = 8192
	again := `
# HELP jvol_volume_written_bytes_total Bytes written to the volume since its server started.
# TYPE jvol_volume_written_bytes_total counter
jvol_volume_written_bytes_total{namespace="apps",persistentvolumeclaim="data-pvc-a",volume="pvc-a"} 8192
`
	if err := testutil.CollectAndCompare(v, strings.NewReader(again), "jvol_volume_written_bytes_total"); err != nil {
		t.Errorf("a second scrape: %v", err)
	}
	problems, err := testutil.CollectAndLint(v)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// The handler serves the text format, the volumes' and the process's.
func TestHandlerServesTheTextFormat(t *testing.T) {
	s := httptest.NewServer(Handler(nil, NewVolumes(func() []attach.Status {
		return []attach.Status{{Volume: "v", Attached: true, Flushes: 1}}
	}, nil)))
	defer s.Close()
	resp, err := s.Client().Get(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, want := range []string{`jvol_volume_flushes_total{namespace="",persistentvolumeclaim="",volume="v"} 1`, "go_goroutines", "process_cpu_seconds_total"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("no %q in:\n%s", want, b)
		}
	}
}

// families returns the name of every family the collectors export.
func families(t *testing.T) []string {
	t.Helper()
	ch := make(chan *prometheus.Desc, 64)
	NewVolumes(nil, nil).Describe(ch)
	NewReceiver(nil).Describe(ch)
	close(ch)
	re := regexp.MustCompile(`fqName: "([^"]+)"`)
	var names []string
	for d := range ch {
		m := re.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("no name in %s", d)
		}
		names = append(names, m[1])
	}
	return names
}

// charts/README.md lists every family.
func TestEveryFamilyIsListed(t *testing.T) {
	b, err := os.ReadFile("../../charts/README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range families(t) {
		if !strings.Contains(string(b), "`"+name+"`") {
			t.Errorf("charts/README.md does not list %s", name)
		}
	}
}

// The Grafana dashboard asks only for families that exist.
func TestTheDashboardAsksForOurFamilies(t *testing.T) {
	b, err := os.ReadFile("../../charts/jvol/dashboards/jvol.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, name := range families(t) {
		known[name] = true
	}
	re := regexp.MustCompile(`jvol_[a-z_]+`)
	asked := 0
	for _, p := range d.Panels {
		for _, target := range p.Targets {
			for _, name := range re.FindAllString(target.Expr, -1) {
				asked++
				if !known[strings.TrimSuffix(name, "_bucket")] {
					t.Errorf("panel %q asks for %s, which is not exported", p.Title, name)
				}
			}
		}
	}
	if asked == 0 {
		t.Error("the dashboard asks for nothing")
	}
}

// A receiver's figures, per volume, cut-offs by reason.
func TestReceiverCollectsItsFigures(t *testing.T) {
	r := NewReceiver(func() []sink.VolumeStats {
		return []sink.VolumeStats{{Volume: "pvc-a", Connected: true, StoredBytes: 1 << 20, Segments: 2, SyncedTransid: 7, CutOff: [4]uint64{0, 3, 0, 1}}}
	})
	want := `
# HELP jvol_receiver_cutoffs_total Senders of the volume the receiver cut off, by reason.
# TYPE jvol_receiver_cutoffs_total counter
jvol_receiver_cutoffs_total{reason="authentication",volume="pvc-a"} 0
jvol_receiver_cutoffs_total{reason="connection",volume="pvc-a"} 1
jvol_receiver_cutoffs_total{reason="protocol",volume="pvc-a"} 3
jvol_receiver_cutoffs_total{reason="storage",volume="pvc-a"} 0
# HELP jvol_receiver_stored_bytes_total Bytes of the volume's stream stored since the receiver started.
# TYPE jvol_receiver_stored_bytes_total counter
jvol_receiver_stored_bytes_total{volume="pvc-a"} 1.048576e+06
`
	if err := testutil.CollectAndCompare(r, strings.NewReader(want), "jvol_receiver_cutoffs_total", "jvol_receiver_stored_bytes_total"); err != nil {
		t.Error(err)
	}
	problems, err := testutil.CollectAndLint(r)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}
