package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/chatgw/gateway/internal/redistest"
	"github.com/chatgw/gateway/internal/testutil"
	"github.com/chatgw/gateway/pkg/stream"
)

// Tests of the opt-in protocol of issue 11: ids, since, history, ack and
// cid, presence. The node-kill tests run a gateway as a process of its
// own (built once, below) so that it can be killed with SIGKILL.

func TestMain(m *testing.M) {
	code := m.Run()
	if gatewayBin.dir != "" {
		os.RemoveAll(gatewayBin.dir)
	}
	os.Exit(code)
}

// gatewayBin is the gateway binary, built on first use.
var gatewayBin struct {
	once      sync.Once
	dir, path string
	err       error
}

// buildGateway builds the gateway once for the tests and returns the
// binary's path. It reuses the packages go test compiled (same race
// setting), so it costs about a link.
func buildGateway(t *testing.T) string {
	t.Helper()
	gatewayBin.once.Do(func() {
		dir, err := os.MkdirTemp("", "gateway-test-")
		if err != nil {
			gatewayBin.err = err
			return
		}
		gatewayBin.dir = dir
		goBin, err := exec.LookPath("go")
		if err != nil {
			goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		path := filepath.Join(dir, "gateway")
		args := []string{"build", "-o", path}
		if raceEnabled {
			args = append(args, "-race") // the test's own packages, cached
		}
		out, err := exec.Command(goBin, append(args, ".")...).CombinedOutput()
		if err != nil {
			gatewayBin.err = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		gatewayBin.path = path
	})
	if gatewayBin.err != nil {
		t.Fatal(gatewayBin.err)
	}
	return gatewayBin.path
}

// procGateway is a gateway running as a process of its own.
type procGateway struct {
	*gateway
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited
}

// startProcess runs the gateway binary with the test defaults and env,
// waits until it listens, and kills it at the end of the test.
func startProcess(t *testing.T, env map[string]string) *procGateway {
	t.Helper()
	vars := withEnv(map[string]string{"PORT": "0", "LISTEN_HOST": "127.0.0.1", "LOG_LEVEL": "info", "SHUTDOWN_TIMEOUT": "5s",
		"DRAIN_DELAY": "0s", "DRAIN_WINDOW": "0s"}, env)
	cmd := exec.Command(buildGateway(t))
	for k, v := range vars {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &procGateway{gateway: &gateway{logs: &testLog{t: t}}, cmd: cmd, done: make(chan struct{})}
	addrc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Bytes()
			_, _ = p.logs.Write(append(line, '\n'))
			var l struct{ Msg, Addr string }
			if json.Unmarshal(line, &l) == nil && l.Msg == "gateway listening" {
				addrc <- l.Addr
			}
		}
		_ = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill(t)
		p.logs.done()
	})
	select {
	case p.addr = <-addrc:
	case <-p.done:
		t.Fatalf("gateway process exited before listening: %v", cmd.ProcessState)
	case <-time.After(testutil.Timeout):
		t.Fatal("gateway process did not start listening")
	}
	return p
}

// kill ends the process with SIGKILL: no drain, no close frames.
func (p *procGateway) kill(t *testing.T) {
	t.Helper()
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(testutil.Timeout):
		t.Error("gateway process did not exit after SIGKILL")
	}
}

// historyEnv is the Redis environment of the node-kill tests: presence
// published often, so that a dead node drops out fast.
func historyEnv(r *redistest.Server) map[string]string {
	return withEnv(noRateLimit, redisEnvFor(r), map[string]string{"ENVIRONMENT": "production", "ALLOWED_HOSTS": "*",
		"REDIS_BLOCK": "1s", "REDIS_TIMEOUT": "1s", "REDIS_PRESENCE_INTERVAL": "200ms"})
}

// wire is any frame of the protocol, decoded.
type wire struct {
	Username  *string `json:"username"`
	Message   *string `json:"message"`
	ID        string  `json:"id"`
	Ack       string  `json:"ack"`
	CID       string  `json:"cid"`
	Error     string  `json:"error"`
	Truncated *struct {
		Since, From string
	} `json:"truncated"`
	Presence *struct {
		Members int `json:"members"`
	} `json:"presence"`
}

func decodeWire(t testing.TB, s string) wire {
	t.Helper()
	var w wire
	if err := json.Unmarshal([]byte(s), &w); err != nil {
		t.Fatalf("frame %q is not JSON: %v", s, err)
	}
	return w
}

// seenMsg is a chat message a client received with its ID.
type seenMsg struct{ id, text string }

// resumer is an ids=1 member that, when its connection breaks, joins
// again on the node next gives it with since= the last ID it saw (0
// before any), as a reconnecting client does.
type resumer struct {
	t    *testing.T
	room string
	next func() *gateway // where to reconnect

	mu        sync.Mutex
	seen      []seenMsg
	joins     int
	problems  []string
	conn      net.Conn
	stopped   bool
	truncated int
}

func startResumer(t *testing.T, g *gateway, room string, next func() *gateway) *resumer {
	r := &resumer{t: t, room: room, next: next}
	c, err := g.tryDial("/ws/chat/" + room + "/?ids=1")
	if err != nil {
		t.Fatal(err)
	}
	r.joins = 1
	go r.run(c)
	t.Cleanup(r.stop)
	return r
}

func (r *resumer) run(c *client) {
	for {
		r.mu.Lock()
		if r.stopped {
			r.mu.Unlock()
			c.conn.Close()
			return
		}
		r.conn = c.conn
		r.mu.Unlock()
		for {
			_ = c.conn.SetReadDeadline(time.Now().Add(time.Minute))
			h, err := ws.ReadHeader(c.br)
			var p []byte
			if err == nil {
				p = make([]byte, h.Length)
				_, err = io.ReadFull(c.br, p)
			}
			if err != nil {
				break
			}
			if h.OpCode != ws.OpText {
				continue
			}
			var w wire
			r.mu.Lock()
			switch {
			case json.Unmarshal(p, &w) != nil:
				r.problems = append(r.problems, "not JSON: "+string(p))
			case w.Truncated != nil:
				r.truncated++
			case w.Message == nil || w.ID == "":
				r.problems = append(r.problems, "unexpected frame: "+string(p))
			default:
				r.seen = append(r.seen, seenMsg{w.ID, *w.Message})
			}
			r.mu.Unlock()
		}
		c.conn.Close()
		// Join again with the last ID seen, until a node takes it.
		since := "0"
		r.mu.Lock()
		if n := len(r.seen); n > 0 {
			since = r.seen[n-1].id
		}
		r.mu.Unlock()
		deadline := time.Now().Add(testutil.Timeout)
		for {
			r.mu.Lock()
			stopped := r.stopped
			r.mu.Unlock()
			if stopped {
				return
			}
			var err error
			if c, err = r.next().tryDial("/ws/chat/" + r.room + "/?ids=1&since=" + since); err == nil {
				break
			}
			if time.Now().After(deadline) {
				r.mu.Lock()
				r.problems = append(r.problems, "cannot join again: "+err.Error())
				r.mu.Unlock()
				return
			}
		}
		r.mu.Lock()
		r.joins++
		r.mu.Unlock()
	}
}

func (r *resumer) stop() {
	r.mu.Lock()
	r.stopped = true
	if r.conn != nil {
		r.conn.Close()
	}
	r.mu.Unlock()
}

func (r *resumer) snapshot() ([]seenMsg, []string, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]seenMsg(nil), r.seen...), append([]string(nil), r.problems...), r.joins
}

// ackSender is an ack=1 client that sends n messages, each with its own
// cid, and, whenever its connection breaks, joins again on the node
// next gives it and resends every message not acknowledged yet, with the
// same cid: the exactly-once recipe of the protocol.
type ackSender struct {
	t    *testing.T
	name string
	n    int
	next func() *gateway

	mu     sync.Mutex
	acked  map[int]string // message → ID
	sent   int            // messages sent at least once
	resend []int          // refused (unavailable, unconfirmed): send again
	joins  int
	again  int // messages sent again after a reconnect

	// At message burstAt, when burst is set, the sender writes burstLen
	// messages at once and closes burst: the test kills the node then,
	// with messages in flight.
	burstAt, burstLen int
	burst             chan struct{}
}

func (s *ackSender) text(i int) string { return fmt.Sprintf("%s-%d", s.name, i) }

func (s *ackSender) ackedCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.acked)
}

// run sends from g; the test waits on ackedCount.
func (s *ackSender) run(g *gateway, paced <-chan time.Time) {
	c, err := g.tryDial("/ws/chat/kill/?ack=1")
	if err != nil {
		s.t.Error(err)
		return
	}
	s.joins = 1
	for {
		broken := make(chan struct{})
		go s.read(c, broken)
		s.mu.Lock()
		var again []int
		for i := range s.sent {
			if _, ok := s.acked[i]; !ok {
				again = append(again, i)
			}
		}
		s.again += len(again)
		s.mu.Unlock()
		ok := true
		for _, i := range again { // after a reconnect: everything unacknowledged
			if ok = s.write(c, i); !ok {
				break
			}
		}
		for ok {
			s.mu.Lock()
			done := len(s.acked) == s.n
			i := s.sent
			var retry []int
			retry, s.resend = s.resend, nil
			s.mu.Unlock()
			if done {
				c.conn.Close()
				return
			}
			for _, j := range retry {
				if ok = s.write(c, j); !ok {
					break
				}
			}
			if !ok {
				break
			}
			select {
			case <-broken:
				ok = false
				continue
			case <-paced:
			}
			k := 1
			if s.burst != nil && i == s.burstAt {
				k = s.burstLen
			}
			for j := i; j < min(i+k, s.n) && ok; j++ {
				if ok = s.write(c, j); ok {
					s.mu.Lock()
					s.sent = j + 1
					s.mu.Unlock()
				}
			}
			if k > 1 {
				close(s.burst)
				s.burst = nil
			}
		}
		c.conn.Close()
		<-broken
		deadline := time.Now().Add(testutil.Timeout)
		for {
			if c, err = s.next().tryDial("/ws/chat/kill/?ack=1"); err == nil {
				break
			}
			if time.Now().After(deadline) {
				s.t.Errorf("%s cannot join again: %v", s.name, err)
				return
			}
		}
		s.mu.Lock()
		s.joins++
		s.mu.Unlock()
	}
}

func (s *ackSender) write(c *client, i int) bool {
	b, _ := json.Marshal(map[string]string{"username": s.name, "message": s.text(i), "cid": s.text(i)})
	return wsutil.WriteClientText(c.conn, b) == nil
}

// read collects the acknowledgements until the connection breaks.
func (s *ackSender) read(c *client, broken chan struct{}) {
	defer close(broken)
	for {
		_ = c.conn.SetReadDeadline(time.Now().Add(time.Minute))
		h, err := ws.ReadHeader(c.br)
		if err != nil {
			return
		}
		p := make([]byte, h.Length)
		if _, err := io.ReadFull(c.br, p); err != nil {
			return
		}
		if h.OpCode != ws.OpText {
			continue
		}
		var w wire
		if json.Unmarshal(p, &w) != nil || w.CID == "" {
			continue // others' messages
		}
		var i int
		if _, err := fmt.Sscanf(strings.TrimPrefix(w.CID, s.name+"-"), "%d", &i); err != nil {
			continue
		}
		s.mu.Lock()
		switch {
		case w.Ack != "":
			if old, ok := s.acked[i]; ok && old != w.Ack {
				s.t.Errorf("%s: cid %s acknowledged as %s, then %s: stored twice", s.name, w.CID, old, w.Ack)
			}
			s.acked[i] = w.Ack
		case w.Error != "":
			s.resend = append(s.resend, i)
		}
		s.mu.Unlock()
	}
}

// TestNodeKillResumesWithoutLossOrDuplicate: node A is killed with
// SIGKILL while two ack=1 senders (one on each node) stream messages
// with cids. A's members join B again with since=<last id they saw>, A's
// sender joins B and resends whatever was not acknowledged. Every member
// ends up with exactly the acknowledged messages, in stream order, once
// each.
func TestNodeKillResumesWithoutLossOrDuplicate(t *testing.T) {
	r := redistest.Start(t)
	env := historyEnv(r)
	a := startProcess(t, env)
	b := startGateway(t, env)
	toB := func() *gateway { return b }
	var members []*resumer
	for range 3 {
		members = append(members, startResumer(t, a.gateway, "kill", toB))
	}
	members = append(members, startResumer(t, b, "kill", toB))
	const n = 150
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	onA := &ackSender{t: t, name: "a", n: n, next: toB, acked: map[int]string{},
		burstAt: n / 2, burstLen: 20, burst: make(chan struct{})}
	burst := onA.burst
	onB := &ackSender{t: t, name: "b", n: n, next: toB, acked: map[int]string{}}
	var wg sync.WaitGroup
	wg.Go(func() { onA.run(a.gateway, tick.C) })
	wg.Go(func() { onB.run(b, tick.C) })
	select {
	case <-burst:
	case <-time.After(testutil.Timeout):
		t.Fatal("the sender on A did not reach its burst")
	}
	a.kill(t)
	testutil.Eventually(t, "every message to be acknowledged", func() bool { return onA.ackedCount() == n && onB.ackedCount() == n })
	wg.Wait()

	accepted := map[string]string{} // ID → text
	for _, s := range []*ackSender{onA, onB} {
		for i, id := range s.acked {
			if other, ok := accepted[id]; ok {
				t.Fatalf("ID %s acknowledged for %s and %s", id, other, s.text(i))
			}
			accepted[id] = s.text(i)
		}
	}
	if onA.joins < 2 {
		t.Fatalf("the sender on A joined %d times: the kill did not reach it", onA.joins)
	}
	t.Logf("the sender on A sent %d messages again after the kill", onA.again)
	for mi, m := range members {
		testutil.Eventually(t, fmt.Sprintf("member %d to see every accepted message", mi), func() bool {
			seen, _, _ := m.snapshot()
			return len(seen) >= len(accepted)
		})
		seen, problems, joins := m.snapshot()
		if len(problems) > 0 {
			t.Fatalf("member %d: %q", mi, problems)
		}
		if mi < 3 && joins < 2 {
			t.Fatalf("member %d on A joined %d times: it never resumed", mi, joins)
		}
		var prev stream.ID
		got := map[string]bool{}
		for k, s := range seen {
			id, err := stream.ParseID(s.id)
			if err != nil {
				t.Fatalf("member %d: bad id %q", mi, s.id)
			}
			if k > 0 && !prev.Less(id) {
				t.Fatalf("member %d: %s after %s: out of order or duplicated", mi, id, prev)
			}
			prev = id
			if accepted[s.id] != s.text {
				t.Fatalf("member %d: got %s %q, accepted %q", mi, s.id, s.text, accepted[s.id])
			}
			got[s.id] = true
		}
		if len(got) != len(accepted) {
			t.Fatalf("member %d saw %d messages, %d were accepted", mi, len(got), len(accepted))
		}
		t.Logf("member %d: %d messages over %d joins", mi, len(seen), joins)
	}
}

// TestCIDDedupeAcrossNodeKill: a message stored through node A, whose
// acknowledgement its sender never got because A was killed, is sent
// again with its cid through node B: B acknowledges the ID it was stored
// with and nobody receives it twice.
func TestCIDDedupeAcrossNodeKill(t *testing.T) {
	r := redistest.Start(t)
	env := historyEnv(r)
	a := startProcess(t, env)
	b := startGateway(t, env)
	member := b.dial(t, "/ws/chat/dk/?ids=1")
	s := a.dial(t, "/ws/chat/dk/?ack=1")
	s.send(`{"username":"u","message":"precious","cid":"p-1"}`)
	stored := decodeWire(t, member.recv()) // stored: B delivered it
	if stored.Message == nil || *stored.Message != "precious" {
		t.Fatalf("member got %+v", stored)
	}
	a.kill(t) // the sender never reads its acknowledgement
	again := b.dial(t, "/ws/chat/dk/?ack=1")
	again.send(`{"username":"u","message":"precious","cid":"p-1"}`)
	if got := again.recv(); got != fmt.Sprintf(`{"ack":%q,"cid":"p-1"}`, stored.ID) {
		t.Fatalf("resend through B acknowledged with %s, want the stored ID %s", got, stored.ID)
	}
	again.sendChat("u", "after")
	if f := decodeWire(t, member.recv()); f.Message == nil || *f.Message != "after" {
		t.Fatalf("member's next frame %+v, want the next message (the resend was delivered twice)", f)
	}
}

// TestPresenceAcrossNodes: the member count of a room sums the nodes;
// GET /api/rooms/<room> and presence=1 frames show it, and a killed
// node stops being counted.
func TestPresenceAcrossNodes(t *testing.T) {
	r := redistest.Start(t)
	env := historyEnv(r)
	a := startProcess(t, env)
	b := startGateway(t, env)
	a.dial(t, "pres")
	a.dial(t, "pres")
	w := b.dial(t, "/ws/chat/pres/?presence=1")
	members := func(g *gateway) int {
		status, body := g.httpGet(t, "/api/rooms/pres")
		if status != 200 {
			t.Fatalf("GET /api/rooms/pres: %d %s", status, body)
		}
		var v struct {
			Room    string
			Members int
		}
		if err := json.Unmarshal([]byte(body), &v); err != nil || v.Room != "pres" {
			t.Fatalf("GET /api/rooms/pres: %s", body)
		}
		return v.Members
	}
	testutil.Eventually(t, "both nodes to count 3", func() bool { return members(b) == 3 && members(a.gateway) == 3 })
	waitPresence := func(want int) {
		t.Helper()
		for {
			f := decodeWire(t, w.recv())
			if f.Presence == nil {
				t.Fatalf("presence member got a frame that is not presence")
			}
			if f.Presence.Members == want {
				return
			}
		}
	}
	waitPresence(3)
	a.kill(t)
	testutil.Eventually(t, "the killed node to stop being counted", func() bool { return members(b) == 1 })
	waitPresence(1)
}

// engines runs f against the embedded engine (one node: both nodes are
// the same) and Redis (two nodes), with env on top of the test defaults.
func engines(t *testing.T, env map[string]string, f func(t *testing.T, one, two *gateway)) {
	t.Run("memory", func(t *testing.T) {
		g := startGateway(t, withEnv(noRateLimit, env))
		f(t, g, g)
	})
	t.Run("redis", func(t *testing.T) {
		r := redistest.Start(t, "--stream-node-max-entries", "4")
		nodes := startNodes(t, 2, withEnv(redisEnvFor(r), env))
		f(t, nodes[0], nodes[1])
	})
}

// sendAll sends chat messages from c, user u, texts 0..n-1 with prefix.
func sendAll(c *client, u, prefix string, n int) {
	for i := range n {
		c.sendChat(u, fmt.Sprint(prefix, i))
	}
}

// recvIDs reads n chat frames carrying IDs and returns their IDs and
// texts.
func recvIDs(t *testing.T, c *client, n int) ([]string, []string) {
	t.Helper()
	var ids, texts []string
	for range n {
		f := decodeWire(t, c.recv())
		if f.Message == nil || f.ID == "" {
			t.Fatalf("want a chat frame with an id, got %+v", f)
		}
		ids = append(ids, f.ID)
		texts = append(texts, *f.Message)
	}
	return ids, texts
}

// TestSinceAndHistoryOnBothEngines: since= replays after the ID, on
// another node too; a stream trimmed past it gives the truncated frame
// then what remains; history=N gives the last N, capped by HISTORY_MAX.
func TestSinceAndHistoryOnBothEngines(t *testing.T) {
	engines(t, map[string]string{"REDIS_MAXLEN": "8", "HISTORY_MAX": "5"}, func(t *testing.T, one, two *gateway) {
		watcher := one.dial(t, "/ws/chat/sh/?ids=1")
		sender := one.dial(t, "sh")
		sendAll(sender, "u", "m", 6)
		ids, _ := recvIDs(t, watcher, 6)

		t.Run("since", func(t *testing.T) {
			watcher.t, sender.t = t, t
			c := two.dial(t, "/ws/chat/sh/?ids=1&since="+ids[2])
			got, texts := recvIDs(t, c, 3)
			if strings.Join(got, " ") != strings.Join(ids[3:], " ") || strings.Join(texts, " ") != "m3 m4 m5" {
				t.Fatalf("since %s: %v %v, want %v", ids[2], got, texts, ids[3:])
			}
			sender.sendChat("u", "live")
			if _, texts := recvIDs(t, c, 1); texts[0] != "live" {
				t.Fatalf("after the replay got %q", texts[0])
			}
			recvIDs(t, watcher, 1)
		})
		t.Run("history", func(t *testing.T) {
			for _, tc := range []struct {
				n    string
				want string
			}{{"2", "m5 live"}, {"50", "m2 m3 m4 m5 live"}} {
				c := two.dial(t, "/ws/chat/sh/?history="+tc.n)
				var got []string
				for range strings.Count(tc.want, " ") + 1 {
					_, m := c.recvChat()
					got = append(got, m)
				}
				if strings.Join(got, " ") != tc.want {
					t.Fatalf("history=%s: %q, want %q", tc.n, got, tc.want)
				}
			}
		})
		t.Run("truncated", func(t *testing.T) {
			watcher.t, sender.t = t, t
			// One at a time: a reader of the Redis engine that falls
			// more than REDIS_MAXLEN behind loses entries.
			for i := range 40 {
				sender.sendChat("u", fmt.Sprint("t", i))
				recvIDs(t, watcher, 1)
			}
			c := two.dial(t, "/ws/chat/sh/?ids=1&since="+ids[0])
			f := decodeWire(t, c.recv())
			if f.Truncated == nil || f.Truncated.Since != ids[0] || f.Truncated.From == "" {
				t.Fatalf("first frame %+v, want truncated since %s from an ID", f, ids[0])
			}
			from, _ := stream.ParseID(f.Truncated.From)
			first, _ := stream.ParseID(ids[0])
			if !first.Less(from) {
				t.Fatalf("truncated from %s, not after since %s", from, first)
			}
			// What remains follows, from "from" to the last message.
			var got []string
			for {
				w := decodeWire(t, c.recv())
				if w.Message == nil {
					t.Fatalf("unexpected frame %+v", w)
				}
				if len(got) == 0 && w.ID != f.Truncated.From {
					t.Fatalf("first entry %s, truncated frame said %s", w.ID, f.Truncated.From)
				}
				got = append(got, *w.Message)
				if *w.Message == "t39" {
					break
				}
			}
			if len(got) < 8 || len(got) > 40 {
				t.Fatalf("%d entries after the truncation, want the stream's 8 or more: %q", len(got), got)
			}
			for k := 1; k < len(got); k++ {
				var a, b int
				fmt.Sscanf(got[k-1], "t%d", &a)
				fmt.Sscanf(got[k], "t%d", &b)
				if b != a+1 {
					t.Fatalf("entries %q: not what remains, in order", got)
				}
			}
		})
	})
}

// TestCIDDedupeAcrossReconnect: a sender that resends a message with its
// cid after joining again (on another node with Redis) gets the first ID
// back, and members receive the message once.
func TestCIDDedupeAcrossReconnect(t *testing.T) {
	engines(t, nil, func(t *testing.T, one, two *gateway) {
		member := one.dial(t, "dd")
		s := one.dial(t, "/ws/chat/dd/?ack=1")
		s.send(`{"username":"u","message":"once","cid":"cid-1"}`)
		first := decodeWire(t, s.recv())
		if first.Ack == "" || first.CID != "cid-1" {
			t.Fatalf("ack %+v", first)
		}
		s.conn.Close()
		again := two.dial(t, "/ws/chat/dd/?ack=1")
		again.send(`{"username":"u","message":"once","cid":"cid-1"}`)
		if f := again.recv(); f != fmt.Sprintf(`{"ack":%q,"cid":"cid-1"}`, first.Ack) {
			t.Fatalf("resend acknowledged with %s, want the first ID %s", f, first.Ack)
		}
		again.sendChat("u", "next")
		for _, want := range []string{chat("u", "once"), chat("u", "next")} {
			if got := member.recv(); got != want {
				t.Fatalf("member got %s, want %s (the resend must not be delivered)", got, want)
			}
		}
	})
}

// TestOptionErrorsAt400: options with bad values are refused at the
// upgrade with a one-line reason.
func TestOptionErrorsAt400(t *testing.T) {
	g := startGateway(t, nil)
	for _, tc := range []struct{ path, reason string }{
		{"/ws/chat/r/?since=yesterday", "since"},
		{"/ws/chat/r/?since=1-2-3", "since"},
		{"/ws/chat/r/?since=", "since"},
		{"/ws/chat/r/?history=-3", "history"},
		{"/ws/chat/r/?ids=2", "ids"},
	} {
		status, body := rawUpgrade(t, g.addr, tc.path)
		if status != 400 || !strings.Contains(body, tc.reason) || strings.Count(strings.TrimSpace(body), "\n") > 0 {
			t.Errorf("%s: %d %q, want 400 naming %s", tc.path, status, body, tc.reason)
		}
	}
}

// TestRoomsEndpoint: GET /api/rooms/<room> counts the members; bad names
// get the WebSocket path's 400, other paths 404; in production the Host
// check applies.
func TestRoomsEndpoint(t *testing.T) {
	g := startGateway(t, nil)
	g.dial(t, "api")
	g.dial(t, "api")
	for _, tc := range []struct {
		path   string
		status int
		body   string
	}{
		{"/api/rooms/api", 200, `{"room":"api","members":2}` + "\n"},
		{"/api/rooms/api/", 200, `{"room":"api","members":2}` + "\n"},
		{"/api/rooms/empty", 200, `{"room":"empty","members":0}` + "\n"},
		{"/api/rooms/a%20b", 400, "room name has ' '"},
		{"/api/rooms/" + strings.Repeat("r", 101), 400, "101 bytes"},
		{"/api/rooms/", 400, "room name is empty"},
		{"/api/rooms/a/b", 404, ""},
	} {
		if status, body := g.httpGet(t, tc.path); status != tc.status || !strings.Contains(body, tc.body) {
			t.Errorf("GET %s = %d %q, want %d with %q", tc.path, status, body, tc.status, tc.body)
		}
	}
	r := redistest.Start(t)
	p := productionGateway(t, r, nil)
	if status, _ := request(t, p.addr, "GET", "/api/rooms/x", "Host: evil.example.net"); status != 400 {
		t.Fatalf("foreign Host: %d, want 400", status)
	}
	if status, body := request(t, p.addr, "GET", "/api/rooms/x", "Host: chat.example.com"); status != 200 || !strings.Contains(body, `"members":0`) {
		t.Fatalf("allowed Host: %d %q", status, body)
	}
}

// TestPlainClientsSeeNoDifference: with option clients busy in its room
// (ids, since, history, ack with cids, presence), a client without
// options receives byte for byte what the original protocol sends: the
// others' messages as {"username":…,"message":…}, its own error frames
// unchanged, nothing else.
func TestPlainClientsSeeNoDifference(t *testing.T) {
	engines(t, nil, func(t *testing.T, one, two *gateway) {
		plain := one.dial(t, "same")
		opt := two.dial(t, "/ws/chat/same/?ids=1&ack=1&presence=1&history=10")
		_ = decodeWire(t, opt.recv()) // its presence frame
		other := one.dial(t, "/ws/chat/same/?since=0&presence=1")
		_ = other
		opt.send(`{"username": "ana", "message": {"text": "hola", "n": [1, 2]}, "cid": "x1", "extra": true}`)
		opt.send(`{"username":"ana","message":"again","cid":"x1"}`) // a resend: not delivered
		opt.send(`{"username":"ana","message":"two","cid":"x2"}`)
		plain.send(`{"username":"bob","message":"m","cid":"zz"}`)
		plain.send(`{"username":"bob"}`)
		plain.send(`not json`)
		want := []string{
			`{"username":"ana","message":{"text":"hola","n":[1,2]}}`,
			`{"username":"ana","message":"two"}`,
		}
		wantErrs := []string{
			`{"error":"missing_field","field":"message","detail":"message has no \"message\" key"}`,
			`{"error":"invalid_json","detail":"message is not valid JSON; send {\"username\": \"...\", \"message\": \"...\"}"}`,
		}
		var chats, errs []string
		for len(chats) < len(want) || len(errs) < len(wantErrs) {
			f, err := plain.next()
			if err != nil {
				t.Fatalf("plain client: %v after %q %q", err, chats, errs)
			}
			if f.op != ws.OpText {
				continue
			}
			if strings.HasPrefix(string(f.payload), `{"error"`) {
				errs = append(errs, string(f.payload))
			} else {
				chats = append(chats, string(f.payload))
			}
		}
		if strings.Join(chats, "\n") != strings.Join(want, "\n") || strings.Join(errs, "\n") != strings.Join(wantErrs, "\n") {
			t.Fatalf("plain client got\n%s\n%s\nwant\n%s\n%s", strings.Join(chats, "\n"), strings.Join(errs, "\n"),
				strings.Join(want, "\n"), strings.Join(wantErrs, "\n"))
		}
		// Nothing else is on its way: bob's next message reaches it
		// straight after.
		opt.sendChat("ana", "last")
		if got := plain.recv(); got != chat("ana", "last") {
			t.Fatalf("plain client's next frame is %s", got)
		}
	})
}
