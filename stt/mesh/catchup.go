package mesh

import "time"

// A member that comes back after a long absence holds none of the current records. It
// used to fetch 32 of them per digest exchange, the same 32 from each member it asked
// (their digests come sorted by key alike), and each round cost it every asker's whole
// DIGEST (40 bytes a member) again: with 1000 members, 31 rounds (5 minutes) and 5.3 MB
// to fetch 186 KB of records. Now one exchange may want up to MaxWantPerExchange keys,
// and a key wanted of one member is not wanted of another for an interval, so that the
// members asked in one round serve different records: 2 rounds.

const (
	// MaxWantPerExchange bounds the keys wanted in one digest exchange (8 WANTs);
	// their RECORDS answer is about 50 KB.
	MaxWantPerExchange = 256
	// maxWanting bounds the keys remembered as wanted: past it, keys are wanted
	// without the remembering (a member may then be asked a key another was asked).
	maxWanting = 4 * MaxWantPerExchange
)

// wantNow reports whether key may be wanted now: it was not wanted of a member within
// the last interval (else that member's answer is on its way). It remembers that key
// is wanted now. Called with e.mu held.
func (e *Engine) wantNow(key [32]byte, now time.Time) bool {
	if at, ok := e.wanting[key]; ok && now.Sub(at) < e.cfg.Interval && !now.Before(at) {
		return false
	}
	if _, ok := e.wanting[key]; ok || len(e.wanting) < maxWanting {
		e.wanting[key] = now
	}
	return true
}

// sweepWanting forgets the keys wanted an interval ago or more: an answer that has not
// come by then is not coming. Called with e.mu held.
func (e *Engine) sweepWanting(now time.Time) {
	for k, at := range e.wanting {
		if now.Sub(at) >= e.cfg.Interval || now.Before(at) {
			delete(e.wanting, k)
		}
	}
}
