//go:build network

package network

import (
	"encoding/json"
	"fmt"
	"strings"
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
// and the two members on another host keep talking meanwhile: every
// message sent during the cut arrives, in order, within a second.
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
	watcher := dialWS(t, stay, addr, "/ws/chat/r/?presence=1")
	sender := dialWS(t, stay, addr, "/ws/chat/r/")
	waitPresence(t, watcher, cut+2, 10*time.Second)
	if n := websockets(t, stay, addr); n != cut+2 {
		t.Fatalf("the gateway holds %d WebSockets before the cut, want %d", n, cut+2)
	}

	lab.Cut(gone)
	cutAt := time.Now()
	var freedAfter, presenceAfter time.Duration // 0 until seen
	sent := 0
	for freedAfter == 0 || presenceAfter == 0 {
		if time.Since(cutAt) > 15*time.Second {
			t.Fatalf("15 s after the cut: freed after %v, presence 2 after %v (0: not yet)", freedAfter, presenceAfter)
		}
		sent++
		msg := fmt.Sprintf(`{"username":"stay","message":"m%d"}`, sent)
		sentAt := time.Now()
		sender.send(t, msg)
		for {
			text := watcher.recv(t, 2*time.Second)
			if strings.Contains(text, `"presence"`) {
				if presenceOf(t, text) == 2 && presenceAfter == 0 {
					presenceAfter = time.Since(cutAt)
				}
				continue
			}
			if text != msg {
				t.Fatalf("message %d: got %s, want %s (lost or out of order)", sent, text, msg)
			}
			if wait := time.Since(sentAt); wait > time.Second {
				t.Fatalf("message %d took %v while the cut host's connections were held", sent, wait)
			}
			break
		}
		if freedAfter == 0 && websockets(t, stay, addr) == 2 {
			freedAfter = time.Since(cutAt)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if limit := pingInterval + pongTimeout + tick + 250*time.Millisecond; freedAfter > limit {
		t.Errorf("the cut host's connections were freed after %v, want within PING_INTERVAL + PONG_TIMEOUT + a tick (%v)", freedAfter, limit)
	}
	t.Logf("cut host's %d connections freed after %v, gone from presence after %v; %d messages between the others meanwhile, each within 1 s",
		cut, freedAfter.Round(time.Millisecond), presenceAfter.Round(time.Millisecond), sent)
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
