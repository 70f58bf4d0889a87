package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
)

// summaryVersion changes when the JSON layout does; merge refuses others.
const summaryVersion = 1

// Summary is the result of one loadgen process, or the merge of several.
// Its JSON form is what -json prints and -mode merge reads.
type Summary struct {
	Version   int              `json:"version"`
	Processes int              `json:"processes"`
	Targets   []string         `json:"targets"`
	Rooms     int              `json:"rooms"`
	Senders   int              `json:"senders_per_room"`
	Rate      float64          `json:"rate_per_sender"`
	Conns     ConnStats        `json:"conns"`
	Messages  MessageStats     `json:"messages"`
	Latency   LatencyStats     `json:"latency_us"`
	Errors    map[string]int64 `json:"errors"`
	Procs     []ProcStats      `json:"procs,omitempty"`
	// Self is the load tool's own memory: what holding the connections
	// costs the load processes themselves (summed over merged summaries).
	Self SelfStats `json:"self"`
	// ProcTotal adds up all -pid processes, for a run against several
	// gateway processes: their RSS growth per connection and their CPU
	// per delivery together. Set when there are two or more.
	ProcTotal *ProcTotal `json:"proc_total,omitempty"`
	// Timeline has one point per second of the run (for -report). Merged
	// summaries add the points of the same second.
	Timeline []TimePoint `json:"timeline,omitempty"`
}

// SelfStats is the load tool's own resident memory before it connected
// and once every connection was open (after -hold), and the descriptor
// limit it found (RLIMIT_NOFILE after raising the soft limit).
type SelfStats struct {
	RSSStartBytes     int64   `json:"rss_start_bytes"`
	RSSConnectedBytes int64   `json:"rss_connected_bytes"`
	RSSPerConnBytes   float64 `json:"rss_per_conn_bytes"` // growth / conns opened
	FDLimit           int64   `json:"fd_limit"`           // per process; the smallest over merged summaries
}

// ProcTotal is the sum over the sampled processes.
type ProcTotal struct {
	RSSConnectedBytes    int64   `json:"rss_connected_bytes"` // sum of Connected RSS
	CPUSendSeconds       float64 `json:"cpu_send_seconds"`
	RSSPerConnBytes      float64 `json:"rss_per_conn_bytes"`
	CPUMicrosPerDelivery float64 `json:"cpu_us_per_delivery"`
}

// ConnStats counts connections.
type ConnStats struct {
	Target         int64   `json:"target"`
	Opened         int64   `json:"opened"`
	Failed         int64   `json:"failed"`
	Dropped        int64   `json:"dropped"` // closed by the gateway or broken before the end
	ConnectSeconds float64 `json:"connect_seconds"`
	ConnectRate    float64 `json:"connect_rate"` // opened / connect_seconds; summed on merge
}

// MessageStats counts chat frames. Expected, Delivered and Lost cover
// receivers connected during the whole send phase and drain.
type MessageStats struct {
	Sent        int64   `json:"sent"`
	Received    int64   `json:"received"`  // stamped chat frames read, duplicates included
	Expected    int64   `json:"expected"`  // sum over senders of sent × other members present throughout
	Delivered   int64   `json:"delivered"` // distinct messages counted against Expected
	Lost        int64   `json:"lost"`
	Duplicated  int64   `json:"duplicated"`
	OutOfOrder  int64   `json:"out_of_order"`
	Misrouted   int64   `json:"misrouted"`    // from a sender of another room
	Echoed      int64   `json:"echoed"`       // a sender got its own message back
	Foreign     int64   `json:"foreign"`      // stamp of another loadgen run
	Unparsed    int64   `json:"unparsed"`     // text frames with neither stamp nor "error"
	ErrorFrames int64   `json:"error_frames"` // {"error":...} frames
	Acks        int64   `json:"acks"`         // {"ack":...} frames (-options ack=1)
	Info        int64   `json:"info"`         // presence and truncated-history frames
	SendSeconds float64 `json:"send_seconds"`
}

// LatencyStats gives send→receive latency percentiles in microseconds.
// Histogram is the base64 HdrHistogram V2 compressed encoding, so
// summaries can be merged exactly.
type LatencyStats struct {
	Count     int64   `json:"count"`
	Mean      float64 `json:"mean"`
	P50       int64   `json:"p50"`
	P90       int64   `json:"p90"`
	P99       int64   `json:"p99"`
	P999      int64   `json:"p999"`
	Max       int64   `json:"max"`
	Histogram string  `json:"histogram"`
}

// ProcStats is what was sampled of one -pid process. Start is the earliest
// sample, Connected the latest after-connect (+hold) one, SendStart the
// earliest after-connect one and End the latest; for one loadgen process
// SendStart equals Connected.
type ProcStats struct {
	PID                  int        `json:"pid"`
	Start                procSample `json:"start"`
	Connected            procSample `json:"connected"`
	SendStart            procSample `json:"send_start"`
	End                  procSample `json:"end"`
	CPUSendSeconds       float64    `json:"cpu_send_seconds"`    // End - SendStart: send phase and drain
	RSSPerConnBytes      float64    `json:"rss_per_conn_bytes"`  // (Connected - Start) / conns opened
	CPUMicrosPerDelivery float64    `json:"cpu_us_per_delivery"` // CPUSendSeconds / messages received
}

// setLatency fills s.Latency from h.
func (s *Summary) setLatency(h *hdr.Histogram) error {
	enc, err := h.Encode(hdr.V2CompressedEncodingCookieBase)
	if err != nil {
		return fmt.Errorf("encode latency histogram: %w", err)
	}
	s.Latency = LatencyStats{
		Count: h.TotalCount(), Mean: h.Mean(),
		P50: h.ValueAtQuantile(50), P90: h.ValueAtQuantile(90), P99: h.ValueAtQuantile(99),
		P999: h.ValueAtQuantile(99.9), Max: h.Max(), Histogram: string(enc),
	}
	return nil
}

// derive recomputes the per-process ratios from the samples and counts.
func (s *Summary) derive() {
	s.Self.RSSPerConnBytes = 0
	if s.Conns.Opened > 0 {
		s.Self.RSSPerConnBytes = float64(s.Self.RSSConnectedBytes-s.Self.RSSStartBytes) / float64(s.Conns.Opened)
	}
	for i := range s.Procs {
		p := &s.Procs[i]
		p.CPUSendSeconds = float64(p.End.CPUTicks-p.SendStart.CPUTicks) / clockTicks
		p.RSSPerConnBytes, p.CPUMicrosPerDelivery = 0, 0
		if s.Conns.Opened > 0 {
			p.RSSPerConnBytes = float64(p.Connected.RSSBytes-p.Start.RSSBytes) / float64(s.Conns.Opened)
		}
		if s.Messages.Received > 0 {
			p.CPUMicrosPerDelivery = p.CPUSendSeconds * 1e6 / float64(s.Messages.Received)
		}
	}
	s.ProcTotal = nil
	if len(s.Procs) < 2 {
		return
	}
	t := &ProcTotal{}
	var rssGrowth int64
	for _, p := range s.Procs {
		t.RSSConnectedBytes += p.Connected.RSSBytes
		t.CPUSendSeconds += p.CPUSendSeconds
		rssGrowth += p.Connected.RSSBytes - p.Start.RSSBytes
	}
	if s.Conns.Opened > 0 {
		t.RSSPerConnBytes = float64(rssGrowth) / float64(s.Conns.Opened)
	}
	if s.Messages.Received > 0 {
		t.CPUMicrosPerDelivery = t.CPUSendSeconds * 1e6 / float64(s.Messages.Received)
	}
	s.ProcTotal = t
}

// problems lists what makes the run a failure; empty means success.
func (s *Summary) problems() []string {
	var out []string
	check := func(name string, n int64) {
		if n > 0 {
			out = append(out, fmt.Sprintf("%s=%d", name, n))
		}
	}
	check("conns_failed", s.Conns.Failed)
	check("conns_dropped", s.Conns.Dropped)
	check("lost", s.Messages.Lost)
	check("duplicated", s.Messages.Duplicated)
	check("out_of_order", s.Messages.OutOfOrder)
	check("misrouted", s.Messages.Misrouted)
	check("echoed", s.Messages.Echoed)
	check("foreign", s.Messages.Foreign)
	check("unparsed", s.Messages.Unparsed)
	check("error_frames", s.Messages.ErrorFrames)
	// A run meant to send that sent or expected nothing proved nothing.
	if s.Rate > 0 && s.Senders > 0 {
		if s.Messages.Sent == 0 {
			out = append(out, "nothing_sent")
		} else if s.Messages.Expected == 0 {
			out = append(out, "nothing_expected")
		}
	}
	return out
}

// readSummary reads one -json summary file.
func readSummary(path string) (*Summary, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read summary: %w", err)
	}
	var s Summary
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("parse summary %s (was it written by loadgen -json?): %w", path, err)
	}
	if s.Version != summaryVersion {
		return nil, fmt.Errorf("summary %s has version %d, this loadgen reads %d; rerun with the same loadgen build", path, s.Version, summaryVersion)
	}
	return &s, nil
}

// mergeSummaries combines the summaries of concurrent loadgen processes:
// counts and connect rates add up, histograms merge exactly, and samples
// of the same PID are combined as ProcStats describes.
func mergeSummaries(in []*Summary) (*Summary, error) {
	if len(in) == 0 {
		return nil, errors.New("merge: no summaries given")
	}
	out := &Summary{Version: summaryVersion, Errors: map[string]int64{}, Rate: in[0].Rate, Senders: in[0].Senders}
	h := newLatencyHistogram()
	procs := map[int]*ProcStats{}
	for i, s := range in {
		lh, err := hdr.Decode([]byte(s.Latency.Histogram))
		if err != nil {
			return nil, fmt.Errorf("merge: summary %d: decode latency histogram: %w", i+1, err)
		}
		if dropped := h.Merge(lh); dropped > 0 {
			return nil, fmt.Errorf("merge: summary %d: %d latencies outside the histogram range", i+1, dropped)
		}
		out.Processes += max(s.Processes, 1)
		out.Targets = append(out.Targets, s.Targets...)
		out.Rooms += s.Rooms
		addConns(&out.Conns, s.Conns)
		out.Self.RSSStartBytes += s.Self.RSSStartBytes
		out.Self.RSSConnectedBytes += s.Self.RSSConnectedBytes
		if out.Self.FDLimit == 0 || (s.Self.FDLimit > 0 && s.Self.FDLimit < out.Self.FDLimit) {
			out.Self.FDLimit = s.Self.FDLimit
		}
		addMessages(&out.Messages, s.Messages)
		for k, v := range s.Errors {
			out.Errors[k] += v
		}
		for _, p := range s.Procs {
			mergeProc(procs, p)
		}
		for j, tp := range s.Timeline {
			if j == len(out.Timeline) {
				out.Timeline = append(out.Timeline, TimePoint{Seconds: tp.Seconds, Phase: tp.Phase})
			}
			o := &out.Timeline[j]
			o.Connected += tp.Connected
			o.OutPerSec += tp.OutPerSec
			o.InPerSec += tp.InPerSec
			o.P99Micros = max(o.P99Micros, tp.P99Micros)
			o.Procs = mergeProcPoints(o.Procs, tp.Procs)
		}
	}
	// A rate over processes is computed from the totals, never summed.
	out.Conns.ConnectRate = 0
	if out.Conns.ConnectSeconds > 0 {
		out.Conns.ConnectRate = float64(out.Conns.Opened) / out.Conns.ConnectSeconds
	}
	slices.Sort(out.Targets)
	out.Targets = slices.Compact(out.Targets)
	for _, pid := range slices.Sorted(maps.Keys(procs)) {
		out.Procs = append(out.Procs, *procs[pid])
	}
	if err := out.setLatency(h); err != nil {
		return nil, err
	}
	out.derive()
	return out, nil
}

// addConns adds b's connection counts to a.
func addConns(a *ConnStats, b ConnStats) {
	a.Target += b.Target
	a.Opened += b.Opened
	a.Failed += b.Failed
	a.Dropped += b.Dropped
	a.ConnectSeconds = max(a.ConnectSeconds, b.ConnectSeconds)
}

// addMessages adds b's message counts to a.
func addMessages(a *MessageStats, b MessageStats) {
	a.Sent += b.Sent
	a.Received += b.Received
	a.Expected += b.Expected
	a.Delivered += b.Delivered
	a.Lost += b.Lost
	a.Duplicated += b.Duplicated
	a.OutOfOrder += b.OutOfOrder
	a.Misrouted += b.Misrouted
	a.Echoed += b.Echoed
	a.Foreign += b.Foreign
	a.Unparsed += b.Unparsed
	a.ErrorFrames += b.ErrorFrames
	a.Acks += b.Acks
	a.Info += b.Info
	a.SendSeconds = max(a.SendSeconds, b.SendSeconds)
}

// mergeProcPoints adds the processes of b to a. A PID in both is one
// process sampled by two loadgen processes in the same second (scripts/
// loadtest.sh has each sample every gateway): it counts once, with the
// larger readings.
func mergeProcPoints(a, b []ProcPoint) []ProcPoint {
	for _, p := range b {
		i := slices.IndexFunc(a, func(q ProcPoint) bool { return q.PID == p.PID })
		if i < 0 {
			a = append(a, p)
			continue
		}
		a[i].CPU = max(a[i].CPU, p.CPU)
		a[i].RSSBytes = max(a[i].RSSBytes, p.RSSBytes)
	}
	return a
}

// mergeProc folds p into the entry for its PID.
func mergeProc(m map[int]*ProcStats, p ProcStats) {
	q, ok := m[p.PID]
	if !ok {
		m[p.PID] = &p
		return
	}
	if p.Start.AtUnixMs < q.Start.AtUnixMs {
		q.Start = p.Start
	}
	if p.Connected.AtUnixMs > q.Connected.AtUnixMs {
		q.Connected = p.Connected
	}
	if p.SendStart.AtUnixMs < q.SendStart.AtUnixMs {
		q.SendStart = p.SendStart
	}
	if p.End.AtUnixMs > q.End.AtUnixMs {
		q.End = p.End
	}
}

// writeJSON prints s as indented JSON.
func (s *Summary) writeJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(s)
}

// writeText prints s for people.
func (s *Summary) writeText(w io.Writer) error {
	var b strings.Builder
	c, m, l := s.Conns, s.Messages, s.Latency
	fmt.Fprintf(&b, "loadgen summary (%d process(es), targets %s)\n", s.Processes, strings.Join(s.Targets, ","))
	fmt.Fprintf(&b, "  rooms %d, senders/room %d, rate/sender %g msg/s\n", s.Rooms, s.Senders, s.Rate)
	fmt.Fprintf(&b, "  conns      target %d opened %d failed %d dropped %d in %.2fs (%.0f/s)\n",
		c.Target, c.Opened, c.Failed, c.Dropped, c.ConnectSeconds, c.ConnectRate)
	fmt.Fprintf(&b, "  messages   sent %d received %d expected %d delivered %d over %.2fs\n",
		m.Sent, m.Received, m.Expected, m.Delivered, m.SendSeconds)
	fmt.Fprintf(&b, "  delivery   lost %d duplicated %d out-of-order %d misrouted %d echoed %d foreign %d unparsed %d error-frames %d\n",
		m.Lost, m.Duplicated, m.OutOfOrder, m.Misrouted, m.Echoed, m.Foreign, m.Unparsed, m.ErrorFrames)
	if m.Acks > 0 || m.Info > 0 {
		fmt.Fprintf(&b, "  frames     acks %d presence/history %d\n", m.Acks, m.Info)
	}
	if m.SendSeconds > 0 {
		fmt.Fprintf(&b, "  throughput out %.0f msg/s, in %.0f msg/s\n", float64(m.Sent)/m.SendSeconds, float64(m.Received)/m.SendSeconds)
	}
	if l.Count == 0 {
		fmt.Fprintf(&b, "  latency    n 0 (nothing received) p50 - p90 - p99 - p99.9 - max -\n")
	} else {
		fmt.Fprintf(&b, "  latency    n %d p50 %s p90 %s p99 %s p99.9 %s max %s\n", l.Count,
			fmtMicros(l.P50), fmtMicros(l.P90), fmtMicros(l.P99), fmtMicros(l.P999), fmtMicros(l.Max))
	}
	fmt.Fprintf(&b, "  errors     %s\n", fmtCounts(s.Errors))
	if s.Self.RSSConnectedBytes > 0 {
		per := "-"
		if s.Conns.Opened > 0 {
			per = fmt.Sprintf("%.0f", s.Self.RSSPerConnBytes)
		}
		fmt.Fprintf(&b, "  loadgen    RSS start %s connected %s | %s B RSS per held connection | descriptor limit %d per process\n",
			fmtBytes(s.Self.RSSStartBytes), fmtBytes(s.Self.RSSConnectedBytes), per, s.Self.FDLimit)
	}
	// Ratios without a denominator (no connection opened, nothing
	// received) print as a dash, never as 0.
	perConn := func(v float64) string {
		if s.Conns.Opened == 0 {
			return "-"
		}
		return fmt.Sprintf("%.0f", v)
	}
	perDelivery := func(v float64) string {
		if s.Messages.Received == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", v)
	}
	for _, p := range s.Procs {
		fmt.Fprintf(&b, "  pid %-7d RSS start %s connected %s end %s | CPU %.2fs in send phase | %s B RSS/conn, %s µs CPU/delivery\n",
			p.PID, fmtBytes(p.Start.RSSBytes), fmtBytes(p.Connected.RSSBytes), fmtBytes(p.End.RSSBytes),
			p.CPUSendSeconds, perConn(p.RSSPerConnBytes), perDelivery(p.CPUMicrosPerDelivery))
		for _, e := range []string{p.Start.Err, p.Connected.Err, p.End.Err} {
			if e != "" {
				fmt.Fprintf(&b, "    sample error: %s\n", e)
			}
		}
	}
	if t := s.ProcTotal; t != nil {
		fmt.Fprintf(&b, "  all pids    RSS connected %s | CPU %.2fs in send phase | %s B RSS/conn, %s µs CPU/delivery (totals over all pids)\n",
			fmtBytes(t.RSSConnectedBytes), t.CPUSendSeconds, perConn(t.RSSPerConnBytes), perDelivery(t.CPUMicrosPerDelivery))
	}
	if pr := s.problems(); len(pr) > 0 {
		fmt.Fprintf(&b, "  verdict    FAIL: %s\n", strings.Join(pr, " "))
	} else {
		fmt.Fprintf(&b, "  verdict    OK\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// fmtBytes formats a byte count in MiB.
func fmtBytes(n int64) string {
	return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
}
