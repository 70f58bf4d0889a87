package main

import (
	"os"
	"testing"
	"time"
)

func TestParseStatCPU(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want int64
		ok   bool
	}{
		{"plain", "1234 (redis-server) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 70 0 0 20 0 4 0 100 0 0", 320, true},
		{"spaces and parens in name", "99 (my (odd) name) R 1 2 3 4 5 6 7 8 9 10 11 22 0 0 0", 33, true},
		{"truncated", "99 (x) R 1 2 3", 0, false},
		{"no name", "99 x R", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStatCPU([]byte(tt.in))
			if (err == nil) != tt.ok || got != tt.want {
				t.Errorf("parseStatCPU = %d, %v; want %d, ok=%v", got, err, tt.want, tt.ok)
			}
		})
	}
}

func TestParseStatusRSS(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want int64
		ok   bool
	}{
		{"normal", "Name:\tx\nVmPeak:\t  100 kB\nVmRSS:\t    2048 kB\nThreads: 1\n", 2048 * 1024, true},
		{"missing", "Name:\tkthreadd\n", 0, false},
		{"bad unit", "VmRSS:\t 5 MB\n", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStatusRSS([]byte(tt.in))
			if (err == nil) != tt.ok || got != tt.want {
				t.Errorf("parseStatusRSS = %d, %v; want %d, ok=%v", got, err, tt.want, tt.ok)
			}
		})
	}
}

func TestSampleSelf(t *testing.T) {
	s := sampleProc(os.Getpid(), time.Now())
	if s.Err != "" || s.RSSBytes <= 0 {
		t.Fatalf("sampling this test process: %+v", s)
	}
	if s := sampleProc(1<<30, time.Now()); s.Err == "" {
		t.Fatal("sampling a PID that cannot exist gave no error")
	}
}
