// Package metrics exports volumes' figures in the Prometheus text format.
// A Collector reads each volume's status when it is scraped, so the I/O
// path pays nothing: the engine keeps its counters anyway.
//
// A volume's families have the label volume (the volume's name: its
// Journal's in Kubernetes), and namespace and persistentvolumeclaim (its
// claim's, where known; empty otherwise); the sink's state has state too,
// one series per state, 1 for the one the link is in. A receiver's have
// volume. charts/README.md lists the families.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/jvol-io/jvol/internal/attach"
	"github.com/jvol-io/jvol/internal/hist"
	"github.com/jvol-io/jvol/internal/sink"
)

// family is one metric of a volume, read from its status.
type family struct {
	desc  *prometheus.Desc
	typ   prometheus.ValueType
	value func(attach.Status) float64
}

// volumeLabels are the labels of a volume's families.
var volumeLabels = []string{"volume", "namespace", "persistentvolumeclaim"}

func newFamily(name, help string, typ prometheus.ValueType, value func(attach.Status) float64) family {
	return family{prometheus.NewDesc(name, help, volumeLabels, nil), typ, value}
}

var (
	volumeFamilies = []family{
		newFamily("jvol_volume_size_bytes", "Size of the volume's block device.", prometheus.GaugeValue,
			func(s attach.Status) float64 { return float64(s.Size) }),
		newFamily("jvol_volume_written_bytes_total", "Bytes written to the volume since its server started.", prometheus.CounterValue,
			func(s attach.Status) float64 { return float64(s.BytesWritten) }),
		newFamily("jvol_volume_flushes_total", "Flushes the volume answered (each once every earlier write was durable).", prometheus.CounterValue,
			func(s attach.Status) float64 { return float64(s.Flushes) }),
		newFamily("jvol_volume_reads_total", "Read requests the volume served since its server started.", prometheus.CounterValue,
			func(s attach.Status) float64 { return float64(s.Reads) }),
		newFamily("jvol_volume_read_bytes_total", "Bytes read from the volume since its server started.", prometheus.CounterValue,
			func(s attach.Status) float64 { return float64(s.ReadBytes) }),
		newFamily("jvol_volume_writes_total", "Write requests the volume served since its server started.", prometheus.CounterValue,
			func(s attach.Status) float64 { return float64(s.Writes) }),
		newFamily("jvol_volume_discards_total", "Discard requests the volume served since its server started.", prometheus.CounterValue,
			func(s attach.Status) float64 { return float64(s.Discards) }),
		newFamily("jvol_volume_discarded_bytes_total", "Bytes discarded since the volume's server started.", prometheus.CounterValue,
			func(s attach.Status) float64 { return float64(s.DiscardBytes) }),
		newFamily("jvol_volume_journal_syncs_total", "Syncs of the journal image.", prometheus.CounterValue,
			func(s attach.Status) float64 { return float64(s.Syncs) }),
		newFamily("jvol_volume_commits_total", "Commits of journal areas to the data image.", prometheus.CounterValue,
			func(s attach.Status) float64 { return float64(s.Commits) }),
		newFamily("jvol_volume_fifo_size_bytes", "Size of the volume's memory FIFO.", prometheus.GaugeValue,
			func(s attach.Status) float64 { return float64(s.FIFOSize) }),
		newFamily("jvol_volume_fifo_used_bytes", "Bytes in the memory FIFO not yet freed.", prometheus.GaugeValue,
			func(s attach.Status) float64 { return float64(s.FIFOUsed) }),
		newFamily("jvol_volume_fifo_stalls_total", "Times a writer waited for room in the FIFO.", prometheus.CounterValue,
			func(s attach.Status) float64 { return float64(s.FIFOStalls) }),
		newFamily("jvol_volume_journal_size_bytes", "Size of the journal ring.", prometheus.GaugeValue,
			func(s attach.Status) float64 { return float64(s.JournalSize) }),
		newFamily("jvol_volume_journal_used_bytes", "Bytes of the journal ring not yet committed to the data image.", prometheus.GaugeValue,
			func(s attach.Status) float64 { return float64(s.JournalUsed) }),
		newFamily("jvol_volume_journal_stalls_total", "Times the FIFO's worker waited for room in the journal ring.", prometheus.CounterValue,
			func(s attach.Status) float64 { return float64(s.JournalStalls) }),
		newFamily("jvol_volume_transid", "Last transaction id handed out.", prometheus.GaugeValue,
			func(s attach.Status) float64 { return float64(s.Transid) }),
		newFamily("jvol_volume_acked_transid", "Last transaction id that is durable (in the journal, or at the sink in full duplex).", prometheus.GaugeValue,
			func(s attach.Status) float64 { return float64(s.AckedTransid) }),
		newFamily("jvol_volume_checkpoint_transid", "Last transaction id committed to the data image.", prometheus.GaugeValue,
			func(s attach.Status) float64 { return float64(s.CheckpointTransid) }),
		newFamily("jvol_volume_allocated_bytes", "Disk the volume's data image holds (all of it, once made, if thick).", prometheus.GaugeValue,
			func(s attach.Status) float64 { return float64(s.Allocated) }),
		newFamily("jvol_volume_host_available_bytes", "Free space of the file system that holds the volume's images.", prometheus.GaugeValue,
			func(s attach.Status) float64 { return float64(s.Available) }),
		newFamily("jvol_volume_space_low", "1 while a thin volume may need more than its file system has free, else 0.", prometheus.GaugeValue,
			func(s attach.Status) float64 { return boolValue(s.SpaceLow) }),
		newFamily("jvol_volume_space_errors_total", "Writes and grows refused for want of space since the volume's server started.", prometheus.CounterValue,
			func(s attach.Status) float64 { return float64(s.SpaceErrors) }),
		newFamily("jvol_volume_server_restarts_total", "Handovers and restarts of the volume's FUSE server since it was attached.", prometheus.CounterValue,
			func(s attach.Status) float64 { return float64(s.ServerRestarts) }),
	}
	sinkFamilies = []family{
		newFamily("jvol_sink_unacked_bytes", "Bytes written to the volume that the sink does not have yet.", prometheus.GaugeValue,
			func(s attach.Status) float64 { return float64(s.Sink.LagBytes) }),
		newFamily("jvol_sink_connects_total", "Handshakes with the sink since the volume's server started (reconnects and one).", prometheus.CounterValue,
			func(s attach.Status) float64 { return float64(s.Sink.Connects) }),
		newFamily("jvol_sink_baselines_total", "Full copies to the sink begun since the volume's server started.", prometheus.CounterValue,
			func(s attach.Status) float64 { return float64(s.Sink.Baselines) }),
		newFamily("jvol_sink_lag_seconds", "How far behind the volume the sink is.", prometheus.GaugeValue,
			func(s attach.Status) float64 { return s.Sink.LagSeconds }),
		newFamily("jvol_sink_last_ack_timestamp_seconds", "When the sink last acknowledged (0: never).", prometheus.GaugeValue,
			func(s attach.Status) float64 {
				t, err := time.Parse(time.RFC3339Nano, s.Sink.LastAck)
				if err != nil {
					return 0
				}
				return float64(t.UnixNano()) / 1e9
			}),
	}
	histograms = []struct {
		desc  *prometheus.Desc
		value func(attach.Status) hist.Snapshot
	}{
		{prometheus.NewDesc("jvol_volume_flush_duration_seconds", "How long flushes took: until every earlier write was durable.", volumeLabels, nil),
			func(s attach.Status) hist.Snapshot { return s.FlushTimes }},
		{prometheus.NewDesc("jvol_volume_commit_duration_seconds", "How long commits of the journal to the data image took.", volumeLabels, nil),
			func(s attach.Status) hist.Snapshot { return s.CommitTimes }},
	}
	sinkState = prometheus.NewDesc("jvol_sink_state", "1 for the state the volume's link to its sink is in, 0 for the others.",
		[]string{"volume", "namespace", "persistentvolumeclaim", "state"}, nil)
)

// SinkStates are the states of a link to a sink, each a series of
// jvol_sink_state.
var SinkStates = []string{sink.Connected, sink.CatchingUp, sink.OutOfSync, sink.Disconnected}

// Volumes collects the figures of the volumes that statuses returns.
type Volumes struct {
	statuses func() []attach.Status
	claim    func(volume string) (namespace, name string)
}

// NewVolumes returns a Collector of the attached volumes statuses returns
// when it is called, at each scrape; claim, if not nil, names a volume's
// claim.
func NewVolumes(statuses func() []attach.Status, claim func(volume string) (namespace, name string)) *Volumes {
	return &Volumes{statuses, claim}
}

func (v *Volumes) Describe(ch chan<- *prometheus.Desc) {
	for _, f := range volumeFamilies {
		ch <- f.desc
	}
	for _, f := range sinkFamilies {
		ch <- f.desc
	}
	for _, h := range histograms {
		ch <- h.desc
	}
	ch <- sinkState
}

func (v *Volumes) Collect(ch chan<- prometheus.Metric) {
	for _, s := range v.statuses() {
		if !s.Attached {
			continue
		}
		labels := []string{s.Volume, "", ""}
		if v.claim != nil {
			labels[1], labels[2] = v.claim(s.Volume)
		}
		for _, f := range volumeFamilies {
			ch <- prometheus.MustNewConstMetric(f.desc, f.typ, f.value(s), labels...)
		}
		for _, h := range histograms {
			ch <- constHistogram(h.desc, h.value(s), labels...)
		}
		if s.Sink == nil {
			continue
		}
		for _, f := range sinkFamilies {
			ch <- prometheus.MustNewConstMetric(f.desc, f.typ, f.value(s), labels...)
		}
		for _, state := range SinkStates {
			ch <- prometheus.MustNewConstMetric(sinkState, prometheus.GaugeValue, boolValue(s.Sink.State == state), append(labels, state)...)
		}
	}
}

// bounds are the histograms' bucket bounds in seconds.
var bounds = func() []float64 {
	b := make([]float64, hist.Buckets)
	for i := range b {
		b[i] = hist.Bound(i).Seconds()
	}
	return b
}()

func constHistogram(d *prometheus.Desc, s hist.Snapshot, labels ...string) prometheus.Metric {
	buckets := make(map[float64]uint64, hist.Buckets)
	for i, c := range s.Cumulative {
		buckets[bounds[i]] = c
	}
	return prometheus.MustNewConstHistogram(d, s.Count, s.Sum.Seconds(), buckets, labels...)
}

// Handler serves the collectors' metrics in the Prometheus text format,
// with those of base if it is not nil (controller-runtime's registry: the
// process's, the Go runtime's, the API client's and the reconciler's),
// else with the process's and the Go runtime's.
func Handler(base prometheus.Gatherer, cs ...prometheus.Collector) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(cs...)
	g := prometheus.Gatherers{reg}
	if base != nil {
		g = append(g, base)
	} else {
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{Registry: reg})
}

// A receiver's families, each labelled volume.
var (
	recvConnected = prometheus.NewDesc("jvol_receiver_connected", "1 while a sender of the volume is connected.", []string{"volume"}, nil)
	recvStored    = prometheus.NewDesc("jvol_receiver_stored_bytes_total", "Bytes of the volume's stream stored since the receiver started.", []string{"volume"}, nil)
	recvSegments  = prometheus.NewDesc("jvol_receiver_segments_total", "Segments of the volume's stream begun since the receiver started.", []string{"volume"}, nil)
	recvSynced    = prometheus.NewDesc("jvol_receiver_synced_transid", "Last transaction id of the volume synced (acknowledged, in full duplex).", []string{"volume"}, nil)
	recvSyncs     = prometheus.NewDesc("jvol_receiver_sync_duration_seconds", "How long syncs of the volume's stream took.", []string{"volume"}, nil)
	recvCutOff    = prometheus.NewDesc("jvol_receiver_cutoffs_total", "Senders of the volume the receiver cut off, by reason.", []string{"volume", "reason"}, nil)
	recvRestores  = prometheus.NewDesc("jvol_receiver_restores_total", "Restores of the volume the receiver served over the network.", []string{"volume"}, nil)
	recvRestored  = prometheus.NewDesc("jvol_receiver_restored_bytes_total", "Bytes of data the receiver's restores of the volume sent.", []string{"volume"}, nil)
)

// Receiver collects the figures of a sink's receiver.
type Receiver struct {
	stats func() []sink.VolumeStats
}

// NewReceiver returns a Collector of the figures stats returns (a
// sink.Receiver's Stats) at each scrape.
func NewReceiver(stats func() []sink.VolumeStats) *Receiver { return &Receiver{stats} }

func (r *Receiver) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{recvConnected, recvStored, recvSegments, recvSynced, recvSyncs, recvCutOff, recvRestores, recvRestored} {
		ch <- d
	}
}

func (r *Receiver) Collect(ch chan<- prometheus.Metric) {
	for _, s := range r.stats() {
		ch <- prometheus.MustNewConstMetric(recvConnected, prometheus.GaugeValue, boolValue(s.Connected), s.Volume)
		ch <- prometheus.MustNewConstMetric(recvStored, prometheus.CounterValue, float64(s.StoredBytes), s.Volume)
		ch <- prometheus.MustNewConstMetric(recvSegments, prometheus.CounterValue, float64(s.Segments), s.Volume)
		ch <- prometheus.MustNewConstMetric(recvSynced, prometheus.GaugeValue, float64(s.SyncedTransid), s.Volume)
		ch <- constHistogram(recvSyncs, s.Syncs, s.Volume)
		ch <- prometheus.MustNewConstMetric(recvRestores, prometheus.CounterValue, float64(s.Restores), s.Volume)
		ch <- prometheus.MustNewConstMetric(recvRestored, prometheus.CounterValue, float64(s.RestoredBytes), s.Volume)
		for i, reason := range sink.CutReasons {
			ch <- prometheus.MustNewConstMetric(recvCutOff, prometheus.CounterValue, float64(s.CutOff[i]), s.Volume, reason)
		}
	}
}

// boolValue is a gauge's value for b: 1 or 0.
func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
