package room

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/chatgw/gateway/pkg/stream"
)

// TestMemberList: random joins and leaves against a plain slice doing the
// same swap-with-last removal; indexes, iteration and the chunks kept
// stay consistent at every step.
func TestMemberList(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var l memberList
	var want []uint64 // member ids by index: floor.Seq stands for the member
	next := uint64(1)
	for step := range 20000 {
		grow := len(want) < 3 || rng.IntN(100) < 55
		if step > 10000 {
			grow = len(want) < 3 || rng.IntN(100) < 45 // shrink again
		}
		if grow {
			i := l.add(member{floor: stream.ID{Seq: next}})
			if i != len(want) {
				t.Fatalf("step %d: add returned %d, want %d", step, i, len(want))
			}
			want = append(want, next)
			next++
		} else {
			i := rng.IntN(len(want))
			moved := l.remove(i)
			last := len(want) - 1
			want[i] = want[last]
			want = want[:last]
			if (moved == nil) != (i == last) {
				t.Fatalf("step %d: remove(%d) of %d moved %v", step, i, last+1, moved)
			}
			if moved != nil && moved.floor.Seq != want[i] {
				t.Fatalf("step %d: remove(%d) moved member %d, want %d", step, i, moved.floor.Seq, want[i])
			}
		}
		if l.len() != len(want) {
			t.Fatalf("step %d: len %d, want %d", step, l.len(), len(want))
		}
		var got []uint64
		for m := range l.all() {
			got = append(got, m.floor.Seq)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("step %d: all() = %v, want %v", step, got, want)
		}
		for i, id := range want {
			if l.at(i).floor.Seq != id {
				t.Fatalf("step %d: at(%d) = %d, want %d", step, i, l.at(i).floor.Seq, id)
			}
		}
		used := 0
		if l.len() > firstChunk {
			used = (l.len() - firstChunk + chunkSize - 1) / chunkSize
		}
		if len(l.chunks) < used || len(l.chunks) > used+1 {
			t.Fatalf("step %d: %d members in %d chunks, want %d or one spare", step, l.len(), len(l.chunks), used)
		}
	}
}

// TestMemberListAllStops: breaking out of a range over all stops it.
func TestMemberListAllStops(t *testing.T) {
	var l memberList
	for range 30 {
		l.add(member{})
	}
	n := 0
	for range l.all() {
		n++
		if n == 13 {
			break
		}
	}
	if n != 13 {
		t.Fatalf("ranged over %d members, want 13", n)
	}
}
