package stt

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/stt-tun/stt-tun/stt/handshake"
	"github.com/stt-tun/stt-tun/stt/udp"
	"github.com/stt-tun/stt-tun/stt/wire"
)

// relayLab is three nodes on loopback: a and b, which reach each other only through r
// (unless a test lets them), and r, a relay with a session to each.
type relayLab struct {
	a, r, b    *testNode
	ab, ba     *Peer // a's peer b, b's peer a
	ar, br     *Peer // a's peer r, b's peer r
	ra, rb     *Peer // r's peers a and b
	idAB, idBA uint32
	seed       [32]byte
}

type labOpts struct {
	timers Limits
	// direct gives a and b each other's UDP address (cut until the test lets it
	// through); else they have none.
	direct bool
	// wsA puts a on WebSocket only: no UDP at all, r reached by its URL.
	wsA bool
	// relayTimers are r's limits (default: timers).
	relayTimers *Limits
	// noCap gives every node a plain bind: nothing copies what they send (and nothing
	// can be cut).
	noCap bool
	// handlerB replaces b's collector (benchmarks).
	handlerB Handler
	// wsURLB is the WebSocket URL a has for b ("" = none).
	wsURLB string
	// idle is the IdleTimeout of every peer a and b have with r, and r with them.
	idle time.Duration
	// config, when set, adjusts every node's Config (nodeOpts.config).
	config func(*Config)
}

func newRelayLab(t testing.TB, o labOpts) *relayLab {
	t.Helper()
	seed := randKey(t)
	rt := o.timers
	if o.relayTimers != nil {
		rt = *o.relayTimers
	}
	l := &relayLab{seed: seed}
	// The nodes' debug logs, shown when the test fails.
	logs := map[string]*lockedBuffer{"a": {}, "r": {}, "b": {}}
	t.Cleanup(func() {
		if t.Failed() {
			for _, name := range []string{"a", "r", "b"} {
				t.Logf("%s's log:\n%s", name, logs[name].String())
			}
		}
	})
	logger := func(name string) *slog.Logger {
		return slog.New(slog.NewTextHandler(logs[name], &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	l.r = startNode(t, nodeOpts{seed: seed, name: "r", timers: rt, ws: o.wsA, config: func(c *Config) {
		c.RelayMaxPairs = 4
		if o.config != nil {
			o.config(c)
		}
	}, noCap: o.noCap, logger: logger("r")})
	l.a = startNode(t, nodeOpts{seed: seed, name: "a", timers: o.timers, noUDP: o.wsA, noCap: o.noCap, logger: logger("a"), config: o.config})
	l.b = startNode(t, nodeOpts{seed: seed, name: "b", timers: o.timers, noCap: o.noCap, logger: logger("b"), handler: o.handlerB, config: o.config})
	l.ra, _ = l.r.AddPeer(PeerConfig{Name: "a", IdleTimeout: o.idle})
	l.rb, _ = l.r.AddPeer(PeerConfig{Name: "b", IdleTimeout: o.idle})
	var err error
	if o.wsA {
		l.ar, err = l.a.AddPeer(PeerConfig{Name: "r", WSURL: wsURL(l.r.Node), IdleTimeout: o.idle})
	} else {
		l.ar, err = l.a.AddPeer(PeerConfig{Name: "r", Endpoint: loopback(l.r.Node), IdleTimeout: o.idle})
	}
	if err != nil {
		t.Fatal(err)
	}
	l.br, _ = l.b.AddPeer(PeerConfig{Name: "r", Endpoint: loopback(l.r.Node), IdleTimeout: o.idle})
	pcA, pcB := PeerConfig{Name: "b", WSURL: o.wsURLB}, PeerConfig{Name: "a"}
	if o.direct {
		pcA.Endpoint, pcB.Endpoint = loopback(l.b.Node), loopback(l.a.Node)
		l.a.bind.cutTo(l.b.Port(), true)
		l.b.bind.cutTo(l.a.Port(), true)
	}
	l.ab, _ = l.a.AddPeer(pcA)
	l.ba, _ = l.b.AddPeer(pcB)
	l.ar.Connect()
	l.br.Connect()
	waitFor(t, 10*time.Second, "sessions a-r and b-r", func() bool {
		return l.ar.HasSession() && l.br.HasSession() && l.ra.HasSession() && l.rb.HasSession()
	})
	return l
}

// open makes r relay between a and b, a the chooser.
func (l *relayLab) open(t testing.TB) {
	t.Helper()
	var err error
	l.idAB, l.idBA, err = l.r.RelayOpen(l.ra, l.rb)
	if err != nil {
		t.Fatal(err)
	}
	// The follower first: the chooser, without a session, sends its handshake through
	// the relay at once (relayWithoutSession), which b must know the id of.
	if err := l.ba.SetRelay(l.br, l.idBA, l.idAB, false); err != nil {
		t.Fatal(err)
	}
	if err := l.ab.SetRelay(l.ar, l.idAB, l.idBA, true); err != nil {
		t.Fatal(err)
	}
}

// exchange sends one datagram each way and waits for both.
func (l *relayLab) exchange(t *testing.T, what string) {
	t.Helper()
	na, nb := l.a.h.count.Load(), l.b.h.count.Load()
	sendOne(t, l.ab, 1, []byte(what+" a->b"))
	l.waitCount(t, l.b, nb+1, what+" a->b")
	sendOne(t, l.ba, 1, []byte(what+" b->a"))
	l.waitCount(t, l.a, na+1, what+" b->a")
}

// waitCount waits for n datagrams at x, and tells what the nodes dropped if they do
// not come.
func (l *relayLab) waitCount(t *testing.T, x *testNode, n int64, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for x.h.count.Load() < n {
		if time.Now().After(deadline) {
			desc := func(s *session) string {
				if s == nil {
					return "-"
				}
				return fmt.Sprintf("%d>%d init=%v conf=%v", s.localIndex, s.remoteIndex, s.initiator, s.confirmed.Load())
			}
			l.ba.mu.Lock()
			prevB := desc(l.ba.keys.previous)
			l.ba.mu.Unlock()
			t.Logf("a->b %+v, b->a %+v, hold %v queue %d", l.ab.Stats(), l.ba.Stats(), l.ab.path.holding.Load(), len(l.ab.queue))
			t.Logf("a: cur %s sb %s; b: cur %s prev %s", desc(l.ab.keys.current.Load()), desc(l.ab.keys.standby.Load()), desc(l.ba.keys.current.Load()), prevB)
			t.Fatalf("%s: not received; paths %s/%s; drops a %v, r %v, b %v", what, l.ab.Path(), l.ba.Path(), l.a.Stats().Drops, l.r.Stats().Drops, l.b.Stats().Drops)
		}
		select {
		case <-x.h.notify:
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// checkRelayedEndToEnd: the a-b session is a's and b's alone, r forwarded it, and r
// delivered nothing of it to itself.
func (l *relayLab) checkRelayedEndToEnd(t *testing.T) {
	t.Helper()
	if l.ab.Path() != PathRelay || l.ba.Path() != PathRelay {
		t.Fatalf("paths a->b %s, b->a %s; want relay", l.ab.Path(), l.ba.Path())
	}
	if l.ab.RelayVia() != l.ar || l.ba.RelayVia() != l.br {
		t.Fatal("RelayVia is not r")
	}
	waitFor(t, 5*time.Second, "a-b session confirmed at both ends", func() bool { return l.ab.HasSession() && l.ba.HasSession() })
	// b's datagrams came from its peer a; r holds sessions with a and b only.
	l.b.h.mu.Lock()
	for _, p := range l.b.h.from {
		if p != l.ba {
			t.Errorf("b got a datagram from %s, want a", p.Name())
		}
	}
	l.b.h.mu.Unlock()
	if st := l.r.Stats(); st.Sessions > 2 || st.RelayForwardedPackets == 0 || st.RelayRoutes != 1 {
		t.Fatalf("relay: %d sessions, %d forwarded, %d routes", st.Sessions, st.RelayForwardedPackets, st.RelayRoutes)
	}
	if r := l.r.Peer("a"); r.RelayVia() != nil {
		t.Fatal("r relays its own session")
	}
	if l.r.h.count.Load() != 0 {
		t.Fatalf("r delivered %d datagrams to itself", l.r.h.count.Load())
	}
}

// TestRelayCarriesHandshakeAndDataEndToEnd: a and b have no direct path; a's datagram
// makes a handshake through r, and data flows both ways through r on a session of a
// and b alone.
func TestRelayCarriesHandshakeAndDataEndToEnd(t *testing.T) {
	l := newRelayLab(t, labOpts{timers: Limits{Tick: 20 * time.Millisecond}})
	l.open(t)
	l.exchange(t, "first")
	l.checkRelayedEndToEnd(t)
	// A session's FINAL and the exchange went both ways: r forwarded at least those.
	if f := l.r.Stats().RelayForwardedPackets; f < 5 {
		t.Fatalf("r forwarded %d messages", f)
	}
	if l.a.Stats().DropsTotal+l.b.Stats().DropsTotal != 0 {
		t.Fatalf("drops at the ends: a %v b %v", l.a.Stats().Drops, l.b.Stats().Drops)
	}
}

// TestRelayFromWebSocketToUDP: a has no UDP at all and reaches r over WebSocket; b
// reaches r over UDP; a and b talk through r, each leg on its own transport.
func TestRelayFromWebSocketToUDP(t *testing.T) {
	l := newRelayLab(t, labOpts{timers: Limits{Tick: 20 * time.Millisecond}, wsA: true})
	if l.ra.Path() != PathWS || l.rb.Path() != PathUDP {
		t.Fatalf("legs %s/%s, want ws/udp", l.ra.Path(), l.rb.Path())
	}
	l.open(t)
	l.exchange(t, "over two transports")
	l.checkRelayedEndToEnd(t)
}

// TestRelayDropsWhatItMustNotForward: r forwards nothing but well-formed RELAY messages
// with a known id from the end the id belongs to; everything else is dropped and
// counted under its reason, and reaches neither b nor a.
func TestRelayDropsWhatItMustNotForward(t *testing.T) {
	l := newRelayLab(t, labOpts{timers: Limits{Tick: 20 * time.Millisecond}})
	l.open(t)
	l.exchange(t, "up")
	// A real relayed frame of a's, to alter.
	var good []byte
	for _, m := range l.a.bind.ofType(wire.TypeRelay) {
		if len(m) > wire.RelayHeaderLen && m[wire.RelayHeaderLen] == wire.TypeData {
			good = m
		}
	}
	if good == nil {
		t.Fatal("a sent no relayed DATA")
	}
	// It may be a keepalive r has yet to forward: the cases count what r sends.
	waitFor(t, 5*time.Second, "r forwarded a's frame", func() bool { return sentCount(l.r.bind, good) > 0 })
	rEP, _ := l.a.bind.ParseEndpoint(loopback(l.r.Node))
	fromA := func(m []byte) {
		if err := l.a.bind.Bind.Send([][]byte{m}, rEP); err != nil {
			t.Fatal(err)
		}
	}
	alter := func(f func(m []byte) []byte) []byte { return f(bytes.Clone(good)) }
	raw := rawSender(t)
	toR := func(m []byte) { raw(m, l.r.Node) }
	toB := func(m []byte) { raw(m, l.b.Node) }
	nested := alter(func(m []byte) []byte {
		inner := make([]byte, wire.RelayHeaderLen, len(m)+wire.RelayHeaderLen)
		wire.PutRelayHeader(inner, l.idAB)
		return append(m[:wire.RelayHeaderLen], append(inner, m[wire.RelayHeaderLen:]...)...)
	})
	cases := []struct {
		name   string
		msg    []byte
		send   func([]byte)
		reason DropReason
		at     *testNode
	}{
		{"forged source", good, toR, DropRelayWrongSource, l.r},
		{"id of the other direction from a", alter(func(m []byte) []byte { putID(m, l.idBA); return m }), fromA, DropRelayWrongSource, l.r},
		{"unknown id", alter(func(m []byte) []byte { putID(m, l.idAB^l.idBA|1); return m }), fromA, DropRelayUnknownID, l.r},
		{"reserved byte", alter(func(m []byte) []byte { m[2] = 1; return m }), fromA, DropRelayMalformed, l.r},
		{"nested relay", nested, fromA, DropRelayMalformed, l.r},
		{"junk inner type", alter(func(m []byte) []byte { m[wire.RelayHeaderLen] = 0x42; return m }), fromA, DropRelayMalformed, l.r},
		{"inner HELLO of a wrong length", alter(func(m []byte) []byte {
			m[wire.RelayHeaderLen], m[wire.RelayHeaderLen+1] = wire.TypeHello, wire.Version
			return m
		}), fromA, DropRelayMalformed, l.r},
		{"too short", good[:wire.RelayHeaderLen+wire.MinDataLen-1], fromA, DropMalformed, l.r},
		// The end checks too: a RELAY with b's receive id from anyone but r.
		{"forged source at the end", alter(func(m []byte) []byte { putID(m, l.idAB); return m }), toB, DropRelayWrongSource, l.b},
	}
	for _, c := range cases {
		sent := sentCount(l.r.bind, c.msg)
		before := c.at.Stats().Drops[c.reason]
		nb := l.b.h.count.Load()
		c.send(c.msg)
		waitFor(t, 5*time.Second, c.name+" counted", func() bool { return c.at.Stats().Drops[c.reason] > before })
		if sentCount(l.r.bind, c.msg) != sent {
			t.Errorf("%s: forwarded", c.name)
		}
		if l.b.h.count.Load() != nb {
			t.Errorf("%s: delivered at b", c.name)
		}
	}
	// And the route still works.
	l.exchange(t, "still up")
}

// sentCount is how many times b sent exactly m.
func sentCount(b *captureBind, m []byte) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	k := 0
	for _, x := range b.sent {
		if bytes.Equal(x, m) {
			k++
		}
	}
	return k
}

func putID(m []byte, id uint32) {
	m[wire.RelayIDOff], m[wire.RelayIDOff+1], m[wire.RelayIDOff+2], m[wire.RelayIDOff+3] = byte(id), byte(id>>8), byte(id>>16), byte(id>>24)
}

// TestRelayForwardsNothingToAnEndWithoutSession: a route whose to-end lost its
// session forwards nothing (relay_no_route).
func TestRelayForwardsNothingToAnEndWithoutSession(t *testing.T) {
	l := newRelayLab(t, labOpts{timers: Limits{Tick: 20 * time.Millisecond}})
	l.open(t)
	l.exchange(t, "up")
	l.rb.mu.Lock()
	l.rb.dropSessionsLocked()
	l.rb.handshake.want = false
	l.rb.mu.Unlock()
	// b learns of the CLOSE and does not reconnect by itself (no traffic to r).
	before := l.r.Stats().Drops[DropRelayNoRoute]
	sendOne(t, l.ab, 1, []byte("into the void"))
	waitFor(t, 5*time.Second, "relay_no_route counted", func() bool { return l.r.Stats().Drops[DropRelayNoRoute] > before })
}

// TestRelayOpenBounds: RelayOpen refuses with the error of the bound it would cross,
// counts the refusal, and returns an open pair's ids again; a removed peer takes its
// pairs with it.
func TestRelayOpenBounds(t *testing.T) {
	seed := randKey(t)
	r := startNode(t, nodeOpts{seed: seed, name: "r", config: func(c *Config) { c.RelayMaxPairs, c.RelayMaxPerMember = 3, 2 }})
	plain := startNode(t, nodeOpts{seed: seed, name: "plain"})
	ends := map[string]*Peer{}
	for _, name := range []string{"a", "b", "c", "d"} {
		n := startNode(t, nodeOpts{seed: seed, name: name})
		pr, _ := n.AddPeer(PeerConfig{Name: "r", Endpoint: loopback(r.Node)})
		pp, _ := n.AddPeer(PeerConfig{Name: "plain", Endpoint: loopback(plain.Node)})
		ends[name], _ = r.AddPeer(PeerConfig{Name: name})
		pl, _ := plain.AddPeer(PeerConfig{Name: name})
		pr.Connect()
		pp.Connect()
		waitFor(t, 10*time.Second, "session with "+name, func() bool { return ends[name].HasSession() && pl.HasSession() })
	}
	e, _ := r.AddPeer(PeerConfig{Name: "e"}) // never connects
	a, b, c, d := ends["a"], ends["b"], ends["c"], ends["d"]

	if _, _, err := plain.RelayOpen(plain.Peer("a"), plain.Peer("b")); !errors.Is(err, ErrNotRelay) {
		t.Fatalf("a node that is no relay: %v", err)
	}
	if _, _, err := r.RelayOpen(a, e); !errors.Is(err, ErrRelayNoSession) {
		t.Fatalf("an end without session: %v", err)
	}
	if _, _, err := r.RelayOpen(a, a); !errors.Is(err, ErrRelayNoSession) {
		t.Fatalf("a pair of one peer: %v", err)
	}
	ab, ba, err := r.RelayOpen(a, b)
	if err != nil || ab == 0 || ba == 0 || ab == ba {
		t.Fatalf("a-b: %d %d %v", ab, ba, err)
	}
	if x, y, err := r.RelayOpen(b, a); err != nil || x != ba || y != ab {
		t.Fatalf("b-a again: %d %d %v, want %d %d", x, y, err, ba, ab)
	}
	if _, _, err := r.RelayOpen(a, c); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.RelayOpen(a, d); !errors.Is(err, ErrRelayShareFull) {
		t.Fatalf("a's third pair: %v, want ErrRelayShareFull", err)
	}
	if _, _, err := r.RelayOpen(c, d); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.RelayOpen(b, d); !errors.Is(err, ErrRelayFull) {
		t.Fatalf("a fourth pair: %v, want ErrRelayFull", err)
	}
	if st := r.Stats(); st.RelayRoutes != 3 || st.RelayRefused != 2 {
		t.Fatalf("routes %d refused %d, want 3 and 2", st.RelayRoutes, st.RelayRefused)
	}
	r.RelayClose(b, a)
	if st := r.Stats(); st.RelayRoutes != 2 {
		t.Fatalf("routes %d after a close, want 2", st.RelayRoutes)
	}
	if m := r.relays.routes.Load(); len(*m) != 4 || (*m)[ab] != nil {
		t.Fatalf("route table after a close: %d routes", len(*m))
	}
	r.RemovePeer("c")
	if st := r.Stats(); st.RelayRoutes != 0 {
		t.Fatalf("routes %d after c went, want 0", st.RelayRoutes)
	}
	if _, _, err := r.RelayOpen(b, d); err != nil {
		t.Fatalf("room again: %v", err)
	}
}

// TestRelayRouteExpiresWhenIdle: a route pair lives while it forwards, and goes after
// RelayIdle without a forwarded message; its ids are unknown from then on.
func TestRelayRouteExpiresWhenIdle(t *testing.T) {
	idle := 400 * time.Millisecond
	l := newRelayLab(t, labOpts{
		timers:      Limits{Tick: 20 * time.Millisecond},
		relayTimers: &Limits{Tick: 20 * time.Millisecond, RelayIdle: idle},
	})
	l.open(t)
	// Traffic for three idle periods: the route stays.
	end := time.Now().Add(3 * idle)
	for time.Now().Before(end) {
		l.exchange(t, "busy")
		if l.r.Stats().RelayRoutes != 1 {
			t.Fatal("a busy route expired")
		}
	}
	waitFor(t, 10*time.Second, "the idle route removed", func() bool { return l.r.Stats().RelayRoutes == 0 })
	before := l.r.Stats().Drops[DropRelayUnknownID]
	sendOne(t, l.ab, 1, []byte("too late"))
	waitFor(t, 5*time.Second, "the old id unknown", func() bool { return l.r.Stats().Drops[DropRelayUnknownID] > before })
}

// TestPunchMovesBothEndsFromRelayToUDP: a and b talk through r while UDP between them
// is cut; once it lets them through, a punch from both sides makes a handshake over
// UDP, and both move their traffic to it.
func TestPunchMovesBothEndsFromRelayToUDP(t *testing.T) {
	timers := Limits{Tick: 20 * time.Millisecond, FallbackAfter: 300 * time.Millisecond, ProbeInterval: time.Hour}
	l := newRelayLab(t, labOpts{timers: timers, direct: true})
	l.open(t)
	keepSending(t, l.a, l.b, l.ab, func() bool { return l.ab.Path() == PathRelay && l.ba.Path() == PathRelay })
	l.checkRelayedEndToEnd(t)
	s1 := l.ab.keys.current.Load()
	// a probes UDP once it is on the relay with a session, then every ProbeInterval (an
	// hour). That first probe, were it sent just after the cut is lifted, would bring
	// both ends back to UDP on s1 before the punch's handshake (a PONG over UDP): a
	// recovery, but not the punch under test.
	waitFor(t, 5*time.Second, "a's first UDP probe from the relay", func() bool {
		l.ab.mu.Lock()
		defer l.ab.mu.Unlock()
		return !l.ab.path.lastProbe.IsZero()
	})

	// A punch while UDP is still cut changes nothing.
	l.ab.Punch([]netip.AddrPort{netip.MustParseAddrPort(loopback(l.b.Node))})
	l.a.bind.cutTo(l.b.Port(), false)
	l.b.bind.cutTo(l.a.Port(), false)
	l.ab.Punch([]netip.AddrPort{netip.MustParseAddrPort(loopback(l.b.Node))})
	l.ba.Punch([]netip.AddrPort{netip.MustParseAddrPort(loopback(l.a.Node))})
	waitFor(t, 10*time.Second, "both ends on UDP", func() bool { return l.ab.Path() == PathUDP && l.ba.Path() == PathUDP })
	if l.ab.keys.current.Load() == s1 {
		t.Fatal("the punch made no new session")
	}
	// Both sides punched: two handshakes cross, and each side ends with two new
	// sessions. A datagram sent in the few milliseconds between them may go on a
	// session the other side has just let go (as in crossing rekeys); wait until both
	// are done.
	waitFor(t, 5*time.Second, "the crossing handshakes done", func() bool {
		ca, cb := l.ab.keys.current.Load(), l.ba.keys.current.Load()
		return ca.confirmed.Load() && cb.confirmed.Load() && !l.ab.Connecting() && !l.ba.Connecting()
	})
	l.exchange(t, "direct")
	if l.ab.Path() != PathUDP || l.ba.Path() != PathUDP {
		t.Fatalf("paths %s/%s after the exchange", l.ab.Path(), l.ba.Path())
	}
}

// TestPunchSendsOnlyDirectUDP: a punch's HELLOs go to the given address and the
// candidates, never through the relay.
func TestPunchSendsOnlyDirectUDP(t *testing.T) {
	l := newRelayLab(t, labOpts{timers: Limits{Tick: 20 * time.Millisecond, HandshakeRetry: time.Hour}})
	l.open(t)
	l.exchange(t, "relayed")
	relayedHellos := func() int {
		k := 0
		for _, m := range l.a.bind.ofType(wire.TypeRelay) {
			if m[wire.RelayHeaderLen] == wire.TypeHello {
				k++
			}
		}
		return k
	}
	hellos, relayed := len(l.a.bind.ofType(wire.TypeHello)), relayedHellos()
	to := netip.MustParseAddrPort(loopback(l.b.Node))
	l.ab.Punch([]netip.AddrPort{to, {}, netip.MustParseAddrPort("0.0.0.0:1")})
	if got := len(l.a.bind.ofType(wire.TypeHello)); got != hellos+1 {
		t.Fatalf("%d direct HELLOs for one usable address", got-hellos)
	}
	if relayedHellos() != relayed {
		t.Fatal("a punch went through the relay")
	}
}

// TestFallbackFromUDPToRelay: a and b talk over UDP; when UDP between them stops
// answering, a, the chooser, moves to the relay after FallbackAfter with the same
// session, b follows, and traffic keeps flowing.
func TestFallbackFromUDPToRelay(t *testing.T) {
	timers := Limits{Tick: 20 * time.Millisecond, FallbackAfter: 300 * time.Millisecond, ProbeInterval: time.Hour}
	l := newRelayLab(t, labOpts{timers: timers, direct: true})
	l.a.bind.cutTo(l.b.Port(), false)
	l.b.bind.cutTo(l.a.Port(), false)
	l.exchange(t, "direct")
	// The relay comes once the direct session is up: a chooser without a confirmed
	// session moves onto a granted relay at once (relayWithoutSession).
	l.open(t)
	if l.ab.Path() != PathUDP || l.ba.Path() != PathUDP {
		t.Fatalf("paths %s/%s with UDP working, want udp", l.ab.Path(), l.ba.Path())
	}
	s1 := l.ab.keys.current.Load()
	l.a.bind.cutTo(l.b.Port(), true)
	l.b.bind.cutTo(l.a.Port(), true)
	keepSending(t, l.a, l.b, l.ab, func() bool { return l.ab.Path() == PathRelay && l.ba.Path() == PathRelay })
	if l.ab.keys.current.Load() != s1 {
		t.Fatal("the move to the relay replaced the session")
	}
	l.exchange(t, "relayed")
	l.checkRelayedEndToEnd(t)
}

// TestRelayProbesUDPAndReturns: on the relay, the chooser probes UDP and returns to it
// when it answers again; the follower follows.
func TestRelayProbesUDPAndReturns(t *testing.T) {
	timers := Limits{Tick: 20 * time.Millisecond, FallbackAfter: 300 * time.Millisecond, ProbeInterval: 200 * time.Millisecond}
	l := newRelayLab(t, labOpts{timers: timers, direct: true})
	l.open(t)
	keepSending(t, l.a, l.b, l.ab, func() bool { return l.ab.Path() == PathRelay && l.ba.Path() == PathRelay })
	l.a.bind.cutTo(l.b.Port(), false)
	l.b.bind.cutTo(l.a.Port(), false)
	waitFor(t, 10*time.Second, "both back on UDP", func() bool { return l.ab.Path() == PathUDP && l.ba.Path() == PathUDP })
}

// TestClearRelayReturnsToDirect: without its relay path, a peer's traffic goes direct.
func TestClearRelayReturnsToDirect(t *testing.T) {
	l := newRelayLab(t, labOpts{timers: Limits{Tick: 20 * time.Millisecond}})
	l.open(t)
	l.exchange(t, "relayed")
	l.ab.ClearRelay()
	if l.ab.Path() != PathNone || l.ab.RelayVia() != nil {
		t.Fatalf("path %s via %v after ClearRelay, want none", l.ab.Path(), l.ab.RelayVia())
	}
	if m := l.a.relays.ends.Load(); m != nil && len(*m) != 0 {
		t.Fatal("the relay path is still in the table")
	}
	// r removed: the path through it goes too.
	l.b.RemovePeer("r")
	if l.ba.RelayVia() != nil {
		t.Fatal("a relay path through a removed peer")
	}
}

// TestRelayForwardAllocatesNothing: forwarding a RELAY message at the relay, and
// wrapping a frame into one at an end, allocate nothing per packet.
func TestRelayForwardAllocatesNothing(t *testing.T) {
	// No path MTU probes: AllocsPerRun counts the whole process, and the timer loops
	// seal probes (allocating, off the packet path) while the search runs.
	l := newRelayLab(t, labOpts{timers: Limits{Tick: 20 * time.Millisecond, PMTUDisable: true}, noCap: true})
	l.open(t)
	l.exchange(t, "up")
	// At the relay: a batch of RELAY messages from a's address, through receiveBatch.
	const batch = 16
	bufs, rx, eps := make([][]byte, batch), make([][]byte, batch), make([]conn.Endpoint, batch)
	sizes := make([]int, batch)
	msg := make([]byte, wire.RelayHeaderLen+wire.Overhead+1400)
	wire.PutRelayHeader(msg, l.idAB)
	wire.PutHeader(msg[wire.RelayHeaderLen:], wire.Header{Receiver: 1})
	from := *l.ra.path.udp.Load()
	for i := range bufs {
		bufs[i] = make([]byte, BufferSize)
		rx[i] = bufs[i][recvBase:]
		sizes[i] = len(msg)
	}
	in := &Inbound{Bufs: make([][]byte, batch), Sizes: make([]int, batch), Peers: make([]*Peer, batch)}
	fw := &relayFwd{frames: make([][]byte, 0, batch)}
	nonce, hsOut := new([12]byte), make([]byte, 0, 256)
	fwd := l.r.Stats().RelayForwardedPackets
	allocs := allocsPerCall(50, func() {
		for i := range bufs {
			copy(rx[i], msg)
			eps[i] = from
		}
		l.r.receiveBatch(bufs, rx, sizes, eps, in, nonce, hsOut, fw)
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per batch forwarded", allocs)
	}
	if got := l.r.Stats().RelayForwardedPackets - fwd; got < 51*batch {
		t.Fatalf("forwarded %d, want at least %d", got, 51*batch)
	}
	// At an end: wrapping a batch of sealed frames.
	e := l.ab.path.relay.Load()
	frames := make([][]byte, batch)
	for i := range frames {
		frames[i] = msg[wire.RelayHeaderLen:]
	}
	allocs = allocsPerCall(50, func() {
		if err := l.a.sendRelay(frames, e); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 && !raceEnabled {
		t.Errorf("%.1f allocations per wrapped batch", allocs)
	}
}

// Fixed ids of the fuzzed relay node's tables.
const (
	fuzzIDXY   = 0x11111111 // route x→y
	fuzzIDYX   = 0x22222222 // route y→x
	fuzzRecvID = 0x33333333 // its relay path to e, through x
	fuzzSendID = 0x44444444
)

// fuzzRelayNode is a node that is not listening, that relays between peers x and y
// (ids fuzzIDXY, fuzzIDYX) and reaches peer e through x (fuzzRecvID), every peer with
// a live session; e's has the keys of fuzzNode's session. What it sends is recorded.
func fuzzRelayNode(tb testing.TB, h Handler) (n *Node, bind *captureBind, fromX conn.Endpoint) {
	bind = &captureBind{Bind: udp.New()}
	n, err := New(Config{Seed: fixedKey(1), PrivateKey: fixedKey(2), Name: "fuzz", Handler: h, Bind: bind, RelayMaxPairs: 4})
	if err != nil {
		tb.Fatal(err)
	}
	peer := func(name, ep string, local uint32, key byte) *Peer {
		p, err := n.AddPeer(PeerConfig{Name: name, Endpoint: ep})
		if err != nil {
			tb.Fatal(err)
		}
		k := fixedKey(key)
		s, err := newSession(p, local, local+1, false, wire.CipherChaCha20Poly1305, &k, &k, time.Now())
		if err != nil {
			tb.Fatal(err)
		}
		n.index.install(s)
		p.keys.current.Store(s)
		return p
	}
	x := peer("x", "127.0.0.1:9001", 100, 0x10)
	y := peer("y", "127.0.0.1:9002", 200, 0x20)
	e, _ := n.AddPeer(PeerConfig{Name: "e"})
	k := fixedKey(0x40)
	s, err := newSession(e, 0x11223344, 0x55667788, false, wire.CipherChaCha20Poly1305, &k, &k, time.Now())
	if err != nil {
		tb.Fatal(err)
	}
	n.index.install(s)
	e.keys.current.Store(s)
	pr := &relayPair{a: x, b: y, ab: &relayRoute{id: fuzzIDXY, from: x, to: y}, ba: &relayRoute{id: fuzzIDYX, from: y, to: x}}
	n.relays.pairs = []*relayPair{pr}
	n.relays.routes.Store(&map[uint32]*relayRoute{fuzzIDXY: pr.ab, fuzzIDYX: pr.ba})
	if err := e.SetRelay(x, fuzzSendID, fuzzRecvID, false); err != nil {
		tb.Fatal(err)
	}
	return n, bind, *x.path.udp.Load()
}

// sealedForX seals a DATA frame for the fuzzed relay node's session with x.
func sealedForX(stream uint16, counter uint64, payload []byte) []byte {
	k := fixedKey(0x10)
	s, _ := newSession(nil, 101, 100, true, wire.CipherChaCha20Poly1305, &k, &k, time.Now())
	fr := make([]byte, wire.HeaderLen+len(payload), wire.HeaderLen+len(payload)+wire.TagLen)
	copy(fr[wire.HeaderLen:], payload)
	return s.seal(fr, stream, counter, new([12]byte))
}

// TestRelayPathCarriesOnlyItsPeersFrames: a frame of another peer's session (here the
// relay's own) that comes through a relay path is dropped, though it would open: it
// must not move that peer's path onto the relay path of another.
func TestRelayPathCarriesOnlyItsPeersFrames(t *testing.T) {
	h := &recordHandler{}
	n, _, from := fuzzRelayNode(t, h)
	m := make([]byte, wire.RelayHeaderLen)
	wire.PutRelayHeader(m, fuzzRecvID)
	m = append(m, sealedForX(3, 1, []byte("x's datagram through e's path"))...)
	buf := make([]byte, BufferSize)
	copy(buf[recvBase:], m)
	in := &Inbound{Bufs: make([][]byte, 1), Sizes: make([]int, 1), Peers: make([]*Peer, 1)}
	n.receiveBatch([][]byte{buf}, [][]byte{buf[recvBase:]}, []int{len(m)}, []conn.Endpoint{from}, in, new([12]byte), make([]byte, 0, 256), new(relayFwd))
	if len(h.got) != 0 || n.Stats().Drops[DropRelayWrongSource] != 1 {
		t.Fatalf("delivered %q; %d relay_wrong_source", h.got, n.Stats().Drops[DropRelayWrongSource])
	}
	if x := n.Peer("x"); x.Path() != PathUDP {
		t.Fatalf("x's path %s", x.Path())
	}
}

// FuzzRelayReceive feeds arbitrary messages from a relay end's address to a node that
// relays and is itself an end of a relay path: nothing may panic; the node forwards
// only a well-formed RELAY message of the route that end may use, exactly as it came,
// and delivers only the plaintext of a DATA frame sealed with the session of the peer
// its relay path reaches.
func FuzzRelayReceive(f *testing.F) {
	k := fixedKey(0x40)
	seal := func(stream uint16, counter uint64, payload []byte) []byte {
		s, _ := newSession(nil, 1, 0x11223344, true, wire.CipherChaCha20Poly1305, &k, &k, time.Now())
		fr := make([]byte, wire.HeaderLen+len(payload), wire.HeaderLen+len(payload)+wire.TagLen)
		copy(fr[wire.HeaderLen:], payload)
		return s.seal(fr, stream, counter, new([12]byte))
	}
	relay := func(id uint32, inner []byte) []byte {
		m := make([]byte, wire.RelayHeaderLen, wire.RelayHeaderLen+len(inner))
		wire.PutRelayHeader(m, id)
		return append(m, inner...)
	}
	data := seal(3, 7, []byte("datagram"))
	f.Add(relay(fuzzIDXY, data))
	f.Add(relay(fuzzIDYX, data))
	f.Add(relay(fuzzRecvID, data))
	f.Add(relay(fuzzRecvID, seal(0, 8, wire.AppendControl(nil, wire.CtlPing, make([]byte, 12)))))
	f.Add(relay(fuzzRecvID, relay(fuzzIDXY, data)))
	f.Add(relay(fuzzIDXY, append([]byte{wire.TypeHello, wire.Version}, make([]byte, wire.HelloLen-2)...)))
	f.Add(relay(fuzzRecvID, append([]byte{wire.TypeCookieReply}, make([]byte, wire.CookieReplyLen-1)...)))
	f.Add(relay(7, data))
	f.Add(relay(fuzzRecvID, sealedForX(3, 1, []byte("x's datagram through e's path"))))
	f.Add([]byte{wire.TypeRelay, 1, 0, 0})
	f.Fuzz(func(t *testing.T, msg []byte) {
		if len(msg) > wire.MaxMessageLen {
			return
		}
		h := &recordHandler{}
		n, bind, from := fuzzRelayNode(t, h)
		buf := make([]byte, BufferSize)
		copy(buf[recvBase:], msg)
		in := &Inbound{Bufs: make([][]byte, 1), Sizes: make([]int, 1), Peers: make([]*Peer, 1)}
		n.receiveBatch([][]byte{buf}, [][]byte{buf[recvBase:]}, []int{len(msg)}, []conn.Endpoint{from}, in, new([12]byte), make([]byte, 0, 256), new(relayFwd))
		id, inner, perr := wire.ParseRelay(msg)
		isRelay := len(msg) > 0 && msg[0] == wire.TypeRelay
		var fwd [][]byte // the end's own replies through x carry its send id; the rest are forwards
		for _, m := range bind.ofType(wire.TypeRelay) {
			if rid, _, err := wire.ParseRelay(m); err != nil || rid != fuzzSendID {
				fwd = append(fwd, m)
			}
		}
		if len(fwd) > 0 {
			if !isRelay || perr != nil || id != fuzzIDXY || len(fwd) != 1 || !bytes.Equal(fwd[0], msg) {
				t.Fatalf("forwarded %d messages for % x", len(fwd), msg)
			}
			if st := n.Stats(); st.RelayForwardedPackets+st.Drops[DropSendError] != 1 {
				t.Fatal("a forward not counted")
			}
		}
		if len(h.got) == 0 {
			return
		}
		if !isRelay {
			inner = msg // e's frames may come directly too: the session decides
		} else if perr != nil || id != fuzzRecvID {
			t.Fatalf("delivered %d datagrams from a RELAY message not of the path: % x", len(h.got), msg)
		}
		hdr, err := wire.ParseHeader(inner)
		if err != nil || hdr.Stream == wire.ControlStream {
			t.Fatalf("delivered from an inner message that is no data frame: % x", inner)
		}
		v, _ := newSession(nil, 0x11223344, 0x55667788, false, wire.CipherChaCha20Poly1305, &k, &k, time.Now())
		plain, err := v.open(bytes.Clone(inner), hdr.Counter, new([12]byte))
		if err != nil || len(h.got) != 1 || !bytes.Equal(h.got[0], plain) {
			t.Fatalf("delivered %q, want exactly the plaintext %q (%v)", h.got, plain, err)
		}
	})
}

// BenchmarkNodeToNodeRelayed is BenchmarkNodeToNode through a relay: a→r→b over
// loopback UDP, the same batches and window. Compare the two's MB/s.
func BenchmarkNodeToNodeRelayed(b *testing.B) {
	counter := &countHandler{}
	l := newRelayLab(b, labOpts{noCap: true, handlerB: counter})
	l.open(b)
	// Logs at debug level cost; this measures the data path.
	sendOne(b, l.ab, 0, []byte("warm up"))
	waitFor(b, 10*time.Second, "the warm-up datagram", func() bool { return counter.n.Load() >= 1 })
	counter.n.Store(0)
	benchSend(b, l.ab, counter)
	if l.ab.Path() != PathRelay {
		b.Fatalf("path %s", l.ab.Path())
	}
}

// benchSend sends b.N datagrams of 1420 bytes to p in batches of 64, with a window of
// 2048 not yet delivered at counter.
func benchSend(b *testing.B, p *Peer, counter *countHandler) {
	const batch = 64
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, wire.HeaderLen+1420, wire.HeaderLen+1420+wire.TagLen)
	}
	pkts := make([][]byte, batch)
	flows := make([]uint16, batch)
	b.SetBytes(1420)
	b.ReportAllocs()
	b.ResetTimer()
	sent := 0
	for sent < b.N {
		for int64(sent)-counter.n.Load() > 2048 {
			time.Sleep(50 * time.Microsecond) // a benchmark pacing itself; not a test
		}
		for i := range pkts {
			pkts[i] = bufs[i][:wire.HeaderLen+1420]
		}
		if err := p.Send(pkts, flows); err != nil {
			b.Fatal(err)
		}
		sent += batch
	}
	b.StopTimer()
	b.ReportMetric(float64(counter.n.Load())/float64(sent)*100, "%delivered")
}

// TestRelayFollowerAndChooserRules: the follower of a relay path moves onto it and
// back only on frames sent after the frame of the last move; the chooser never follows
// its peer onto the relay, and returns to UDP on any frame over UDP.
func TestRelayFollowerAndChooserRules(t *testing.T) {
	o := newOffline(t, Limits{})
	via, err := o.n.AddPeer(PeerConfig{Name: "relay", Endpoint: "127.0.0.1:10"})
	if err != nil {
		t.Fatal(err)
	}
	old, _ := o.session(t, testLocalIndex, false, time.Now(), 0x10)
	s, _ := o.session(t, testLocalIndex+1, false, time.Now(), 0x20) // a later session: larger gen
	if err := o.p.SetRelay(via, 5, 6, false); err != nil {
		t.Fatal(err)
	}
	re := o.p.path.relay.Load()
	steps := []struct {
		name    string
		relay   bool
		s       *session
		ctr     uint64
		onRelay bool // where the traffic is after the frame
	}{
		{"frame 10 through the relay", true, s, 10, true},
		{"late frame 5 over UDP", false, s, 5, true},
		{"late frame of the older session over UDP", false, old, 100, true},
		{"frame 20 over UDP", false, s, 20, false},
		{"late frame 15 through the relay", true, s, 15, false},
		{"frame 21 through the relay", true, s, 21, true},
		{"the handshake of a later session over UDP", false, nil, handshakeCtr, false},
	}
	var latest *session
	for _, st := range steps {
		ss := st.s
		if ss == nil {
			ss, _ = o.session(t, testLocalIndex+2, false, time.Now(), 0x30)
			latest = ss
		}
		var ep conn.Endpoint = re
		if !st.relay {
			ep = o.ep
		}
		o.p.learnEndpoint(ep, false, ss, st.ctr)
		if got := o.p.path.on.Load() == onRelay; got != st.onRelay {
			t.Fatalf("follower, %s: on the relay %v, want %v", st.name, got, st.onRelay)
		}
		if got := o.p.Path() == PathRelay; got != st.onRelay {
			t.Fatalf("follower, %s: Path %s", st.name, o.p.Path())
		}
	}
	// A probe through the relay moves nothing; nor does a frame of a relay path that
	// is not the peer's current one. (Both would move it: they are the latest frames.)
	o.p.learnEndpoint(re, true, latest, 1000)
	if o.p.Path() != PathUDP {
		t.Fatal("a probe through the relay moved the follower")
	}
	if err := o.p.SetRelay(via, 7, 8, false); err != nil {
		t.Fatal(err)
	}
	o.p.learnEndpoint(re, false, latest, 1001)
	if o.p.Path() != PathUDP {
		t.Fatal("a frame through a replaced relay path moved the follower")
	}
	// Through the current path it does; ClearRelay takes the traffic back to UDP, and a
	// new relay path carries nothing until a frame moves it there.
	o.p.learnEndpoint(o.p.path.relay.Load(), false, latest, 1002)
	if o.p.Path() != PathRelay {
		t.Fatal("the latest frame through the relay did not move the follower")
	}
	o.p.ClearRelay()
	if o.p.Path() != PathUDP || o.p.RelayVia() != nil {
		t.Fatalf("path %s after ClearRelay", o.p.Path())
	}
	if err := o.p.SetRelay(via, 7, 8, false); err != nil {
		t.Fatal(err)
	}
	if o.p.Path() != PathUDP {
		t.Fatal("a new relay path carries the traffic before any frame moved it")
	}

	// The chooser, with frames later than any so far, on a confirmed session (without
	// one it would move onto the relay at once: relayWithoutSession).
	latest.confirmed.Store(true)
	o.p.keys.current.Store(latest)
	if err := o.p.SetRelay(via, 7, 8, true); err != nil {
		t.Fatal(err)
	}
	re = o.p.path.relay.Load()
	o.p.learnEndpoint(re, false, latest, 2000)
	if o.p.Path() != PathUDP {
		t.Fatal("the chooser followed its peer onto the relay")
	}
	o.p.path.on.Store(onRelay)                 // as its fallback does
	o.p.learnEndpoint(o.ep, false, latest, 10) // an old frame over UDP
	if o.p.Path() != PathUDP {
		t.Fatal("the chooser stayed on the relay after a frame over UDP")
	}
}

// TestWebSocketChooserFallsBackToRelayWhenDialFails: a holds b's WebSocket URL and a
// relay path to b; UDP to b is cut and the WebSocket does not connect: a ends on the
// relay, and data flows.
func TestWebSocketChooserFallsBackToRelayWhenDialFails(t *testing.T) {
	timers := Limits{Tick: 20 * time.Millisecond, FallbackAfter: 300 * time.Millisecond, ProbeInterval: time.Hour}
	l := newRelayLab(t, labOpts{timers: timers, direct: true, wsURLB: "ws://127.0.0.1:1/stt"})
	l.open(t)
	keepSending(t, l.a, l.b, l.ab, func() bool { return l.ab.Path() == PathRelay && l.ba.Path() == PathRelay })
	l.exchange(t, "relayed")
}

// TestPunchDoesNotHoldUpTheRelay: a punch that cannot get through is in flight when the
// relay path comes; the session comes up through the relay at once, not when the punch
// gives up.
func TestPunchDoesNotHoldUpTheRelay(t *testing.T) {
	l := newRelayLab(t, labOpts{timers: Limits{Tick: 20 * time.Millisecond, FallbackAfter: 300 * time.Millisecond}, direct: true})
	l.ab.Punch([]netip.AddrPort{netip.MustParseAddrPort(loopback(l.b.Node))})
	sendOne(t, l.ab, 1, []byte("waits for a session"))
	l.open(t)
	// Well inside punchGiveUp; only the bound of a failure, it measures nothing.
	deadline := time.Now().Add(punchGiveUp / 2)
	for l.b.h.count.Load() < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("nothing through the relay while a punch was in flight; path %s", l.ab.Path())
		}
		select {
		case <-l.b.h.notify:
		case <-time.After(10 * time.Millisecond):
		}
	}
	if l.ab.Path() != PathRelay {
		t.Fatalf("path %s", l.ab.Path())
	}
}

// TestRelayedTrafficKeepsTheRelaySessionsInUse: the sessions of the ends with the relay
// carry no frame of their own while traffic is relayed, yet they are in use: peers with
// an IdleTimeout keep them open as long as relayed traffic flows.
func TestRelayedTrafficKeepsTheRelaySessionsInUse(t *testing.T) {
	idle := 400 * time.Millisecond
	l := newRelayLab(t, labOpts{timers: Limits{Tick: 20 * time.Millisecond}, idle: idle})
	l.open(t)
	end := time.Now().Add(4 * idle)
	for time.Now().Before(end) {
		l.exchange(t, "relayed")
		for _, p := range []*Peer{l.ar, l.br, l.ra, l.rb} {
			if !p.HasSession() {
				t.Fatalf("the session %s has with %s closed while relayed traffic flowed", p.node.cfg.Name, p.Name())
			}
		}
	}
	// Without the relayed traffic they close.
	waitFor(t, 10*time.Second, "idle sessions with the relay closed", func() bool { return !l.ar.HasSession() && !l.br.HasSession() })
}

// TestHandshakeThroughAnotherPeersRelayPathRefused: a relay (here, messages sent from
// its address) wraps a handshake of node c in the route of b's relay path to a. b
// answers it as any HELLO, through that path, but does not complete it: a session with c
// made through a's path would put c's traffic on it.
func TestHandshakeThroughAnotherPeersRelayPathRefused(t *testing.T) {
	l := newRelayLab(t, labOpts{timers: Limits{Tick: 20 * time.Millisecond}})
	l.open(t)
	l.exchange(t, "up")
	pc, _ := l.b.AddPeer(PeerConfig{Name: "c"})
	c, err := handshake.New(handshake.Config{Seed: l.seed, Static: randKey(t), Name: "c"})
	if err != nil {
		t.Fatal(err)
	}
	toB, _ := l.r.bind.ParseEndpoint(loopback(l.b.Node))
	fromR := func(inner []byte) {
		m := make([]byte, wire.RelayHeaderLen, wire.RelayHeaderLen+len(inner))
		wire.PutRelayHeader(m, l.idAB)
		if err := l.r.bind.Bind.Send([][]byte{append(m, inner...)}, toB); err != nil {
			t.Fatal(err)
		}
	}
	ini, hello, err := c.Initiate(99, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	challenges := func() (cs [][]byte) {
		for _, m := range l.b.bind.ofType(wire.TypeRelay) {
			if m[wire.RelayHeaderLen] == wire.TypeChallenge {
				cs = append(cs, m[wire.RelayHeaderLen:])
			}
		}
		return cs
	}
	had := len(challenges()) // b's answer to a's handshake
	fromR(hello)
	var challenge []byte
	waitFor(t, 5*time.Second, "b's CHALLENGE through the relay", func() bool {
		if cs := challenges(); len(cs) > had {
			challenge = cs[len(cs)-1]
			return true
		}
		return false
	})
	if _, err := ini.ReadChallenge(challenge); err != nil {
		t.Fatal(err)
	}
	auth, _, err := ini.WriteAuthProof(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	before := l.b.Stats().Drops[DropRelayWrongSource]
	fromR(auth)
	waitFor(t, 5*time.Second, "the AUTH_PROOF refused", func() bool { return l.b.Stats().Drops[DropRelayWrongSource] > before })
	if pc.HasSession() || pc.Path() != PathNone {
		t.Fatalf("b made a session with c through a's relay path (path %s)", pc.Path())
	}
	l.exchange(t, "a unaffected")
}
