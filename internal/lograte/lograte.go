// Package lograte limits a log line to at most one per interval and counts the lines
// it held back, so that a flood of the same event (failed accepts, dropped handshakes)
// does not become a flood of log lines, yet the next line says how many it stands for.
package lograte

import (
	"sync/atomic"
	"time"
)

// Limiter is the state of one rate-limited log line. The zero value allows the first
// line at once. It is safe for concurrent use and takes no lock.
type Limiter struct {
	last       atomic.Int64 // unix ns of the last line allowed; 0: none yet
	suppressed atomic.Uint64
}

// Allow reports whether a line may be written now, at most one per every, and how many
// were held back since the last allowed one; otherwise it counts this one as held back.
func (l *Limiter) Allow(every time.Duration) (suppressed uint64, ok bool) {
	now := time.Now().UnixNano()
	last := l.last.Load()
	if (last != 0 && now-last < int64(every)) || !l.last.CompareAndSwap(last, now) {
		l.suppressed.Add(1)
		return 0, false
	}
	return l.suppressed.Swap(0), true
}

// Expire lets the next Allow through as if the interval had passed, keeping the count
// held back; tests use it instead of waiting out the interval.
func (l *Limiter) Expire() { l.last.Store(0) }
