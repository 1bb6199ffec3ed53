package stt

import (
	"errors"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// SendUnreliable delivers an extension message that the receiver does not acknowledge:
// a message sent this way costs the receiver no frame (the mesh's periodic SUMMARY, which
// every member sends its introducers), where a reliable one costs it an ACK.
func TestSendUnreliableIsDeliveredAndCostsTheReceiverNoACK(t *testing.T) {
	seed := randKey(t)
	var got atomic.Int64
	b := startNode(t, nodeOpts{seed: seed, name: "b", config: func(c *Config) {
		c.Extension = func(p *Peer, typ byte, body []byte, _ netip.AddrPort, _ bool) {
			if typ == 0x80 && string(body) == "summary" {
				got.Add(1)
			}
		}
	}})
	a := startNode(t, nodeOpts{seed: seed, name: "a"})
	_, _ = b.AddPeer(PeerConfig{Name: "a"})
	pb, _ := a.AddPeer(PeerConfig{Name: "b", Endpoint: loopback(b.Node)})
	if err := pb.SendUnreliable(0x80, []byte("summary")); !errors.Is(err, ErrNoSession) {
		t.Fatalf("SendUnreliable without a session: %v, want ErrNoSession", err)
	}
	established(t, a, b)
	if err := pb.SendUnreliable(0x05, nil); err == nil {
		t.Fatal("SendUnreliable took a core control type")
	}
	// The reliable message first: its ACK shows how the receiver answers.
	acks := func() uint64 { return b.Stats().Tx[TxAck].Frames }
	before := acks()
	if err := pb.SendReliable(0x80, []byte("summary")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the reliable message and its ACK", func() bool { return got.Load() == 1 && acks() > before })
	before = acks()
	const n = 20
	for range n {
		if err := pb.SendUnreliable(0x80, []byte("summary")); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "the unreliable messages", func() bool { return got.Load() == 1+n })
	// Anything b sends to a now is sent after it took all n: a reliable message's ACK
	// marks the point, and b must have sent exactly that one ACK since.
	if err := pb.SendReliable(0x80, []byte("summary")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the last reliable message", func() bool { return got.Load() == 2+n })
	waitFor(t, 5*time.Second, "its ACK", func() bool { return acks() > before })
	if d := acks() - before; d != 1 {
		t.Fatalf("b sent %d ACK frames for %d unreliable messages and one reliable", d, n)
	}
}
