package stream

import (
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// This file holds the signal stream, which busy pumps poll: each round
// trip that publishes appends one entry naming its rooms, and a pump under
// load (polling, redis_wake.go) reads the entries after its cursor in each
// of its round trips, on the pacing grid, instead of hearing of every
// message by an invalidation. Idle pumps do not read it.

// Signal entries: XADD <sigKey> MAXLEN ~ 10000 * n <node> r "<room> <room> …".
const (
	fieldRoom    = "r"     // the rooms that got entries, space-separated
	fieldNode    = "n"     // first: the node that wrote it
	signalMaxLen = "10000" // MAXLEN ~ of a signal stream
	signalCount  = 4096    // signals read per round at most
)

// maxOwed bounds the rooms a pump keeps to name again after failed
// signal writes.
const maxOwed = 4096

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
	p.cmds = append(p.cmds, e.client.B().Xadd().Key(p.sigKey).Maxlen().Almost().Threshold(signalMaxLen).Id("*").
		FieldValue().FieldValue(fieldNode, e.node).FieldValue(fieldRoom, string(p.sigBuf)).Build())
}

// applySignal handles the answer to the signal's XADD. When it failed the
// messages are stored all the same, and the nodes that were idle hear of
// them by invalidation; for those polling, the rooms are owed: the next
// round trip's signal names them again, and the pump makes that round
// trip itself after a backoff (BackoffMin doubled per failure in a row,
// up to BackoffMax) when no publish comes first. It returns the error
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

// collectSignals marks the rooms named by the entries of the signal
// stream in an XREAD reply (other nodes' only), notes the last ID, and
// returns how many entries other nodes wrote.
func (p *pump) collectSignals(v rueidis.RedisMessage) (foreign int) {
	entries, err := v.ToArray()
	if err != nil || len(entries) == 0 {
		return 0
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
			// This node's own signals name rooms it read back already.
			if f, _ := fields[0].ToString(); f == fieldNode {
				if n, _ := fields[1].ToString(); n == p.e.node {
					continue
				}
			}
		}
		foreign++
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
	return foreign
}
