package stt

import (
	"testing"
	"time"
)

// TestSendRacingInstallGoesOutOnTheNewSession: a Send that found no session, while the
// handshake completes before it takes the peer's lock, sends its datagrams on the
// session just installed. Queued, they would wait for another handshake (the install
// had flushed the queue already), and the want it set would start that handshake for
// nothing: on a relay, one that crossed a punch left the follower on the relay.
func TestSendRacingInstallGoesOutOnTheNewSession(t *testing.T) {
	a, b := pair(t, Limits{Tick: 10 * time.Millisecond})
	established(t, a, b)
	pa := a.Peer("b")
	start := b.h.count.Load()
	handshakes := a.Stats().HandshakesStarted
	// What Send does when it loaded no session just before the install.
	if err := pa.enqueue([][]byte{datagram([]byte("late"))}, []uint16{1}, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	pa.mu.Lock()
	queued, want := len(pa.queue), pa.handshake.want
	pa.mu.Unlock()
	if queued != 0 || want {
		t.Fatalf("with a session up: %d datagrams queued, handshake wanted %v", queued, want)
	}
	b.h.waitCount(t, start+1, 5*time.Second)
	if got := a.Stats().HandshakesStarted; got != handshakes {
		t.Fatalf("%d handshakes started for a datagram a live session carried", got-handshakes)
	}
}
