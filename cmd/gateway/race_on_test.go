//go:build race

package main

// raceEnabled: the tests run under the race detector, so the gateway
// binary they build for node kills is built with it too, from the same
// cached packages.
const raceEnabled = true
