package stream

import (
	"context"
	"fmt"
	"time"
)

// This file keeps the pumps on the current primary behind Sentinel. A
// pump holds a dedicated connection, which rueidis leaves where it is
// when the sentinels promote another server: when the old primary is
// partitioned from the sentinels but not from the gateways, the pump
// would go on writing to it, and acking what the failover then loses,
// until the old primary is demoted after the partition heals (measured:
// 11 s after the promotion). rueidis's shared client follows the
// sentinels, so the engine asks it, every primaryCheck, which server it
// reaches (CLIENT INFO's laddr); a pump connected before the answer
// changed, to another server, drops its connection before its next round
// trip and connects to the new primary, and a pump waiting to retry
// (Redis was down: the old primary died) tries the new one at once.

// primaryCheck is how often the engine asks which server is the primary.
const primaryCheck = 250 * time.Millisecond

// watchPrimary records in e.primary the address of the server that the
// shared client reaches, every primaryCheck, and wakes the pumps when it
// changes. It runs behind Sentinel only, until ctx ends.
func (e *Redis) watchPrimary(ctx context.Context) {
	defer e.running.Done()
	t := time.NewTicker(primaryCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.stop:
			return
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
		ci, err := parseClientInfo(e.client.Do(cctx, e.client.B().ClientInfo().Build()))
		cancel()
		if err != nil {
			continue // Redis down or failing over: the pumps find out themselves
		}
		if old := e.primary.Load(); old == nil || *old != ci.laddr {
			e.primary.Store(&ci.laddr)
			if old != nil {
				e.log.Info("stream: the sentinels moved the primary; pumps reconnect to it", "from", *old, "to", ci.laddr)
				for _, p := range e.pumps {
					p.retryNow.Store(true)
					p.w.wake()
				}
			}
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
