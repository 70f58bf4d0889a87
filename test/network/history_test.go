//go:build network

package network

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// history is the record of one network test, Jepsen-style: per message
// (numbered from 1 in send order) the answers its sender got and how often
// the room's live member received it. The promised properties are checked
// from the record once the run is over (check), not while it runs.
type history struct {
	mu        sync.Mutex
	sentN     int
	answers   map[int][]answer
	delivered map[int]int
	order     []int // live deliveries, in arrival order
}

// answer is one frame the sender got about a message: kind is "ack" or an
// error ("unavailable", "unconfirmed", ...); id is the ack's stream ID.
type answer struct {
	kind, id string
}

// stored is a message the store holds: its number and stream ID.
type stored struct {
	n  int
	id string
}

// chatFrame is a delivered chat message with ids=1.
type chatFrame struct {
	Message string `json:"message"`
	ID      string `json:"id"`
}

// number returns the message's number ("m17" → 17).
func (f chatFrame) number(t *testing.T) int {
	t.Helper()
	n, err := strconv.Atoi(strings.TrimPrefix(f.Message, "m"))
	if err != nil || !strings.HasPrefix(f.Message, "m") {
		t.Fatalf("message %q is not one the test sent", f.Message)
	}
	return n
}

// newHistory returns an empty record.
func newHistory() *history {
	return &history{answers: map[int][]answer{}, delivered: map[int]int{}}
}

// sent records that message n was sent.
func (h *history) sent(n int) {
	h.mu.Lock()
	h.sentN = n
	h.mu.Unlock()
}

// readAnswers records the sender's acks and error frames until its
// connection ends. A frame it cannot place is recorded under message 0,
// which check reports.
func (h *history) readAnswers(w *wsClient) {
	for m := range w.msgs {
		var f struct {
			Ack   string `json:"ack"`
			Error string `json:"error"`
			CID   string `json:"cid"`
		}
		n := 0
		if json.Unmarshal([]byte(m), &f) == nil {
			n, _ = strconv.Atoi(strings.TrimPrefix(f.CID, "c"))
		}
		a := answer{kind: f.Error, id: f.Ack}
		if f.Ack != "" {
			a.kind = "ack"
		}
		if a.kind == "" {
			a.kind = "unknown frame " + m
		}
		h.mu.Lock()
		h.answers[n] = append(h.answers[n], a)
		h.mu.Unlock()
	}
}

// readDeliveries records the live member's chat messages until its
// connection ends.
func (h *history) readDeliveries(w *wsClient) {
	for m := range w.msgs {
		var f chatFrame
		n := 0
		if json.Unmarshal([]byte(m), &f) == nil {
			n, _ = strconv.Atoi(strings.TrimPrefix(f.Message, "m"))
		}
		h.mu.Lock()
		h.delivered[n]++
		h.order = append(h.order, n)
		h.mu.Unlock()
	}
}

// allAnswered reports whether every message sent has an answer.
func (h *history) allAnswered() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for n := 1; n <= h.sentN; n++ {
		if len(h.answers[n]) == 0 {
			return false
		}
	}
	return true
}

// lastAnswer returns the kind of the last sent message's first answer
// ("" when none).
func (h *history) lastAnswer() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if as := h.answers[h.sentN]; len(as) > 0 {
		return as[0].kind
	}
	return ""
}

// counts are what check found, for the test's log.
type counts struct {
	sent, acked, unavailable, unconfirmed, unconfirmedStored, delivered int
}

// check checks the record against what the store holds (stored, in
// stream order) and returns the counts. The properties: one answer per
// message; acked ⇒ stored once, with the acked ID, and delivered live
// once; unavailable ⇒ neither stored nor delivered; unconfirmed ⇒ stored
// at most once, delivered live as often as stored; the store and the live
// member both in send order; nothing stored or delivered that was not
// sent.
func (h *history) check(t *testing.T, st []stored) counts {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	c := counts{sent: h.sentN}
	storedN := map[int][]string{}
	for _, s := range st {
		storedN[s.n] = append(storedN[s.n], s.id)
		if s.n < 1 || s.n > h.sentN {
			t.Errorf("the store holds message %d, which was never sent", s.n)
		}
	}
	for i := 1; i < len(st); i++ {
		if st[i].n <= st[i-1].n {
			t.Errorf("the store holds message %d after %d: not in send order", st[i].n, st[i-1].n)
		}
	}
	if !slices.IsSorted(h.order) || len(slices.Compact(slices.Clone(h.order))) != len(h.order) {
		t.Errorf("the live member received messages out of order or twice: %v", h.order)
	}
	if a := h.answers[0]; len(a) > 0 {
		t.Errorf("the sender got %d frames about no message it sent: %v", len(a), a)
	}
	for n := range h.delivered {
		if n < 1 || n > h.sentN {
			t.Errorf("the live member received message %d, which was never sent", n)
		}
	}
	for n := 1; n <= h.sentN; n++ {
		as, ids, got := h.answers[n], storedN[n], h.delivered[n]
		c.delivered += got
		if len(as) != 1 {
			t.Errorf("message %d: %d answers %v, want exactly one", n, len(as), as)
			continue
		}
		switch a := as[0]; a.kind {
		case "ack":
			c.acked++
			if len(ids) != 1 || ids[0] != a.id || got != 1 {
				t.Errorf("message %d acked as %s: stored as %v, delivered live %d times; want once each", n, a.id, ids, got)
			}
		case "unavailable":
			c.unavailable++
			if len(ids) != 0 || got != 0 {
				t.Errorf("message %d answered unavailable, yet stored as %v and delivered %d times", n, ids, got)
			}
		case "unconfirmed":
			c.unconfirmed++
			if len(ids) > 0 {
				c.unconfirmedStored++
			}
			if len(ids) > 1 || got != len(ids) {
				t.Errorf("message %d unconfirmed: stored %d times, delivered live %d times; want at most once, as often as stored", n, len(ids), got)
			}
		default:
			t.Errorf("message %d: answer %q, want ack, unavailable or unconfirmed", n, a.kind)
		}
	}
	return c
}
