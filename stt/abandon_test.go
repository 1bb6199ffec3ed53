package stt

import (
	"net"
	"testing"
	"time"
)

// TestAbandonEndsAnUnneededHandshakeOnly: a handshake that only Connect asked for ends
// when abandoned and sends no more HELLOs; one that a datagram waits for is kept.
func TestAbandonEndsAnUnneededHandshakeOnly(t *testing.T) {
	timers := Limits{HandshakeRetry: 50 * time.Millisecond, HandshakeRetryMax: 50 * time.Millisecond}
	a := startNode(t, nodeOpts{seed: randKey(t), name: "a", timers: timers})
	silent, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = silent.Close() })
	pb, err := a.AddPeer(PeerConfig{Name: "b", Endpoint: silent.LocalAddr().String()})
	if err != nil {
		t.Fatal(err)
	}
	pb.Connect()
	waitFor(t, 5*time.Second, "the dial in flight", pb.Connecting)
	if !pb.Abandon() || pb.Connecting() {
		t.Fatal("Abandon kept a handshake nothing needs")
	}
	// No HELLO after it: several retry intervals pass without one being started.
	started := a.Stats().HandshakesStarted
	other, err := a.AddPeer(PeerConfig{Name: "c", Endpoint: silent.LocalAddr().String()})
	if err != nil {
		t.Fatal(err)
	}
	other.Connect()
	waitFor(t, 5*time.Second, "three HELLOs of another peer's dial", func() bool {
		return a.Stats().HandshakesStarted >= started+3
	})
	if pb.Connecting() {
		t.Fatal("the abandoned dial started again")
	}
	// A datagram waiting for the session keeps the handshake.
	pkts, flows := seqDatagrams(0, 1)
	if err := pb.Send(pkts, flows); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the handshake for the datagram", pb.Connecting)
	if pb.Abandon() || !pb.Connecting() {
		t.Fatal("Abandon ended a handshake a datagram waits for")
	}
}
