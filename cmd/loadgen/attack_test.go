package main

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
)

// TestAttackFloodAgainstFloor drives the flood attack against the floor
// relay, which has no defences: the flooder's messages reach the other
// members, the bystanders measure latency in both phases, and the report
// says so.
func TestAttackFloodAgainstFloor(t *testing.T) {
	f := startFloor(t)
	cfg, err := parseFlags([]string{"-mode", "attack", "-attack", "flood", "-conns", "2",
		"-duration", "300ms", "-url", "ws://" + f.Addr().String()}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	a := &attacker{cfg: cfg, base: cfg.urls[0], room: "atktest-"}
	rep, err := a.run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if rep.FramesSent == 0 || rep.MembersGot == 0 || rep.Members != 2 {
		t.Errorf("sent %d frames, members %d received %d; want both > 0 and 2 members", rep.FramesSent, rep.Members, rep.MembersGot)
	}
	if len(rep.Quiet) == 0 || len(rep.Under) == 0 {
		t.Errorf("bystander latencies: %d quiet, %d under attack; want both measured", len(rep.Quiet), len(rep.Under))
	}
	var out bytes.Buffer
	rep.write(&out)
	for _, want := range []string{"attack: flood", "other members of its room: 2", "bystander room: quiet p50"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}

func TestAttackFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-mode", "attack", "-attack", "nope"},
		{"-mode", "attack", "-attack-interval", "0s"},
		{"-mode", "attack", "-url", "ws://10.1.2.3:8000"},
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("parseFlags(%q) accepted; want an error", args)
		}
	}
}
