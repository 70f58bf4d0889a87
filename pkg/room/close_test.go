package room

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/chatgw/gateway/pkg/conn"
	"github.com/chatgw/gateway/pkg/stream"
	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// TestCloseDrainsPublishQueues: messages a client sent right before
// shutdown are either published or refused, never dropped by the Hub: once
// the server has stopped and Close has returned, every message the Hub
// received is accounted for.
func TestCloseDrainsPublishQueues(t *testing.T) {
	logger := slog.New(slog.DiscardHandler)
	hub, err := NewHub(Config{PublishWorkers: 2, PublishQueue: 4096}, logger)
	if err != nil {
		t.Fatal(err)
	}
	hub.SetEngine(stream.NewMemory(hub.Deliver))
	srv, err := conn.NewServer(conn.Config{}, hub, logger)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	go srv.Serve()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, _, err := ws.Dial(ctx, "ws://"+srv.Addr().String()+"/ws/chat/drain/")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 2000 {
		if err := wsutil.WriteClientText(c, fmt.Appendf(nil, `{"username":"u","message":"%d"}`, i)); err != nil {
			t.Fatal(err)
		}
	}
	// Wait until the Hub has received some, so the queues are busy when
	// the server stops.
	deadline := time.Now().Add(10 * time.Second)
	for hub.Stats().Received == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no message reached the Hub")
		}
		<-time.After(time.Millisecond) // poll interval
	}
	if err := srv.Shutdown(ctx); err != nil {
		t.Logf("shutdown: %v", err)
	}
	if err := hub.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s := hub.Stats()
	if s.Received == 0 || s.Received != s.Published+s.Rejected+s.Unavailable {
		t.Fatalf("received %d, published %d, rejected %d, unavailable %d: %d dropped by the Hub",
			s.Received, s.Published, s.Rejected, s.Unavailable, s.Received-s.Published-s.Rejected-s.Unavailable)
	}
	if s.Unavailable != 0 {
		t.Fatalf("%d queued messages were refused at shutdown instead of published", s.Unavailable)
	}
	if err := hub.Close(ctx); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}
