// Package testutil holds what the tests of several packages share: one
// polling helper, so that no test sleeps to synchronise, and one logger
// that discards everything.
package testutil

import (
	"log/slog"
	"testing"
	"time"
)

// Timeout bounds every Eventually: long enough for a loaded CI machine,
// short enough that a hung test fails well before go test's own timeout.
const Timeout = 10 * time.Second

// pollInterval is how often Eventually checks its condition.
const pollInterval = 10 * time.Millisecond

// Eventually polls cond every pollInterval until it returns true, and fails the
// test, naming what it waited for, when Timeout passes first. cond runs on
// the test's goroutine.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	EventuallyWithin(t, Timeout, what, cond)
}

// EventuallyWithin is Eventually with another bound, for waits whose
// length is the subject (a Redis cluster forming, a documented timeout).
func EventuallyWithin(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

// DiscardLogger returns a logger that drops every record.
func DiscardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
