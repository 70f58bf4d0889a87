package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/gobwas/ws"
)

// The replay mode (-mode replay) measures how fast a gateway replays a
// room's history to a client that joins with ?since=: it publishes
// -replay-messages messages into a fresh room through one connection
// (ack=1, at most replayWindow unacknowledged), then joins a second
// connection with ?ids=1&since=0-0 and times the replayed messages until
// the last one. The gateway must keep that many (REDIS_MAXLEN). -pid
// samples the gateway's CPU over the replay.
//
//	loadgen -mode replay -url ws://127.0.0.1:8000 -replay-messages 100000 -pid $(pidof gateway)

// replayWindow bounds the publisher's unacknowledged messages.
const replayWindow = 256

// runReplay runs the replay measurement and prints its report.
func runReplay(ctx context.Context, cfg config, stdout io.Writer) error {
	a := &attacker{cfg: cfg, base: cfg.urls[0], room: fmt.Sprintf("replay%d", time.Now().UnixNano()%1e9)}
	n := cfg.replayMessages
	pub, pbr, err := a.dialQuery(ctx, a.room, "ack=1")
	if err != nil {
		return fmt.Errorf("publisher: %w", err)
	}
	defer pub.Close()
	start := time.Now()
	if err := publishAcked(pub, pbr, n, cfg.pad); err != nil {
		return err
	}
	pubTime := time.Since(start)

	pid := 0
	if len(cfg.pids) > 0 {
		pid = cfg.pids[0]
	}
	var cpu0 int64
	if pid > 0 {
		cpu0, _ = readCPUTicks(pid)
	}
	start = time.Now()
	rd, rbr, err := a.dialQuery(ctx, a.room, "ids=1&since=0-0")
	if err != nil {
		return fmt.Errorf("replay reader: %w", err)
	}
	defer rd.Close()
	got, bytesIn := 0, 0
	_ = rd.SetReadDeadline(time.Now().Add(2 * time.Minute))
	for got < n {
		f, err := readFrame(rbr)
		if err != nil {
			return fmt.Errorf("replay: %d of %d messages, then: %w", got, n, err)
		}
		if f.op == ws.OpText && bytes.Contains(f.payload, []byte(`"id":`)) {
			got++
			bytesIn += len(f.payload)
		}
		if f.discard > 0 {
			_, _ = rbr.Discard(f.discard)
		}
	}
	d := time.Since(start)
	fmt.Fprintf(stdout, "replay: %d messages published in %s (%.0f msg/s with ack=1, %d in flight)\n", n, pubTime.Round(time.Millisecond), float64(n)/pubTime.Seconds(), replayWindow)
	fmt.Fprintf(stdout, "  replayed to a client joining with since=0-0 in %s: %.0f msg/s, %.1f MB/s\n",
		d.Round(time.Millisecond), float64(n)/d.Seconds(), float64(bytesIn)/d.Seconds()/1e6)
	if pid > 0 {
		cpu1, _ := readCPUTicks(pid)
		c := time.Duration(cpu1-cpu0) * (time.Second / clockTicks)
		fmt.Fprintf(stdout, "  gateway CPU during the replay: %s (%.2f µs per message)\n", c.Round(10*time.Millisecond), float64(c.Microseconds())/float64(n))
	}
	return nil
}

// publishAcked sends n chat messages with cids, keeping at most
// replayWindow unacknowledged, and waits for every ack.
func publishAcked(nc net.Conn, br *bufio.Reader, n, pad int) error {
	acks := make(chan error, 1)
	inFlight := make(chan struct{}, replayWindow)
	go func() {
		got := 0
		for got < n {
			f, err := readFrame(br)
			if err != nil {
				acks <- fmt.Errorf("publisher: %d of %d acks, then: %w", got, n, err)
				return
			}
			if f.op == ws.OpText {
				switch {
				case bytes.HasPrefix(f.payload, []byte(`{"ack":`)):
					got++
					<-inFlight
				case bytes.Contains(f.payload, []byte(`"error"`)):
					acks <- fmt.Errorf("publisher: error frame %s (raise RATE_LIMIT and RATE_BURST for this run)", f.payload)
					return
				}
			}
			if f.discard > 0 {
				_, _ = br.Discard(f.discard)
			}
		}
		acks <- nil
	}()
	msg := make([]byte, 0, 128+pad)
	buf := make([]byte, 0, 160+pad)
	for i := range n {
		msg = append(msg[:0], `{"username":"replay","message":"m`...)
		msg = strconv.AppendInt(msg, int64(i), 10)
		msg = append(msg, bytes.Repeat([]byte{'x'}, pad)...)
		msg = append(msg, `","cid":"r`...)
		msg = strconv.AppendInt(msg, int64(i), 10)
		msg = append(msg, `"}`...)
		buf = appendClientFrame(buf[:0], ws.OpText, msg, randomMask())
		select {
		case inFlight <- struct{}{}:
		case err := <-acks:
			return err
		}
		if _, err := nc.Write(buf); err != nil {
			return fmt.Errorf("publisher: write: %w", err)
		}
	}
	select {
	case err := <-acks:
		return err
	case <-time.After(2 * time.Minute):
		return fmt.Errorf("publisher: acks did not arrive within 2 minutes")
	}
}
