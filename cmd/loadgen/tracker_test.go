package main

import "testing"

func TestSeqTracker(t *testing.T) {
	tests := []struct {
		name       string
		seqs       []uint32
		sent       uint32
		wantUnique uint32
		wantLate   int
		wantDup    int
		wantLost   uint32
	}{
		{"in order", []uint32{0, 1, 2, 3}, 4, 4, 0, 0, 0},
		{"nothing received", nil, 3, 0, 0, 0, 3},
		{"tail lost", []uint32{0, 1}, 4, 2, 0, 0, 2},
		{"gap lost", []uint32{0, 2, 3}, 4, 3, 0, 0, 1},
		{"swap", []uint32{0, 2, 1, 3}, 4, 4, 1, 0, 0},
		{"duplicate latest", []uint32{0, 1, 1, 2}, 3, 3, 0, 1, 0},
		{"duplicate older", []uint32{0, 1, 2, 0}, 3, 3, 0, 1, 0},
		{"late then duplicate", []uint32{1, 0, 0}, 2, 2, 1, 1, 0},
		{"duplicate across word boundary", []uint32{0, 70, 0, 70}, 71, 2, 0, 2, 69},
		{"late across word boundary", []uint32{0, 200, 5, 130}, 201, 4, 2, 0, 197},
		{"edge of window", []uint32{seqWindow, 1, 1}, seqWindow + 1, 2, 1, 1, seqWindow - 1},
		{"beyond window", []uint32{seqWindow + 5, 0, 0}, seqWindow + 6, 3, 2, 0, seqWindow + 3},
		{"more received than sent", []uint32{0, 1, 2}, 2, 3, 0, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var tr seqTracker
			late, dup := 0, 0
			for _, s := range tt.seqs {
				switch tr.record(s) {
				case seqLate, seqTooOld:
					late++
				case seqDuplicate:
					dup++
				}
			}
			if tr.unique != tt.wantUnique || late != tt.wantLate || dup != tt.wantDup || tr.lost(tt.sent) != tt.wantLost {
				t.Errorf("after %v: unique %d late %d dup %d lost %d; want %d %d %d %d",
					tt.seqs, tr.unique, late, dup, tr.lost(tt.sent), tt.wantUnique, tt.wantLate, tt.wantDup, tt.wantLost)
			}
		})
	}
}

func TestSeqTrackerShift(t *testing.T) {
	// Every received sequence must stay detectable as a duplicate while it
	// is inside the window, whatever the step between arrivals.
	for _, step := range []uint32{1, 3, 63, 64, 65, 127, 128, 129} {
		var tr seqTracker
		var got []uint32
		for s := uint32(0); s < 4*seqWindow; s += step {
			tr.record(s)
			got = append(got, s)
		}
		for _, s := range got {
			if tr.next-1-s >= seqWindow {
				continue
			}
			if o := tr.record(s); o != seqDuplicate {
				t.Fatalf("step %d: re-recording %d gave %d, want duplicate", step, s, o)
			}
		}
	}
}
