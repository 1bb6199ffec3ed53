package stt

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/stt/handshake"
)

// sessionOf returns the peer's session id, failing the test without one.
func sessionOf(t *testing.T, p *Peer) uint32 {
	t.Helper()
	id, ok := p.SessionID()
	if !ok {
		t.Fatalf("peer %s has no session", p.Name())
	}
	return id
}

// roundTrip sends one datagram from a to b and waits for it.
func roundTrip(t *testing.T, a, b *testNode, msg string) {
	t.Helper()
	before := b.h.count.Load()
	sendOne(t, a.Peer("b"), 0, []byte(msg))
	b.h.waitCount(t, before+1, 5*time.Second)
}

// TestUpdateKeepsSession: keepalive, endpoint and a pin that matches change in place,
// and the session (and its keys) stay.
func TestUpdateKeepsSession(t *testing.T) {
	a, b := pair(t, Limits{})
	established(t, a, b)
	pb := a.Peer("b")
	id := sessionOf(t, pb)
	hs := a.Stats().HandshakesDone
	bKey := handshake.PublicKey(b.key)

	steps := []PeerConfig{
		{Name: "b", Endpoint: loopback(b.Node), PersistentKeepalive: 25 * time.Second},
		{Name: "b", Endpoint: loopback(b.Node), PublicKey: &bKey},
		{Name: "b", Endpoint: loopback(b.Node), PublicKey: &bKey, PersistentKeepalive: time.Second},
		{Name: "b", Endpoint: loopback(b.Node)}, // pin removed
	}
	for i, pc := range steps {
		if err := pb.Update(pc); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		// Each step's settings are taken: the last step alone would not show it, since
		// it returns to the settings the peer started with.
		pb.mu.Lock()
		keepalive, pin := pb.cfg.PersistentKeepalive, pb.cfg.PublicKey
		pb.mu.Unlock()
		if keepalive != pc.PersistentKeepalive || (pin == nil) != (pc.PublicKey == nil) || pin != nil && *pin != *pc.PublicKey {
			t.Fatalf("step %d: settings not taken: keepalive %v, pin %v", i, keepalive, pin)
		}
		roundTrip(t, a, b, fmt.Sprintf("after step %d", i))
		if got := sessionOf(t, pb); got != id {
			t.Fatalf("step %d: session %d replaced by %d", i, id, got)
		}
	}
	if got := a.Stats().HandshakesDone; got != hs {
		t.Fatalf("handshakes %d -> %d: Update caused a handshake", hs, got)
	}
}

// TestUpdateNewEndpoint: traffic goes to the new address at once, under the same session.
func TestUpdateNewEndpoint(t *testing.T) {
	a, b := pair(t, Limits{})
	established(t, a, b)
	pb := a.Peer("b")
	id := sessionOf(t, pb)
	if err := pb.Update(PeerConfig{Name: "b", Endpoint: "127.0.0.1:9"}); err != nil {
		t.Fatal(err)
	}
	if got := pb.Endpoint().String(); got != "127.0.0.1:9" {
		t.Fatalf("endpoint %s after Update, want 127.0.0.1:9", got)
	}
	// b answers from where it is, and a learns that address again from authenticated
	// frames: roaming, with the session kept.
	sendOne(t, b.Peer("a"), 0, []byte("from b"))
	a.h.waitCount(t, 1, 5*time.Second)
	waitFor(t, 5*time.Second, "endpoint learned back", func() bool { return pb.Endpoint().String() == loopback(b.Node) })
	roundTrip(t, a, b, "again")
	if got := sessionOf(t, pb); got != id {
		t.Fatalf("session %d replaced by %d", id, got)
	}
	// An unresolvable name is taken, looked up in the background, and leaves the
	// peer at the address it has until the name answers.
	r := newGatedResolver()
	a.resolver = r.resolve
	if err := pb.Update(PeerConfig{Name: "b", Endpoint: "no-such-host.invalid:1"}); err != nil {
		t.Fatalf("Update with an unresolvable endpoint: %v", err)
	}
	<-pb.LookupDone()
	if got := pb.Endpoint().String(); got != loopback(b.Node) {
		t.Fatalf("an unresolvable name changed the endpoint to %s", got)
	}
	if pb.EndpointError() == "" {
		t.Fatal("no endpoint error for a name that does not resolve")
	}
	roundTrip(t, a, b, "while the name does not resolve")
}

// TestUpdatePinMismatchDropsSession: a pin that is not the session's key ends the
// session, and no new one is made with the old key.
func TestUpdatePinMismatchDropsSession(t *testing.T) {
	a, b := pair(t, Limits{})
	established(t, a, b)
	pb := a.Peer("b")
	wrong := handshake.PublicKey(randKey(t))
	if err := pb.Update(PeerConfig{Name: "b", Endpoint: loopback(b.Node), PublicKey: &wrong}); err != nil {
		t.Fatal(err)
	}
	if _, ok := pb.SessionID(); ok {
		t.Fatal("session kept under a pin it does not match")
	}
	if k, ok := pb.PublicKey(); !ok || k != wrong {
		t.Fatal("the peer's key is not the new pin")
	}
	delivered := b.h.count.Load()
	sendOne(t, pb, 0, []byte("must not arrive"))
	waitFor(t, 5*time.Second, "pin mismatch", func() bool {
		return a.Stats().Drops[DropPinMismatch] >= 1
	})
	if pb.HasSession() || b.h.count.Load() != delivered {
		t.Fatal("a session was made with the key the pin excludes")
	}
	// Pinning the right key lets the next handshake through.
	right := handshake.PublicKey(b.key)
	if err := pb.Update(PeerConfig{Name: "b", Endpoint: loopback(b.Node), PublicKey: &right}); err != nil {
		t.Fatal(err)
	}
	roundTrip(t, a, b, "with the right pin")
}

func TestUpdateRefusals(t *testing.T) {
	a, b := pair(t, Limits{})
	established(t, a, b)
	pb := a.Peer("b")
	if err := pb.Update(PeerConfig{Name: "c"}); err == nil {
		t.Fatal("Update renamed a peer")
	}
	a.RemovePeer("b")
	if err := pb.Update(PeerConfig{Name: "b"}); !errors.Is(err, ErrPeerRemoved) {
		t.Fatalf("Update of a removed peer: %v, want ErrPeerRemoved", err)
	}
}

// TestUpdateWebSocketSettings: new WebSocket settings close the connection dialed with
// the old ones; the session carries on over the next one.
func TestUpdateWebSocketSettings(t *testing.T) {
	a, b := wsOnlyPair(t)
	url := "ws://" + b.WSAddr() + "/stt"
	pb, err := a.AddPeer(PeerConfig{Name: "b", WSURL: url, WSProxy: "none"})
	if err != nil {
		t.Fatal(err)
	}
	established(t, a, b)
	id := sessionOf(t, pb)
	first := pb.path.ws.Load()
	if err := pb.Update(PeerConfig{Name: "b", WSURL: url + "?v=2", WSProxy: "none"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "old connection closed", func() bool { return pb.path.ws.Load() != first })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		before := b.h.count.Load()
		// Until the new connection is up there is no endpoint: the send fails.
		_ = pb.Send([][]byte{datagram([]byte("over the new connection"))}, []uint16{0})
		got := false
		for i := 0; i < 20 && !got; i++ {
			time.Sleep(25 * time.Millisecond)
			got = b.h.count.Load() > before
		}
		if got {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("no traffic over WebSocket after the settings changed")
		}
	}
	if w := pb.path.ws.Load(); w == nil || w == first {
		t.Fatal("traffic did not move to a new connection")
	}
	if got := sessionOf(t, pb); got != id {
		t.Fatalf("session %d replaced by %d", id, got)
	}
}

// TestWebSocketDialWithOldSettingsNotUsed: settings that change while a dial runs make
// the connection it brings useless. It is closed rather than used, and the peer is
// reached over a connection dialed with the new settings.
func TestWebSocketDialWithOldSettingsNotUsed(t *testing.T) {
	a, b := wsOnlyPair(t)
	proxy := slowDialProxy(t, b.WSAddr(), 500*time.Millisecond)
	pb, err := a.AddPeer(PeerConfig{Name: "b", WSURL: "ws://" + proxy + "/stt", WSProxy: "none"})
	if err != nil {
		t.Fatal(err)
	}
	_ = pb.Send([][]byte{datagram([]byte("starts a dial"))}, []uint16{0})
	waitFor(t, 5*time.Second, "a dial through the slow proxy", func() bool {
		pb.mu.Lock()
		defer pb.mu.Unlock()
		return pb.path.dial.running
	})
	if err := pb.Update(PeerConfig{Name: "b", WSURL: wsURL(b.Node), WSProxy: "none"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a session over WebSocket", pb.HasSession)
	if w := pb.path.ws.Load(); w == nil || !strings.Contains(w.c.String(), b.WSAddr()) {
		t.Fatalf("peer reached over %v, want a connection dialed to %s directly", w, b.WSAddr())
	}
}

// wsOnlyPair starts two nodes without UDP: b listens for WebSocket and knows a as a
// peer; a has no peer yet.
func wsOnlyPair(t *testing.T) (a, b *testNode) {
	t.Helper()
	seed := randKey(t)
	b = startNode(t, nodeOpts{seed: seed, name: "b", ws: true, noUDP: true})
	a = startNode(t, nodeOpts{seed: seed, name: "a", noUDP: true})
	if _, err := b.AddPeer(PeerConfig{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	return a, b
}
