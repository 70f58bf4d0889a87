package stream

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/redis/rueidis"
)

// This file reads a room's history: History (XRANGE) and Last
// (XREVRANGE), on the engine's shared client rather than through a pump,
// each in one round trip bounded by Timeout.
//
// Truncation. Redis 7.0 does not record what MAXLEN trimming removed
// (max-deleted-entry-id only follows XDEL), so History finds out from the
// entries themselves. It reads from after itself, inclusive:
//
//   - after is still held: trimming only removes the oldest entries, so
//     every entry after it is held too. Not truncated.
//   - after is not held, and the first entry held after it, F, is F.Ms-k
//     with k > 0: the entry before F was F.Ms-(k-1), since auto-generated
//     IDs number the entries of one millisecond 0, 1, 2... Truncated
//     unless after is that entry.
//   - after is not held and F is F.Ms-0: the entry before F is not known.
//     Truncated: this errs only when after is exactly the last entry
//     trimmed, and then the caller gets every entry it lacks with a
//     needless warning; it never misses a loss.
//   - nothing after it is held: truncated when the room's key does not
//     exist (it expired, or Redis lost it), not when after is the last
//     entry or later.
//
// The read and the existence check run in one MULTI/EXEC, so they see the
// same stream.

// maxRead caps the COUNT of one read: far more than a stream holds.
const maxRead = 1 << 30

// History returns up to n entries of room after the entry after (n ≤ 0:
// none), oldest first, and whether entries after it were trimmed (see
// the truncation notes above). The payloads point into the reply:
// read-only. Errors wrap ErrUnavailable, or are ErrClosed.
func (e *Redis) History(ctx context.Context, room string, after ID, n int) ([]Message, bool, error) {
	if e.closed.Load() {
		return nil, false, ErrClosed
	}
	if n <= 0 {
		return nil, false, nil
	}
	n = min(n, maxRead)
	key := e.key(room)
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	c := e.client
	if after.IsZero() {
		entries, err := c.Do(ctx, c.B().Xrange().Key(key).Start("-").End("+").Count(int64(n)).Build()).ToArray()
		if err != nil {
			return nil, false, e.readError("read the history of", room, err)
		}
		return e.decodeEntries(entries), false, nil
	}
	res := c.DoMulti(ctx,
		c.B().Multi().Build(),
		c.B().Exists().Key(key).Build(),
		c.B().Xrange().Key(key).Start(after.String()).End("+").Count(int64(n)+1).Build(),
		c.B().Exec().Build(),
	)
	exec, err := res[3].ToArray()
	if err == nil && len(exec) != 2 {
		err = fmt.Errorf("EXEC answered %d replies, want 2", len(exec))
	}
	var exists int64
	var entries []rueidis.RedisMessage
	if err == nil {
		exists, err = exec[0].AsInt64()
	}
	if err == nil {
		entries, err = exec[1].ToArray()
	}
	if err != nil {
		for _, rr := range res[:3] {
			if rerr := rr.Error(); rerr != nil {
				err = rerr // the first error says more than EXEC's
				break
			}
		}
		return nil, false, e.readError("read the history of", room, err)
	}
	msgs, truncated := afterID(e.decodeEntries(entries), after, exists == 1)
	if len(msgs) > n {
		msgs = msgs[:n]
	}
	return msgs, truncated, nil
}

// afterID takes the entries of XRANGE <after> + (after included when
// held) and returns those after after, and whether entries after it were
// trimmed, as the notes at the top of this file explain. exists says
// whether the stream's key exists.
func afterID(msgs []Message, after ID, exists bool) ([]Message, bool) {
	switch {
	case len(msgs) == 0:
		return nil, !exists
	case msgs[0].ID == after:
		return msgs[1:], false
	default:
		f := msgs[0].ID
		return msgs, !(f.Seq > 0 && after == ID{Ms: f.Ms, Seq: f.Seq - 1})
	}
}

// Last returns the last n entries of room (n ≤ 0: none), oldest first.
// The payloads point into the reply: read-only. Errors wrap
// ErrUnavailable, or are ErrClosed.
func (e *Redis) Last(ctx context.Context, room string, n int) ([]Message, error) {
	if e.closed.Load() {
		return nil, ErrClosed
	}
	if n <= 0 {
		return nil, nil
	}
	n = min(n, maxRead)
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	c := e.client
	entries, err := c.Do(ctx, c.B().Xrevrange().Key(e.key(room)).End("+").Start("-").Count(int64(n)).Build()).ToArray()
	if err != nil {
		return nil, e.readError("read the last messages of", room, err)
	}
	msgs := e.decodeEntries(entries)
	slices.Reverse(msgs)
	return msgs, nil
}

// decodeEntries decodes the entries of an XRANGE or XREVRANGE reply,
// skipping (and counting) those it cannot decode. Payloads point into the
// reply.
func (e *Redis) decodeEntries(entries []rueidis.RedisMessage) []Message {
	if len(entries) == 0 {
		return nil
	}
	msgs := make([]Message, 0, len(entries))
	for i := range entries {
		id, sender, payload, ok := decodeEntry(&entries[i])
		if !ok {
			e.stats.malformed.Add(1)
			continue
		}
		msgs = append(msgs, Message{ID: id, Sender: sender, Payload: payload})
	}
	return msgs
}

// readError wraps err from a read of room's history: ErrClosed after
// Close, else ErrUnavailable, whatever Redis said.
func (e *Redis) readError(op, room string, err error) error {
	if e.closed.Load() && errors.Is(err, rueidis.ErrClosing) {
		return ErrClosed
	}
	return fmt.Errorf("stream: %s room %q: %w: %w", op, room, ErrUnavailable, err)
}
