package stt

// Tests of the hooks the mesh builds on: Config.Admit, wildcard peers
// (PeerConfig.AnyName), IdleTimeout, Candidates, SendReliable without a session,
// Config.SessionUp and what Config.Extension is told of a message's source.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/stt/handshake"
	"github.com/stt-tun/stt-tun/stt/wire"
)

// admits is an Admit hook that adds every node it is asked about as a peer, pinned to
// the key it authenticated with (or refuses all, with refuse set), and records the calls.
type admits struct {
	node   atomic.Pointer[Node]
	refuse atomic.Bool
	mu     sync.Mutex
	calls  []string
}

func (a *admits) admit(name string, key [32]byte) (*Peer, error) {
	a.mu.Lock()
	a.calls = append(a.calls, name)
	a.mu.Unlock()
	if a.refuse.Load() {
		return nil, errors.New("not admitted")
	}
	// Admit runs with no lock held: it may look at every peer (a mesh checks
	// whether the key is already some peer's), which takes each one's lock.
	for _, p := range a.node.Load().Peers() {
		if pk, ok := p.PublicKey(); ok && pk == key {
			return nil, fmt.Errorf("key already held by %s", p.Name())
		}
	}
	k := key
	return a.node.Load().AddPeer(PeerConfig{Name: name, PublicKey: &k})
}

func (a *admits) names() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.calls...)
}

// startAdmitting starts a node whose Admit is an admits.
func startAdmitting(t *testing.T, o nodeOpts) (*testNode, *admits) {
	t.Helper()
	a := &admits{}
	prev := o.config
	o.config = func(c *Config) {
		if prev != nil {
			prev(c)
		}
		c.Admit = a.admit
	}
	n := startNode(t, o)
	a.node.Store(n.Node)
	return n, a
}

func loopbackAP(n *Node) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), n.Port())
}

// TestAdmitMakesSessionForUnknownInitiator: a responder with Admit asks it about an
// AUTH_PROOF from a name it has no peer for, once, and makes the session on the peer it
// returns, with the initiator's key; data then flows both ways.
func TestAdmitMakesSessionForUnknownInitiator(t *testing.T) {
	seed := randKey(t)
	b, adm := startAdmitting(t, nodeOpts{seed: seed, name: "b"})
	a := startNode(t, nodeOpts{seed: seed, name: "a"})
	pb, err := a.AddPeer(PeerConfig{Name: "b", Endpoint: loopback(b.Node)})
	if err != nil {
		t.Fatal(err)
	}
	sendOne(t, pb, 0, []byte("hello"))
	b.h.waitCount(t, 1, 5*time.Second)
	pa := b.Peer("a")
	if pa == nil || !pa.HasSession() {
		t.Fatal("b has no session with the admitted peer a")
	}
	if k, ok := pa.PublicKey(); !ok || k != handshake.PublicKey(a.key) {
		t.Fatal("the admitted peer does not hold a's key")
	}
	sendOne(t, pa, 0, []byte("back"))
	a.h.waitCount(t, 1, 5*time.Second)
	if got := adm.names(); len(got) != 1 || got[0] != "a" {
		t.Fatalf("Admit called for %q, want once for a", got)
	}
}

// TestAdmitRefusalRefusesHandshake: an Admit that refuses leaves the responder without
// a peer, and the initiator is refused as by a node that does not know it.
func TestAdmitRefusalRefusesHandshake(t *testing.T) {
	seed := randKey(t)
	b, adm := startAdmitting(t, nodeOpts{seed: seed, name: "b"})
	adm.refuse.Store(true)
	a := startNode(t, nodeOpts{seed: seed, name: "a"})
	pb, _ := a.AddPeer(PeerConfig{Name: "b", Endpoint: loopback(b.Node)})
	sendOne(t, pb, 0, []byte("hello"))
	waitFor(t, 5*time.Second, "a refusal", func() bool { _, ok := pb.Refusal(); return ok })
	if r, _ := pb.Refusal(); r.Name != DropUnknownPeer.String() {
		t.Fatalf("refused as %q, want unknown_peer", r.Name)
	}
	if b.Peer("a") != nil || len(adm.names()) == 0 {
		t.Fatal("b has a peer a, or never asked Admit")
	}
}

// TestWildcardPeerReachesUnknownNode: a knows only b's address (a wildcard peer); the
// handshake completes on a peer a admits under the name b answered with, b admits a in
// turn, and data flows both ways on the session of the named peers. The wildcard holds
// no session and says whom it reached.
func TestWildcardPeerReachesUnknownNode(t *testing.T) {
	seed := randKey(t)
	b, _ := startAdmitting(t, nodeOpts{seed: seed, name: "b"})
	a, admA := startAdmitting(t, nodeOpts{seed: seed, name: "a"})
	w, err := a.AddPeer(PeerConfig{Name: "*boot", AnyName: true, Endpoint: loopback(b.Node)})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "a session with b", func() bool { p := a.Peer("b"); return p != nil && p.HasSession() })
	pb := a.Peer("b")
	sendOne(t, pb, 0, []byte("to b"))
	b.h.waitCount(t, 1, 5*time.Second)
	pa := b.Peer("a")
	if pa == nil {
		t.Fatal("b did not admit a")
	}
	sendOne(t, pa, 0, []byte("to a"))
	a.h.waitCount(t, 1, 5*time.Second)

	if name, key, ok := w.Reached(); !ok || name != "b" || key != handshake.PublicKey(b.key) {
		t.Fatalf("wildcard reached %q %x %v, want b", name, key[:4], ok)
	}
	if w.HasSession() || w.ReachedSelf() {
		t.Fatal("the wildcard holds a session, or thinks it reached itself")
	}
	if got := pb.Endpoint(); got != loopbackAP(b.Node) {
		t.Fatalf("b's endpoint %v, want %v", got, loopbackAP(b.Node))
	}
	if got := admA.names(); len(got) != 1 || got[0] != "b" {
		t.Fatalf("a's Admit called for %q, want once for b", got)
	}
	if err := w.Send([][]byte{datagram([]byte("x"))}, nil); !errors.Is(err, ErrWildcardPeer) {
		t.Fatalf("Send on the wildcard: %v, want ErrWildcardPeer", err)
	}
	if err := w.SendReliable(0x80, nil); !errors.Is(err, ErrWildcardPeer) {
		t.Fatalf("SendReliable on the wildcard: %v, want ErrWildcardPeer", err)
	}
}

// TestWildcardCompletesOnExistingPeer: the peer named in the CHALLENGE exists already
// (without an address): the session and the address go to it, without Admit.
func TestWildcardCompletesOnExistingPeer(t *testing.T) {
	seed := randKey(t)
	b := startNode(t, nodeOpts{seed: seed, name: "b"})
	a := startNode(t, nodeOpts{seed: seed, name: "a"})
	_, _ = b.AddPeer(PeerConfig{Name: "a"})
	bKey := handshake.PublicKey(b.key)
	pb, _ := a.AddPeer(PeerConfig{Name: "b", PublicKey: &bKey})
	if _, err := a.AddPeer(PeerConfig{Name: "*boot", AnyName: true, Endpoint: loopback(b.Node)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "a session with b", pb.HasSession)
	if got := pb.Endpoint(); got != loopbackAP(b.Node) {
		t.Fatalf("b's endpoint %v, want %v", got, loopbackAP(b.Node))
	}
	roundTrip(t, a, b, "over the session the wildcard made")
}

// TestWildcardPinMismatchDropped: the peer named in the CHALLENGE pins another key:
// the handshake is dropped as a pin mismatch and no session is made.
func TestWildcardPinMismatchDropped(t *testing.T) {
	seed := randKey(t)
	b := startNode(t, nodeOpts{seed: seed, name: "b"})
	a := startNode(t, nodeOpts{seed: seed, name: "a"})
	_, _ = b.AddPeer(PeerConfig{Name: "a"})
	wrong := handshake.PublicKey(randKey(t))
	pb, _ := a.AddPeer(PeerConfig{Name: "b", PublicKey: &wrong})
	w, _ := a.AddPeer(PeerConfig{Name: "*boot", AnyName: true, Endpoint: loopback(b.Node)})
	waitFor(t, 5*time.Second, "a pin mismatch", func() bool { return a.Stats().Drops[DropPinMismatch] > 0 })
	if pb.HasSession() || len(b.bind.ofType(wire.TypeChallenge)) == 0 {
		t.Fatal("a session with the wrong key, or b never answered")
	}
	if _, _, ok := w.Reached(); ok {
		t.Fatal("the wildcard says it reached b")
	}
	if len(a.bind.ofType(wire.TypeAuthProof)) != 0 {
		t.Fatal("a sent an AUTH_PROOF to a key it does not accept")
	}
	// A retry would meet the same key: the wildcard stops until Rekey.
	w.mu.Lock()
	stopped := w.handshake.init == nil && !w.handshake.want
	w.mu.Unlock()
	if !stopped {
		t.Fatal("the wildcard keeps handshaking with a key it refuses")
	}
}

// TestWildcardUnknownNameWithoutAdmitDropped: without Admit, a name no peer has ends
// the wildcard's handshake (counted as unknown_peer) and adds no peer.
func TestWildcardUnknownNameWithoutAdmitDropped(t *testing.T) {
	seed := randKey(t)
	b := startNode(t, nodeOpts{seed: seed, name: "b"})
	a := startNode(t, nodeOpts{seed: seed, name: "a"})
	w, _ := a.AddPeer(PeerConfig{Name: "*boot", AnyName: true, Endpoint: loopback(b.Node)})
	waitFor(t, 5*time.Second, "an unknown_peer drop", func() bool { return a.Stats().Drops[DropUnknownPeer] > 0 })
	waitFor(t, 5*time.Second, "the wildcard to stop", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.handshake.init == nil && !w.handshake.want
	})
	if len(a.Peers()) != 1 {
		t.Fatalf("a has %d peers, want only the wildcard", len(a.Peers()))
	}
}

// TestWildcardReachingSelfDetected: a bootstrap address that is this node's own, or a
// node with this node's key under another name, is recognised, counted and shown, and
// neither admitted nor tried again.
func TestWildcardReachingSelfDetected(t *testing.T) {
	for _, tc := range []struct{ name, how string }{{"own address", "addr"}, {"same key", "key"}} {
		t.Run(tc.name, func(t *testing.T) {
			seed := randKey(t)
			a, adm := startAdmitting(t, nodeOpts{seed: seed, name: "a"})
			target := a.Node
			if tc.how == "key" {
				k := a.key
				target = startNode(t, nodeOpts{seed: seed, name: "c", key: &k}).Node
			}
			w, _ := a.AddPeer(PeerConfig{Name: "*boot", AnyName: true, Endpoint: loopback(target)})
			waitFor(t, 5*time.Second, "the wildcard to see itself", w.ReachedSelf)
			if a.Stats().SelfReached == 0 {
				t.Fatal("not counted")
			}
			if len(adm.names()) != 0 || len(a.Peers()) != 1 {
				t.Fatalf("Admit asked about %q; a has %d peers", adm.names(), len(a.Peers()))
			}
			w.mu.Lock()
			stopped := w.handshake.init == nil && !w.handshake.want
			w.mu.Unlock()
			if !stopped {
				t.Fatal("the wildcard keeps handshaking with itself")
			}
		})
	}
}

// TestWildcardConcurrentHandshakesDoNotDeadlock: wildcards completing on a peer while
// that peer runs its own handshakes and answers the other node's (the lock order
// wildcard → target, and Admit outside every lock), round after round, under -race.
func TestWildcardConcurrentHandshakesDoNotDeadlock(t *testing.T) {
	seed := randKey(t)
	// Six handshakes at once between two nodes can leave them on different sessions (a
	// node keeps two per peer); the dead-peer timer mends that, quickly here.
	timers := Limits{DeadPeerTimeout: 300 * time.Millisecond, Tick: 10 * time.Millisecond}
	b, _ := startAdmitting(t, nodeOpts{seed: seed, name: "b", timers: timers})
	a, _ := startAdmitting(t, nodeOpts{seed: seed, name: "a", timers: timers})
	var ws []*Peer
	for i := range 4 {
		w, err := a.AddPeer(PeerConfig{Name: fmt.Sprintf("*boot%d", i), AnyName: true, Endpoint: loopback(b.Node)})
		if err != nil {
			t.Fatal(err)
		}
		ws = append(ws, w)
	}
	waitFor(t, 5*time.Second, "a session with b", func() bool { p := a.Peer("b"); return p != nil && p.HasSession() })
	roundTrip(t, a, b, "first")
	pb, pa := a.Peer("b"), b.Peer("a")
	_ = pa.Update(PeerConfig{Name: "a", Endpoint: loopback(a.Node), PublicKey: func() *[32]byte { k := handshake.PublicKey(a.key); return &k }()})
	for round := range 20 {
		done := a.Stats().HandshakesDone + b.Stats().HandshakesDone
		var wg sync.WaitGroup
		for _, p := range append([]*Peer{pb, pa}, ws...) {
			wg.Add(1)
			go func() { defer wg.Done(); p.Rekey() }()
		}
		wg.Wait()
		waitFor(t, 10*time.Second, fmt.Sprintf("round %d's handshakes", round), func() bool {
			return a.Stats().HandshakesDone+b.Stats().HandshakesDone > done
		})
	}
	// Every lock was let go: data flows both ways again.
	toB := b.h.count.Load()
	waitFor(t, 10*time.Second, "data both ways after the rounds", func() bool {
		sendOne(t, pb, 0, []byte("to b"))
		sendOne(t, pa, 0, []byte("to a"))
		return b.h.count.Load() > toB && a.h.count.Load() > 0
	})
}

// TestIdleSessionClosesAndReopensLazily: with no data nor reliable message for the idle
// timeout, the session closes at both ends although keepalives (persistent, every
// 50 ms) still flow; no handshake follows until the next Send, which brings up a new
// session.
func TestIdleSessionClosesAndReopensLazily(t *testing.T) {
	const idle = 300 * time.Millisecond
	timers := Limits{Tick: 10 * time.Millisecond}
	seed := randKey(t)
	a := startNode(t, nodeOpts{seed: seed, name: "a", timers: timers})
	b := startNode(t, nodeOpts{seed: seed, name: "b", timers: timers})
	_, _ = b.AddPeer(PeerConfig{Name: "a"})
	pb, _ := a.AddPeer(PeerConfig{Name: "b", Endpoint: loopback(b.Node), IdleTimeout: idle, PersistentKeepalive: 50 * time.Millisecond})
	established(t, a, b)
	first := sessionOf(t, pb)
	waitFor(t, 5*time.Second, "both ends to drop the idle session", func() bool {
		return !pb.HasSession() && !b.Peer("a").HasSession()
	})
	// Lazy: nothing asks for a handshake now. Absence takes time to show: three idle
	// timeouts with the timers ticking every 10 ms.
	started := a.Stats().HandshakesStarted + b.Stats().HandshakesStarted
	time.Sleep(3 * idle)
	if now := a.Stats().HandshakesStarted + b.Stats().HandshakesStarted; now != started {
		t.Fatalf("%d handshakes started without traffic", now-started)
	}
	roundTrip(t, a, b, "again")
	if sessionOf(t, pb) == first {
		t.Fatal("the idle session was used again")
	}
}

// TestIdleTimeoutKeptOffByDataAndReliableMessages: data received, and reliable control
// messages sent, each keep the session open past the idle timeout.
func TestIdleTimeoutKeptOffByDataAndReliableMessages(t *testing.T) {
	const idle = 300 * time.Millisecond
	timers := Limits{Tick: 10 * time.Millisecond}
	seed := randKey(t)
	a := startNode(t, nodeOpts{seed: seed, name: "a", timers: timers})
	b := startNode(t, nodeOpts{seed: seed, name: "b", timers: timers})
	_, _ = b.AddPeer(PeerConfig{Name: "a"})
	pb, _ := a.AddPeer(PeerConfig{Name: "b", Endpoint: loopback(b.Node), IdleTimeout: idle})
	established(t, a, b)
	id := sessionOf(t, pb)
	for phase, send := range map[string]func(){
		"data received": func() { sendOne(t, b.Peer("a"), 0, []byte("x")) },
		"reliable sent": func() {
			if err := pb.SendReliable(0x80, []byte("r")); err != nil {
				t.Fatal(err)
			}
		},
	} {
		// Traffic every idle/6 for three idle timeouts: the timer must see it.
		for end := time.Now().Add(3 * idle); time.Now().Before(end); time.Sleep(idle / 6) {
			send()
			if got, ok := pb.SessionID(); !ok || got != id {
				t.Fatalf("%s: the session closed while in use", phase)
			}
		}
	}
}

// TestCandidatesFindTheAnsweringAddress: HELLOs go to every candidate while no
// endpoint works; the address the peer answers from becomes its endpoint. Without an
// endpoint they go out at once; with a dead endpoint, from the first retry on.
func TestCandidatesFindTheAnsweringAddress(t *testing.T) {
	dead := func() netip.AddrPort {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		ap := c.LocalAddr().(*net.UDPAddr).AddrPort()
		c.Close()
		return ap
	}
	for _, tc := range []struct {
		name     string
		endpoint bool
	}{{"no endpoint", false}, {"dead endpoint", true}} {
		t.Run(tc.name, func(t *testing.T) {
			timers := Limits{HandshakeRetry: 100 * time.Millisecond, Tick: 10 * time.Millisecond}
			seed := randKey(t)
			a := startNode(t, nodeOpts{seed: seed, name: "a", timers: timers})
			b := startNode(t, nodeOpts{seed: seed, name: "b", timers: timers})
			_, _ = b.AddPeer(PeerConfig{Name: "a"})
			pc := PeerConfig{Name: "b", Candidates: []netip.AddrPort{dead(), loopbackAP(b.Node), dead()}}
			if tc.endpoint {
				pc.Endpoint = dead().String()
			}
			pb, err := a.AddPeer(pc)
			if err != nil {
				t.Fatal(err)
			}
			sendOne(t, pb, 0, []byte("hello"))
			b.h.waitCount(t, 1, 5*time.Second)
			if got := pb.Endpoint(); got != loopbackAP(b.Node) {
				t.Fatalf("endpoint %v, want %v", got, loopbackAP(b.Node))
			}
		})
	}
	a := startNode(t, nodeOpts{seed: randKey(t), name: "a"})
	if _, err := a.AddPeer(PeerConfig{Name: "b", Candidates: make([]netip.AddrPort, MaxCandidates+1)}); err == nil {
		t.Fatal("more candidates than MaxCandidates accepted")
	}
}

// TestSendReliableWithoutSessionQueuesAndDelivers: SendReliable to a peer without a
// session starts the handshake and keeps the messages, which arrive in order once the
// session is up; the queue is bounded as a session's is.
func TestSendReliableWithoutSessionQueuesAndDelivers(t *testing.T) {
	seed := randKey(t)
	var mu sync.Mutex
	var got []byte
	b := startNode(t, nodeOpts{seed: seed, name: "b", config: func(c *Config) {
		c.Extension = func(p *Peer, typ byte, body []byte, _ netip.AddrPort, _ bool) {
			mu.Lock()
			got = append(got, body[0])
			mu.Unlock()
		}
	}})
	a := startNode(t, nodeOpts{seed: seed, name: "a"})
	_, _ = b.AddPeer(PeerConfig{Name: "a"})
	pb, _ := a.AddPeer(PeerConfig{Name: "b", Endpoint: loopback(b.Node)})
	const n = 50
	for i := range n {
		if err := pb.SendReliable(0x80, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "the queued messages", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) >= n
	})
	mu.Lock()
	for i, v := range got {
		if int(v) != i {
			t.Fatalf("message %d carried %d", i, v)
		}
	}
	mu.Unlock()

	// Bounded: a peer that never answers takes reliableQueueMax, then refuses.
	pz, _ := a.AddPeer(PeerConfig{Name: "z", Endpoint: "127.0.0.1:9"})
	for i := range reliableQueueMax {
		if err := pz.SendReliable(0x80, []byte{1}); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	if err := pz.SendReliable(0x80, []byte{1}); !errors.Is(err, ErrReliableQueueFull) {
		t.Fatalf("message beyond the bound: %v, want ErrReliableQueueFull", err)
	}
}

type upEvent struct {
	name  string
	fresh bool
}

// upLog records SessionUp calls.
type upLog struct {
	mu     sync.Mutex
	events []upEvent
}

func (l *upLog) up(p *Peer, fresh bool) {
	l.mu.Lock()
	l.events = append(l.events, upEvent{p.Name(), fresh})
	l.mu.Unlock()
}

func (l *upLog) get() []upEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]upEvent(nil), l.events...)
}

// TestSessionUpReportsFreshSessions: SessionUp is called at both ends for each
// confirmed session, fresh for the first one and for one after the session was closed,
// not fresh for a rekey.
func TestSessionUpReportsFreshSessions(t *testing.T) {
	seed := randKey(t)
	var la, lb upLog
	a := startNode(t, nodeOpts{seed: seed, name: "a", config: func(c *Config) { c.SessionUp = la.up }})
	b := startNode(t, nodeOpts{seed: seed, name: "b", config: func(c *Config) { c.SessionUp = lb.up }})
	_, _ = b.AddPeer(PeerConfig{Name: "a"})
	pb, _ := a.AddPeer(PeerConfig{Name: "b", Endpoint: loopback(b.Node)})
	established(t, a, b)
	want := func(l *upLog, name string, evs ...upEvent) {
		t.Helper()
		waitFor(t, 5*time.Second, fmt.Sprintf("%d SessionUp calls at %s", len(evs), name), func() bool { return len(l.get()) >= len(evs) })
		got := l.get()
		if len(got) != len(evs) {
			t.Fatalf("%s: SessionUp calls %v, want %v", name, got, evs)
		}
		for i := range evs {
			if got[i] != evs[i] {
				t.Fatalf("%s: SessionUp calls %v, want %v", name, got, evs)
			}
		}
	}
	want(&la, "a", upEvent{"b", true})
	want(&lb, "b", upEvent{"a", true})

	pb.Rekey()
	want(&la, "a", upEvent{"b", true}, upEvent{"b", false})
	want(&lb, "b", upEvent{"a", true}, upEvent{"a", false})

	// Closed (as the idle timer closes it) and brought up again: fresh again.
	pb.mu.Lock()
	pb.closeIdleLocked()
	pb.mu.Unlock()
	waitFor(t, 5*time.Second, "b to drop the closed session", func() bool { return !b.Peer("a").HasSession() })
	roundTrip(t, a, b, "again")
	want(&la, "a", upEvent{"b", true}, upEvent{"b", false}, upEvent{"b", true})
	want(&lb, "b", upEvent{"a", true}, upEvent{"a", false}, upEvent{"a", true})
}

// TestExtensionToldWhereMessageCameFrom: the extension gets the address the message
// came from and whether it came over WebSocket.
func TestExtensionToldWhereMessageCameFrom(t *testing.T) {
	type seen struct {
		from  netip.AddrPort
		viaWS bool
	}
	for _, ws := range []bool{false, true} {
		t.Run(fmt.Sprintf("websocket=%v", ws), func(t *testing.T) {
			seed := randKey(t)
			got := make(chan seen, 4)
			b := startNode(t, nodeOpts{seed: seed, name: "b", ws: ws, noUDP: ws, config: func(c *Config) {
				c.Extension = func(p *Peer, typ byte, body []byte, from netip.AddrPort, viaWS bool) {
					got <- seen{from, viaWS}
				}
			}})
			a := startNode(t, nodeOpts{seed: seed, name: "a", noUDP: ws})
			_, _ = b.AddPeer(PeerConfig{Name: "a"})
			pc := PeerConfig{Name: "b", Endpoint: loopback(b.Node)}
			if ws {
				pc = PeerConfig{Name: "b", WSURL: wsURL(b.Node)}
			}
			pb, _ := a.AddPeer(pc)
			if err := pb.SendReliable(0x80, []byte("m")); err != nil {
				t.Fatal(err)
			}
			var s seen
			select {
			case s = <-got:
			case <-time.After(10 * time.Second):
				t.Fatal("the extension was not called")
			}
			if s.viaWS != ws {
				t.Fatalf("viaWS %v, want %v", s.viaWS, ws)
			}
			want := loopbackAP(a.Node)
			if ws {
				want = b.Peer("a").WSEndpoint()
			}
			if s.from != want || !s.from.Addr().IsLoopback() {
				t.Fatalf("from %v, want %v", s.from, want)
			}
		})
	}
}

// TestWildcardNamedLikeItsNodeIsNoTarget: a node whose name is the wildcard peer's own
// is not a peer to complete on (the wildcard would be its own target): the handshake
// is dropped, and the node goes on working.
func TestWildcardNamedLikeItsNodeIsNoTarget(t *testing.T) {
	seed := randKey(t)
	b := startNode(t, nodeOpts{seed: seed, name: "b"})
	a, _ := startAdmitting(t, nodeOpts{seed: seed, name: "a"})
	w, _ := a.AddPeer(PeerConfig{Name: "b", AnyName: true, Endpoint: loopback(b.Node)})
	waitFor(t, 5*time.Second, "an unknown_peer drop", func() bool { return a.Stats().Drops[DropUnknownPeer] > 0 })
	if w.HasSession() || len(a.bind.ofType(wire.TypeAuthProof)) != 0 {
		t.Fatal("the wildcard completed the handshake on itself")
	}
	if _, _, ok := w.Reached(); ok {
		t.Fatal("the wildcard says it reached b")
	}
}

// TestWildcardPeerOverWebSocket: a bootstrap address may be a WebSocket URL: the
// session made on the admitted peer uses the wildcard's connection.
func TestWildcardPeerOverWebSocket(t *testing.T) {
	seed := randKey(t)
	b, _ := startAdmitting(t, nodeOpts{seed: seed, name: "b", ws: true, noUDP: true})
	a, _ := startAdmitting(t, nodeOpts{seed: seed, name: "a", noUDP: true})
	if _, err := a.AddPeer(PeerConfig{Name: "*boot", AnyName: true, WSURL: wsURL(b.Node)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a session with b", func() bool { p := a.Peer("b"); return p != nil && p.HasSession() })
	pb := a.Peer("b")
	sendOne(t, pb, 0, []byte("to b"))
	b.h.waitCount(t, 1, 5*time.Second)
	sendOne(t, b.Peer("a"), 0, []byte("to a"))
	a.h.waitCount(t, 1, 5*time.Second)
	if pb.Path() != PathWS {
		t.Fatalf("path %s, want ws", pb.Path())
	}
}

// TestCandidateOfAnotherNodeSkipped: a candidate address where another node of the
// network answers (an address a member used to have) costs one handshake, then gets no
// more HELLOs, until the candidates change; the right one then brings the session up.
func TestCandidateOfAnotherNodeSkipped(t *testing.T) {
	// A HELLO every 300 ms (a CHALLENGE arriving after the next HELLO answers nothing).
	timers := Limits{HandshakeRetry: 300 * time.Millisecond, HandshakeRetryMax: 300 * time.Millisecond, Tick: 10 * time.Millisecond}
	seed := randKey(t)
	a := startNode(t, nodeOpts{seed: seed, name: "a", timers: timers})
	b := startNode(t, nodeOpts{seed: seed, name: "b", timers: timers})
	c := startNode(t, nodeOpts{seed: seed, name: "c", timers: timers})
	_, _ = b.AddPeer(PeerConfig{Name: "a"})
	pb, _ := a.AddPeer(PeerConfig{Name: "b", Candidates: []netip.AddrPort{loopbackAP(c.Node)}})
	sendOne(t, pb, 0, []byte("hello"))
	waitFor(t, 10*time.Second, "c's answer read and dropped", func() bool { return a.Stats().Drops[DropUnknownPeer] > 0 })
	// Without the mark, HELLOs would go on to c every 300 ms; absence takes time to
	// show. One sent before the mark may still be answered.
	marked := len(c.bind.ofType(wire.TypeChallenge))
	time.Sleep(1200 * time.Millisecond)
	if n := len(c.bind.ofType(wire.TypeChallenge)) - marked; n > 1 {
		t.Fatalf("c answered %d HELLOs after its wrong name was seen, want at most 1", n)
	}
	if err := pb.Update(PeerConfig{Name: "b", Candidates: []netip.AddrPort{loopbackAP(c.Node), loopbackAP(b.Node)}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "a session with b", func() bool {
		sendOne(t, pb, 0, []byte("again"))
		return pb.HasSession()
	})
	if got := pb.Endpoint(); got != loopbackAP(b.Node) {
		t.Fatalf("endpoint %v, want %v", got, loopbackAP(b.Node))
	}
}

// TestReliableMessagesOutliveClosedSession: reliable messages a session still held
// unacknowledged when the peer closed it (an idle close, a shutdown) wait for the next
// session, which the node brings up for them, and are delivered.
func TestReliableMessagesOutliveClosedSession(t *testing.T) {
	seed := randKey(t)
	var mu sync.Mutex
	var got []byte
	a := startNode(t, nodeOpts{seed: seed, name: "a", config: func(c *Config) {
		c.Extension = func(p *Peer, typ byte, body []byte, _ netip.AddrPort, _ bool) {
			mu.Lock()
			got = append(got, body[0])
			mu.Unlock()
		}
	}})
	b := startNode(t, nodeOpts{seed: seed, name: "b"})
	_, _ = a.AddPeer(PeerConfig{Name: "b", Endpoint: loopback(b.Node)})
	pa, _ := b.AddPeer(PeerConfig{Name: "a", Endpoint: loopback(a.Node)})
	established(t, a, b)
	first := sessionOf(t, pa)

	// b's messages go nowhere; then a closes the session.
	b.bind.blocked.Store(true)
	for i := range 3 {
		if err := pa.SendReliable(0x80, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	pb := a.Peer("b")
	pb.mu.Lock()
	pb.closeIdleLocked()
	pb.mu.Unlock()
	waitFor(t, 5*time.Second, "b to drop the closed session", func() bool { id, ok := pa.SessionID(); return !ok || id != first })
	b.bind.blocked.Store(false)
	waitFor(t, 10*time.Second, "the three messages at a", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) >= 3
	})
	mu.Lock()
	defer mu.Unlock()
	if string(got) != "\x00\x01\x02" {
		t.Fatalf("a got %x, want 00 01 02", got)
	}
}

// TestWildcardThroughCookieUnderLoad: a bootstrap address whose node is under load
// answers the wildcard's HELLO with a cookie; the retry carries it, and the handshake
// completes on the peer admitted under the node's name.
func TestWildcardThroughCookieUnderLoad(t *testing.T) {
	seed := randKey(t)
	// A negative threshold keeps b permanently under load: every handshake message
	// must carry a cookie for b's view of a's address.
	b, _ := startAdmitting(t, nodeOpts{seed: seed, name: "b", loadThr: -1})
	a, _ := startAdmitting(t, nodeOpts{seed: seed, name: "a"})
	if _, err := a.AddPeer(PeerConfig{Name: "*boot", AnyName: true, Endpoint: loopback(b.Node)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a session with b", func() bool { p := a.Peer("b"); return p != nil && p.HasSession() })
	roundTrip(t, a, b, "through the cookie")
	if b.Stats().CookieRepliesSent == 0 {
		t.Fatal("b under load made a session without the cookie round trip")
	}
}

// TestConnectLooksBootstrapNameUpAgain: a wildcard whose endpoint is a host name looks
// it up again when Connect dials it, so that a bootstrap that moved to another address
// (here: another node on another port) is reached there.
func TestConnectLooksBootstrapNameUpAgain(t *testing.T) {
	seed := randKey(t)
	b, _ := startAdmitting(t, nodeOpts{seed: seed, name: "b"})
	c, _ := startAdmitting(t, nodeOpts{seed: seed, name: "c"})
	var target atomic.Pointer[Node]
	target.Store(b.Node)
	a, _ := startAdmitting(t, nodeOpts{seed: seed, name: "a", config: func(cfg *Config) {
		cfg.Resolver = func(ctx context.Context, hostport string) (netip.AddrPort, error) {
			return loopbackAP(target.Load()), nil
		}
	}})
	w, err := a.AddPeer(PeerConfig{Name: "*boot", AnyName: true, Endpoint: "boot.example:1"})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "a session with b", func() bool { p := a.Peer("b"); return p != nil && p.HasSession() })
	// The name now points at c; a dial finds it there.
	target.Store(c.Node)
	w.Connect()
	waitFor(t, 5*time.Second, "a session with c", func() bool { p := a.Peer("c"); return p != nil && p.HasSession() })
	if name, _, _ := w.Reached(); name != "c" {
		t.Fatalf("the wildcard reached %q, want c", name)
	}
}

// TestConnectDialsOnceTheNameIsLookedUp: Connect's handshake waits for the lookup of
// the name it starts. Sent at once it went to the old address, and when it completed
// there before the lookup ended (a loaded machine) the wildcard had reached the old
// node again and never dialled the new one. The resolver here is held until the
// handshake would have completed, which made that order certain.
func TestConnectDialsOnceTheNameIsLookedUp(t *testing.T) {
	seed := randKey(t)
	b, _ := startAdmitting(t, nodeOpts{seed: seed, name: "b"})
	c, _ := startAdmitting(t, nodeOpts{seed: seed, name: "c"})
	var target atomic.Pointer[Node]
	target.Store(b.Node)
	hold := make(chan struct{})
	var held atomic.Bool
	a, _ := startAdmitting(t, nodeOpts{seed: seed, name: "a", config: func(cfg *Config) {
		cfg.Resolver = func(ctx context.Context, hostport string) (netip.AddrPort, error) {
			if held.Load() {
				select {
				case <-hold:
				case <-ctx.Done():
					return netip.AddrPort{}, ctx.Err()
				}
			}
			return loopbackAP(target.Load()), nil
		}
	}})
	w, err := a.AddPeer(PeerConfig{Name: "*boot", AnyName: true, Endpoint: "boot.example:1"})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "a session with b", func() bool { p := a.Peer("b"); return p != nil && p.HasSession() })
	hsB := a.Peer("b").LastHandshake()
	held.Store(true)
	target.Store(c.Node)
	w.Connect()
	// While the lookup is held, no handshake is asked for or goes anywhere: b would
	// answer one at once.
	w.mu.Lock()
	running, wanted, dialing := w.lookup.running, w.handshake.want, w.handshake.init != nil
	w.mu.Unlock()
	if !running || wanted || dialing {
		t.Fatalf("after Connect: lookup running %v, handshake wanted %v, in flight %v; want the handshake to wait for the lookup", running, wanted, dialing)
	}
	close(hold)
	waitFor(t, 5*time.Second, "a session with c", func() bool { p := a.Peer("c"); return p != nil && p.HasSession() })
	if got := a.Peer("b").LastHandshake(); !got.Equal(hsB) {
		t.Error("the dial went to b, the old address, as well")
	}
}

// TestIdleSessionStopsRTTProbes: RTT probes go out while data flows and stop when it
// does, at both ends. (They used to keep each other going: the answer to a probe counted
// as something heard, which asked for the next probe, every interval, forever — most of
// an idle mesh node's background traffic.)
func TestIdleSessionStopsRTTProbes(t *testing.T) {
	const probe = 50 * time.Millisecond
	a, b := pair(t, Limits{Tick: 10 * time.Millisecond, RTTProbeInterval: probe})
	roundTrip(t, a, b, "data")
	pa, pb := a.Peer("b"), b.Peer("a")
	seqs := func() (uint32, uint32) {
		pa.mu.Lock()
		sa := pa.ping.seq
		pa.mu.Unlock()
		pb.mu.Lock()
		sb := pb.ping.seq
		pb.mu.Unlock()
		return sa, sb
	}
	// Data stopped; after twice the probe interval no probe is due any more. Absence
	// takes time to show: ten probe intervals more.
	time.Sleep(3 * probe)
	a0, b0 := seqs()
	time.Sleep(10 * probe)
	if a1, b1 := seqs(); a1 != a0 || b1 != b0 {
		t.Fatalf("an idle session still sends RTT probes: %d from a, %d from b in %v", a1-a0, b1-b0, 10*probe)
	}
	if !pa.HasSession() {
		t.Fatal("the session went away")
	}
}

// TestOneWaySenderMeasuresRTT: a peer that only sends data (its peer answers with
// keepalives, no data) still probes RTT while it sends, as it did before probes were
// limited to sessions with data flowing: its RTT (status, the reliable channel's
// retransmission timer) is measured, not left at zero or stale.
func TestOneWaySenderMeasuresRTT(t *testing.T) {
	const probe = 50 * time.Millisecond
	a, b := pair(t, Limits{Tick: 10 * time.Millisecond, RTTProbeInterval: probe, KeepaliveTimeout: 20 * time.Millisecond})
	roundTrip(t, a, b, "first")
	pa := a.Peer("b")
	seq := func() uint32 {
		pa.mu.Lock()
		defer pa.mu.Unlock()
		return pa.ping.seq
	}
	// Data goes from a to b only, b answers with keepalives; the probes of the node's
	// first moments (its monotonic clock starts near zero) are behind us.
	deadline := time.Now().Add(5 * time.Second)
	var s0 uint32
	for start := time.Now(); ; time.Sleep(5 * time.Millisecond) { // the pace of the flow
		if time.Now().After(deadline) {
			t.Fatalf("a peer that sends data all along sent %d RTT probes", seq()-s0)
		}
		sendOne(t, pa, 0, []byte("one way"))
		if time.Since(start) < 4*probe {
			s0 = seq()
			continue
		}
		if seq() >= s0+2 {
			break
		}
	}
}
