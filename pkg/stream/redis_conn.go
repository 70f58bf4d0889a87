package stream

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/chatgw/gateway/internal/backoff"
	"github.com/redis/rueidis"
)

// This file holds a pump's connection state: connecting (a dedicated
// connection, sealing the one before), failing and backing off, and the
// health that Health reports.

// connect makes sure the pump has its connections: two dedicated ones.
// The pump's own sends its round trips, synchronously on the pump's
// goroutine (rueidis starts no reader for it), and tracks the keys it
// reads (CLIENT TRACKING ON REDIRECT <listener> NOLOOP: redis_wake.go);
// the listener receives the invalidations, on rueidis's reader goroutine.
// On a Cluster both are pinned to the master of the pump's shard by the
// shard's epoch key, sent first. On a single server or behind Sentinel,
// when the previous connection failed with a round trip in doubt, it is
// killed from the new one first, so that nothing sent later can overtake
// what it carried.
func (p *pump) connect(ctx context.Context) error {
	if p.conn != nil {
		return nil
	}
	e := p.e
	cctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	var err error
	// A pooled connection may have broken while idle (Redis restarted):
	// rueidis drops it when it is given back, so try a few.
	for range 4 {
		var lid int64
		lc, lrelease := e.client.Dedicate()
		lost := lc.SetOnInvalidations(e.onInvalidations)
		lid, err = p.listenerID(cctx, lc)
		if err != nil {
			go lrelease()
			if isRedisErr(err) || cctx.Err() != nil {
				break
			}
			continue
		}
		dc, release := e.client.Dedicate()
		var cmds []rueidis.Completed
		if e.cluster {
			cmds = append(cmds, p.epochCmds()...)
		}
		first := len(cmds)
		cmds = append(cmds, e.client.B().ClientInfo().Build(),
			e.client.B().ClientTracking().On().Redirect(lid).Optin().Noloop().Build())
		if p.sealID != 0 {
			cmds = append(cmds, e.client.B().ClientKill().Id(p.sealID).Addr(p.sealAddr).Build())
		}
		res := dc.DoMulti(cctx, cmds...)
		err = firstError(res[:first])
		var ci clientInfo
		if err == nil {
			ci, err = parseClientInfo(res[first])
		}
		if err == nil {
			err = res[first+1].Error()
		}
		if err == nil && len(res) > first+2 {
			// "No such client" is fine: the old connection is gone.
			if kerr := res[first+2].Error(); kerr != nil && !isRedisErr(kerr) {
				err = kerr
			}
		}
		if err == nil {
			p.conn, p.clientID, p.clientAddr, p.sealID = dc, ci.id, ci.addr, 0
			if p.server != "" && p.server != ci.laddr {
				p.moved = true // checked and raised by the next full read (verifyAll)
			}
			p.server, p.primarySeen = ci.laddr, e.primary.Load()
			p.retryNow.Store(false)
			p.lost, p.lostDone = p.watchLost(lost)
			p.release = func() { release(); lrelease() }
			return nil
		}
		go func() { release(); lrelease() }()
		if isRedisErr(err) || cctx.Err() != nil {
			break
		}
	}
	return fmt.Errorf("connect pump: %w", err)
}

// listenerID returns the CLIENT ID of the listener connection c; on a
// Cluster an EXISTS of the shard's epoch key goes first, to pin c to the
// shard's master.
func (p *pump) listenerID(ctx context.Context, c rueidis.DedicatedClient) (int64, error) {
	e := p.e
	if !e.cluster {
		return c.Do(ctx, e.client.B().ClientId().Build()).AsInt64()
	}
	res := c.DoMulti(ctx, e.client.B().Exists().Key(p.shards[0].epochKey).Build(), e.client.B().ClientId().Build())
	if err := res[0].Error(); err != nil {
		return 0, err
	}
	return res[1].AsInt64()
}

// clientInfo is what the engine reads of CLIENT INFO's answer.
type clientInfo struct {
	id    int64  // id=: the connection's client ID
	addr  string // addr=: the connection's address as Redis sees it
	laddr string // laddr=: the server's own address on it
}

// parseClientInfo decodes CLIENT INFO's answer.
func parseClientInfo(rr rueidis.RedisResult) (ci clientInfo, err error) {
	s, err := rr.ToString()
	if err != nil {
		return ci, err
	}
	// RESP3 answers a verbatim string, which rueidis gives with its
	// format ("txt:").
	for _, f := range strings.Fields(strings.TrimPrefix(s, "txt:")) {
		switch k, v, _ := strings.Cut(f, "="); k {
		case "id":
			ci.id, err = strconv.ParseInt(v, 10, 64)
		case "addr":
			ci.addr = v
		case "laddr":
			ci.laddr = v
		}
	}
	if err != nil || ci.id == 0 || ci.addr == "" || ci.laddr == "" {
		return clientInfo{}, fmt.Errorf("CLIENT INFO answered %q, want id=, addr= and laddr= (Redis 6.2 or later)", s)
	}
	return ci, nil
}

// epochCmds writes the epoch key of each of the pump's shards unless it
// exists (SET NX).
func (p *pump) epochCmds() []rueidis.Completed {
	cmds := make([]rueidis.Completed, len(p.shards))
	v := nowMs()
	for i, s := range p.shards {
		cmds[i] = p.e.client.B().Set().Key(s.epochKey).Value(v).Nx().Build()
	}
	return cmds
}

// firstError returns the first error of res other than a nil reply.
func firstError(res []rueidis.RedisResult) error {
	for _, rr := range res {
		if err := rr.Error(); err != nil && !rueidis.IsRedisNil(err) {
			return err
		}
	}
	return nil
}

// disconnect gives the dedicated connection back, if any. A broken one
// is closed in the background: closing a connection to a silent server
// takes rueidis a second or more.
func (p *pump) disconnect() {
	if p.release != nil {
		go p.release()
	}
	if p.lostDone != nil {
		close(p.lostDone)
	}
	p.conn, p.release, p.lost, p.lostDone = nil, nil, nil, nil
}

// watchLost relays the end of a listener (lost, from rueidis) to the
// pump: the returned channel gets lost's error, and the pump is woken to
// read it. Closing done (disconnect) ends the watch.
func (p *pump) watchLost(lost <-chan error) (<-chan error, chan struct{}) {
	relay, done := make(chan error, 1), make(chan struct{})
	go func() {
		select {
		case err := <-lost:
			relay <- err
			p.w.wake()
		case <-done:
		}
	}()
	return relay, done
}

// fail records a failed round trip: the connection is dropped (and, if
// dedicated, killed before the next is used), every room is read and
// checked again once Redis answers.
func (p *pump) fail(err error) {
	if p.e.closed.Load() && errors.Is(err, rueidis.ErrClosing) {
		return
	}
	p.e.stats.roundTripErrors.Add(1)
	if p.release != nil && !p.e.cluster {
		// (Not on a Cluster: the next connection may go to another
		// master, where that ID names another client.)
		p.sealID, p.sealAddr = p.clientID, p.clientAddr
	}
	p.disconnect()
	p.verifyAll, p.epochDue = true, true
	// Nothing is tracked on the next connection: its first read (every
	// room, tracked) arms them all.
	p.polling = false
	clear(p.unarmed)
	p.epoch++
	p.hmu.Lock()
	p.lastErr = err
	p.hmu.Unlock()
	if p.failures == 0 {
		p.e.failing.Add(1)
		p.e.log.Warn("stream: Redis round trip failed; backing off", "pump", p.name, "err", err)
	}
	p.failures++
}

// healthy records a successful round trip.
func (p *pump) healthy() {
	now := time.Now()
	p.hmu.Lock()
	p.lastOK, p.lastErr = now, nil
	p.hmu.Unlock()
	if p.failures > 0 {
		p.e.failing.Add(-1)
		p.e.log.Info("stream: Redis round trips work again", "pump", p.name, "failures", p.failures)
		p.failures = 0
	}
	p.pruneExpires(now)
}

// pruneExpires forgets, at most once per refreshTTL, the TTL refreshes
// older than refreshTTL: their keys get a PEXPIRE with their next message.
func (p *pump) pruneExpires(now time.Time) {
	if now.Sub(p.lastPrune) <= p.refreshTTL {
		return
	}
	for k, t := range p.expires {
		if now.Sub(t) >= p.refreshTTL {
			delete(p.expires, k)
		}
	}
	p.lastPrune = now
}

// waitRetry waits before the next attempt after repeated failures:
// BackoffMin doubled per failure after the first up to BackoffMax, with
// "equal jitter" (a random point in its upper half) so that nodes do not
// reconnect in lockstep. Messages published meanwhile are refused at
// once: Redis is known to be down. It reports false when the engine is
// closing.
func (p *pump) waitRetry(ctx context.Context) bool {
	// The first retry is immediate (run): the wait after failure n is
	// the policy's wait n-1.
	policy := p.e.retryPolicy()
	policy.Jitter = true
	until := time.Now().Add(policy.Wait(p.failures - 1))
	down := fmt.Errorf("%w: Redis does not answer; retrying", ErrUnavailable)
	p.refuse(down)
	p.waiting.Store(true)
	defer p.waiting.Store(false)
	for time.Now().Before(until) {
		p.w.sleep(until)
		if p.stopped() || ctx.Err() != nil {
			return false
		}
		if p.retryNow.Swap(false) {
			break // a new primary, or the shard answers again: try at once
		}
		for {
			select {
			case r := <-p.reqs:
				p.answer(r, ID{}, fmt.Errorf("stream: publish to room %q: %w", r.room, down))
				continue
			case <-p.lost:
				p.lost = nil // the round trip after the wait reconnects anyway
			default:
			}
			break
		}
	}
	return !p.stopped() && ctx.Err() == nil
}

// readRefused records a read that Redis answered with an error: reads
// pause (backoff) while publishes go on, and Health reports the error
// until a read succeeds.
func (p *pump) readRefused(err error) {
	p.e.stats.readsRefused.Add(1)
	p.readFailures++
	// The rooms this read would have re-armed may miss their next wake:
	// read them all once reads work again. A polling pump goes back to
	// tracked reads, which do not need the signal stream (it may be what
	// Redis refuses).
	p.verifyAll = true
	if p.polling {
		p.stopPolling()
	}
	d := p.e.retryPolicy().Wait(p.readFailures)
	p.readRetry = time.Now().Add(d)
	p.hmu.Lock()
	p.lastErr = err
	p.hmu.Unlock()
	if p.readFailures == 1 {
		p.e.log.Warn("stream: Redis refused a read; messages are still stored, delivery waits", "pump", p.name, "err", err)
	}
}

// wrongNode reports whether err is Redis saying that the pump's
// connection, pinned to one Cluster master, no longer serves its slot
// (MOVED, ASK, TRYAGAIN, CLUSTERDOWN): the command did not run, and the
// pump must reconnect.
func wrongNode(err error) bool {
	var re *rueidis.RedisError
	if !errors.As(err, &re) {
		return false
	}
	_, redirect := re.IsRedirect()
	return redirect || re.IsTryAgain() || re.IsClusterDown()
}

// isRedisErr reports whether err is (or wraps) an error reply from Redis,
// as opposed to a failure to get one.
func isRedisErr(err error) bool {
	var re *rueidis.RedisError
	return errors.As(err, &re) && re != rueidis.Nil
}

// retryPolicy is how long the engine waits between attempts at what
// keeps failing: REDIS_BACKOFF_MIN doubled per failure in a row, up to
// REDIS_BACKOFF_MAX.
func (e *Redis) retryPolicy() backoff.Policy {
	return backoff.Policy{Min: e.cfg.BackoffMin, Max: e.cfg.BackoffMax}
}
