package stream

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

var _ Engine = (*Memory)(nil)

// Memory is the embedded, single-process engine: it keeps no history and
// delivers each published message synchronously, from the publishing
// goroutine, to the Handler. Calls for one room are serialised by a per-room
// lock, so every member sees the room's messages in ID order.
//
// It is what the gateway runs on when no Redis is configured, and behaves
// like the Redis engine on one node.
type Memory struct {
	handler Handler
	stats   counters

	mu     sync.RWMutex
	closed bool
	rooms  map[string]*memoryRoom // subscribed rooms
	active sync.WaitGroup         // Publish calls in progress

	// clock is the last ID handed out by any room, packed as
	// ms<<seqBits | seq. One engine-wide sequence keeps each room's IDs
	// increasing even across unsubscribe and subscribe, without keeping
	// state for rooms nobody is in.
	clock atomic.Uint64
}

const seqBits = 20

type memoryRoom struct {
	mu sync.Mutex // serialises delivery, so members see ID order
}

// NewMemory returns a Memory engine that delivers to h.
func NewMemory(h Handler) *Memory {
	if h == nil {
		panic("stream: NewMemory needs a Handler")
	}
	return &Memory{handler: h, rooms: make(map[string]*memoryRoom)}
}

// Publish assigns the next ID of room to m and, when the room is
// subscribed, calls the Handler, then ack, before returning.
func (e *Memory) Publish(room string, m Message, ack Ack, ref any) {
	e.mu.RLock()
	if e.closed {
		e.mu.RUnlock()
		e.stats.outcome(ErrClosed)
		ack(ref, ID{}, ErrClosed)
		return
	}
	r := e.rooms[room]
	e.active.Add(1)
	e.mu.RUnlock()
	defer e.active.Done()

	if r == nil || m.Alone {
		// Nobody on this node listens but the sender; there are no other
		// nodes. The message is accepted and nobody receives it.
		e.stats.accepted.Add(1)
		ack(ref, e.nextID(), nil)
		return
	}
	r.mu.Lock()
	m.ID = e.nextID()
	e.handler(room, m)
	r.mu.Unlock()
	e.stats.accepted.Add(1)
	e.stats.delivered.Add(1)
	ack(ref, m.ID, nil)
}

// Stats returns the engine's counters: outcomes and deliveries.
func (e *Memory) Stats() Stats { return e.stats.snapshot() }

// nextID returns an ID after every ID handed out so far, built from the
// clock as Redis does: <unix ms>-<seq>.
func (e *Memory) nextID() ID {
	for {
		old := e.clock.Load()
		v := max(uint64(time.Now().UnixMilli())<<seqBits, old+1)
		if e.clock.CompareAndSwap(old, v) {
			return ID{Ms: v >> seqBits, Seq: v & (1<<seqBits - 1)}
		}
	}
}

// Subscribe starts delivery of room's messages.
func (e *Memory) Subscribe(room string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrClosed
	}
	if e.rooms[room] == nil {
		e.rooms[room] = &memoryRoom{}
	}
	return nil
}

// Unsubscribe stops delivery of room's messages.
func (e *Memory) Unsubscribe(room string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrClosed
	}
	delete(e.rooms, room)
	return nil
}

// Health always returns nil until the engine is closed.
func (e *Memory) Health() error {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.closed {
		return ErrClosed
	}
	return nil
}

// Close stops delivery and waits for Publish calls in progress.
func (e *Memory) Close(ctx context.Context) error {
	e.mu.Lock()
	e.closed = true
	e.rooms = nil
	e.mu.Unlock()
	done := make(chan struct{})
	go func() { e.active.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stream: close memory engine: %w", ctx.Err())
	}
}
