package stt

import (
	"fmt"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/stt/wire"
)

// TestRestartWithManyKnownPeersStartsNoHandshake: a node that starts with 1000 peers it
// knows an address for (a restart) sends none of them anything until traffic asks: its
// timers, run over ten minutes of simulated time, start no handshake; a datagram for
// one peer then starts exactly one. Peers with a persistent keepalive are the exception
// the configuration asks for (not here).
func TestRestartWithManyKnownPeersStartsNoHandshake(t *testing.T) {
	seed := randKey(t)
	sink := startNode(t, nodeOpts{seed: seed, name: "sink"}) // never asked about these names
	n := startNode(t, nodeOpts{seed: seed, name: "restarted"})
	const peers = 1000
	for i := range peers {
		if _, err := n.AddPeer(PeerConfig{Name: fmt.Sprintf("p%d", i), Endpoint: loopback(sink.Node)}); err != nil {
			t.Fatal(err)
		}
	}
	all := n.Peers()
	now := time.Now()
	for step := range 600 { // every second of ten minutes
		at := now.Add(time.Duration(step) * time.Second)
		for _, p := range all {
			p.tick(at)
		}
	}
	if hs, sent := n.Stats().HandshakesStarted, len(n.bind.ofType(wire.TypeHello)); hs != 0 || sent != 0 {
		t.Fatalf("with no traffic, %d handshakes started and %d HELLOs sent to %d known peers", hs, sent, peers)
	}
	sendOne(t, n.Peer("p7"), 0, []byte("traffic"))
	waitFor(t, 5*time.Second, "a handshake for the traffic", func() bool { return n.Stats().HandshakesStarted >= 1 })
	if hs := n.Stats().HandshakesStarted; hs != 1 {
		t.Fatalf("one datagram for one peer started %d handshakes", hs)
	}
}
