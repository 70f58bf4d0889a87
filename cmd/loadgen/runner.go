package main

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gobwas/ws"
)

// runner carries one load test through its phases: connect, hold, send,
// drain, close.
type runner struct {
	cfg      config
	run      uint32 // random ID stamped into every message
	prefix   string // room name prefix
	live     *live
	clients  []*client // by connection index; nil where the dial failed
	poll     *pollSet  // the epoll loops that read the connections
	fdLimit  int64     // connections this process can hold (RLIMIT_NOFILE), for the summary
	closing  atomic.Bool
	senders  sync.WaitGroup
	stopSend chan struct{}
	stderr   io.Writer
}

// newRunner prepares a run of cfg; progress goes to stderr.
func newRunner(cfg config, stderr io.Writer) *runner {
	r := &runner{
		cfg:      cfg,
		run:      rand.Uint32(),
		live:     &live{latency: newLatencyRecorder(4 * runtime.GOMAXPROCS(0))},
		clients:  make([]*client, cfg.conns),
		stopSend: make(chan struct{}),
		stderr:   stderr,
	}
	r.prefix = cfg.roomPrefix
	if r.prefix == "" {
		r.prefix = "lg" + strconv.FormatUint(uint64(r.run), 36) + "-"
	}
	return r
}

// numSenders is the number of sender IDs in use: rooms × senders.
func (r *runner) numSenders() int { return r.cfg.rooms * r.cfg.senders }

// execute runs all phases and returns the summary. Cancelling ctx cuts the
// current phase short; the summary is still built.
func (r *runner) execute(ctx context.Context) (*Summary, error) {
	samples := make([]ProcStats, len(r.cfg.pids))
	sampleAll := func(set func(p *ProcStats, s procSample)) {
		now := time.Now()
		for i, pid := range r.cfg.pids {
			samples[i].PID = pid
			set(&samples[i], sampleProc(pid, now))
		}
	}
	sampleAll(func(p *ProcStats, s procSample) { p.Start = s })
	self := os.Getpid()
	selfStart := sampleProc(self, time.Now())

	stopProgress := make(chan struct{})
	progressDone := make(chan struct{})
	r.live.phase.Store("connect")
	go func() {
		defer close(progressDone)
		var w io.Writer
		if !r.cfg.quiet {
			w = r.stderr
		}
		r.live.progress(w, r.cfg.label, r.cfg.pids, stopProgress, time.Now())
	}()

	connStart := time.Now()
	if err := r.connectAll(ctx); err != nil {
		close(stopProgress)
		<-progressDone
		return nil, err
	}
	connSecs := time.Since(connStart).Seconds()

	r.live.phase.Store("hold")
	wait(ctx, r.cfg.hold)
	sampleAll(func(p *ProcStats, s procSample) { p.Connected, p.SendStart = s, s })
	debug.FreeOSMemory() // what the connections hold, not the garbage of dialling them
	selfConnected := sampleProc(self, time.Now())

	r.live.phase.Store("send")
	sendStart := time.Now()
	r.sendAll(ctx, sendStart, sendStart.Add(r.cfg.duration))
	sendSecs := time.Since(sendStart).Seconds()

	r.live.phase.Store("drain")
	wait(ctx, r.cfg.drain)
	sampleAll(func(p *ProcStats, s procSample) { p.End = s })

	r.live.phase.Store("close")
	r.closeAll()
	close(stopProgress)
	<-progressDone

	s, serr := r.summarize(connSecs, sendSecs)
	if serr != nil {
		return nil, serr
	}
	r.live.mu.Lock()
	s.Timeline = r.live.timeline
	r.live.mu.Unlock()
	s.Procs = samples
	s.Self = SelfStats{RSSStartBytes: selfStart.RSSBytes, RSSConnectedBytes: selfConnected.RSSBytes, FDLimit: r.fdLimit}
	s.derive()
	return s, nil
}

// wait sleeps for d or until ctx is done.
func wait(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// connectAll starts the epoll loops, which open the connections (dial.go)
// paced by -connect-rate and bounded by -dial-concurrency, -dial-timeout
// and -connect-timeout, and returns once every dial has ended.
func (r *runner) connectAll(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.connectTimeout)
	defer cancel()
	job := newDialJob(ctx, r)
	ps, err := newPollSet(r, runtime.GOMAXPROCS(0), job)
	if err != nil {
		return err
	}
	r.poll = ps
	job.wg.Wait()
	return nil
}

// dialError marks a failure of the TCP connect, as opposed to the handshake.
type dialError struct{ err error }

// Error returns the failed connect's error text.
func (e *dialError) Error() string { return e.err.Error() }

// Unwrap returns the failed connect's error.
func (e *dialError) Unwrap() error { return e.err }

// placement returns the room of connection i and the index of its gateway
// URL. Connection i is member m = i / rooms of room i mod rooms. Spread
// (byRoom false), member m of room k goes to URL (k + m) mod len(urls):
// the members of every room are spread over all the URLs, so with several
// gateways each message crosses nodes whatever the number of rooms. By
// room, every member of room k goes to URL k mod len(urls).
func placement(i, rooms, urls int, byRoom bool) (room, url int) {
	room = i % rooms
	if byRoom {
		return room, room % urls
	}
	return room, (room + i/rooms) % urls
}

// dialErrKind names a dial or handshake failure for the error counts.
func dialErrKind(err error) string {
	var se ws.StatusError
	var de *dialError
	var ne net.Error
	switch {
	case errors.As(err, &se):
		return "handshake_" + strconv.Itoa(int(se))
	case errors.As(err, &de):
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			return "dial_timeout"
		case errors.Is(err, syscall.ECONNREFUSED):
			return "dial_refused (nothing listens there: is the gateway running, on that port?)"
		case errors.Is(err, syscall.EADDRNOTAVAIL):
			return "dial_no_source_port (out of ephemeral ports or a -src address not on this host: add -src addresses)"
		case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
			return "dial_out_of_descriptors (raise ulimit -n or run several loadgen processes)"
		case errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EHOSTUNREACH):
			return "dial_unreachable"
		case errors.Is(err, syscall.ECONNRESET):
			return "dial_reset"
		case errors.Is(err, errNoAddress):
			return "dial_no_address (the -url host has no address of the -src family: give -src addresses of its family)"
		}
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) {
			return "dial_dns (" + dnsErr.Err + ")"
		}
		var errno syscall.Errno
		if errors.As(err, &errno) {
			return "dial (" + errno.Error() + ")"
		}
		return "dial"
	case errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded):
		return "handshake_timeout"
	default:
		return "handshake"
	}
}

// sendAll runs every sender from start to end, or until ctx is done.
func (r *runner) sendAll(ctx context.Context, start, end time.Time) {
	if r.cfg.rate == 0 || r.cfg.senders == 0 || r.cfg.duration == 0 {
		wait(ctx, r.cfg.duration)
		return
	}
	period := time.Duration(float64(time.Second) / r.cfg.rate)
	n := r.numSenders()
	for _, c := range r.clients {
		if c == nil || c.sender < 0 {
			continue
		}
		// Spread senders over one period so they do not fire together.
		offset := period * time.Duration(c.sender) / time.Duration(n)
		r.senders.Add(1)
		go c.sendLoop(r, start.Add(offset), end)
	}
	done := make(chan struct{})
	go func() { r.senders.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		close(r.stopSend)
		<-done
	}
}

// closeAll stops the epoll loops, then sends a normal closure on every
// connection still open and closes it.
func (r *runner) closeAll() {
	r.closing.Store(true)
	r.poll.close()
	for _, c := range r.poll.open() {
		c.close()
		r.live.connected.Add(-1)
	}
}

// summarize builds the summary from the clients once all goroutines ended.
func (r *runner) summarize(connSecs, sendSecs float64) (*Summary, error) {
	s := &Summary{
		Version: summaryVersion, Processes: 1, Targets: r.cfg.urls,
		Rooms: r.cfg.rooms, Senders: r.cfg.senders, Rate: r.cfg.rate,
		Errors: r.live.errs.snapshot(),
	}
	if s.Errors == nil {
		s.Errors = map[string]int64{}
	}
	s.Conns = ConnStats{
		Target: int64(r.cfg.conns), Opened: r.live.opened.Load(), Failed: r.live.failed.Load(),
		ConnectSeconds: connSecs,
	}
	if connSecs > 0 {
		s.Conns.ConnectRate = float64(s.Conns.Opened) / connSecs
	}
	senders := make([][]*client, r.cfg.rooms)
	for _, c := range r.clients {
		if c != nil && c.sender >= 0 {
			senders[c.room] = append(senders[c.room], c)
		}
	}
	m := &s.Messages
	m.SendSeconds = sendSecs
	for _, c := range r.clients {
		if c == nil {
			continue
		}
		m.Sent += int64(c.sent)
		m.Received += c.received
		m.Duplicated += c.dup
		m.OutOfOrder += c.late
		m.Misrouted += c.misrouted
		m.Echoed += c.echoed
		m.Foreign += c.foreign
		m.Unparsed += c.unparsed
		m.ErrorFrames += c.errFrames
		m.Acks += c.acks
		m.Info += c.info
		if c.dropped {
			s.Conns.Dropped++
			continue
		}
		for _, snd := range senders[c.room] {
			if snd == c {
				continue
			}
			t := &c.peers[snd.sender%r.cfg.senders]
			m.Expected += int64(snd.sent)
			m.Lost += int64(t.lost(snd.sent))
			m.Delivered += int64(snd.sent - t.lost(snd.sent))
		}
	}
	return s, s.setLatency(r.live.latency.totals())
}
