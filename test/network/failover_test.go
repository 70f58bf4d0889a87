//go:build network

package network

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatgw/gateway/internal/netlab"
)

// The traffic of the failover tests: foRooms rooms, each with a sender
// and a live member (ids=1) on each of the two gateways; every sender
// sends foRate messages a second with ack=1 and a cid each (2 000 a
// second in all).
const (
	foRooms    = 10
	foGateways = 2
	foRate     = 100
	// foWarm is the traffic before the fault; foAfter the traffic once
	// every sender is acked again.
	foWarm  = 3 * time.Second
	foAfter = 5 * time.Second
	// foRecover bounds each step of the recovery: the promotion, the old
	// primary back as a replica, acks again.
	foRecover = 30 * time.Second
	// foMaxGaps bounds the resumes checked per member (resumePlans).
	foMaxGaps = 3
)

// foVariants are the gateway settings each scenario runs with: the
// defaults, and with the pumps waiting for a replica (WAIT 1) before they
// ack, which must lose no acked message.
var foVariants = []struct {
	name        string
	env         map[string]string
	noAckedLoss bool
}{
	{"default", nil, false},
	{"wait-replicas", map[string]string{"REDIS_WAIT_REPLICAS": "1"}, true},
}

// TestSentinelPrimaryKilled: behind three sentinels, the primary is
// killed (SIGKILL) while 20 senders on two gateways send 2 000 messages a
// second; the sentinels promote the replica; the old primary comes back
// empty as a replica of the new one (as a supervisor that asks the
// sentinels restarts it); the traffic goes on until every sender is acked
// again, and 5 s more. The record is checked (failoverRecord.check) and
// every loss a member saw must be announced to a resume (resumePlan).
func TestSentinelPrimaryKilled(t *testing.T) {
	for _, v := range foVariants {
		t.Run(v.name, func(t *testing.T) {
			lab := netlab.New(t)
			sn, run := startSentinelRun(t, lab, "sentinel, primary killed, "+v.name, v.env)
			run.pause(foWarm)
			run.mark("primary killed")
			sn.primary.kill()
			sn.awaitPromotion(t, run)
			sn.primary.argv = append(sn.primary.argv, "--replicaof", sn.replica.h.Addr().String(), strconv.Itoa(redisPort))
			sn.primary.start()
			pollFor(t, "the old primary to sync as a replica", foRecover, func() string {
				if sn.primary.replicates(sn.replica) {
					return ""
				}
				return "not in sync"
			})
			run.mark("old primary back, in sync")
			run.finish(v.noAckedLoss)
		})
	}
}

// TestSentinelPrimaryPartitioned is Jepsen's case: the primary loses the
// replica and the three sentinels (a partition: packets dropped) while
// both gateways still reach it, under the traffic of
// TestSentinelPrimaryKilled. The sentinels promote the replica; once the
// gateways have connected to it, the partition heals and the sentinels
// make the old primary a replica of the new one, which discards what it
// accepted meanwhile. Without REDIS_WAIT_REPLICAS acked messages may be
// lost (counted); with it none may.
func TestSentinelPrimaryPartitioned(t *testing.T) {
	for _, v := range foVariants {
		t.Run(v.name, func(t *testing.T) {
			lab := netlab.New(t)
			sn, run := startSentinelRun(t, lab, "sentinel, primary partitioned, "+v.name, v.env)
			run.pause(foWarm)
			others := append([]*redisProc{sn.replica}, sn.sentinels...)
			for _, o := range others {
				lab.Partition(sn.primary.h, o.h)
			}
			run.mark("primary partitioned")
			sn.awaitPromotion(t, run)
			switched := run.waitClients(sn.replica, sn.primary, 10*time.Second)
			run.mark(switched)
			for _, o := range others {
				lab.Rejoin(sn.primary.h, o.h)
			}
			run.mark("partition healed")
			pollFor(t, "the sentinels to make the old primary a replica", foRecover, func() string {
				if sn.primary.replicates(sn.replica) {
					return ""
				}
				return "role " + sn.primary.info("replication", "role")
			})
			run.mark("old primary a replica, in sync")
			run.finish(v.noAckedLoss)
		})
	}
}

// startSentinelRun starts the Sentinel network on lab and the traffic of
// a scenario, its gateways with env and the sentinels to ask.
func startSentinelRun(t *testing.T, lab *netlab.Lab, scenario string, env map[string]string) (*sentinelNet, *failoverRun) {
	t.Helper()
	sn := startSentinelNet(t, lab)
	run := startFailoverRun(t, lab, scenario, merge(env, map[string]string{
		"REDIS_ADDRS": sn.addrs(), "REDIS_SENTINEL_MASTER": sentinelMaster,
	}))
	return sn, run
}

// awaitPromotion waits for the sentinels to name the replica the primary
// and marks it in run.
func (sn *sentinelNet) awaitPromotion(t *testing.T, run *failoverRun) {
	t.Helper()
	pollFor(t, "the sentinels to promote the replica", foRecover, func() string {
		if m := sn.master(); m != sn.replica.addr() {
			return "the sentinels name " + m
		}
		return ""
	})
	run.promoted()
}

// TestClusterMasterKilled: on a Redis Cluster of three masters with a
// replica each, spread over three hosts, the master holding the most of
// the test's rooms is killed under the traffic of
// TestSentinelPrimaryKilled; its replica is promoted (cluster failover); a
// fresh node on the dead master's host joins as the new master's replica
// (as a replacement would); the traffic goes on until every sender is
// acked again, and 5 s more.
func TestClusterMasterKilled(t *testing.T) {
	for _, v := range foVariants {
		t.Run(v.name, func(t *testing.T) {
			lab := netlab.New(t)
			cl := startClusterNet(t, lab)
			run := startFailoverRun(t, lab, "cluster, master killed, "+v.name, merge(v.env, map[string]string{
				"REDIS_ADDRS": cl.seeds(),
			}))
			run.pause(foWarm)
			victim, rooms := 0, []string(nil)
			for i, m := range cl.masters {
				keys, err := m.do("KEYS", "chat:{*}:fo*")
				if err != nil {
					t.Fatalf("KEYS on %s: %v", m.name(), err)
				}
				if f := strings.Fields(keys); len(f) > len(rooms) {
					victim, rooms = i, f
				}
			}
			if len(rooms) == 0 {
				t.Fatal("no master holds a room stream of the test: the key layout changed?")
			}
			run.mark(fmt.Sprintf("master %s killed (%d rooms)", cl.masters[victim].name(), len(rooms)))
			cl.masters[victim].kill()
			promoted := cl.replicas[victim]
			pollFor(t, "the replica to be promoted", foRecover, func() string {
				if role := promoted.info("replication", "role"); role != "master" {
					return promoted.name() + " is " + role
				}
				return ""
			})
			run.promoted()
			fresh := startRedisProc(t, cl.hosts[victim], clusterPort+2, clusterArgs...)
			fresh.mustDo("CLUSTER", "MEET", promoted.h.Addr().String(), strconv.Itoa(promoted.port))
			cl.replicate(fresh, promoted)
			cl.masters[victim], cl.replicas[victim] = promoted, fresh
			cl.waitHealthy(t, append(append([]*redisProc(nil), cl.masters...), cl.replicas...), cl.masters, cl.replicas)
			run.mark("replacement replica in sync")
			run.finish(v.noAckedLoss)
		})
	}
}

// merge returns the union of a and b (b wins).
func merge(a, b map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

// failoverRun is one failover scenario's traffic: two gateways on their
// own hosts, the senders and members on a clients host, the record, and
// the marks the scenario sets (its steps, timed from the start of the
// traffic).
type failoverRun struct {
	t       *testing.T
	name    string
	clients *netlab.Host
	gwHosts []*netlab.Host
	gws     []*gatewayProc
	rec     *failoverRecord
	senders []*wsClient
	members []*wsClient

	stop    chan struct{}
	sending sync.WaitGroup
	reading sync.WaitGroup
	closing bool // set before the test closes the clients; read by the members' readers under mu
	mu      sync.Mutex
	sendErr []string
	start   time.Time
	marks   []string
}

// startFailoverRun starts two gateways with env (and the settings every
// failover run has), connects the members and then the senders, checks
// that each sender's first message is acked and reaches every member of
// its room, and starts the traffic.
func startFailoverRun(t *testing.T, lab *netlab.Lab, name string, env map[string]string) *failoverRun {
	t.Helper()
	env = merge(map[string]string{
		"ENVIRONMENT": "production", "ALLOWED_HOSTS": "*", "LOG_LEVEL": "info",
		// The store keeps the whole run, so that the replay after it is
		// the record of what Redis holds.
		"REDIS_MAXLEN": "1000000",
		// One clients host sends for all: its address must not be paced.
		"RATE_LIMIT": "1000", "RATE_LIMIT_PER_IP": "-1", "BYTE_RATE_PER_IP": "-1",
	}, env)
	r := &failoverRun{t: t, name: name, clients: lab.Host("clients"), stop: make(chan struct{})}
	for i := range foGateways {
		h := lab.Host(fmt.Sprintf("gw-%d", i+1))
		r.gwHosts = append(r.gwHosts, h)
		r.gws = append(r.gws, startGatewayProc(t, h, env))
	}
	var roomOf []int
	for room := range foRooms {
		for range foGateways {
			roomOf = append(roomOf, room)
		}
	}
	r.rec = newFailoverRecord(roomOf, foRooms)
	for room := range foRooms {
		for gw := range foGateways {
			m := r.rec.addMember(room, gw, -1)
			w := dialWS(t, r.clients, r.gws[gw].addr, fmt.Sprintf("/ws/chat/fo%d/?ids=1", room))
			r.members = append(r.members, w)
			r.reading.Add(1)
			go func() { defer r.reading.Done(); r.rec.readMember(m, w, r.isClosing) }()
		}
	}
	for k, room := range roomOf {
		w := dialWS(t, r.clients, r.gws[k%foGateways].addr, fmt.Sprintf("/ws/chat/fo%d/?ack=1&ids=1", room))
		r.senders = append(r.senders, w)
		m := r.rec.addMember(room, k%foGateways, k)
		r.reading.Add(1)
		go func() { defer r.reading.Done(); r.rec.readAnswers(k, w, m, r.isClosing) }()
	}
	t.Cleanup(r.stopSending)
	for k, w := range r.senders {
		if err := w.write(textFrame(r.rec.sent(k, 1))); err != nil {
			t.Fatalf("sender %d: %v", k, err)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for !r.rec.hasFirst() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: the first messages were not all acked and delivered within 15 s:%s", name, r.rec.answerSummary())
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.start = time.Now()
	for k, w := range r.senders {
		r.sending.Add(1)
		go r.send(k, w)
	}
	return r
}

// send sends sender k's messages 2, 3, ... foRate a second until stop.
func (r *failoverRun) send(k int, w *wsClient) {
	defer r.sending.Done()
	tick := time.NewTicker(time.Second / foRate)
	defer tick.Stop()
	for n := 2; ; n++ {
		select {
		case <-r.stop:
			return
		case <-tick.C:
		}
		if err := w.write(textFrame(r.rec.sent(k, n))); err != nil {
			r.mu.Lock()
			r.sendErr = append(r.sendErr, fmt.Sprintf("sender %d, message %d: %v", k, n, err))
			r.mu.Unlock()
			return
		}
	}
}

// stopSending stops the senders (once) and waits for them.
func (r *failoverRun) stopSending() {
	select {
	case <-r.stop:
	default:
		close(r.stop)
	}
	r.sending.Wait()
}

// isClosing reports whether the test is closing the clients.
func (r *failoverRun) isClosing() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closing
}

// pause lets the traffic run for d.
func (r *failoverRun) pause(d time.Duration) { time.Sleep(d) }

// mark records a step of the scenario, with its time since the traffic
// started.
func (r *failoverRun) mark(what string) {
	r.marks = append(r.marks, fmt.Sprintf("%s at %.1f s", what, time.Since(r.start).Seconds()))
}

// promoted marks the promotion of the replica: acked messages sent later
// and lost are counted apart (failoverCounts.ackedLostLate).
func (r *failoverRun) promoted() {
	r.rec.mu.Lock()
	r.rec.promoted = time.Now()
	r.rec.mu.Unlock()
	r.mark("replica promoted")
}

// waitClients waits until every gateway has a connection to srv (CLIENT
// LIST names them chatgw-...), and says what it found, with how many
// connections the gateways still hold to old.
func (r *failoverRun) waitClients(srv, old *redisProc, within time.Duration) string {
	deadline := time.Now().Add(within)
	for {
		got := srv.clients("chatgw-")
		n := 0
		for _, h := range r.gwHosts {
			if got[h.Addr().String()] > 0 {
				n++
			}
		}
		if n == len(r.gwHosts) || time.Now().After(deadline) {
			stale := 0
			for addr, c := range old.clients("chatgw-") {
				for _, h := range r.gwHosts {
					if addr == h.Addr().String() {
						stale += c
					}
				}
			}
			return fmt.Sprintf("%d of %d gateways connected to the new primary (%d gateway connections still on the old one)", n, len(r.gwHosts), stale)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// finish waits until every sender is acked again, lets the traffic run
// foAfter more, stops it, reads back what the store holds, checks the
// record (with noAckedLoss: no acked message may be lost) and the resumes
// that must announce each loss, and logs the scenario's counts.
func (r *failoverRun) finish(noAckedLoss bool) {
	t := r.t
	t.Helper()
	recovered := time.Now()
	deadline := recovered.Add(foRecover)
	for !r.rec.ackedSince(recovered) {
		if time.Now().After(deadline) {
			r.stopSending()
			t.Fatalf("%s: not every sender was acked again within %v of the recovery (%s):%s",
				r.name, foRecover, strings.Join(r.marks, ", "), r.rec.answerSummary())
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.mark("every sender acked again")
	r.pause(foAfter)
	r.stopSending()
	sendFor := time.Since(r.start)

	// Every answer in; the live deliveries settled.
	waitFor(t, "every message to be answered", 15*time.Second, func() bool { return r.rec.unanswered() == 0 })
	last, still := r.rec.deliveries(), time.Now()
	waitFor(t, "the live deliveries to settle", 15*time.Second, func() bool {
		if n := r.rec.deliveries(); n != last {
			last, still = n, time.Now()
		}
		return time.Since(still) > time.Second
	})

	// What the store holds, per room.
	var wg sync.WaitGroup
	errs := make([]error, foRooms)
	for room := range foRooms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.rec.stored[room], errs[room] = replayFrames(r.clients, r.gws[0].addr, fmt.Sprintf("fo%d", room), "0", nil)
		}()
	}
	wg.Wait()
	for room, err := range errs {
		if err != nil {
			t.Fatalf("replay of room %d: %v", room, err)
		}
	}
	r.mu.Lock()
	r.closing = true
	r.mu.Unlock()
	for _, w := range append(append([]*wsClient(nil), r.senders...), r.members...) {
		w.c.Close()
	}
	r.reading.Wait()
	for _, e := range r.sendErr {
		t.Errorf("%s: %s", r.name, e)
	}

	// Every loss a member saw live must be announced to a resume.
	plans := r.rec.resumePlans(foMaxGaps)
	results := make([]resumeResult, len(plans))
	for i, p := range plans {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stop := func(f roomFrame) bool { return f.trunc != nil || p.first || !f.id.less(p.gap) }
			frames, err := replayFrames(r.clients, r.gws[p.member.gateway].addr, fmt.Sprintf("fo%d", p.member.room), p.since.String(), stop)
			results[i] = resumeResult{plan: p, frames: frames, err: err}
		}()
	}
	wg.Wait()
	r.rec.resumes = results

	c := r.rec.check(prefixed{t, r.name + ": "}, promises{noAckedLoss: noAckedLoss})
	t.Logf("%s: %.1f s of traffic; sent %d: acked %d (lost %d, %d of them sent after the promotion), unavailable %d, unconfirmed %d (stored %d); "+
		"stored %d (truncated notices %d); delivered live %d (not in the store %d), stored but not delivered %d, truncated notices live %d; "+
		"ID reuse %d, messages under two IDs %d; longest ack gap %.1f s; resumes that must announce a loss %d (silent %d); steps: %s",
		r.name, sendFor.Seconds(), c.sent, c.acked, c.ackedLost, c.ackedLostLate, c.unavailable, c.unconfirmed, c.unconfirmedStored,
		c.stored, c.storedTruncated, c.delivered, c.deliveredLost, c.storedUndelivered, c.liveTruncated,
		c.idReuse, c.twoIDs, c.ackGap.Seconds(), c.resumes, c.silentResumes, strings.Join(r.marks, ", "))
	for i, g := range r.gws {
		t.Logf("%s: gateway %d warnings and errors:\n%s", r.name, i+1, notable(g.log(), 12))
	}
	if c.acked == 0 || c.unavailable+c.unconfirmed+c.ackedLost == 0 {
		t.Errorf("%s: the run did not exercise both sides of the failover: %d acked, %d unavailable, %d unconfirmed, %d acked and lost",
			r.name, c.acked, c.unavailable, c.unconfirmed, c.ackedLost)
	}
}

// prefixed is a reporter that starts every error with a prefix: the
// scenario's name.
type prefixed struct {
	*testing.T
	prefix string
}

// Errorf reports an error, prefixed.
func (p prefixed) Errorf(format string, args ...any) {
	p.T.Helper()
	p.T.Errorf(p.prefix+format, args...)
}

// replayFrames joins room on the gateway at addr from host h with
// since= and ids=1 and returns the frames it gets until stop says so (nil:
// never), or the room is quiet for a second.
func replayFrames(h *netlab.Host, addr, room, since string, stop func(roomFrame) bool) ([]roomFrame, error) {
	w, err := openWS(h, addr, "/ws/chat/"+room+"/?ids=1&since="+since)
	if err != nil {
		return nil, err
	}
	defer w.c.Close()
	var out []roomFrame
	deadline := time.After(30 * time.Second)
	for {
		select {
		case m, ok := <-w.msgs:
			if !ok {
				return out, fmt.Errorf("room %s, since=%s: the connection closed after %d frames", room, since, len(out))
			}
			f, err := parseRoomFrame(m)
			if err != nil {
				return out, fmt.Errorf("room %s, since=%s: %v", room, since, err)
			}
			out = append(out, f)
			if stop != nil && stop(f) {
				return out, nil
			}
		case <-time.After(time.Second):
			return out, nil
		case <-deadline:
			return out, fmt.Errorf("room %s, since=%s: still replaying after 30 s (%d frames)", room, since, len(out))
		}
	}
}

// notable returns the gateway log's warnings and errors: the first
// max distinct messages (the "msg" of JSON lines), each with its count and
// first line.
func notable(log string, max int) string {
	type seen struct {
		n     int
		first string
	}
	var order []string
	by := map[string]*seen{}
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, `"level":"WARN"`) && !strings.Contains(line, `"level":"ERROR"`) {
			continue
		}
		msg := line
		if _, rest, ok := strings.Cut(line, `"msg":"`); ok {
			msg, _, _ = strings.Cut(rest, `"`)
		}
		if by[msg] == nil {
			by[msg] = &seen{first: line}
			order = append(order, msg)
		}
		by[msg].n++
	}
	var b strings.Builder
	for i, msg := range order {
		if i == max {
			fmt.Fprintf(&b, "  ... %d more kinds\n", len(order)-max)
			break
		}
		fmt.Fprintf(&b, "  %d× %s\n", by[msg].n, by[msg].first)
	}
	if b.Len() == 0 {
		return "  none"
	}
	return b.String()
}
