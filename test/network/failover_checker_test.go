//go:build network

package network

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// errorRecorder is a reporter that keeps the errors the checker reports.
type errorRecorder struct{ errs []string }

// Helper does nothing: no test to attribute lines to.
func (e *errorRecorder) Helper() {}

// Errorf records an error.
func (e *errorRecorder) Errorf(format string, args ...any) {
	e.errs = append(e.errs, fmt.Sprintf(format, args...))
}

// cleanRecord returns a record without violations: one room, two senders
// of three messages each, all acked, stored in order and delivered to a
// member 10 ms after their send; stream IDs 101-0, 102-0, ... in send
// order.
func cleanRecord() *failoverRecord {
	r := newFailoverRecord([]int{0, 0}, 1)
	m := &foMember{name: "member", self: -1}
	r.members = []*foMember{m}
	ms := uint64(100)
	for n := 1; n <= 3; n++ {
		for k := range 2 {
			ms++
			key, id := msgKey{k, n}, streamID{ms, 0}
			at := time.Unix(int64(ms), 0)
			r.sentAt[k] = append(r.sentAt[k], at)
			r.answers[key] = []foAnswer{{kind: "ack", id: id}}
			r.stored[0] = append(r.stored[0], roomFrame{key: key, id: id})
			m.frames = append(m.frames, roomFrame{key: key, id: id, at: at.Add(10 * time.Millisecond)})
		}
	}
	return r
}

// without returns frames without the message key.
func without(frames []roomFrame, key msgKey) []roomFrame {
	return slices.DeleteFunc(frames, func(f roomFrame) bool { return f.trunc == nil && f.key == key })
}

// TestFailoverChecker: the checker finds each violation it looks for in
// an otherwise clean record, and nothing in a clean one, or in one whose
// losses are announced.
func TestFailoverChecker(t *testing.T) {
	lost := msgKey{1, 3} // the last message: ID 106-0
	every := promises{noAckedLoss: true, allAcked: true, allDelivered: true, within: time.Second, storeIntact: true, lastAcked: true}
	notice := roomFrame{trunc: &truncation{since: streamID{103, 0}, from: streamID{105, 0}, hasFrom: true}}
	cases := []struct {
		name    string
		promise promises
		change  func(r *failoverRecord)
		want    string // the kind of error expected; "" for none
	}{
		{"clean", promises{noAckedLoss: true}, func(*failoverRecord) {}, ""},
		{"no answer", promises{}, func(r *failoverRecord) { delete(r.answers, msgKey{0, 2}) }, "answers"},
		{"two answers", promises{}, func(r *failoverRecord) {
			r.answers[msgKey{0, 2}] = append(r.answers[msgKey{0, 2}], foAnswer{kind: "unconfirmed"})
		}, "answers"},
		{"stray answer", promises{}, func(r *failoverRecord) { r.strays = append(r.strays, "sender 0: {}") }, "stray answer"},
		{"unavailable, stored", promises{}, func(r *failoverRecord) {
			r.answers[msgKey{0, 2}] = []foAnswer{{kind: "unavailable"}}
		}, "unavailable, yet stored or delivered"},
		{"acked, lost, counted", promises{}, func(r *failoverRecord) {
			r.stored[0] = without(r.stored[0], lost)
			r.members[0].frames = without(r.members[0].frames, lost)
		}, ""},
		{"acked, lost, waiting for replicas", promises{noAckedLoss: true}, func(r *failoverRecord) {
			r.stored[0] = without(r.stored[0], lost)
			r.members[0].frames = without(r.members[0].frames, lost)
		}, "acked, lost"},
		{"acked, stored under another ID", promises{}, func(r *failoverRecord) {
			r.answers[lost] = []foAnswer{{kind: "ack", id: streamID{200, 0}}}
		}, "acked, stored under another ID"},
		{"stored twice", promises{}, func(r *failoverRecord) { r.stored[0] = append(r.stored[0], r.stored[0][0]) }, "stored twice"},
		{"store out of send order", promises{}, func(r *failoverRecord) {
			r.stored[0][0], r.stored[0][2] = r.stored[0][2], r.stored[0][0]
		}, "store out of send order"},
		{"delivered twice", promises{}, func(r *failoverRecord) {
			r.members[0].frames = append(r.members[0].frames, r.members[0].frames[0])
		}, "delivered twice"},
		{"delivered out of order", promises{}, func(r *failoverRecord) {
			f := r.members[0].frames
			f[0], f[2] = f[2], f[0]
		}, "delivered out of order"},
		{"ID reuse", promises{}, func(r *failoverRecord) { r.members[0].frames[2].id = streamID{101, 0} }, "ID reuse"},
		{"stored, never delivered", promises{}, func(r *failoverRecord) {
			r.members[0].frames = without(r.members[0].frames, msgKey{1, 2})
		}, "stored, never delivered"},
		{"stored, never delivered, announced", promises{}, func(r *failoverRecord) {
			m := r.members[0]
			m.frames = without(m.frames, msgKey{1, 2})
			m.frames = append(m.frames, roomFrame{trunc: &truncation{since: streamID{103, 0}, from: streamID{105, 0}, hasFrom: true}})
		}, ""},
		{"silent loss", promises{}, func(r *failoverRecord) {
			r.resumes = []resumeResult{{plan: resumePlan{member: r.members[0], since: streamID{103, 0}, gap: streamID{104, 0}},
				frames: []roomFrame{{key: msgKey{0, 3}, id: streamID{105, 0}}}}}
		}, "silent loss"},
		{"announced loss", promises{}, func(r *failoverRecord) {
			r.resumes = []resumeResult{{plan: resumePlan{member: r.members[0], since: streamID{103, 0}, gap: streamID{104, 0}},
				frames: []roomFrame{{trunc: &truncation{since: streamID{103, 0}}}}}}
		}, ""},
		{"clean, every promise", every, func(*failoverRecord) {}, ""},
		{"live only, clean", every, func(r *failoverRecord) { r.liveOnly, r.stored[0] = true, nil }, ""},
		{"own message delivered", promises{}, func(r *failoverRecord) { r.members[0].self = 0 }, "own message delivered"},
		{"not acked", promises{allAcked: true}, func(r *failoverRecord) {
			r.answers[msgKey{0, 2}] = []foAnswer{{kind: "unconfirmed"}}
		}, "not acked"},
		{"sent, never delivered, announced", promises{allDelivered: true}, func(r *failoverRecord) {
			m := r.members[0]
			r.liveOnly, r.stored[0] = true, nil
			m.frames = without(m.frames, msgKey{1, 2})
			m.frames = append(m.frames, roomFrame{trunc: &truncation{since: streamID{103, 0}, from: streamID{105, 0}, hasFrom: true}})
		}, "sent, never delivered"},
		{"late delivery", promises{within: time.Second}, func(r *failoverRecord) {
			r.members[0].frames[1].at = r.members[0].frames[1].at.Add(2 * time.Second)
		}, "late delivery"},
		{"acked, lost, store intact", promises{storeIntact: true}, func(r *failoverRecord) {
			r.stored[0] = without(r.stored[0], lost)
			r.members[0].frames = without(r.members[0].frames, lost)
		}, "acked, lost"},
		{"unconfirmed, delivered, not stored, counted", promises{}, func(r *failoverRecord) {
			r.answers[lost] = []foAnswer{{kind: "unconfirmed"}}
			r.stored[0] = without(r.stored[0], lost)
		}, ""},
		{"unconfirmed, delivered, not stored, store intact", promises{storeIntact: true}, func(r *failoverRecord) {
			r.answers[lost] = []foAnswer{{kind: "unconfirmed"}}
			r.stored[0] = without(r.stored[0], lost)
		}, "delivered, not stored"},
		{"unconfirmed, neither stored nor delivered, store intact", promises{storeIntact: true}, func(r *failoverRecord) {
			r.answers[lost] = []foAnswer{{kind: "unconfirmed"}}
			r.stored[0] = without(r.stored[0], lost)
			r.members[0].frames = without(r.members[0].frames, lost)
		}, ""},
		{"truncated notice live, store intact", promises{storeIntact: true}, func(r *failoverRecord) {
			r.members[0].frames = append(r.members[0].frames, notice)
		}, "truncated notice"},
		{"truncated notice replayed, store intact", promises{storeIntact: true}, func(r *failoverRecord) {
			r.stored[0] = append([]roomFrame{notice}, r.stored[0]...)
		}, "truncated notice"},
		{"last not acked", promises{lastAcked: true}, func(r *failoverRecord) {
			r.answers[lost] = []foAnswer{{kind: "unconfirmed"}}
		}, "last not acked"},
		{"last unanswered", promises{lastAcked: true}, func(r *failoverRecord) { delete(r.answers, lost) }, "last not acked"},
		{"earlier not acked, last acked", promises{lastAcked: true}, func(r *failoverRecord) {
			r.answers[msgKey{0, 2}] = []foAnswer{{kind: "unavailable"}}
			r.stored[0] = without(r.stored[0], msgKey{0, 2})
			r.members[0].frames = without(r.members[0].frames, msgKey{0, 2})
		}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := cleanRecord()
			tc.change(r)
			var rep errorRecorder
			r.check(&rep, tc.promise)
			switch {
			case tc.want == "" && len(rep.errs) > 0:
				t.Errorf("errors in a record without violations: %q", rep.errs)
			case tc.want != "" && !slices.ContainsFunc(rep.errs, func(e string) bool { return strings.HasPrefix(e, tc.want+":") }):
				t.Errorf("no %q error; got %q", tc.want, rep.errs)
			}
		})
	}
}

// TestResumePlans: a member that got entries the store lost is resumed
// from the last stored entry it got before each run of them, and from its
// last entry when that one is lost.
func TestResumePlans(t *testing.T) {
	r := cleanRecord()
	r.stored[0] = without(without(r.stored[0], msgKey{1, 1}), msgKey{1, 3}) // IDs 102-0 and 106-0
	plans := r.resumePlans(foMaxGaps)
	got := make([]string, len(plans))
	for i, p := range plans {
		got[i] = fmt.Sprintf("since=%s gap=%s first=%v", p.since, p.gap, p.first)
	}
	want := []string{"since=101-0 gap=102-0 first=false", "since=105-0 gap=106-0 first=false", "since=106-0 gap=106-0 first=true"}
	if !slices.Equal(got, want) {
		t.Errorf("plans %q, want %q", got, want)
	}
}

// TestRecordComplete: a liveRun waits until every message is answered
// and every member got each stored message of its room but its own, or,
// without the store (liveOnly), as many as the others sent.
func TestRecordComplete(t *testing.T) {
	cases := []struct {
		name   string
		change func(r *failoverRecord)
		want   bool
	}{
		{"all in", func(*failoverRecord) {}, true},
		{"unanswered", func(r *failoverRecord) { delete(r.answers, msgKey{0, 2}) }, false},
		{"stored, not yet delivered", func(r *failoverRecord) {
			r.members[0].frames = without(r.members[0].frames, msgKey{1, 2})
		}, false},
		{"not stored, not delivered", func(r *failoverRecord) {
			r.stored[0] = without(r.stored[0], msgKey{1, 2})
			r.members[0].frames = without(r.members[0].frames, msgKey{1, 2})
		}, true},
		{"own message not delivered", func(r *failoverRecord) {
			r.members[0].self = 1
			r.members[0].frames = without(without(without(r.members[0].frames, msgKey{1, 1}), msgKey{1, 2}), msgKey{1, 3})
		}, true},
		{"live only, all in", func(r *failoverRecord) { r.liveOnly, r.stored[0] = true, nil }, true},
		{"live only, one missing", func(r *failoverRecord) {
			r.liveOnly, r.stored[0] = true, nil
			r.members[0].frames = without(r.members[0].frames, msgKey{1, 2})
		}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := cleanRecord()
			tc.change(r)
			if got := r.complete(); got != tc.want {
				t.Errorf("complete() = %v, want %v", got, tc.want)
			}
		})
	}
}
