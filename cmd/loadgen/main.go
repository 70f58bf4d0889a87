package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
)

// Exit codes.
const (
	exitOK      = 0
	exitProblem = 1 // loss, duplicates, reordering, failed connections, or an error
	exitUsage   = 2
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is loadgen without the process around it; it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case err != nil:
		fmt.Fprintln(stderr, err)
		fmt.Fprintln(stderr, "run loadgen -h for the flags")
		return exitUsage
	}
	if cfg.mode == "floor" || cfg.mode == "attack" || cfg.mode == "replay" {
		run := runFloor
		switch cfg.mode {
		case "attack":
			run = func(ctx context.Context, cfg config, stdout, _ io.Writer) error { return runAttack(ctx, cfg, stdout) }
		case "replay":
			run = func(ctx context.Context, cfg config, stdout, _ io.Writer) error { return runReplay(ctx, cfg, stdout) }
		}
		if err := run(ctx, cfg, stdout, stderr); err != nil {
			fmt.Fprintln(stderr, "loadgen:", err)
			if errors.Is(err, errUsage) {
				return exitUsage
			}
			return exitProblem
		}
		return exitOK
	}
	var s *Summary
	if cfg.mode == "merge" {
		s, err = merge(cfg.files)
	} else {
		s, err = load(ctx, cfg, stderr)
	}
	if errors.Is(err, errUsage) {
		fmt.Fprintln(stderr, err)
		return exitUsage
	}
	runErr := err
	if err != nil {
		fmt.Fprintln(stderr, "loadgen:", err)
		if s == nil {
			return exitProblem
		}
	}
	if cfg.report != "" {
		if err := writeReport(cfg.report, s); err != nil {
			fmt.Fprintln(stderr, "loadgen:", err)
			return exitProblem
		}
	}
	if cfg.jsonOut {
		err = s.writeJSON(stdout)
	} else {
		err = s.writeText(stdout)
	}
	if err != nil {
		fmt.Fprintln(stderr, "loadgen: write summary:", err)
		return exitProblem
	}
	if len(s.problems()) > 0 || runErr != nil {
		return exitProblem // a run that ended in an error is never OK
	}
	return exitOK
}

// load raises the descriptor limit, checks -conns against it and runs.
func load(ctx context.Context, cfg config, stderr io.Writer) (*Summary, error) {
	limit, err := raiseNoFile()
	if err != nil {
		return nil, err
	}
	if cfg.conns > limit {
		return nil, fmt.Errorf("%w: -conns %d is more than one process can hold (RLIMIT_NOFILE allows %d connections); "+
			"run several loadgen processes with -conns <= %d each, different -room-prefix and -src ranges, -json, "+
			"and combine them with loadgen -mode merge", errUsage, cfg.conns, limit, limit)
	}
	if cfg.cpuProfile != "" {
		f, err := os.Create(cfg.cpuProfile)
		if err != nil {
			return nil, fmt.Errorf("-cpuprofile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, fmt.Errorf("-cpuprofile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	r := newRunner(cfg, stderr)
	r.fdLimit = int64(limit)
	return r.execute(ctx)
}

// merge reads and merges summary files.
func merge(files []string) (*Summary, error) {
	var in []*Summary
	for _, f := range files {
		s, err := readSummary(f)
		if err != nil {
			return nil, err
		}
		in = append(in, s)
	}
	return mergeSummaries(in)
}
