package stream

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/chatgw/gateway/internal/hist"
)

// Errors returned by engines. Check them with errors.Is.
var (
	// ErrClosed is returned by every method of an engine after Close.
	ErrClosed = errors.New("stream: engine closed")
	// ErrUnavailable wraps failures to reach or use the backing store
	// (Redis down, refusing writes, or too slow to take the message in
	// time). A Publish that fails with it did not store the message: the
	// caller may retry later without duplicating it.
	ErrUnavailable = errors.New("stream: backend unavailable")
	// ErrUnconfirmed is the outcome of a Publish that was sent to the
	// backing store but not confirmed in time (Redis stopped answering
	// with the command in flight). The message may or may not be stored:
	// if it is, it is delivered like any other, in order. A caller that
	// resends it may duplicate it.
	ErrUnconfirmed = errors.New("stream: publish not confirmed")
)

// ID identifies an entry in a room's stream. It has the shape of a Redis
// stream ID ("<ms>-<seq>") and orders entries within one room: every engine
// gives the entries of a room strictly increasing IDs.
type ID struct {
	Ms  uint64 // milliseconds part
	Seq uint64 // sequence within the millisecond
}

// Less reports whether id sorts before o.
func (id ID) Less(o ID) bool {
	return id.Ms < o.Ms || (id.Ms == o.Ms && id.Seq < o.Seq)
}

// pred returns the greatest ID before id (zero for zero): a read after it
// begins with id itself.
func (id ID) pred() ID {
	switch {
	case id.Seq > 0:
		return ID{Ms: id.Ms, Seq: id.Seq - 1}
	case id.Ms > 0:
		return ID{Ms: id.Ms - 1, Seq: 1<<64 - 1}
	}
	return ID{}
}

// follows reports whether id is the ID right after prev within the same
// millisecond, so that no entry can lie between them.
func (id ID) follows(prev ID) bool { return id.Ms == prev.Ms && id.Seq == prev.Seq+1 }

// IsZero reports whether id is the zero ID "0-0", which precedes every entry.
func (id ID) IsZero() bool { return id.Ms == 0 && id.Seq == 0 }

// String formats id the way Redis does: "<ms>-<seq>".
func (id ID) String() string {
	return string(id.AppendTo(make([]byte, 0, 41)))
}

// AppendTo appends the "<ms>-<seq>" form of id to b.
func (id ID) AppendTo(b []byte) []byte {
	b = strconv.AppendUint(b, id.Ms, 10)
	b = append(b, '-')
	return strconv.AppendUint(b, id.Seq, 10)
}

// ParseID parses the "<ms>-<seq>" form of an ID. A bare "<ms>" means
// "<ms>-0", as in Redis.
func ParseID(s string) (ID, error) {
	ms, seq, found := strings.Cut(s, "-")
	var id ID
	var err error
	if id.Ms, err = strconv.ParseUint(ms, 10, 64); err != nil {
		return ID{}, fmt.Errorf("stream: bad ID %q: want <ms>-<seq>", s)
	}
	if found {
		if id.Seq, err = strconv.ParseUint(seq, 10, 64); err != nil {
			return ID{}, fmt.Errorf("stream: bad ID %q: want <ms>-<seq>", s)
		}
	}
	return id, nil
}

// Message is one entry of a room's stream.
type Message struct {
	// ID is the entry's ID. It is assigned by the engine: Publish ignores it,
	// handlers always see it set.
	ID ID
	// Sender is the connection ID of the sender, unique across gateway nodes.
	// Deliverers skip the connection with this ID, so a sender never
	// receives its own message.
	Sender uint64
	// Payload is the encoded message that members receive. Engines treat it
	// as opaque bytes.
	Payload []byte
	// CID, when set, is a client-chosen message ID that makes Publish
	// idempotent: a second Publish of the same CID to the same room within
	// the engine's dedupe window appends nothing and acks the first one's
	// ID. Clients make CIDs unique (a UUID, or a per-client prefix and a
	// counter). Handlers never see it set.
	CID string
	// Alone, set by the publisher, says that the sender was the only
	// member of the room on the publishing node when it published: that
	// node may then skip delivering the message to its Handler (it would
	// skip the sender anyway). An engine that skips it asks the Ack first
	// (see Ack): a member may have joined since. A hint: delivering it is
	// not an error. Handlers never see it set.
	Alone bool
	// Lost marks a notice instead of an entry, in Handler calls and
	// History pages: entries of the room after LostAfter and before ID
	// may have been trimmed (REDIS_MAXLEN) or lost by Redis (a rollback:
	// a failover or restart that lost writes) before this node read them,
	// so its members never get them. It comes right before the entry ID,
	// after the entry LostAfter; a zero ID (History only) means nothing
	// is held after LostAfter. Sender and Payload are empty.
	Lost      bool
	LostAfter ID
}

// Handler receives the messages of subscribed rooms, in stream order per
// room. Each engine documents the goroutine it calls Handler from; in every
// engine calls for one room never overlap. The Payload is only valid during
// the call: a handler that keeps it must copy it. A handler must not block:
// it hands the message to sockets with non-blocking writes and returns.
type Handler func(room string, m Message)

// Ack receives the outcome of one Publish: the entry's ID when err is nil.
// ref is the value given to Publish, passed back untouched. Each engine
// documents the goroutine it calls Ack from; an Ack must not block.
//
// For a stored message published with Alone set, the result says whether
// this node must deliver it to its Handler after all (true: someone else
// joined the room on this node since). An engine that skips such
// messages calls Ack before it decides, and before it delivers any later
// entry of the room on this node; the result is ignored otherwise.
type Ack func(ref any, id ID, err error) (deliver bool)

// Broker is the publish/subscribe part of an engine: it carries the
// messages of rooms between the gateway's connections, locally (Memory)
// or across gateway nodes (Redis).
//
// A broker delivers to its engine's Handler every message published to a
// room while that room is subscribed, including the messages this node
// published itself (the caller skips the sender). Messages published while
// a room is not subscribed are not delivered later.
type Broker interface {
	// Publish appends m to the room's stream and reports the outcome to
	// ack, exactly once, with ref: the entry's ID when the message is
	// accepted (it will be delivered to every node subscribed to the room),
	// or an error wrapping ErrUnavailable (not stored), ErrUnconfirmed
	// (outcome unknown) or ErrClosed. The messages of one caller that
	// publishes from one goroutine are stored in the order of its calls.
	// ack may run before Publish returns. m.Payload may be reused by the
	// caller once Publish returns. Publish never blocks.
	Publish(room string, m Message, ack Ack, ref any)
	// Subscribe starts delivery of room's messages to the Handler and
	// returns the room's newest entry at that moment (zero when it has
	// none). Every message published after Subscribe returns is
	// delivered; entries up to the returned ID may be delivered too (a
	// Subscribe that follows an Unsubscribe whose messages are still being
	// delivered), and the caller drops them. Subscribing a subscribed room
	// does nothing but return its position.
	Subscribe(room string) (ID, error)
	// Unsubscribe stops delivery of room's messages. Unsubscribing a room
	// that is not subscribed does nothing.
	Unsubscribe(room string) error
}

// History is the part of an engine that reads what rooms hold: the
// entries a member missed, and the last ones a newcomer sees.
type History interface {
	// History returns up to n entries of room published after the entry
	// with ID after (after itself excluded), oldest first: fewer than n
	// only when no more are held. A zero after means from the start of
	// what is held. n ≤ 0 returns no entries. See Page for what else it
	// says. The payloads may be shared with the engine: read-only.
	History(ctx context.Context, room string, after ID, n int) (Page, error)
	// Last returns the last n entries of room (fewer if it holds fewer),
	// oldest first; nothing when n ≤ 0. The payloads may be shared with
	// the engine: read-only.
	Last(ctx context.Context, room string, n int) ([]Message, error)
}

// Presence is the part of an engine that counts the members of rooms
// across nodes.
type Presence interface {
	// SetMembers records that this node has n members in room (0: none).
	// It never blocks: engines publish the counts in the background.
	SetMembers(room string, n int)
	// Members returns the members of room on every live node. A node that
	// died stops being counted within the engine's presence timeout.
	Members(ctx context.Context, room string) (int, error)
}

// Engine is what a gateway node needs of the store behind its rooms:
// publish/subscribe (Broker), the rooms' history (History) and member
// counts (Presence), with its health, counters and shutdown. It knows
// rooms and opaque payloads, never sockets. Memory and Redis implement
// it; ConnectRedis returns one that waits for Redis.
type Engine interface {
	Broker
	History
	Presence
	// Health returns nil while the engine can accept and deliver messages,
	// and an error saying what is wrong otherwise.
	Health() error
	// Stats returns the engine's counters since it started.
	Stats() Stats
	// Close stops delivery and releases the engine's resources; it waits
	// for running handler calls to return, or for ctx to end.
	Close(ctx context.Context) error
}

// Page is one read of a room's history (History.History).
type Page struct {
	// Messages are the entries after the requested ID, oldest first,
	// with a loss notice (Message.Lost) where Redis recorded that entries
	// between two of them are gone (a rollback). Notices do not count
	// toward the n entries asked for.
	Messages []Message
	// Truncated reports that entries after the requested ID may be gone:
	// the held entries do not reach back to it, and entries were trimmed
	// (REDIS_MAXLEN), the room expired (REDIS_TTL), or the store lost
	// data (a restart, for the embedded engine any restart) since then.
	// Messages then start at the oldest entry held. It is false when
	// every entry after the ID is held: when the ID is held, lies within
	// the held entries, or nothing can have been removed after it. A zero
	// ID is never truncated.
	Truncated bool
	// Trimmed reports that entries older than the oldest one held were
	// removed (trimmed, expired, deleted) from the room's current record:
	// a reader that wanted all of it since it began missed some.
	Trimmed bool
	// End is the room's newest entry when the page was read (zero when
	// the room holds none): every entry published later has a greater
	// ID. A reader asked for entries after an ID beyond End (an ID from
	// the future) should resume from End.
	End ID
}

// Stats are an engine's counters since it started, for metrics. Fields
// marked Redis stay zero in the Memory engine.
type Stats struct {
	Accepted    int64 // Publish outcomes: stored (nil error)
	Refused     int64 // Publish outcomes: ErrUnavailable or ErrClosed, not stored
	Unconfirmed int64 // Publish outcomes: ErrUnconfirmed, maybe stored
	Delivered   int64 // messages handed to the Handler
	// Duplicates counts the Publish outcomes whose Message.CID was found
	// within the dedupe window: acknowledged with the first ID, nothing
	// appended. They are counted in Accepted too.
	Duplicates int64
	// RoundTrips counts the pipelined round trips of the pumps (Redis);
	// RoundTripErrors those that got no answer (Redis down or too slow, a
	// broken connection).
	RoundTrips      int64
	RoundTripErrors int64
	// Wakes counts the rooms held here that Redis reported written by
	// another node (an invalidation message): each makes the pump read
	// the room (Redis).
	Wakes        int64
	ReadsRefused int64 // reads Redis answered with an error (Redis)
	Malformed    int64 // stream entries skipped as undecodable (Redis)
	// Lost counts the entries of subscribed rooms that Redis trimmed
	// (REDIS_MAXLEN) or lost before this node read them (Redis).
	Lost int64
	// Rollbacks counts the times a room's stream was found to have lost
	// entries this node had read (Redis failed over to a replica that
	// lacked them, or restarted without them): each is logged, recorded
	// in the stream for History and the other nodes, and the stream's
	// last ID raised so that no ID is used twice (Redis).
	Rollbacks int64
	// WaitShort counts the round trips whose WAIT (REDIS_WAIT_REPLICAS)
	// was confirmed by fewer replicas than asked: their messages were
	// answered ErrUnconfirmed (Redis).
	WaitShort int64
	// PublishLatency is the time from Publish to its outcome (Redis: the
	// Memory engine answers at once); RoundTripLatency the time of one
	// pump round trip (Redis).
	PublishLatency   hist.Snapshot
	RoundTripLatency hist.Snapshot
}

// counters are the live form of Stats, updated without locks.
type counters struct {
	accepted, refused, unconfirmed, delivered atomic.Int64
	duplicates                                atomic.Int64
	roundTrips, roundTripErrors, wakes        atomic.Int64
	readsRefused, malformed, lost             atomic.Int64
	rollbacks, waitShort                      atomic.Int64
	publishLatency, roundTripLatency          hist.Histogram
}

// outcome counts the outcome of a Publish.
func (c *counters) outcome(err error) {
	switch {
	case err == nil:
		c.accepted.Add(1)
	case errors.Is(err, ErrUnconfirmed):
		c.unconfirmed.Add(1)
	default:
		c.refused.Add(1)
	}
}

func (c *counters) snapshot() Stats {
	return Stats{
		Accepted:         c.accepted.Load(),
		Refused:          c.refused.Load(),
		Unconfirmed:      c.unconfirmed.Load(),
		Delivered:        c.delivered.Load(),
		Duplicates:       c.duplicates.Load(),
		RoundTrips:       c.roundTrips.Load(),
		RoundTripErrors:  c.roundTripErrors.Load(),
		Wakes:            c.wakes.Load(),
		ReadsRefused:     c.readsRefused.Load(),
		Malformed:        c.malformed.Load(),
		Lost:             c.lost.Load(),
		Rollbacks:        c.rollbacks.Load(),
		WaitShort:        c.waitShort.Load(),
		PublishLatency:   c.publishLatency.Snapshot(),
		RoundTripLatency: c.roundTripLatency.Snapshot(),
	}
}

// PublishWait publishes m and waits for its outcome or for ctx to end. It
// is Publish for callers that can wait: tests and tools.
func PublishWait(ctx context.Context, e Engine, room string, m Message) (ID, error) {
	if err := ctx.Err(); err != nil {
		return ID{}, fmt.Errorf("stream: publish to room %q: %w", room, err)
	}
	type result struct {
		id  ID
		err error
	}
	ch := make(chan result, 1)
	e.Publish(room, m, func(_ any, id ID, err error) bool { ch <- result{id, err}; return true }, nil)
	select {
	case r := <-ch:
		return r.id, r.err
	case <-ctx.Done():
		return ID{}, fmt.Errorf("stream: publish to room %q: %w", room, ctx.Err())
	}
}
