package conn

import (
	"math/bits"
	"sync"
)

// Buffers come in power-of-two size classes, from minBuffer to
// maxPooledBuffer, each with its own pool: a connection that holds a few
// bytes of an unfinished message gets a small buffer, never one a large
// message left in a shared pool.
const (
	minBufferShift  = 9 // 512 B
	maxBufferShift  = 18
	minBuffer       = 1 << minBufferShift
	maxPooledBuffer = 1 << maxBufferShift // larger buffers are not kept for reuse
)

// buffer is a pooled byte slice. A connection holds one only while a frame
// or a fragmented message is incomplete, so idle connections hold none.
type buffer struct{ b []byte }

var bufferPools [maxBufferShift - minBufferShift + 1]sync.Pool

// bufferClass returns the index of the smallest class that holds n bytes;
// it is len(bufferPools) or more for buffers too large to pool.
func bufferClass(n int) int {
	if n <= minBuffer {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufferShift
}

// getBuffer returns an empty buffer with room for at least n bytes.
func getBuffer(n int) *buffer {
	k := bufferClass(n)
	if k >= len(bufferPools) {
		return &buffer{b: make([]byte, 0, n)}
	}
	if b, ok := bufferPools[k].Get().(*buffer); ok {
		return b
	}
	return &buffer{b: make([]byte, 0, 1<<(k+minBufferShift))}
}

// release returns the buffer to the pool of its size class.
func (b *buffer) release() {
	c := cap(b.b)
	if c > maxPooledBuffer || c < minBuffer {
		return
	}
	b.b = b.b[:0]
	bufferPools[bits.Len(uint(c))-1-minBufferShift].Put(b)
}

// appendBuffer appends data to b, moving the bytes to a buffer of the
// next size class that fits when b is full; b may be nil.
func appendBuffer(b *buffer, data []byte) *buffer {
	if b == nil {
		b = getBuffer(len(data))
	} else if n := len(b.b) + len(data); n > cap(b.b) {
		nb := getBuffer(n)
		nb.b = append(nb.b, b.b...)
		b.release()
		b = nb
	}
	b.b = append(b.b, data...)
	return b
}

// maxPartialPerConn bounds the buffer capacity one connection's reader
