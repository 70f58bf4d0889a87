package stream

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// This file holds a pump's signals: the signal stream names the rooms a
// node published to, so that other nodes read just those; an idle pump
// blocks on it (and on its wake stream, which poke writes to end the
// block).

// maxOwed bounds the rooms a pump keeps to name again after failed
// signal writes.
const maxOwed = 4096

// blockResult is the outcome of a blocking read of the signal streams.
type blockResult struct {
	reply rueidis.RedisMessage
	// expired: BLOCK passed with nothing to read (Redis's nil reply,
	// which rueidis gives as an error value). err is then nil.
	expired bool
	err     error
	epoch   int // the pump's epoch when the read started
}

// poke makes the pump read its dirty rooms soon: it wakes the pump's
// goroutine and, if the pump is blocked on its signal streams, the
// blocking read (through the wake stream). Called after marking rooms
// dirty, so that either the pump sees them before it blocks or the wake
// ends its block.
func (p *pump) poke(ctx context.Context) {
	select {
	case p.kick <- struct{}{}:
	default:
	}
	if !p.blocking.Load() || !p.wakeSent.CompareAndSwap(false, true) {
		return
	}
	e := p.e
	res := e.client.DoMulti(ctx,
		e.client.B().Xadd().Key(p.wakeKey).Maxlen().Threshold("1").Id("*").FieldValue().FieldValue("w", "1").Build(),
		e.client.B().Arbitrary("PEXPIRE").Keys(p.wakeKey).Args(e.ttlMs).Build(),
	)
	if err := res[0].Error(); err != nil && e.log.Enabled(ctx, slog.LevelDebug) {
		e.log.Debug("stream: wake pump", "err", err)
	}
}

// startBlock starts a blocking read of the signal and wake streams unless
// one is in flight or a room became dirty meanwhile. Its result arrives on
// blockRes.
func (p *pump) startBlock(ctx context.Context) {
	if p.blocking.Load() {
		return
	}
	p.wakeSent.Store(false)
	p.blocking.Store(true)
	if p.readDue(time.Now()) {
		// Subscribe marked a room after the caller looked: read it now.
		p.blocking.Store(false)
		select {
		case p.kick <- struct{}{}:
		default:
		}
		return
	}
	e := p.e
	p.busy = false
	cmd := e.client.B().Xread().Count(signalCount).Block(e.block).Streams().
		Key(p.sigKey, p.wakeKey).Id(p.sigLast.String(), p.wakeLast.String()).Build().UnblockOnCancel()
	epoch := p.epoch
	go func() {
		rctx, cancel := context.WithTimeout(ctx, e.readDeadline)
		msg, err := e.client.Do(rctx, cmd).ToMessage()
		cancel()
		expired := rueidis.IsRedisNil(err)
		if expired {
			err = nil
		}
		p.blockRes <- blockResult{reply: msg, expired: expired, err: err, epoch: epoch}
	}()
}

// onBlock handles the end of a blocking read.
func (p *pump) onBlock(br blockResult) {
	p.blocking.Store(false)
	p.e.stats.blockingReads.Add(1)
	if br.epoch != p.epoch {
		// Started before a failure the pump has recovered from: its
		// connection may have broken with the old one. The next read
		// re-reads everything anyway (verifyAll).
		return
	}
	if br.expired {
		p.healthy()
		return // readDue asks for a full read once REDIS_SWEEP passed
	}
	if br.err != nil {
		if p.e.closed.Load() {
			return
		}
		if isRedisErr(br.err) {
			p.readRefused(fmt.Errorf("XREAD BLOCK %s: %w", p.sigKey, br.err))
			return
		}
		p.fail(fmt.Errorf("XREAD BLOCK signals: %w", br.err))
		return
	}
	p.healthy()
	before, wake := p.foreign, p.wakeLast
	if err := forEachStream(br.reply, p.collectSignals); err != nil {
		p.fail(err)
		return
	}
	// Only this node's own signals: nothing to read (its rooms are marked
	// already); block again. Another node's signal or a wake: read.
	if p.foreign != before || p.wakeLast != wake {
		p.readAgain = true
	}
}

// collectSignals marks the rooms named by the entries of the signal
// stream in an XREAD reply, and notes the last signal and wake IDs.
func (p *pump) collectSignals(key string, v rueidis.RedisMessage) {
	entries, err := v.ToArray()
	if err != nil || len(entries) == 0 {
		return
	}
	if key == p.wakeKey {
		if id, ok := entryID(&entries[len(entries)-1]); ok {
			p.wakeLast = id
		}
		return
	}
	// A full batch: the pump is far behind, and the stream may have been
	// trimmed past what it read; read every room next time.
	p.sigFull = len(entries) >= min(signalCount, max(p.e.cfg.ReadCount, 1))
	for i := range entries {
		id, ok := entryID(&entries[i])
		if !ok {
			continue
		}
		p.sigLast = id
		kv, _ := entries[i].ToArray()
		fields, _ := kv[1].ToArray()
		if len(fields) >= 2 {
			// This node's own signals name rooms it marked itself when it
			// published to them.
			if f, _ := fields[0].ToString(); f == fieldNode {
				n, _ := fields[1].ToString()
				if n == p.e.node {
					continue
				}
				p.sawNode(n, id)
			}
		}
		p.foreign++
		for j := 0; j+1 < len(fields); j += 2 {
			if f, _ := fields[j].ToString(); f != fieldRoom {
				continue
			}
			names, _ := fields[j+1].ToString()
			for name := range strings.SplitSeq(names, " ") {
				s := p.e.shards[p.e.shardOf(name)]
				if s.pump != p {
					continue
				}
				s.mu.Lock()
				if r := s.roomByName(name); r != nil && !r.stuck {
					s.markDirty(r)
				}
				s.mu.Unlock()
			}
		}
	}
}

// signal names room in this round trip's signal, once.
func (p *pump) signal(room string) {
	if _, ok := p.sigRooms[room]; !ok {
		p.sigRooms[room] = struct{}{}
		p.sigNames = append(p.sigNames, room)
	}
}

// buildSignal appends the XADD of this round trip's signal, naming the
// rooms it publishes to (and those owed from failed signal writes), when
// there are any.
func (p *pump) buildSignal(t *trip) {
	if len(p.sigNames) == 0 {
		return
	}
	e := p.e
	t.sigCmd = len(p.cmds)
	// Every signal entry has the same two fields, so Redis stores them
	// once per stream node: cheaper to append and to read.
	p.sigBuf = p.sigBuf[:0]
	for i, name := range p.sigNames {
		if i > 0 {
			p.sigBuf = append(p.sigBuf, ' ') // room names never hold a space
		}
		p.sigBuf = append(p.sigBuf, name...)
	}
	p.cmds = append(p.cmds, e.client.B().Xadd().Key(p.sigKey).Maxlen().Almost().Threshold(signalMaxLen).Id("*").FieldValue().
		FieldValue(fieldNode, e.node).FieldValue(fieldRoom, string(p.sigBuf)).Build())
}

// applySignal handles the answer to the signal's XADD. When it failed the
// messages are stored all the same; this node reads them anyway, and the
// rooms are owed: the next round trip's signal names them again, and the
// pump makes that round trip itself after a backoff (BackoffMin doubled
// per failure in a row, up to BackoffMax) when no publish comes first.
// Other nodes also find them on their next full read (REDIS_SWEEP). It returns the error
// when the signal got no answer (the round trip failed).
func (p *pump) applySignal(rr rueidis.RedisResult) error {
	err := rr.Error()
	if err == nil {
		p.owedFailures = 0
		return nil
	}
	for _, name := range p.sigNames[:min(len(p.sigNames), maxOwed)] {
		p.owed = append(p.owed, strings.Clone(name))
	}
	p.owedFailures++
	p.owedAt = time.Now().Add(p.e.retryPolicy().Wait(p.owedFailures))
	if time.Since(p.sigFailLogged) >= badLogEvery {
		p.e.log.Warn("stream: signal write failed; it is sent again within REDIS_BACKOFF_MIN (doubling while it fails), and other nodes deliver these messages within REDIS_SWEEP at worst",
			"rooms", len(p.sigNames), "err", err)
		p.sigFailLogged = time.Now()
	}
	if isRedisErr(err) {
		return nil
	}
	return err
}
