package main

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws/wsutil"

	"github.com/chatgw/gateway/internal/redistest"
)

// TestDefaultsKeepHonestClientsWhole (issue 20, item 5) is the original
// app's clients against gateways started with no limit variable set: one
// node on the embedded engine, and two production nodes sharing a Redis
// (with only the variables the original had). What such clients do must
// arrive whole: 200 messages back to back from one socket, in order; ten
// sockets sending 100 each at once; a sender at 100 messages a second,
// followed without a gap; 1 000 connections from one address, all
// accepted.
func TestDefaultsKeepHonestClientsWhole(t *testing.T) {
	t.Run("memory", func(t *testing.T) {
		g := startGateway(t, nil)
		honestClients(t, g, g)
	})
	t.Run("redis", func(t *testing.T) {
		r := redistest.Start(t)
		env := withEnv(redisEnvFor(r), map[string]string{"ENVIRONMENT": "production", "ALLOWED_HOSTS": "*"})
		honestClients(t, startGateway(t, env), startGateway(t, env))
	})
}

func honestClients(t *testing.T, a, b *gateway) {
	t.Run("200 back to back", func(t *testing.T) {
		recv := b.dial(t, "b2b")
		send := a.dial(t, "b2b")
		start := time.Now()
		var frames []byte
		for i := range 200 {
			frames = append(frames, rawFrame(finText, []byte(chat("s", fmt.Sprint(i))), false)...)
		}
		send.writeRaw(frames)
		for i := range 200 {
			if _, msg := recv.recvChat(); msg != fmt.Sprint(i) {
				t.Fatalf("message %d: got %q", i, msg)
			}
		}
		t.Logf("200 back-to-back messages delivered in %v", time.Since(start))
	})

	t.Run("10x100 at once", func(t *testing.T) {
		const socks, each = 10, 100
		cs := make([]*client, socks)
		for i := range cs {
			node := a
			if i%2 == 1 {
				node = b
			}
			cs[i] = node.dial(t, "burst")
		}
		var wg sync.WaitGroup
		errs := make(chan error, socks)
		for i, c := range cs {
			wg.Go(func() {
				var frames []byte
				for j := range each {
					frames = append(frames, rawFrame(finText, []byte(chat(fmt.Sprint(i), fmt.Sprint(j))), false)...)
				}
				if _, err := c.conn.Write(frames); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		for i, c := range cs {
			next := map[string]int{}
			for range (socks - 1) * each {
				u, msg := c.recvChat()
				if want := fmt.Sprint(next[u]); msg != want {
					t.Fatalf("socket %d: from %s got %q, want %s", i, u, msg, want)
				}
				next[u]++
			}
		}
	})

	t.Run("100 per second followed", func(t *testing.T) {
		recv := b.dial(t, "steady")
		send := a.dial(t, "steady")
		const n = 200
		done := make(chan error, 1)
		go func() {
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for i := range n {
				if err := wsutil.WriteClientText(send.conn, []byte(chat("s", fmt.Sprint(i)))); err != nil {
					done <- err
					return
				}
				<-tick.C
			}
			done <- nil
		}()
		for i := range n {
			if _, msg := recv.recvChat(); msg != fmt.Sprint(i) {
				t.Fatalf("message %d: got %q", i, msg)
			}
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})

	t.Run("1000 connections from one address", func(t *testing.T) {
		for i := range 1000 {
			node := a
			if i%2 == 1 {
				node = b
			}
			c, err := node.tryDial("many")
			if err != nil {
				t.Fatalf("connection %d: %v", i, err)
			}
			defer c.conn.Close()
		}
	})
}
