//go:build network

package network

import (
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/chatgw/gateway/internal/netlab"
)

// Liveness settings of TestClientHostCutOff: a silent connection is pinged
// after pingInterval and closed pongTimeout later; the gateway's timer
// ticks every half of the shorter (tick).
const (
	pingInterval = time.Second
	pongTimeout  = time.Second
	tick         = 500 * time.Millisecond
)

// TestClientHostCutOff: a client host vanishes from the network (its link
// cut: no FIN, no RST; its TCP connections half-open at the gateway). The
// gateway frees its 20 connections within PING_INTERVAL + PONG_TIMEOUT
// and a tick of its timer, the room's presence count drops from 22 to 2,
// and the two members on another host keep talking meanwhile: one sends
// a message every 100 ms with ack=1 and a cid. Checked from the record
// (failoverRecord.check, liveRun): every message sent during the cut is
// acked once and reaches the other member once, in order, within a
// second of its send.
func TestClientHostCutOff(t *testing.T) {
	lab := netlab.New(t)
	gw, gone, stay := lab.Host("gateway"), lab.Host("clients-cut"), lab.Host("clients-stay")
	addr := startGateway(t, gw, map[string]string{
		"PING_INTERVAL": pingInterval.String(),
		"PONG_TIMEOUT":  pongTimeout.String(),
	})
	const cut = 20
	for range cut {
		dialWS(t, gone, addr, "/ws/chat/r/")
	}
	run := newLiveRun(1)
	watcher := run.addMember(t, stay, addr, "/ws/chat/r/?presence=1&ids=1", 0)
	run.addSender(t, stay, addr, "/ws/chat/r/?ack=1&ids=1", 0)
	waitFor(t, fmt.Sprintf("presence to say %d members", cut+2), 10*time.Second, func() bool {
		return !run.rec.presenceAt(watcher, cut+2, time.Time{}).IsZero()
	})
	if n := websockets(t, stay, addr); n != cut+2 {
		t.Fatalf("the gateway holds %d WebSockets before the cut, want %d", n, cut+2)
	}

	lab.Cut(gone)
	cutAt := time.Now()
	stop, sending := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sending)
		every := time.NewTicker(100 * time.Millisecond)
		defer every.Stop()
		for n := 1; run.send(0, n); n++ {
			select {
			case <-stop:
				return
			case <-every.C:
			}
		}
	}()
	stopSending := sync.OnceFunc(func() { close(stop); <-sending })
	t.Cleanup(stopSending)
	var freedAfter, presenceAfter time.Duration // 0 until seen
	for freedAfter == 0 || presenceAfter == 0 {
		if time.Since(cutAt) > 15*time.Second {
			t.Fatalf("15 s after the cut: freed after %v, presence 2 after %v (0: not yet)", freedAfter, presenceAfter)
		}
		if at := run.rec.presenceAt(watcher, 2, cutAt); presenceAfter == 0 && !at.IsZero() {
			presenceAfter = at.Sub(cutAt)
		}
		if freedAfter == 0 && websockets(t, stay, addr) == 2 {
			freedAfter = time.Since(cutAt)
		}
		time.Sleep(50 * time.Millisecond)
	}
	stopSending()
	c := run.finish(t, 2*time.Second, promises{allAcked: true, allDelivered: true, within: time.Second})
	if limit := pingInterval + pongTimeout + tick + 250*time.Millisecond; freedAfter > limit {
		t.Errorf("the cut host's connections were freed after %v, want within PING_INTERVAL + PONG_TIMEOUT + a tick (%v)", freedAfter, limit)
	}
	t.Logf("cut host's %d connections freed after %v, gone from presence after %v; between the others meanwhile: %s",
		cut, freedAfter.Round(time.Millisecond), presenceAfter.Round(time.Millisecond), c.live())
}

// websockets returns the WebSockets the gateway at addr holds (/stats),
// asked from host h.
func websockets(t *testing.T, h *netlab.Host, addr string) int64 {
	t.Helper()
	body, err := httpGet(h, addr, "/stats")
	if err != nil {
		t.Fatalf("/stats: %v", err)
	}
	var s struct {
		Conn struct {
			WebSockets int64 `json:"websockets"`
		} `json:"connections"`
	}
	if err := json.Unmarshal(body, &s); err != nil {
		t.Fatalf("/stats: %v: %s", err, body)
	}
	return s.Conn.WebSockets
}
