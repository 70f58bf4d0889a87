package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestParseSources(t *testing.T) {
	addrs := func(ss ...string) []netip.Addr {
		var out []netip.Addr
		for _, s := range ss {
			out = append(out, netip.MustParseAddr(s))
		}
		return out
	}
	tests := []struct {
		name    string
		in      string
		want    []netip.Addr
		wantErr string
	}{
		{"empty", "", nil, ""},
		{"one", "127.0.0.2", addrs("127.0.0.2"), ""},
		{"range", "127.0.0.2-127.0.0.4", addrs("127.0.0.2", "127.0.0.3", "127.0.0.4"), ""},
		{"list and range", "127.0.0.9, 127.0.0.2-127.0.0.3", addrs("127.0.0.9", "127.0.0.2", "127.0.0.3"), ""},
		{"across octet", "127.0.0.255-127.0.1.0", addrs("127.0.0.255", "127.0.1.0"), ""},
		{"ipv6", "::1", addrs("::1"), ""},
		{"mapped v4", "::ffff:127.0.0.2", addrs("127.0.0.2"), ""},
		{"reversed", "127.0.0.4-127.0.0.2", nil, "first <= last"},
		{"mixed family", "127.0.0.1-::1", nil, "one family"},
		{"not loopback", "10.0.0.1", nil, "must be loopback"},
		{"range end not loopback", "127.0.0.1-128.0.0.1", nil, "must be loopback"},
		{"garbage", "foo", nil, "not an IP"},
		{"too many", "127.0.0.0-127.255.255.255", nil, "more than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseSources(tt.in, false)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseSources(%q) error %v, want one containing %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("parseSources(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestCheckLoopback(t *testing.T) {
	tests := []struct {
		host string
		ok   bool
	}{
		{"127.0.0.1", true},
		{"127.1.2.3", true},
		{"::1", true},
		{"localhost", true},
		{"LOCALHOST", true},
		{"::ffff:127.0.0.1", true},
		{"10.0.0.1", false},
		{"0.0.0.0", false},
		{"::", false},
		{"example.com", false},
		{"localhost.example.com", false},
		{"", false},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			if err := checkLoopback(tt.host); (err == nil) != tt.ok {
				t.Errorf("checkLoopback(%q) = %v, want ok=%v", tt.host, err, tt.ok)
			}
		})
	}
}

// TestRemoteTargets: -remote allows other hosts, by name or address, as
// targets and sources.
func TestRemoteTargets(t *testing.T) {
	got, err := parseURLs("ws://gateway.example:8000,ws://192.168.1.5:8000", true)
	if err != nil || len(got) != 2 {
		t.Fatalf("parseURLs with remote: %v, %v", got, err)
	}
	if _, err := parseSources("10.0.0.1-10.0.0.3", true); err != nil {
		t.Fatalf("parseSources with remote: %v", err)
	}
	if _, err := parseFlags([]string{"-url", "ws://10.0.0.1:8000"}, io.Discard); err == nil || !strings.Contains(err.Error(), "-remote") {
		t.Fatalf("a remote target without -remote: %v, want an error naming -remote", err)
	}
	if _, err := parseFlags([]string{"-conns", "10", "-rooms", "10"}, io.Discard); err == nil || !strings.Contains(err.Error(), "one member") {
		t.Fatalf("rooms of one member: %v, want an error", err)
	}
}

func TestParseURLs(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []string
		wantErr string
	}{
		{"default", "ws://127.0.0.1:8000", []string{"ws://127.0.0.1:8000"}, ""},
		{"list, trailing slash", "ws://127.0.0.1:8000/, ws://[::1]:8001", []string{"ws://127.0.0.1:8000", "ws://[::1]:8001"}, ""},
		{"remote", "ws://192.168.1.5:8000", nil, "not loopback"},
		{"hostname", "ws://gateway:8000", nil, "not an IP literal"},
		{"wss", "wss://127.0.0.1:8000", nil, "scheme must be ws"},
		{"http", "http://127.0.0.1:8000", nil, "scheme must be ws"},
		{"query", "ws://127.0.0.1:8000?x=1", nil, "only ws://host:port"},
		{"none", " , ", nil, "at least one"},
		{"chat path", "ws://127.0.0.1:8000/ws/chat/lobby/", nil, "base URL, ws://127.0.0.1:8000; loadgen appends"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseURLs(tt.in, false)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseURLs(%q) error %v, want one containing %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("parseURLs(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string // "" = valid
	}{
		{"defaults", nil, ""},
		{"full", []string{"-conns", "1000", "-rooms", "10", "-senders", "5", "-rate", "20", "-src", "127.0.0.2-127.0.0.9", "-pid", "1,self"}, ""},
		{"merge", []string{"-mode", "merge", "a.json", "b.json"}, ""},
		{"merge without files", []string{"-mode", "merge"}, "needs the summary files"},
		{"unknown mode", []string{"-mode", "x"}, "want run, merge, floor, attack or replay"},
		{"floor", []string{"-mode", "floor", "-listen", "127.0.0.1:0"}, ""},
		{"floor with files", []string{"-mode", "floor", "a.json"}, "unexpected arguments"},
		{"stray argument", []string{"x.json"}, "unexpected arguments"},
		{"above max-conns", []string{"-conns", "20000"}, "above -max-conns"},
		{"more rooms than conns", []string{"-conns", "5", "-rooms", "6"}, "every room needs a member"},
		{"too many senders", []string{"-conns", "10", "-rooms", "5", "-senders", "3"}, "-senders must be"},
		{"negative rate", []string{"-rate", "-1"}, "-rate must be"},
		{"bad prefix", []string{"-room-prefix", "a/b"}, "room names may hold"},
		{"remote url", []string{"-url", "ws://8.8.8.8:80"}, "not loopback"},
		{"bad pid", []string{"-pid", "abc"}, "positive process ID"},
		{"long drain", []string{"-drain", "1h"}, "-drain must be"},
		{"unknown flag", []string{"-nope"}, "not defined"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseFlags(tt.args, io.Discard)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("parseFlags(%q): %v", tt.args, err)
				}
				return
			}
			if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("parseFlags(%q) error %v, want errUsage containing %q", tt.args, err, tt.wantErr)
			}
		})
	}
}

func TestRunExitCodes(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want int
	}{
		{"help", []string{"-h"}, exitOK},
		{"bad flag", []string{"-conns", "0"}, exitUsage},
		{"non-loopback target", []string{"-url", "ws://10.1.1.1:8000"}, exitUsage},
		{"merge missing file", []string{"-mode", "merge", "/nonexistent/x.json"}, exitProblem},
		{"floor on a remote address", []string{"-mode", "floor", "-listen", "10.1.1.1:8200"}, exitUsage},
		{"floor on a host name", []string{"-mode", "floor", "-listen", "example.com:8200"}, exitUsage},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := run(context.Background(), tt.args, io.Discard, io.Discard); got != tt.want {
				t.Errorf("run(%q) = %d, want %d", tt.args, got, tt.want)
			}
		})
	}
}

func TestPlacement(t *testing.T) {
	tests := []struct {
		name         string
		rooms, urls  int
		conns        int
		wantPerURLOf map[int][]int // room -> members per URL
	}{
		{"even rooms two urls", 2, 2, 8, map[int][]int{0: {2, 2}, 1: {2, 2}}},
		{"odd rooms two urls", 3, 2, 12, map[int][]int{0: {2, 2}, 1: {2, 2}, 2: {2, 2}}},
		{"one url", 4, 1, 8, map[int][]int{0: {2}, 3: {2}}},
		{"three urls", 10, 3, 60, map[int][]int{0: {2, 2, 2}, 7: {2, 2, 2}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			per := map[int][]int{}
			for i := range tt.conns {
				room, url := placement(i, tt.rooms, tt.urls, false)
				if room != i%tt.rooms {
					t.Fatalf("connection %d: room %d, want %d", i, room, i%tt.rooms)
				}
				if url < 0 || url >= tt.urls {
					t.Fatalf("connection %d: url %d out of range", i, url)
				}
				if per[room] == nil {
					per[room] = make([]int, tt.urls)
				}
				per[room][url]++
			}
			for room, want := range tt.wantPerURLOf {
				if !slices.Equal(per[room], want) {
					t.Errorf("room %d: members per URL %v, want %v", room, per[room], want)
				}
			}
		})
	}
	// The first two members of each room, on two URLs, are on different
	// nodes: the case the old i mod len(urls) placement got wrong.
	for room := range 4 {
		_, a := placement(room, 4, 2, false)
		_, b := placement(4+room, 4, 2, false)
		if a == b {
			t.Errorf("room %d: members 0 and 1 both on URL %d", room, a)
		}
	}
}

// TestPlacementByRoom: -placement room puts every member of room k on URL
// k mod count, and the flag refuses other values.
func TestPlacementByRoom(t *testing.T) {
	for i := range 5 * 7 * 3 {
		room, url := placement(i, 7, 3, true)
		if room != i%7 || url != room%3 {
			t.Fatalf("connection %d: room %d URL %d, want room %d URL %d", i, room, url, i%7, (i%7)%3)
		}
	}
	if _, err := parseFlags([]string{"-placement", "room"}, io.Discard); err != nil {
		t.Errorf("-placement room: %v", err)
	}
	if _, err := parseFlags([]string{"-placement", "nearest"}, io.Discard); err == nil || !strings.Contains(err.Error(), "spread or room") {
		t.Errorf("-placement nearest: %v, want an error naming spread and room", err)
	}
}

// TestDialErrorsSayWhy: a refused dial is counted under a kind that says
// what to check.
func TestDialErrorsSayWhy(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	_, err = net.Dial("tcp", addr)
	if k := dialErrKind(&dialError{err}); !strings.HasPrefix(k, "dial_refused") || !strings.Contains(k, "gateway running") {
		t.Fatalf("refused dial kind %q; want dial_refused saying what to check", k)
	}
}
