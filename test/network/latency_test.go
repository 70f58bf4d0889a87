//go:build network

package network

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatgw/gateway/internal/netlab"
)

// TestConformanceWithLatency: two gateways on their own hosts reach Redis
// through 1 ms ± 0.2 ms each way and their clients reach them through
// 20 ms ± 5 ms (fault proxies: this kernel has no netem). Ten members, five
// on each gateway, send one message each (both gateways are then
// subscribed), then 100 more each at once into one room, with ack=1 and a
// cid each. Checked from the record (failoverRecord.check, liveRun): every
// message is acked once; every member gets every other member's messages,
// each once, each sender's in its order, and never its own; so does a
// member that only listens.
func TestConformanceWithLatency(t *testing.T) {
	lab := netlab.New(t)
	redisHost, clients := lab.Host("redis"), lab.Host("clients")
	redisAddr := startRedis(t, redisHost)
	var entries []string // the clients' way in to each gateway
	for i := range 2 {
		gw := lab.Host(fmt.Sprintf("gateway%d", i+1))
		toRedis := gw.StartProxy(t, 6380, redisAddr, time.Millisecond, 200*time.Microsecond)
		addr := startGateway(t, gw, map[string]string{
			"ENVIRONMENT":   "production",
			"ALLOWED_HOSTS": "*",
			"IP_REDIS":      gw.Addr().String(),
			"PORT_REDIS":    strings.TrimPrefix(toRedis.Addr(), gw.Addr().String()+":"),
		})
		entries = append(entries, clients.StartProxy(t, 0, addr, 20*time.Millisecond, 5*time.Millisecond).Addr())
	}
	const senders, each = 10, 100
	run := newLiveRun(senders)
	for k := range senders {
		run.addSender(t, clients, entries[k%2], "/ws/chat/lat/?ack=1&ids=1", k%2)
	}
	run.addMember(t, clients, entries[1], "/ws/chat/lat/?ids=1", 1)
	// A message from each sender through both gateways first: both are
	// subscribed.
	for k := range senders {
		run.send(k, 1)
	}
	waitFor(t, "every first message to be acked and delivered", 10*time.Second, run.rec.hasFirst)
	var sending sync.WaitGroup
	for k := range senders {
		sending.Add(1)
		go func() {
			defer sending.Done()
			for n := 2; n <= 1+each; n++ {
				if !run.send(k, n) {
					return
				}
			}
		}()
	}
	sending.Wait()
	c := run.finish(t, 30*time.Second, promises{allAcked: true, allDelivered: true})
	t.Logf("%d senders, 1+%d messages each, to %d members: %s", senders, each, senders+1, c.live())
}

// TestRedisResetMidRoundTrip: the connections between a gateway and Redis
// (through 1 ms ± 0.2 ms) are reset, RST mid-stream, five times while a
// client sends 20 messages a second with ack=1 and a cid each. Checked
// from the record (failoverRecord.check, liveRun with the store read
// back; promises storeIntact and lastAcked): one answer per message,
// nothing answered unavailable stored, every acked message stored once
// with its ID and delivered once, an unconfirmed one stored at most once
// and delivered only if stored, all in order; and the last message, 2.5 s
// after the last reset, is acked: the gateway reconnects.
func TestRedisResetMidRoundTrip(t *testing.T) {
	lab := netlab.New(t)
	redisHost, gw, clients := lab.Host("redis"), lab.Host("gateway"), lab.Host("clients")
	redisAddr := startRedis(t, redisHost)
	toRedis := gw.StartProxy(t, 6380, redisAddr, time.Millisecond, 200*time.Microsecond)
	addr := startGateway(t, gw, map[string]string{
		"ENVIRONMENT":   "production",
		"ALLOWED_HOSTS": "*",
		"IP_REDIS":      gw.Addr().String(),
		"PORT_REDIS":    strings.TrimPrefix(toRedis.Addr(), gw.Addr().String()+":"),
	})
	run := newLiveRun(1)
	run.addSender(t, clients, addr, "/ws/chat/reset/?ack=1&ids=1", 0)
	run.addMember(t, clients, addr, "/ws/chat/reset/?ids=1", 0)
	run.readStore(clients, addr, "reset")

	const messages = 200 // 10 s at 20 a second; a reset every 1.5 s from the 2nd
	for n := 1; n <= messages; n++ {
		if n%30 == 0 && n <= 150 {
			toRedis.Reset()
		}
		if !run.send(0, n) {
			break
		}
		time.Sleep(sendEvery)
	}
	c := run.finish(t, 15*time.Second, promises{storeIntact: true, lastAcked: true})
	t.Logf("through 5 resets: %s", c.withStore())
}
