package room

import "iter"

// Chunk sizes of a memberList, in members (64 bytes each): a first chunk
// for the small rooms most chats are, then chunks of one 512-byte size
// class.
const (
	firstChunk = 2
	chunkSize  = 8
)

// memberList holds a room's members in chunks that never move: a first
// chunk of firstChunk members, then chunks of chunkSize. Growing adds a
// chunk instead of copying the list, so a join leaves no garbage behind,
// and a room keeps fewer than chunkSize empty slots (a room of 10 holds
// 10 slots, where a doubling slice holds 16 and has copied 15). An idle
// member costs its 64 bytes and little more.
type memberList struct {
	n      int
	first  *[firstChunk]member
	chunks []*[chunkSize]member
}

// len returns the number of members.
func (l *memberList) len() int { return l.n }

// at returns member i, 0 <= i < len.
func (l *memberList) at(i int) *member {
	if i < firstChunk {
		return &l.first[i]
	}
	i -= firstChunk
	return &l.chunks[i/chunkSize][i%chunkSize]
}

// add appends m and returns its index.
func (l *memberList) add(m member) int {
	i := l.n
	switch {
	case l.first == nil:
		l.first = new([firstChunk]member)
	case i >= firstChunk && (i-firstChunk)/chunkSize == len(l.chunks):
		l.chunks = append(l.chunks, new([chunkSize]member))
	}
	*l.at(i) = m
	l.n++
	return i
}

// remove removes member i by moving the last member into its place, and
// returns the moved member (nil when i was the last). It frees a chunk
// left empty, keeping one spare so a room at a chunk's edge does not
// allocate on every join.
func (l *memberList) remove(i int) *member {
	last := l.n - 1
	var moved *member
	if i != last {
		*l.at(i) = *l.at(last)
		moved = l.at(i)
	}
	*l.at(last) = member{}
	l.n--
	used := 0 // chunks in use
	if l.n > firstChunk {
		used = (l.n - firstChunk + chunkSize - 1) / chunkSize
	}
	if len(l.chunks) > used+1 {
		l.chunks[len(l.chunks)-1] = nil
		l.chunks = l.chunks[:len(l.chunks)-1]
	}
	return moved
}

// all yields every member, in index order.
func (l *memberList) all() iter.Seq[*member] {
	return func(yield func(*member) bool) {
		if l.n == 0 {
			return
		}
		for i := range min(l.n, firstChunk) {
			if !yield(&l.first[i]) {
				return
			}
		}
		left := l.n - firstChunk
		for _, c := range l.chunks {
			if left <= 0 {
				return
			}
			for i := range min(left, chunkSize) {
				if !yield(&c[i]) {
					return
				}
			}
			left -= chunkSize
		}
	}
}
