//go:build race

package stt

// raceEnabled: sync.Pool drops items at random under the race detector, so pooled
// buffers are reallocated now and then and allocation counts say nothing.
const raceEnabled = true
