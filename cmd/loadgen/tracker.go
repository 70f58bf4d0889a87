package main

// seqWindow is how many sequence numbers behind the newest one a
// seqTracker remembers. A message older than that is still counted as
// delivered and out of order, but can no longer be told from a duplicate.
const seqWindow = 256

// seqOutcome classifies one received sequence number.
type seqOutcome uint8

const (
	seqInOrder   seqOutcome = iota // newer than anything seen so far (gaps may still fill in)
	seqLate                        // older than the newest, first time seen: out of order
	seqDuplicate                   // seen before
	seqTooOld                      // older than the window: counted late, duplicates undetectable
)

// seqTracker accounts for the messages one receiver got from one sender.
// The zero value expects sequence 0 first. It is used by a single
// goroutine and is 40 bytes, so every connection can keep one per sender
// in its room.
type seqTracker struct {
	next   uint32                 // one past the highest sequence seen
	unique uint32                 // distinct sequences seen
	seen   [seqWindow / 64]uint64 // bit i: sequence next-1-i was seen
}

// record notes the arrival of seq and says how it arrived.
func (t *seqTracker) record(seq uint32) seqOutcome {
	if seq >= t.next {
		t.shift(uint64(seq-t.next) + 1)
		t.seen[0] |= 1
		t.next = seq + 1
		t.unique++
		return seqInOrder
	}
	off := t.next - 1 - seq
	if off >= seqWindow {
		t.unique++
		return seqTooOld
	}
	w, bit := off/64, uint64(1)<<(off%64)
	if t.seen[w]&bit != 0 {
		return seqDuplicate
	}
	t.seen[w] |= bit
	t.unique++
	return seqLate
}

// shift moves the window n sequence numbers forward, i.e. shifts the
// bitmap n bits towards older positions.
func (t *seqTracker) shift(n uint64) {
	if n >= seqWindow {
		t.seen = [seqWindow / 64]uint64{}
		return
	}
	words, bits := int(n/64), n%64
	for i := len(t.seen) - 1; i >= 0; i-- {
		var v uint64
		if j := i - words; j >= 0 {
			v = t.seen[j] << bits
			if bits > 0 && j > 0 {
				v |= t.seen[j-1] >> (64 - bits)
			}
		}
		t.seen[i] = v
	}
}

// lost returns how many of the sent messages this receiver never got.
func (t *seqTracker) lost(sent uint32) uint32 {
	if t.unique >= sent {
		return 0
	}
	return sent - t.unique
}
