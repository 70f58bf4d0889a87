package stream

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chatgw/gateway/internal/redistest"
	"github.com/chatgw/gateway/internal/testutil"
)

// startReplicated starts a Redis master and one replica of it, in sync.
func startReplicated(t *testing.T) (master, replica *redistest.Server) {
	t.Helper()
	master = redistest.Start(t)
	replica = redistest.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(master.Port()))
	testutil.EventuallyWithin(t, 10*time.Second, "the replica to sync", func() bool {
		info, err := replica.Do("INFO", "replication")
		return err == nil && strings.Contains(info, "master_link_status:up")
	})
	return master, replica
}

// holds reports whether srv's stream key holds the entry id.
func holds(t *testing.T, srv *redistest.Server, key string, id ID) bool {
	t.Helper()
	out, err := srv.Do("XRANGE", key, id.String(), id.String())
	if err != nil {
		t.Fatalf("XRANGE on %s: %v", srv.Addr(), err)
	}
	return strings.Contains(out, id.String())
}

// streamField returns field of XINFO STREAM key on srv.
func streamField(t *testing.T, srv *redistest.Server, key, field string) string {
	t.Helper()
	lines := strings.Split(srv.MustDo("XINFO", "STREAM", key), "\n")
	for i := 0; i+1 < len(lines); i++ {
		if lines[i] == field {
			return lines[i+1]
		}
	}
	t.Fatalf("XINFO STREAM %s has no %s: %q", key, field, lines)
	return ""
}

// rollbackNodes is a publisher and two subscribed nodes on one server,
// for the rollback tests: a rollback is made by rewriting the stream as a
// promoted replica would hold it, and the nodes find it when they
// reconnect (CLIENT KILL).
type rollbackNodes struct {
	srv      *redistest.Server
	pub      *Redis
	a, b     *Redis
	ca, cb   *collector
	key, log string
}

// startRollbackNodes starts them on room.
func startRollbackNodes(t *testing.T, room string) *rollbackNodes {
	t.Helper()
	srv := redistest.Start(t)
	cfg := testRedisConfig(t, srv.Addr())
	n := &rollbackNodes{srv: srv, ca: newCollector(), cb: newCollector()}
	n.pub = newTestRedis(t, cfg, func(string, Message) {}, nil)
	n.a = newTestRedis(t, cfg, n.ca.handle, nil)
	n.b = newTestRedis(t, cfg, n.cb.handle, nil)
	mustSubscribe(t, n.a, room)
	mustSubscribe(t, n.b, room)
	n.ca.logOnFailure(t, room)
	n.key = n.pub.key(room)
	return n
}

// reconnect kills every client connection: the engines reconnect and
// check their rooms.
func (n *rollbackNodes) reconnect(t *testing.T) {
	t.Helper()
	n.srv.MustDo("CLIENT", "KILL", "TYPE", "normal")
}

// publish publishes payloads from the publisher and returns their IDs.
func (n *rollbackNodes) publish(t *testing.T, room string, payloads ...string) []ID {
	t.Helper()
	var ids []ID
	for _, p := range payloads {
		ids = append(ids, mustPublishID(t, n.pub, room, Message{Sender: 7, Payload: []byte(p)}))
	}
	return ids
}

// TestRedisRollbackRecorded: the stream loses its last entries, which
// both nodes had delivered (Redis failed over to a replica without them;
// here the stream is rewritten so). A node logs and counts the
// rollback, raise the stream's last ID to the last entry they read and
// record the gap; new messages get greater IDs and reach both nodes
// without a loss notice (they had delivered everything); History tells
// a resume from within the lost entries (truncated), and one from before
// them (a notice between the entries around the gap).
func TestRedisRollbackRecorded(t *testing.T) {
	const room = "rb"
	n := startRollbackNodes(t, room)
	ids := n.publish(t, room, "m1", "m2", "m3", "m4", "m5")
	n.ca.waitFor(t, room, 5)
	n.cb.waitFor(t, room, 5)

	// The promoted replica had m1..m3 only.
	n.srv.MustDo("DEL", n.key)
	for i, p := range []string{"m1", "m2", "m3"} {
		n.srv.MustDo("XADD", n.key, ids[i].String(), "s", "7", "p", p)
	}
	n.reconnect(t)
	// The first node to check records it; the other then finds the gap
	// recorded (it is no news there).
	testutil.EventuallyWithin(t, 10*time.Second, "a node to record the rollback", func() bool {
		return n.a.Stats().Rollbacks+n.b.Stats().Rollbacks >= 1 &&
			streamField(t, n.srv, n.key, "max-deleted-entry-id") == ids[4].String()
	})
	if last := streamField(t, n.srv, n.key, "last-generated-id"); last != ids[4].String() {
		t.Errorf("last-generated-id %s after the rollback, want it raised to %v", last, ids[4])
	}
	m6 := n.publish(t, room, "m6")[0]
	if !ids[4].Less(m6) {
		t.Fatalf("the message after the rollback got %v, not after %v: an ID clients saw could repeat", m6, ids[4])
	}
	for _, c := range []*collector{n.ca, n.cb} {
		got := c.waitFor(t, room, 6)
		if last := got[len(got)-1]; len(got) != 6 || last.Lost || string(last.Payload) != "m6" {
			t.Errorf("deliveries after the rollback: %+v, want m1..m5 then m6 and no notice (all were delivered here)", got)
		}
	}

	ctx := context.Background()
	page, err := n.pub.History(ctx, room, ids[3], 10) // after m4: m5 is gone
	if err != nil || !page.Truncated || len(page.Messages) != 1 || page.Messages[0].ID != m6 {
		t.Errorf("History after m4 = %+v, %v; want truncated, then m6", page, err)
	}
	page, err = n.pub.History(ctx, room, ids[0], 10) // after m1: m2, m3, then the gap
	if err != nil || page.Truncated || len(page.Messages) != 4 {
		t.Fatalf("History after m1 = %+v, %v; want m2, m3, a notice, m6", page, err)
	}
	if nt := page.Messages[2]; !nt.Lost || nt.LostAfter != ids[2] || nt.ID != m6 || page.Messages[3].ID != m6 {
		t.Errorf("History after m1: %+v; want a notice after m3 before m6, then m6", page.Messages)
	}
	page, err = n.pub.History(ctx, room, ids[4], 10) // after m5, the last delivered: nothing lost since
	if err != nil || page.Truncated || len(page.Messages) != 1 || page.Messages[0].ID != m6 {
		t.Errorf("History after m5 = %+v, %v; want m6 only, not truncated", page, err)
	}
	page, err = n.pub.History(ctx, room, ids[0], 2) // a full page of m2, m3: the next page tells
	if err != nil || page.Truncated || len(page.Messages) != 2 {
		t.Errorf("History after m1, 2 entries = %+v, %v; want m2, m3", page, err)
	}
}

// TestRedisRollbackWholeStream: the stream is gone after the nodes
// delivered from it (a restart or failover without it). It is created
// again, empty, with its last ID at the last entry delivered, so that a
// resume from before it is truncated and new IDs are greater.
func TestRedisRollbackWholeStream(t *testing.T) {
	const room = "rbw"
	n := startRollbackNodes(t, room)
	ids := n.publish(t, room, "m1", "m2")
	n.ca.waitFor(t, room, 2)
	n.cb.waitFor(t, room, 2)
	n.srv.MustDo("DEL", n.key)
	n.reconnect(t)
	testutil.EventuallyWithin(t, 10*time.Second, "the stream to be recreated at the last ID", func() bool {
		out, err := n.srv.Do("EXISTS", n.key)
		return err == nil && out == "1" && streamField(t, n.srv, n.key, "last-generated-id") == ids[1].String()
	})
	if ttl := n.srv.MustDo("PTTL", n.key); strings.HasPrefix(ttl, "-") {
		t.Errorf("the recreated stream has no TTL (PTTL %s)", ttl)
	}
	page, err := n.pub.History(context.Background(), room, ids[0], 10)
	if err != nil || !page.Truncated || len(page.Messages) != 0 {
		t.Errorf("History after m1 = %+v, %v; want truncated and empty", page, err)
	}
	m3 := n.publish(t, room, "m3")[0]
	if !ids[1].Less(m3) {
		t.Fatalf("m3 got %v, not after %v", m3, ids[1])
	}
	for _, c := range []*collector{n.ca, n.cb} {
		got := c.waitFor(t, room, 3)
		if last := got[len(got)-1]; last.Lost || string(last.Payload) != "m3" {
			t.Errorf("deliveries: %+v, want m1, m2, m3 without a notice", got)
		}
	}
}

// TestRedisRollbackNoticeToNodesBehind: a node that had not read the
// entries another node recorded as rolled back (max-deleted-entry-id
// past what it read) tells its members before the next entry.
func TestRedisRollbackNoticeToNodesBehind(t *testing.T) {
	const room = "rbn"
	n := startRollbackNodes(t, room)
	ids := n.publish(t, room, "m1", "m2")
	n.ca.waitFor(t, room, 2)
	// Another node delivered entries up to past m2 that the promoted
	// replica lacks, and recorded it.
	gone := ID{Ms: ids[1].Ms + 5}
	n.srv.MustDo("XSETID", n.key, gone.String(), "MAXDELETEDID", gone.String())
	n.reconnect(t)
	// The nodes check their rooms when they reconnect; then m3.
	testutil.EventuallyWithin(t, 10*time.Second, "the nodes to reconnect", func() bool {
		return n.a.Health() == nil && n.b.Health() == nil
	})
	time.Sleep(300 * time.Millisecond)
	m3 := n.publish(t, room, "m3")[0]
	got := n.ca.waitFor(t, room, 4)
	if nt := got[2]; !nt.Lost || nt.LostAfter != ids[1] || nt.ID != m3 || string(got[3].Payload) != "m3" {
		t.Errorf("deliveries %+v: want m1, m2, a notice after m2 before m3, m3", got)
	}
	if n.a.Stats().Rollbacks != 0 {
		t.Errorf("node a counted a rollback: it had read nothing that was lost")
	}
}

// TestRedisSentinelFailoverLosesUnreplicated: the replica is cut off
// (so it misses writes), messages are published, the master dies and the
// stale replica is promoted. Without REDIS_WAIT_REPLICAS the acked
// messages the replica missed are lost, but never silently: a node
// counts the rollback, History truncates a resume from within them and
// new IDs are greater than every ID delivered. With REDIS_WAIT_REPLICAS=1
// they were answered unconfirmed and no acked message is lost; after the
// failover nothing is acked until the old master is back as a replica.
func TestRedisSentinelFailoverLosesUnreplicated(t *testing.T) {
	for _, wait := range []int{0, 1} {
		t.Run(fmt.Sprintf("wait=%d", wait), func(t *testing.T) {
			st := redistest.StartSentinel(t, 500*time.Millisecond)
			cfg := testRedisConfig(t, st.Sentinel.Addr())
			cfg.SentinelMaster = st.MasterName
			cfg.WaitReplicas, cfg.WaitTimeout = wait, 200*time.Millisecond
			nodes := startNodes(t, 2, cfg)
			for _, nd := range nodes {
				mustSubscribe(t, nd.e, "fo")
			}
			pub := nodes[0].e
			key := pub.key("fo")
			ctx := context.Background()
			var acked []ID
			unconfirmed := 0
			publish := func(p string) error {
				id, err := PublishWait(ctx, pub, "fo", Message{Sender: 1, Payload: []byte(p)})
				switch {
				case err == nil:
					acked = append(acked, id)
				case errors.Is(err, ErrUnconfirmed):
					unconfirmed++
				}
				return err
			}
			for i := range 5 {
				if err := publish(fmt.Sprintf("before%d", i)); err != nil {
					t.Fatal(err)
				}
			}
			testutil.EventuallyWithin(t, 5*time.Second, "the replica to hold the first messages", func() bool {
				n, err := st.Replica.Do("XLEN", key)
				return err == nil && n == "5"
			})
			st.Link.Close()
			for i := range 5 {
				if err := publish(fmt.Sprintf("unreplicated%d", i)); err != nil && !errors.Is(err, ErrUnconfirmed) {
					t.Fatal(err)
				}
			}
			last := nodes[1].c.waitFor(t, "fo", 10)[9].ID // delivered everywhere
			st.Master.Kill()
			testutil.EventuallyWithin(t, 30*time.Second, "the sentinel to promote the replica", func() bool {
				addr, err := st.MasterAddr()
				return err == nil && addr == st.Replica.Addr()
			})
			var after ID
			testutil.EventuallyWithin(t, 30*time.Second, "a message stored on the promoted replica", func() bool {
				id, err := PublishWait(ctx, pub, "fo", Message{Sender: 1, Payload: []byte("after")})
				after = id
				if errors.Is(err, ErrUnconfirmed) && wait > 0 && strings.Contains(err.Error(), "REDIS_WAIT_REPLICAS") {
					// Stored, not replicated: the promoted replica has
					// no replica until the old master comes back.
					return true
				}
				return err == nil
			})
			if wait > 0 {
				st.Master.Restart() // the sentinel makes it a replica of the new master
				testutil.EventuallyWithin(t, 30*time.Second, "an acked message once the old master replicates", func() bool {
					id, err := PublishWait(ctx, pub, "fo", Message{Sender: 1, Payload: []byte("after")})
					after = id
					return err == nil
				})
			}
			if !last.Less(after) {
				t.Errorf("a message after the failover got %v, not after %v", after, last)
			}
			lost := 0
			for _, id := range acked {
				if !holds(t, st.Replica, key, id) {
					lost++
				}
			}
			rollbacks := nodes[0].e.Stats().Rollbacks + nodes[1].e.Stats().Rollbacks
			t.Logf("acked %d, acked and lost %d, unconfirmed %d, rollbacks counted %d", len(acked), lost, unconfirmed, rollbacks)
			if wait == 1 {
				if lost != 0 || unconfirmed < 5 {
					t.Errorf("with REDIS_WAIT_REPLICAS=1: %d acked messages lost, %d unconfirmed; want 0 lost and the 5 unreplicated unconfirmed", lost, unconfirmed)
				}
			} else if lost != 5 {
				t.Errorf("%d acked messages lost, want the 5 the replica missed (the test's premise)", lost)
			}
			// The nodes delivered the unreplicated messages either way:
			// their loss is never silent.
			if rollbacks == 0 {
				t.Error("no node counted the rollback")
			}
			page, err := pub.History(ctx, "fo", last.pred(), 10)
			if err != nil || !page.Truncated {
				t.Errorf("History from within the lost messages = %+v, %v; want truncated", page, err)
			}
		})
	}
}
