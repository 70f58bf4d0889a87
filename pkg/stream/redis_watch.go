package stream

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/rueidis"
)

// This file watches Redis for the pumps, every watchEvery, on the shared
// client (which rueidis keeps pointed at the primary, following the
// sentinels or the Cluster's slot map):
//
//   - Behind Sentinel, which server is the primary. A pump holds a
//     dedicated connection, which rueidis leaves where it is when the
//     sentinels promote another server: when the old primary is
//     partitioned from the sentinels but not from the gateways, the pump
//     would go on writing to it, and acking what the failover then loses,
//     until the old primary is demoted after the partition heals
//     (measured: 11 s after the promotion). The engine asks which server
//     the shared client reaches (CLIENT INFO's laddr); a pump connected
//     before the answer changed, to another server, drops its connection
//     before its next round trip and connects to the new primary.
//   - For a pump waiting to retry after repeated failures (Redis down,
//     failing over, restarting), whether its shard answers again: then
//     it retries at once instead of at the end of its backoff (up to
//     REDIS_BACKOFF_MAX), so acks resume within watchEvery of Redis
//     coming back (measured after a Cluster failover: 2.8 s after the
//     promotion before).

// watchEvery is how often the engine watches Redis for the pumps.
const watchEvery = 250 * time.Millisecond

// watch runs the watches above every watchEvery until ctx ends.
func (e *Redis) watch(ctx context.Context) {
	defer e.running.Done()
	t := time.NewTicker(watchEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.stop:
			return
		case <-t.C:
		}
		if e.cfg.SentinelMaster != "" {
			e.checkPrimary(ctx)
		}
		e.probeWaiting(ctx)
	}
}

// checkPrimary records in e.primary the address of the server that the
// shared client reaches, and has the pumps retry at once when it
// changed.
func (e *Redis) checkPrimary(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	ci, err := parseClientInfo(e.client.Do(cctx, e.client.B().ClientInfo().Build()))
	cancel()
	if err != nil {
		return // Redis down or failing over: the pumps find out themselves
	}
	old := e.primary.Load()
	if old != nil && *old == ci.laddr {
		return
	}
	e.primary.Store(&ci.laddr)
	if old == nil {
		return
	}
	e.log.Info("stream: the sentinels moved the primary; pumps reconnect to it", "from", *old, "to", ci.laddr)
	for _, p := range e.pumps {
		p.retryNow.Store(true)
		p.w.wake()
	}
}

// probeWaiting reads, for every pump waiting to retry, a key of its
// first shard (the epoch key: on a Cluster it routes to the shard's
// master) in one pipeline bounded by watchEvery; a pump whose shard
// answers retries at once.
func (e *Redis) probeWaiting(ctx context.Context) {
	var waiting []*pump
	var cmds []rueidis.Completed
	for _, p := range e.pumps {
		if p.waiting.Load() {
			waiting = append(waiting, p)
			cmds = append(cmds, e.client.B().Exists().Key(p.shards[0].epochKey).Build())
		}
	}
	if len(cmds) == 0 {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, watchEvery)
	res := e.client.DoMulti(cctx, cmds...)
	cancel()
	for i, p := range waiting {
		if res[i].Error() == nil {
			p.retryNow.Store(true)
			p.w.wake()
		}
	}
}

// stalePrimary returns an error when the pump's connection reaches a
// server that is no longer the primary: the primary changed since the
// pump connected, and to another server than its own.
func (p *pump) stalePrimary() error {
	cur := p.e.primary.Load()
	if p.conn == nil || cur == nil || cur == p.primarySeen || *cur == p.server || p.server == "" {
		return nil
	}
	return fmt.Errorf("the sentinels moved the primary from %s to %s: reconnecting", p.server, *cur)
}
