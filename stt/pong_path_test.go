package stt

import (
	"context"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/stt/wire"
)

// TestPongThroughRelayDoesNotTakeFollowerBack: the follower's PING sent through the
// relay, answered by the chooser after both moved back to UDP, comes back through the
// relay as a PONG sealed after the move. It answers the follower's own PING and says
// nothing of the chooser's path: the follower stays on UDP. (It went back to the
// relay, and stayed there with nothing more sent: TestRelayProbesUDPAndReturns failed
// now and then that way.)
func TestPongThroughRelayDoesNotTakeFollowerBack(t *testing.T) {
	timers := Limits{Tick: 20 * time.Millisecond, FallbackAfter: 300 * time.Millisecond, ProbeInterval: 200 * time.Millisecond}
	l := newRelayLab(t, labOpts{timers: timers, direct: true})
	l.open(t)
	keepSending(t, l.a, l.b, l.ab, func() bool { return l.ab.Path() == PathRelay && l.ba.Path() == PathRelay })

	// b's PING goes through r, which keeps what it forwards back for now.
	l.r.bind.holding.Store(true)
	pong := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() { _, err := l.ba.Ping(ctx); pong <- err }()
	waitFor(t, 5*time.Second, "b's PING held at the relay", func() bool { return l.r.bind.holds(wire.TypeRelay) > 0 })
	l.r.bind.holding.Store(false)

	// UDP between a and b works again: both move back.
	l.a.bind.cutTo(l.b.Port(), false)
	l.b.bind.cutTo(l.a.Port(), false)
	waitFor(t, 10*time.Second, "both back on UDP", func() bool { return l.ab.Path() == PathUDP && l.ba.Path() == PathUDP })

	// Now the PING reaches a, whose PONG goes back the way the PING came.
	l.r.bind.release(wire.TypeRelay)
	if err := <-pong; err != nil {
		t.Fatalf("b's PING through the relay: %v", err)
	}
	if got := l.ba.Path(); got != PathUDP {
		t.Fatalf("b on %s after the PONG through the relay, want udp", got)
	}
}
