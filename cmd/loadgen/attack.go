package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"
)

// The attack mode (-mode attack) plays one hostile client against a
// gateway while a bystander room measures what everyone else feels, so
// BENCHMARKS.md can show each attack before and after the defences:
//
//	flood         one member sends chat messages as fast as the socket
//	              takes them; -conns other members in its room read.
//	reconnect     like flood, but the flooder closes its connection after
//	              each burst of 200 messages and connects again at once,
//	              to get a fresh burst each time.
//	continuation  one connection starts a fragmented message and then
//	              sends empty continuation frames as fast as it can.
//	fragments     -conns connections each start a fragmented message of
//	              -attack-bytes and add one byte every -attack-interval,
//	              never finishing it; the gateway's RSS (-pid) per
//	              connection is the figure.
//
// In every attack bystanders in a room of their own (four senders, each
// sending every 200 ms, within the default RATE_LIMIT, and one receiver)
// measure send→receive latency for the quiet 3 s before the attack and
// during it, reported as percentiles and as a ratio, in the same run. The
// run is bounded by -duration and stops by itself.

// attackReport is what one attack saw.
type attackReport struct {
	Attack       string
	Duration     time.Duration
	FramesSent   int64          // by the attacker(s)
	ErrorFrames  map[string]int // error codes the attacker got, by code
	AttackerEnd  string         // how the attacker's connection ended
	AttackerTime time.Duration  // from the attack's start to that end
	Members      int            // other members of the flooder's room
	MembersGot   int64          // messages they received
	MembersShut  map[string]int // how members' connections ended, if they did
	Refused      int            // attacker connections the gateway refused
	Closed       int            // fragment holders the gateway closed
	RSSBefore    int64          // gateway RSS before the attack's connections
	RSSAfter     int64          // at the end of the attack
	CPU          time.Duration  // gateway CPU during the attack
	Quiet, Under latencies      // bystanders before and during the attack
}

// latencies are a bystander's send→receive times.
type latencies []time.Duration

func (l latencies) pct(p float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	s := slices.Clone(l)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

// runAttack runs cfg.attack against cfg.urls[0] and prints the report.
func runAttack(ctx context.Context, cfg config, stdout io.Writer) error {
	if _, err := raiseNoFile(); err != nil {
		return err
	}
	a := &attacker{cfg: cfg, base: cfg.urls[0], room: fmt.Sprintf("atk%d-", time.Now().UnixNano()%1e6)}
	rep, err := a.run(ctx)
	if rep != nil {
		rep.write(stdout)
	}
	return err
}

type attacker struct {
	cfg  config
	base string
	room string
	src  atomic.Uint64 // next source address
}

// dial opens a WebSocket to room, from the next -src address.
func (a *attacker) dial(ctx context.Context, room string) (net.Conn, *bufio.Reader, error) {
	return a.dialQuery(ctx, room, "")
}

// dialQuery is dial with a query string (the gateway's options).
func (a *attacker) dialQuery(ctx context.Context, room, query string) (net.Conn, *bufio.Reader, error) {
	var src netip.Addr
	if n := len(a.cfg.src); n > 0 {
		src = a.cfg.src[int(a.src.Add(1)-1)%n]
	}
	d := ws.Dialer{
		Timeout: a.cfg.dialTimeout,
		NetDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return netDialer(src).DialContext(ctx, network, addr)
		},
	}
	u := a.base + "/ws/chat/" + room + "/"
	if query != "" {
		u += "?" + query
	}
	nc, br, _, err := d.Dial(ctx, u)
	if err != nil {
		return nil, nil, err
	}
	if br == nil {
		br = bufio.NewReaderSize(nc, 4096)
	}
	return nc, br, nil
}

// netDialer returns a TCP dialer bound to src, if valid. The port is left
// to connect() (IP_BIND_ADDRESS_NO_PORT), so each source address offers
// the whole ephemeral port range to every gateway address.
func netDialer(src netip.Addr) *net.Dialer {
	d := &net.Dialer{}
	if !src.IsValid() {
		return d
	}
	d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
	d.Control = func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
		})
		return errors.Join(err, serr)
	}
	return d
}

func (a *attacker) run(ctx context.Context) (*attackReport, error) {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.duration+30*time.Second)
	defer cancel()
	rep := &attackReport{Attack: a.cfg.attack, Duration: a.cfg.duration, ErrorFrames: map[string]int{}, MembersShut: map[string]int{}}
	by, err := a.startBystanders(ctx)
	if err != nil {
		return nil, fmt.Errorf("bystanders: %w", err)
	}
	defer by.stop()
	time.Sleep(3 * time.Second)
	rep.Quiet = by.take()
	pid := 0
	if len(a.cfg.pids) > 0 {
		pid = a.cfg.pids[0]
	}
	var cpu0 int64
	if pid > 0 {
		rep.RSSBefore, _ = readRSS(pid)
		cpu0, _ = readCPUTicks(pid)
	}
	switch a.cfg.attack {
	case "flood":
		err = a.flood(ctx, rep)
	case "continuation":
		err = a.continuation(ctx, rep)
	case "reconnect":
		err = a.reconnect(ctx, rep)
	case "fragments":
		err = a.fragments(ctx, rep)
	}
	rep.Under = by.take()
	if pid > 0 {
		rep.RSSAfter, _ = readRSS(pid)
		cpu1, _ := readCPUTicks(pid)
		rep.CPU = time.Duration(cpu1-cpu0) * (time.Second / clockTicks)
	}
	return rep, err
}

// bystanderSenders send a stamp every bystanderEvery each, staggered.
const (
	bystanderSenders = 4
	bystanderEvery   = 200 * time.Millisecond
)

// bystanders are members of a room of their own: bystanderSenders send
// stamps, one more member records the latency.
type bystanders struct {
	mu     sync.Mutex
	lat    latencies
	nc     []net.Conn
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func (a *attacker) startBystanders(ctx context.Context) (*bystanders, error) {
	room := a.room + "by"
	r, br, err := a.dial(ctx, room)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	b := &bystanders{nc: []net.Conn{r}, cancel: cancel}
	for i := range bystanderSenders {
		s, _, err := a.dial(ctx, room)
		if err != nil {
			b.stop()
			return nil, err
		}
		b.nc = append(b.nc, s)
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			select { // stagger the senders
			case <-ctx.Done():
				return
			case <-time.After(time.Duration(i) * bystanderEvery / bystanderSenders):
			}
			t := time.NewTicker(bystanderEvery)
			defer t.Stop()
			var buf []byte
			for {
				msg := `{"username":"bystander","message":"` + strconv.FormatInt(time.Now().UnixNano(), 10) + `"}`
				buf = appendClientFrame(buf[:0], ws.OpText, []byte(msg), [4]byte{1, 2, 3, 4})
				if _, err := s.Write(buf); err != nil {
					return
				}
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
		}()
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			f, err := readFrame(br)
			if err != nil {
				return
			}
			if f.op == ws.OpText {
				if _, rest, ok := strings.Cut(string(f.payload), `"message":"`); ok {
					if stamp, _, ok := strings.Cut(rest, `"`); ok {
						if ns, err := strconv.ParseInt(stamp, 10, 64); err == nil {
							b.mu.Lock()
							b.lat = append(b.lat, time.Duration(time.Now().UnixNano()-ns))
							b.mu.Unlock()
						}
					}
				}
			}
			if f.discard > 0 {
				_, _ = br.Discard(f.discard)
			}
		}
	}()
	return b, nil
}

// take returns the latencies recorded since the last take.
func (b *bystanders) take() latencies {
	b.mu.Lock()
	defer b.mu.Unlock()
	l := b.lat
	b.lat = nil
	return l
}

func (b *bystanders) stop() {
	b.cancel()
	for _, nc := range b.nc {
		nc.Close()
	}
	b.wg.Wait()
}

// watch reads nc until it ends, counting error frames into codes (when
// not nil) and chat messages into got; it returns how the connection
// ended: "close <code> <reason>", "eof" or the read error.
func watch(br *bufio.Reader, codes func(string), got *atomic.Int64) string {
	for {
		f, err := readFrame(br)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return "eof"
			}
			return "read error: " + err.Error()
		}
		switch f.op {
		case ws.OpClose:
			code := 0
			if len(f.payload) >= 2 {
				code = int(binary.BigEndian.Uint16(f.payload))
			}
			end := fmt.Sprintf("close %d", code)
			if len(f.payload) > 2 {
				end += " " + strconv.Quote(string(f.payload[2:]))
			}
			return end
		case ws.OpText:
			p := string(f.payload)
			if c, ok := strings.CutPrefix(p, `{"error":"`); ok && codes != nil {
				c, _, _ = strings.Cut(c, `"`)
				codes(c)
			} else if got != nil {
				got.Add(1)
			}
		}
		if f.discard > 0 {
			_, _ = br.Discard(f.discard)
		}
	}
}

// flood: one member writes messages as fast as the socket takes them.
func (a *attacker) flood(ctx context.Context, rep *attackReport) error {
	room := a.room + "flood"
	type member struct {
		nc  net.Conn
		end chan string
	}
	var got atomic.Int64
	members := make([]member, a.cfg.conns)
	for i := range members {
		nc, br, err := a.dial(ctx, room)
		if err != nil {
			return fmt.Errorf("member %d: %w", i, err)
		}
		members[i] = member{nc, make(chan string, 1)}
		go func() { members[i].end <- watch(br, nil, &got) }()
	}
	rep.Members = len(members)
	var batch []byte
	for i := range 64 {
		batch = appendClientFrame(batch, ws.OpText, fmt.Appendf(nil, `{"username":"flooder","message":"flood %d"}`, i), [4]byte{9, 8, 7, 6})
	}
	a.sustain(ctx, rep, room, nil, batch, 64)
	for _, m := range members {
		select {
		case e := <-m.end:
			rep.MembersShut[e]++
		default:
		}
		m.nc.Close()
	}
	rep.MembersGot = got.Load()
	return nil
}

// sustain is a persistent attacker: it connects to room, writes first
// (when set) and then batch (holding n frames) as fast as the socket
// takes it, and when the gateway closes the connection it connects again
// at once, until the duration ends. It notes how the first connection
// ended and how many connections the gateway closed.
func (a *attacker) sustain(ctx context.Context, rep *attackReport, room string, first, batch []byte, n int) {
	start := time.Now()
	deadline := start.Add(a.cfg.duration)
	var mu sync.Mutex
	for time.Now().Before(deadline) && ctx.Err() == nil {
		nc, br, err := a.dial(ctx, room)
		if err != nil {
			rep.Refused++
			time.Sleep(10 * time.Millisecond)
			continue
		}
		end := make(chan string, 1)
		go func() {
			end <- watch(br, func(c string) { mu.Lock(); rep.ErrorFrames[c]++; mu.Unlock() }, nil)
		}()
		if first != nil {
			_, _ = nc.Write(first)
		}
		ended := ""
		pending := batch
		for ended == "" && time.Now().Before(deadline) {
			_ = nc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			written, err := nc.Write(pending)
			pending = pending[written:]
			if len(pending) == 0 {
				rep.FramesSent += int64(n)
				pending = batch
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// The gateway reads slowly (its rates pace this client):
				// the connection is alive; the rest of the batch follows.
				select {
				case ended = <-end:
				default:
				}
				continue
			}
			if err != nil {
				select {
				case ended = <-end:
				case <-time.After(time.Second):
					ended = "write failed: " + err.Error()
				}
				break
			}
			select {
			case ended = <-end:
			default:
			}
		}
		nc.Close()
		if ended == "" {
			continue // the duration ended with the connection open
		}
		rep.Closed++
		if rep.AttackerEnd == "" {
			rep.AttackerEnd, rep.AttackerTime = ended, time.Since(start)
		}
	}
	if rep.AttackerEnd == "" {
		rep.AttackerEnd, rep.AttackerTime = "still open", time.Since(start)
	}
	mu.Lock() // the watchers of closed connections are done with ErrorFrames
	mu.Unlock()
}

// reconnect: a flooder that reconnects after each burst of 200 messages,
// to get a fresh burst from each connection; -conns members read.
func (a *attacker) reconnect(ctx context.Context, rep *attackReport) error {
	room := a.room + "reconnect"
	var got atomic.Int64
	var members []net.Conn
	for i := range a.cfg.conns {
		nc, br, err := a.dial(ctx, room)
		if err != nil {
			return fmt.Errorf("member %d: %w", i, err)
		}
		members = append(members, nc)
		go watch(br, nil, &got)
	}
	rep.Members = len(members)
	var burst []byte
	for i := range 200 {
		burst = appendClientFrame(burst, ws.OpText, fmt.Appendf(nil, `{"username":"flooder","message":"again %d"}`, i), [4]byte{9, 8, 7, 6})
	}
	deadline := time.Now().Add(a.cfg.duration)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		nc, _, err := a.dial(ctx, room)
		if err != nil {
			rep.Refused++
			continue
		}
		_ = nc.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := nc.Write(burst); err == nil {
			rep.FramesSent += 200
		}
		nc.Close()
		rep.Closed++
	}
	rep.AttackerEnd, rep.AttackerTime = "closed by itself after each burst", a.cfg.duration
	for _, m := range members {
		m.Close()
	}
	rep.MembersGot = got.Load()
	return nil
}

// continuation: a fragmented message that never ends, as a flood of
// empty continuation frames.
func (a *attacker) continuation(ctx context.Context, rep *attackReport) error {
	var batch []byte
	for range 512 {
		batch = appendFrameFin(batch, false, ws.OpContinuation, nil)
	}
	a.sustain(ctx, rep, a.room+"cont", appendFrameFin(nil, false, ws.OpText, []byte("x")), batch, 512)
	return nil
}

// fragments: -conns connections each hold an unfinished message, adding
// one byte every -attack-interval.
func (a *attacker) fragments(ctx context.Context, rep *attackReport) error {
	type holder struct {
		nc  net.Conn
		end chan string
	}
	var hs []holder
	defer func() {
		for _, h := range hs {
			h.nc.Close()
		}
	}()
	start := time.Now()
	for i := range a.cfg.conns {
		nc, br, err := a.dial(ctx, a.room+"frag"+strconv.Itoa(i%100))
		if err != nil {
			rep.Refused++
			continue
		}
		h := holder{nc, make(chan string, 1)}
		go func() { h.end <- watch(br, nil, nil) }()
		if _, err := nc.Write(appendFrameFin(nil, false, ws.OpText, make([]byte, a.cfg.attackBytes))); err != nil {
			nc.Close()
			rep.Closed++
			continue
		}
		rep.FramesSent++
		hs = append(hs, h)
	}
	t := time.NewTicker(a.cfg.attackInterval)
	defer t.Stop()
	one := appendFrameFin(nil, false, ws.OpContinuation, []byte("y"))
	for time.Since(start) < a.cfg.duration {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		for _, h := range hs {
			_ = h.nc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			if _, err := h.nc.Write(one); err == nil {
				rep.FramesSent++
			}
		}
	}
	if pid := 0; len(a.cfg.pids) > 0 {
		pid = a.cfg.pids[0]
		rep.RSSAfter, _ = readRSS(pid) // while the holders are still open
	}
	for _, h := range hs {
		select {
		case e := <-h.end:
			rep.Closed++
			rep.MembersShut[e]++
		default:
		}
	}
	rep.Members = len(hs)
	return nil
}

// appendFrameFin appends a masked client frame with the given FIN bit.
func appendFrameFin(dst []byte, fin bool, op ws.OpCode, payload []byte) []byte {
	start := len(dst)
	dst = appendClientFrame(dst, op, payload, [4]byte{5, 6, 7, 8})
	if !fin {
		dst[start] &^= 0x80
	}
	return dst
}

func (r *attackReport) write(w io.Writer) {
	fmt.Fprintf(w, "attack: %s for %s\n", r.Attack, r.Duration)
	fmt.Fprintf(w, "  frames sent by the attacker(s): %d\n", r.FramesSent)
	if len(r.ErrorFrames) > 0 {
		fmt.Fprintf(w, "  error frames it got: %v\n", r.ErrorFrames)
	}
	if r.AttackerEnd != "" {
		fmt.Fprintf(w, "  attacker's first connection: %s after %s\n", r.AttackerEnd, r.AttackerTime.Round(time.Millisecond))
	}
	if r.Attack != "fragments" {
		what := "connections closed by the gateway"
		if r.Attack == "reconnect" {
			what = "connections it closed itself"
		}
		fmt.Fprintf(w, "  attacker reconnected at once each time: %d %s, %d dials refused\n", r.Closed, what, r.Refused)
	}
	if r.Attack == "flood" || r.Attack == "reconnect" {
		fmt.Fprintf(w, "  other members of its room: %d, received %d messages, connections ended: %v\n", r.Members, r.MembersGot, r.MembersShut)
	}
	if r.Attack == "fragments" {
		fmt.Fprintf(w, "  holders: %d open, %d refused at connect, %d closed by the gateway %v\n", r.Members, r.Refused, r.Closed, r.MembersShut)
	}
	if r.RSSBefore > 0 {
		per := "-"
		if r.Members > 0 && r.Attack == "fragments" {
			per = fmt.Sprintf("%.1f KiB per holder", float64(r.RSSAfter-r.RSSBefore)/1024/float64(r.Members))
		}
		fmt.Fprintf(w, "  gateway RSS: %.1f -> %.1f MiB (%s); CPU during the attack: %s\n",
			float64(r.RSSBefore)/(1<<20), float64(r.RSSAfter)/(1<<20), per, r.CPU.Round(10*time.Millisecond))
	}
	ratio := "-"
	if q := r.Quiet.pct(0.99); q > 0 && len(r.Under) > 0 {
		ratio = fmt.Sprintf("%.1fx", float64(r.Under.pct(0.99))/float64(q))
	}
	fmt.Fprintf(w, "  bystander room: quiet p50 %s p99 %s (%d msgs); under attack p50 %s p99 %s (%d msgs); p99 ratio %s\n",
		r.Quiet.pct(0.5).Round(10*time.Microsecond), r.Quiet.pct(0.99).Round(10*time.Microsecond), len(r.Quiet),
		r.Under.pct(0.5).Round(10*time.Microsecond), r.Under.pct(0.99).Round(10*time.Microsecond), len(r.Under), ratio)
}
