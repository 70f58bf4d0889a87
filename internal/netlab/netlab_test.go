//go:build network

package netlab

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestLab: two hosts talk over the bridge; a cut link carries nothing
// (the connection stays open, no error at either end) and heals without
// losing what was sent meanwhile; a shaped link is slow; and the lab is
// gone from the machine when its test ends.
func TestLab(t *testing.T) {
	var id string
	t.Run("lab", func(t *testing.T) {
		lab := New(t)
		id = lab.id
		a, b := lab.Host("a"), lab.Host("b")
		ln, err := a.Listen("tcp", a.Addr().String()+":9000")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		accepted := make(chan net.Conn, 1)
		go func() {
			c, err := ln.Accept()
			if err == nil {
				accepted <- c
			}
		}()
		cb, err := b.Dial("tcp", a.Addr().String()+":9000")
		if err != nil {
			t.Fatal(err)
		}
		defer cb.Close()
		ca := <-accepted
		defer ca.Close()
		roundTrip(t, cb, ca, []byte("before"), 2*time.Second)

		lab.Cut(b)
		if _, err := cb.Write([]byte("during")); err != nil {
			t.Fatalf("write into a cut link failed at once (%v): the connection must stay open", err)
		}
		_ = ca.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		var ne net.Error
		if n, err := ca.Read(make([]byte, 16)); !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("read across a cut link: %d bytes, %v; want nothing until the deadline", n, err)
		}
		lab.Heal(b)
		readExactly(t, ca, []byte("during"), 10*time.Second) // TCP's retransmission delivers it

		lab.Shape(a, "1mbit") // what the bridge sends to a
		payload := bytes.Repeat([]byte("x"), 256<<10)
		start := time.Now()
		go func() { _, _ = cb.Write(payload) }()
		readExactly(t, ca, payload, 20*time.Second)
		if took := time.Since(start); took < time.Second {
			t.Errorf("256 KiB over a 1 Mbit/s link took %v, want about 2 s", took)
		}
		lab.Shape(a, "")
	})
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), id) {
		t.Errorf("namespaces of the lab left behind:\n%s", out)
	}
	if out, _ := exec.Command("ip", "-o", "link", "show").Output(); strings.Contains(string(out), id) {
		t.Errorf("links of the lab left behind:\n%s", out)
	}
}

// roundTrip writes p on w and reads it back on r.
func roundTrip(t *testing.T, w, r net.Conn, p []byte, within time.Duration) {
	t.Helper()
	if _, err := w.Write(p); err != nil {
		t.Fatal(err)
	}
	readExactly(t, r, p, within)
}

// readExactly reads len(want) bytes from r and compares them.
func readExactly(t *testing.T, r net.Conn, want []byte, within time.Duration) {
	t.Helper()
	_ = r.SetReadDeadline(time.Now().Add(within))
	got := make([]byte, len(want))
	if _, err := io.ReadFull(r, got); err != nil {
		t.Fatalf("read %d bytes: %v", len(want), err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("read other bytes than were sent")
	}
}

// TestProxy: a proxy adds its delay each way (a round trip takes at least
// twice it), keeps the bytes in order under jitter, and Reset cuts the
// connections it carries.
func TestProxy(t *testing.T) {
	lab := New(t)
	a, b := lab.Host("a"), lab.Host("b")
	ln, err := b.Listen("tcp", b.Addr().String()+":9000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // echo
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); c.Close() }()
		}
	}()
	const delay, jitter = 30 * time.Millisecond, 10 * time.Millisecond
	p := a.StartProxy(t, 0, b.Addr().String()+":9000", delay, jitter)
	c, err := a.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	roundTrip(t, c, c, []byte("ping"), 5*time.Second)
	if rtt := time.Since(start); rtt < 2*(delay-jitter) {
		t.Errorf("round trip through the proxy took %v, want at least %v", rtt, 2*(delay-jitter))
	}
	var want []byte
	for i := range 200 { // many small writes: jitter must not reorder them
		msg := []byte(strconv.Itoa(i) + ",")
		want = append(want, msg...)
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
	}
	readExactly(t, c, want, 10*time.Second)
	p.Reset()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("read after Reset succeeded, want the connection cut")
	}
}
