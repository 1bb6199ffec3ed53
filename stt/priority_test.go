package stt

import (
	"context"
	"net/netip"
	"testing"
	"time"
)

// TestConfiguredPeerAddressesHavePriority: the handshake engine's priority (the budget
// share and half-open slots kept for configured peers) goes to the peers' current UDP
// addresses, which the timers keep up to date: a new endpoint gains it, the old one
// loses it, and other addresses never have it.
func TestConfiguredPeerAddressesHavePriority(t *testing.T) {
	n := startNode(t, nodeOpts{seed: randKey(t), name: "n", timers: Limits{Tick: 10 * time.Millisecond}})
	// Loopback addresses nothing listens on: the test sends no handshake to them.
	first, second := netip.MustParseAddr("127.0.0.7"), netip.MustParseAddr("127.0.0.9")
	p, err := n.AddPeer(PeerConfig{Name: "p", Endpoint: netip.AddrPortFrom(first, 9).String()})
	if err != nil {
		t.Fatal(err)
	}
	waitCond(t, "the configured peer's address gains priority", func() bool { return n.isPeerAddr(first) })
	if n.isPeerAddr(second) || n.isPeerAddr(netip.MustParseAddr("127.0.0.1")) {
		t.Fatal("an address no peer has got priority")
	}
	if err := p.Update(PeerConfig{Name: "p", Endpoint: netip.AddrPortFrom(second, 9).String()}); err != nil {
		t.Fatal(err)
	}
	waitCond(t, "the peer's new address gains priority and the old loses it", func() bool {
		return n.isPeerAddr(second) && !n.isPeerAddr(first)
	})
}

// TestPriorityFollowsPeersOntoOneAddress: when one peer moves to the address of
// another, its old address loses priority, though every current address is still in
// the set; a removed peer's address loses it too.
func TestPriorityFollowsPeersOntoOneAddress(t *testing.T) {
	n := startNode(t, nodeOpts{seed: randKey(t), name: "n", timers: Limits{Tick: 10 * time.Millisecond}})
	x, y := netip.MustParseAddr("127.0.0.7"), netip.MustParseAddr("127.0.0.9")
	if _, err := n.AddPeer(PeerConfig{Name: "a", Endpoint: netip.AddrPortFrom(x, 9).String()}); err != nil {
		t.Fatal(err)
	}
	b, err := n.AddPeer(PeerConfig{Name: "b", Endpoint: netip.AddrPortFrom(y, 9).String()})
	if err != nil {
		t.Fatal(err)
	}
	waitCond(t, "both addresses gain priority", func() bool { return n.isPeerAddr(x) && n.isPeerAddr(y) })
	if err := b.Update(PeerConfig{Name: "b", Endpoint: netip.AddrPortFrom(x, 10).String()}); err != nil {
		t.Fatal(err)
	}
	waitCond(t, "b's old address loses priority once b shares a's", func() bool { return !n.isPeerAddr(y) && n.isPeerAddr(x) })
	n.RemovePeer("a")
	n.RemovePeer("b")
	waitCond(t, "the removed peers' address loses priority", func() bool { return !n.isPeerAddr(x) })
}

// waitCond polls cond until it holds, failing the test after 5 s.
func waitCond(t *testing.T, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not within 5 s", what)
		case <-time.After(5 * time.Millisecond):
		}
	}
}
