//go:build network

package network

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chatgw/gateway/internal/netlab"
)

// TestConformanceWithLatency: two gateways on their own hosts reach Redis
// through 1 ms ± 0.2 ms each way and their clients reach them through
// 20 ms ± 5 ms (fault proxies: this kernel has no netem). Ten members, five
// on each gateway, each send 100 messages at once into one room: every
// member receives every other member's 100 messages, each sender's in its
// order, and never its own; so does a member that only listens.
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
	var members []*wsClient
	for s := range senders {
		members = append(members, dialWS(t, clients, entries[s%2], "/ws/chat/lat/"))
	}
	listener := dialWS(t, clients, entries[1], "/ws/chat/lat/")
	// A message through both gateways first: both are subscribed.
	members[0].send(t, `{"username":"0","message":"ready"}`)
	for _, m := range append(members[1:], listener) {
		if got := m.recv(t, 10*time.Second); !strings.Contains(got, `"ready"`) {
			t.Fatalf("first message: got %s", got)
		}
	}
	for s, m := range members {
		go func() {
			for k := range each {
				_ = m.write(textFrame(fmt.Sprintf(`{"username":"%d","message":%d}`, s, k)))
			}
		}()
	}
	for r, m := range append(members, listener) {
		next := make([]int, senders)
		want := senders * each
		if r < senders {
			want -= each // not its own
		}
		for range want {
			var f struct {
				Username string `json:"username"`
				Message  int    `json:"message"`
			}
			text := m.recv(t, 30*time.Second)
			if err := json.Unmarshal([]byte(text), &f); err != nil {
				t.Fatalf("member %d: frame %s", r, text)
			}
			s, err := strconv.Atoi(f.Username)
			if err != nil || s < 0 || s >= senders {
				t.Fatalf("member %d: message from unknown sender %q", r, f.Username)
			}
			if s == r {
				t.Fatalf("member %d received its own message %d", r, f.Message)
			}
			if f.Message != next[s] {
				t.Fatalf("member %d: sender %d's message %d, want %d (lost or out of order)", r, s, f.Message, next[s])
			}
			next[s]++
		}
	}
}

// TestRedisResetMidRoundTrip: the connections between a gateway and Redis
// (through 1 ms ± 0.2 ms) are reset, RST mid-stream, five times while a
// client sends 20 messages a second with ack=1 and a cid each. Checked
// from the record (history.check): one answer per message, nothing
// answered unavailable stored, every acked message stored and delivered
// once, in order; and the last message is acked: the gateway reconnects.
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
	sender := dialWS(t, clients, addr, "/ws/chat/reset/?ack=1&ids=1")
	member := dialWS(t, clients, addr, "/ws/chat/reset/?ids=1")
	h := newHistory()
	done := make(chan struct{}, 2)
	go func() { h.readAnswers(sender); done <- struct{}{} }()
	go func() { h.readDeliveries(member); done <- struct{}{} }()

	const messages = 200 // 10 s at 20 a second; a reset every 1.5 s from the 2nd
	for n := 1; n <= messages; n++ {
		if n%30 == 0 && n <= 150 {
			toRedis.Reset()
		}
		h.sent(n)
		sender.send(t, fmt.Sprintf(`{"username":"s","message":"m%d","cid":"c%d"}`, n, n))
		time.Sleep(sendEvery)
	}
	waitFor(t, "every message to be answered", 15*time.Second, h.allAnswered)
	stored := replayRoom(t, clients, addr, "reset")
	sender.c.Close()
	member.c.Close()
	<-done
	<-done
	c := h.check(t, stored)
	t.Logf("sent %d through 5 resets: acked %d, unavailable %d, unconfirmed %d (stored %d of them); delivered live %d",
		c.sent, c.acked, c.unavailable, c.unconfirmed, c.unconfirmedStored, c.delivered)
	if last := h.lastAnswer(); last != "ack" {
		t.Errorf("the last message, 2.5 s after the last reset, was answered %q: the gateway did not reconnect", last)
	}
}
