package stt

import (
	"net"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/stt/handshake"
)

// TestHellosReplayedFromPeersAddressDoNotDelayItsSession: mac1 does not name the
// responder, so HELLOs a peer sent to other nodes are valid here too; replayed from the
// peer's address (all of loopback is one source), they fill that source's half-open
// handshakes. The peer's own handshake must still complete at once, not after the
// replays' 10 s of half-open life.
func TestHellosReplayedFromPeersAddressDoNotDelayItsSession(t *testing.T) {
	seed := randKey(t)
	a := startNode(t, nodeOpts{seed: seed, name: "a"})
	b := startNode(t, nodeOpts{seed: seed, name: "b"})
	if _, err := b.AddPeer(PeerConfig{Name: "a", Endpoint: loopback(a.Node)}); err != nil {
		t.Fatal(err)
	}
	// The recorded HELLOs: byte for byte what a seed holder's initiations send.
	rec, err := handshake.New(handshake.Config{Seed: seed, Static: randKey(t), Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("udp4", loopback(b.Node))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 2 * handshake.MaxHalfOpenPerSource {
		_, hello, err := rec.Initiate(uint32(100+i), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(hello); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "the replays to fill the source's half-open handshakes", func() bool {
		return b.hs.HalfOpen() >= handshake.MaxHalfOpenPerSource
	})
	if _, err := a.AddPeer(PeerConfig{Name: "b", Endpoint: loopback(b.Node)}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	established(t, a, b) // 5 s; the replays' half-open handshakes live 10 s
	t.Logf("session %v after the replays", time.Since(start).Round(time.Millisecond))
}
