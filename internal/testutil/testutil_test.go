package testutil

import (
	"context"
	"log/slog"
	"testing"
)

func TestEventuallyPollsUntilTrue(t *testing.T) {
	n := 0
	Eventually(t, "three polls", func() bool { n++; return n == 3 })
	if n != 3 {
		t.Fatalf("cond called %d times, want 3", n)
	}
}

func TestDiscardLoggerIsOff(t *testing.T) {
	if DiscardLogger().Enabled(context.Background(), slog.LevelError) {
		t.Fatal("the discard logger is enabled")
	}
}
