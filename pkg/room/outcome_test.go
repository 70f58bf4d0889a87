package room

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/chatgw/gateway/internal/testutil"
	"github.com/chatgw/gateway/pkg/conn"
	"github.com/chatgw/gateway/pkg/stream"
)

// scriptedEngine is an Engine whose Publish answers with the error named
// by the message text ("unavailable", "unconfirmed") and accepts the rest;
// it delivers nothing.
type scriptedEngine struct {
	mu sync.Mutex
	n  int
}

func (e *scriptedEngine) Publish(_ string, m stream.Message, ack stream.Ack, ref any) {
	e.mu.Lock()
	e.n++
	n := e.n
	e.mu.Unlock()
	var v struct{ Message string }
	_ = json.Unmarshal(m.Payload, &v)
	switch v.Message {
	case "unavailable":
		ack(ref, stream.ID{}, fmt.Errorf("test: %w", stream.ErrUnavailable))
	case "unconfirmed":
		ack(ref, stream.ID{}, fmt.Errorf("test: %w", stream.ErrUnconfirmed))
	default:
		ack(ref, stream.ID{Ms: uint64(n)}, nil)
	}
}
func (e *scriptedEngine) History(context.Context, string, stream.ID, int) (stream.Page, error) {
	return stream.Page{}, nil
}
func (e *scriptedEngine) Last(context.Context, string, int) ([]stream.Message, error) {
	return nil, nil
}
func (e *scriptedEngine) SetMembers(string, int)                       {}
func (e *scriptedEngine) Members(context.Context, string) (int, error) { return 0, nil }
func (e *scriptedEngine) Subscribe(string) (stream.ID, error)          { return stream.ID{}, nil }
func (e *scriptedEngine) Unsubscribe(string) error                     { return nil }
func (e *scriptedEngine) Health() error                                { return nil }
func (e *scriptedEngine) Stats() stream.Stats                          { return stream.Stats{} }
func (e *scriptedEngine) Close(context.Context) error                  { return nil }

// TestPublishOutcomesReachTheSender: the sender learns, with distinct
// error codes, that a message was not stored ("unavailable") or that its
// outcome is unknown ("unconfirmed"); accepted messages get no frame.
func TestPublishOutcomesReachTheSender(t *testing.T) {
	logger := testutil.DiscardLogger()
	hub, err := NewHub(Config{}, logger)
	if err != nil {
		t.Fatal(err)
	}
	hub.SetEngine(&scriptedEngine{})
	addr := serveHub(t, hub, conn.Config{}, logger)

	ctx, cancel := context.WithTimeout(context.Background(), testutil.Timeout)
	defer cancel()
	c, _, _, err := ws.Dial(ctx, "ws://"+addr+"/ws/chat/outcomes/")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(testutil.Timeout))
	for _, text := range []string{"fine", "unavailable", "fine", "unconfirmed"} {
		if err := wsutil.WriteClientText(c, fmt.Appendf(nil, `{"username":"u","message":%q}`, text)); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []string{CodeUnavailable, CodeUnconfirmed} {
		b, err := wsutil.ReadServerText(c)
		if err != nil {
			t.Fatal(err)
		}
		var f struct{ Error, Detail string }
		if err := json.Unmarshal(b, &f); err != nil || f.Error != want || f.Detail == "" {
			t.Fatalf("frame %s, want error %q with a detail", b, want)
		}
	}
	s := hub.Stats()
	if s.Published != 2 || s.Unavailable != 1 || s.Unconfirmed != 1 {
		t.Fatalf("stats %+v, want 2 published, 1 unavailable, 1 unconfirmed", s)
	}
}
