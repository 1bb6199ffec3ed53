package tunnel

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/stt"
	"github.com/stt-tun/stt-tun/stt/mesh"
)

// natTrio starts three members of one mesh on loopback: relay (relay = true) and a
// and b, which know it as their bootstrap, and waits until relay has a session with
// both.
func natTrio(t *testing.T) (relay, a, b *rvNode) {
	t.Helper()
	seed, _ := config.GenerateSeed()
	relay = startMeshNodeIn(t, seed, "relay", "10.77.0.1/24", "relay = true")
	boot := fmt.Sprintf("bootstrap = [%q]", endpointOf(relay.memNode))
	a = startMeshNodeIn(t, seed, "alpha", "10.77.0.2/24", boot)
	b = startMeshNodeIn(t, seed, "beta", "10.77.0.3/24", boot)
	for _, n := range []*rvNode{a, b} {
		key := n.t.Node().PublicKey()
		waitUntil(t, "relay has a session with "+n.cfg.Interface.NodeName, func() bool {
			p := relay.t.mesh.memberPeer(key)
			return p != nil && p.sp.HasSession()
		})
	}
	// alpha and beta learn each other through relay's gossip: by a push, or by the
	// next exchange, mesh.DefaultInterval later (the 10 s of waitUntil are not enough).
	aKey, bKey := a.t.Node().PublicKey(), b.t.Node().PublicKey()
	deadline := time.Now().Add(3 * mesh.DefaultInterval)
	for a.t.mesh.memberPeer(bKey) == nil || b.t.mesh.memberPeer(aKey) == nil {
		if time.Now().After(deadline) {
			t.Fatal("alpha and beta did not learn each other through relay")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return relay, a, b
}

func natCounter(n *rvNode, name string) uint64 {
	for _, e := range n.t.natEvents() {
		if e.name == name {
			return e.n
		}
	}
	panic("no NAT counter " + name)
}

// TestNATMessagesAboutNonMembersGetNothing: a punch or relay request naming a key
// that is no member, or coming from a key that is none, is ignored and counted; the
// relay opens no route and coordinates no punch.
func TestNATMessagesAboutNonMembersGetNothing(t *testing.T) {
	relay, a, _ := natTrio(t)
	aKey := a.t.Node().PublicKey()
	spA := relay.t.mesh.memberPeer(aKey).sp
	stranger := newIdentity(t).Public
	before := natCounter(relay, "nat_messages_ignored")

	relay.t.natMessage(spA, aKey, mesh.TypePunchRequest, mesh.AppendKey(nil, stranger), spA.UDPEndpoint(), false)
	relay.t.natMessage(spA, stranger, mesh.TypePunchRequest, mesh.AppendKey(nil, aKey), spA.UDPEndpoint(), false)
	relay.t.natMessage(spA, stranger, mesh.TypeRelayRequest, mesh.AppendKey(nil, aKey), spA.UDPEndpoint(), false)
	relay.t.natMessage(spA, aKey, mesh.TypePunchRequest, []byte{1, 2, 3}, spA.UDPEndpoint(), false)

	if got := natCounter(relay, "nat_messages_ignored") - before; got != 4 {
		t.Errorf("%d NAT messages counted as ignored, want 4", got)
	}
	if n := natCounter(relay, "punches_coordinated"); n != 0 {
		t.Errorf("%d punches coordinated for a non-member", n)
	}
	// A relay request about a stranger is answered with a refusal, and opens nothing.
	relay.t.natMessage(spA, aKey, mesh.TypeRelayRequest, mesh.AppendKey(nil, stranger), spA.UDPEndpoint(), false)
	if natCounter(relay, "relay_refused") != 1 || natCounter(relay, "relay_granted") != 0 || relay.t.Node().Stats().RelayRoutes != 0 {
		t.Errorf("relay request about a non-member: refused %d, granted %d, routes %d; want 1, 0, 0",
			natCounter(relay, "relay_refused"), natCounter(relay, "relay_granted"), relay.t.Node().Stats().RelayRoutes)
	}
}

// TestNATCoordinatorAnswersOncePerPairPerInterval: a member repeating its punch
// request gets one coordinated punch per coordinateEvery, so a member cannot make a
// coordinator send PUNCH messages at the rate it sends requests.
func TestNATCoordinatorAnswersOncePerPairPerInterval(t *testing.T) {
	relay, a, b := natTrio(t)
	aKey, bKey := a.t.Node().PublicKey(), b.t.Node().PublicKey()
	spA := relay.t.mesh.memberPeer(aKey).sp
	waitUntil(t, "alpha and beta know each other", func() bool {
		return a.t.mesh.memberPeer(bKey) != nil && b.t.mesh.memberPeer(aKey) != nil
	})
	// (Nothing else asks: no traffic wants beta at alpha, and a dial for a gossip
	// neighbour makes no punch request.)
	before := natCounter(relay, "punches_coordinated")
	for range 5 {
		relay.t.natMessage(spA, aKey, mesh.TypePunchRequest, mesh.AppendKey(nil, bKey), spA.UDPEndpoint(), false)
	}
	if n := natCounter(relay, "punches_coordinated") - before; n != 1 {
		t.Errorf("%d punches coordinated for 5 requests at once, want 1", n)
	}
	// Another pair is limited on its own.
	spB := relay.t.mesh.memberPeer(bKey).sp
	before = natCounter(relay, "punches_coordinated")
	relay.t.natMessage(spB, bKey, mesh.TypePunchRequest, mesh.AppendKey(nil, relayKeyOf(relay)), spB.UDPEndpoint(), false)
	if n := natCounter(relay, "punches_coordinated") - before; n != 0 {
		t.Errorf("a punch with the coordinator itself was coordinated")
	}
}

func relayKeyOf(n *rvNode) [32]byte { return n.t.Node().PublicKey() }

// TestNATRelayOnlyByARelay: a node without relay = true refuses relay requests, and a
// member does not take a relay path from a member whose record does not offer relaying.
func TestNATRelayOnlyByARelay(t *testing.T) {
	relay, a, b := natTrio(t)
	aKey, bKey := a.t.Node().PublicKey(), b.t.Node().PublicKey()
	relayKey := relay.t.Node().PublicKey()

	// alpha is no relay: a request to it is refused, and counted.
	waitUntil(t, "alpha knows beta and relay", func() bool {
		return a.t.mesh.memberPeer(bKey) != nil && a.t.mesh.memberPeer(relayKey) != nil
	})
	spR := a.t.mesh.memberPeer(relayKey).sp
	a.t.natMessage(spR, relayKey, mesh.TypeRelayRequest, mesh.AppendKey(nil, bKey), spR.UDPEndpoint(), false)
	if natCounter(a, "relay_refused") != 1 || a.t.Node().Stats().RelayRoutes != 0 {
		t.Errorf("a node that does not relay: refused %d, routes %d; want 1, 0", natCounter(a, "relay_refused"), a.t.Node().Stats().RelayRoutes)
	}

	// beta offers no relaying: its grant for a path to relay is ignored by alpha.
	waitUntil(t, "alpha has beta's record", func() bool { return a.t.mesh.eng.Member(bKey) != nil })
	spB := a.t.mesh.memberPeer(bKey).sp
	grant, err := mesh.AppendRelayGrant(nil, mesh.RelayGrant{Peer: relayKey, SendID: 7, RecvID: 8})
	if err != nil {
		t.Fatal(err)
	}
	before := natCounter(a, "nat_messages_ignored")
	a.t.natMessage(spB, bKey, mesh.TypeRelayGrant, grant, spB.UDPEndpoint(), false)
	if natCounter(a, "nat_messages_ignored") != before+1 || natCounter(a, "relay_paths_installed") != 0 {
		t.Errorf("a grant from a member that does not relay was taken")
	}
	if via := a.t.mesh.memberPeer(relayKey).sp.RelayVia(); via != nil {
		t.Errorf("alpha's path to relay goes via %s", via.Name())
	}
	_ = aKey
}

// TestNATGrantFromAnUnaskedRelayDoesNotReplaceTheChosenOne: a member whose record
// offers relaying, but which this node did not ask, cannot take over the relay path
// this node chose for a member: its RELAY_GRANT is ignored and counted. (Taken, it
// would replace the path at once, and a node on the relay would send its frames for
// the member to that member: a session redirected to a relay nobody asked.)
func TestNATGrantFromAnUnaskedRelayDoesNotReplaceTheChosenOne(t *testing.T) {
	relay, a, b := natTrio(t)
	boot := fmt.Sprintf("bootstrap = [%q]", endpointOf(relay.memNode))
	mallory := startMeshNodeIn(t, relay.seed, "mallory", "10.77.0.9/24", "relay = true\n"+boot)
	bKey, relayKey, mKey := b.t.Node().PublicKey(), relayKeyOf(relay), mallory.t.Node().PublicKey()
	waitUntil(t, "alpha knows beta, relay and mallory, both relays by their records", func() bool {
		r, m := a.t.mesh.eng.Member(relayKey), a.t.mesh.eng.Member(mKey)
		return a.t.mesh.memberPeer(bKey) != nil && a.t.mesh.memberPeer(relayKey) != nil &&
			a.t.mesh.memberPeer(mKey) != nil && r != nil && r.Relay && m != nil && m.Relay
	})
	spR, spM := a.t.mesh.memberPeer(relayKey).sp, a.t.mesh.memberPeer(mKey).sp
	// A session with beta, so that alpha's mesh loop keeps its traversal state.
	spB := a.t.mesh.memberPeer(bKey).sp
	spB.Connect()
	waitUntil(t, "alpha has a session with beta", spB.HasSession)

	// alpha asked relay for a route to beta (as natTick does), and relay granted it.
	nt := a.t.mesh.nat
	nt.mu.Lock()
	tr := nt.travels[bKey]
	if tr == nil {
		tr = &travel{since: time.Now(), nextPunch: time.Now().Add(time.Hour)}
		nt.travels[bKey] = tr
	}
	tr.relayKey, tr.asked, tr.relayAsked, tr.installed = relayKey, relayKey, time.Now(), false
	nt.mu.Unlock()
	grant := func(id uint32) []byte {
		g, err := mesh.AppendRelayGrant(nil, mesh.RelayGrant{Peer: bKey, SendID: id, RecvID: id + 1})
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	a.t.natMessage(spR, relayKey, mesh.TypeRelayGrant, grant(5), spR.UDPEndpoint(), false)
	if n := natCounter(a, "relay_paths_installed"); n != 1 {
		t.Fatalf("the asked relay's grant: %d paths installed, want 1", n)
	}

	// mallory, never asked, grants a route to beta too.
	ignored := natCounter(a, "nat_messages_ignored")
	a.t.natMessage(spM, mKey, mesh.TypeRelayGrant, grant(7), spM.UDPEndpoint(), false)
	if n := natCounter(a, "relay_paths_installed"); n != 1 {
		t.Errorf("an unasked relay's grant was installed over the chosen one (%d paths installed)", n)
	}
	if natCounter(a, "nat_messages_ignored") != ignored+1 {
		t.Error("the unasked grant was not counted as ignored")
	}
	nt.mu.Lock()
	via := nt.travels[bKey].relayKey
	nt.mu.Unlock()
	if via != relayKey {
		t.Error("alpha's relay for beta is now mallory")
	}
}

// TestNATNoRelayForAMemberWithoutData: a member this node dials only to gossip with
// it (a neighbour) and cannot reach directly gets punch requests but no relay request:
// a route pair costs a slot of the relay's and of both members' shares, and gossip
// has other neighbours. Once datagrams wait for it, it gets one.
func TestNATNoRelayForAMemberWithoutData(t *testing.T) {
	relay, a, _ := natTrio(t)
	relayKey := relayKeyOf(relay)
	waitRelayRecord(t, a, relayKey)
	// A member whose only address answers nothing: alpha's dials to it stay in flight.
	silent := offerDeaf(t, a, "silent")
	var sp *stt.Peer
	waitUntil(t, "alpha dials silent as a gossip neighbour", func() bool {
		if p := a.t.mesh.memberPeer(silent); p != nil {
			sp = p.sp
		}
		return sp != nil && sp.Connecting()
	})

	// Well past relayAfter, no relay request for it.
	before := natCounter(a, "relay_requests_sent")
	a.t.natTick(time.Now().Add(10 * time.Second))
	a.t.natTick(time.Now().Add(20 * time.Second))
	if n := natCounter(a, "relay_requests_sent") - before; n != 0 {
		t.Errorf("%d relay requests for a member alpha has no data for", n)
	}

	// Data for it: now it is worth a route.
	if err := sp.Send([][]byte{make([]byte, 40, 80)}, []uint16{1}); err != nil {
		t.Fatal(err)
	}
	// Wanted from now: the relay request comes relayAfter later.
	a.t.natTick(time.Now().Add(40 * time.Second))
	a.t.natTick(time.Now().Add(40*time.Second + relayAfter))
	if n := natCounter(a, "relay_requests_sent") - before; n == 0 {
		t.Error("no relay request for a member with datagrams waiting")
	}
}

// silentMember offers n a member whose only address answers nothing, queues a datagram
// for it (so that traffic wants it), and returns its key and peer.
func silentMember(t *testing.T, n *rvNode) ([32]byte, *stt.Peer) {
	t.Helper()
	silent := offerDeaf(t, n, "silent")
	var sp *stt.Peer
	waitUntil(t, "the silent member's peer", func() bool {
		if p := n.t.mesh.memberPeer(silent); p != nil {
			sp = p.sp
		}
		return sp != nil
	})
	if err := sp.Send([][]byte{make([]byte, 40, 80)}, []uint16{1}); err != nil {
		t.Fatal(err)
	}
	return silent, sp
}

// deafAddr is a UDP address on loopback that receives and never answers.
func deafAddr(t *testing.T) netip.AddrPort {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// offerDeaf gives n the record of a new member named name whose only candidate is a
// deafAddr, and returns its key.
func offerDeaf(t *testing.T, n *rvNode, name string) [32]byte {
	t.Helper()
	f := newForged(t)
	f.offer(t, n, mesh.Record{Name: name, Endpoints: []mesh.Endpoint{{Kind: mesh.EndpointLocal, Addr: deafAddr(t)}}})
	return f.id.Public
}

// waitRelayRecord waits until n holds the record of the member with key, offering relaying.
func waitRelayRecord(t *testing.T, n *rvNode, key [32]byte) {
	t.Helper()
	waitUntil(t, "the relay's record, offering relaying", func() bool {
		r := n.t.mesh.eng.Member(key)
		return r != nil && r.Relay
	})
}

// grantAsChooser makes n's traversal state say it asked relay for a route to target,
// and hands n relay's grant of it.
func grantAsChooser(t *testing.T, n *rvNode, relayKey, target [32]byte, sendID uint32) {
	t.Helper()
	nt := n.t.mesh.nat
	nt.mu.Lock()
	tr := nt.travels[target]
	if tr == nil {
		tr = &travel{since: time.Now(), nextPunch: time.Now().Add(time.Hour)}
		nt.travels[target] = tr
	}
	tr.relayKey, tr.asked, tr.relayAsked, tr.installed = relayKey, relayKey, time.Now(), false
	nt.mu.Unlock()
	g, err := mesh.AppendRelayGrant(nil, mesh.RelayGrant{Peer: target, SendID: sendID, RecvID: sendID + 1})
	if err != nil {
		t.Fatal(err)
	}
	before := natCounter(n, "relay_paths_installed")
	spR := n.t.mesh.memberPeer(relayKey).sp
	n.t.natMessage(spR, relayKey, mesh.TypeRelayGrant, g, spR.UDPEndpoint(), false)
	if natCounter(n, "relay_paths_installed") != before+1 {
		t.Fatal("the grant was not installed")
	}
}

// TestNATRelayThatNeverCarriesTheHandshakeIsAskedAgain: a granted relay path on which
// no session ever comes up (the relay forgot the route, or lost the other end) is given
// up and a relay asked again: without a session nothing counts as unanswered, and
// punches wait while a relayed handshake is in flight, so the member stayed unreachable
// for as long as traffic wanted it.
func TestNATRelayThatNeverCarriesTheHandshakeIsAskedAgain(t *testing.T) {
	relay, a, _ := natTrio(t)
	relayKey := relayKeyOf(relay)
	waitRelayRecord(t, a, relayKey)
	key, sp := silentMember(t, a)
	// relay "grants" a route it never opened: the handshake through it goes nowhere.
	grantAsChooser(t, a, relayKey, key, 5)
	if sp.RelayVia() == nil {
		t.Fatal("the chooser without a session is not on the relay")
	}
	before := natCounter(a, "relay_requests_sent")
	for _, d := range []time.Duration{20, 40, 60} {
		a.t.natTick(time.Now().Add(d * time.Second))
	}
	if sp.HasSession() {
		t.Fatal("a session with the silent member")
	}
	if natCounter(a, "relay_requests_sent") == before {
		t.Error("a relay path that never carried a session was kept for a minute; no relay asked again")
	}
}

// TestNATRelayThatLeftIsReplaced: when the relay member of a member's route is
// forgotten (it left, its record expired), the route goes with it, and the next relay
// is asked at the next tick, not never.
func TestNATRelayThatLeftIsReplaced(t *testing.T) {
	relay, a, _ := natTrio(t)
	boot := fmt.Sprintf("bootstrap = [%q]", endpointOf(relay.memNode))
	other := startMeshNodeIn(t, relay.seed, "other", "10.77.0.8/24", "relay = true\n"+boot)
	relayKey, otherKey := relayKeyOf(relay), relayKeyOf(other)
	waitUntil(t, "alpha has both relays' records", func() bool {
		r, o := a.t.mesh.eng.Member(relayKey), a.t.mesh.eng.Member(otherKey)
		return r != nil && r.Relay && o != nil && o.Relay && a.t.mesh.memberPeer(otherKey) != nil
	})
	spO := a.t.mesh.memberPeer(otherKey).sp
	spO.Connect()
	waitUntil(t, "alpha has a session with the other relay", spO.HasSession)
	key, sp := silentMember(t, a)
	grantAsChooser(t, a, relayKey, key, 5)

	// relay leaves alpha's view: its peer goes, and the route through it.
	m := a.t.mesh
	m.mu.Lock()
	mb := m.members[relayKey]
	a.t.forgetMemberLocked(mb)
	mb.p = nil
	m.mu.Unlock()
	if sp.RelayVia() != nil {
		t.Fatal("a route through a removed peer")
	}
	nt := m.nat
	before := natCounter(a, "relay_requests_sent")
	a.t.natTick(time.Now().Add(relayRetry))
	nt.mu.Lock()
	var asked [32]byte
	if tr := nt.travels[key]; tr != nil {
		asked = tr.relayKey
	}
	nt.mu.Unlock()
	if natCounter(a, "relay_requests_sent") == before || asked != otherKey {
		t.Error("the relay that left was not replaced by the other relay")
	}
}

// TestNATRelayAnswersOncePerPairPerInterval: a member repeating its relay request gets
// one grant per coordinateEvery: each grant goes to the target too, a third party, so
// an unbounded answer let any member make a relay send a member RELAY_GRANTs (each a
// path installed and logged there) at the rate it sends requests.
func TestNATRelayAnswersOncePerPairPerInterval(t *testing.T) {
	relay, a, b := natTrio(t)
	aKey, bKey := a.t.Node().PublicKey(), b.t.Node().PublicKey()
	spA := relay.t.mesh.memberPeer(aKey).sp
	waitUntil(t, "relay has alpha's and beta's records", func() bool {
		return relay.t.mesh.eng.Member(aKey) != nil && relay.t.mesh.eng.Member(bKey) != nil
	})
	before := natCounter(relay, "relay_granted")
	for range 5 {
		relay.t.natMessage(spA, aKey, mesh.TypeRelayRequest, mesh.AppendKey(nil, bKey), spA.UDPEndpoint(), false)
	}
	if n := natCounter(relay, "relay_granted") - before; n != 1 {
		t.Errorf("%d grants for 5 requests at once, want 1", n)
	}
	if relay.t.Node().Stats().RelayRoutes != 1 {
		t.Errorf("%d route pairs, want 1", relay.t.Node().Stats().RelayRoutes)
	}
}

// TestNATKeepaliveOpensNoSessions: with idle_timeout = "0s" (sessions kept open) a node
// behind NAT (or that does not know its NAT yet) still dials only its neighbours: the
// NAT keepalive holds the mappings of the sessions it has, it does not open one with
// every member it knows (a persistent keepalive on a peer that never closes when idle
// brings a session up).
func TestNATKeepaliveOpensNoSessions(t *testing.T) {
	n := startMeshNode(t, "alpha", "10.77.0.1/24", "accept_prefixes = [\"10.77.0.0/24\"]\nidle_timeout = \"0s\"")
	if n.t.natKeepalive() == 0 {
		t.Fatal("no NAT keepalive on a node that does not know its NAT")
	}
	const k = 8
	victims := silentMembersDialled(t, n, k, 3*meshTick)
	if len(victims) > meshNeighbours {
		t.Fatalf("HELLOs went to %d of %d members within %v; only neighbours (%d) are dialled", len(victims), k, 3*meshTick, meshNeighbours)
	}
}

// TestNATAskedRelayGrantsAsChooserAfterAnotherRelaysGrant: both ends asked, each a
// different relay, and the other end's relay's grant (a follower's) arrives first: the
// grant of the relay this node asked still makes it the chooser. (It made it a
// follower: the first grant took the place of the relay asked, and two followers
// never move onto a relay.)
func TestNATAskedRelayGrantsAsChooserAfterAnotherRelaysGrant(t *testing.T) {
	relay, a, b := natTrio(t)
	boot := fmt.Sprintf("bootstrap = [%q]", endpointOf(relay.memNode))
	other := startMeshNodeIn(t, relay.seed, "other", "10.77.0.8/24", "relay = true\n"+boot)
	bKey, relayKey, otherKey := b.t.Node().PublicKey(), relayKeyOf(relay), relayKeyOf(other)
	waitUntil(t, "alpha has beta's and both relays' records", func() bool {
		r, o := a.t.mesh.eng.Member(relayKey), a.t.mesh.eng.Member(otherKey)
		return r != nil && r.Relay && o != nil && o.Relay && a.t.mesh.memberPeer(otherKey) != nil && a.t.mesh.memberPeer(bKey) != nil
	})
	spB := a.t.mesh.memberPeer(bKey).sp
	spB.Connect()
	waitUntil(t, "alpha has a session with beta", spB.HasSession)
	nt := a.t.mesh.nat
	nt.mu.Lock()
	tr := nt.travels[bKey]
	if tr == nil {
		tr = &travel{since: time.Now(), nextPunch: time.Now().Add(time.Hour)}
		nt.travels[bKey] = tr
	}
	tr.relayKey, tr.asked, tr.relayAsked, tr.installed = relayKey, relayKey, time.Now(), false // alpha asked relay
	nt.mu.Unlock()
	grant := func(from [32]byte, id uint32) {
		g, err := mesh.AppendRelayGrant(nil, mesh.RelayGrant{Peer: bKey, SendID: id, RecvID: id + 1})
		if err != nil {
			t.Fatal(err)
		}
		sp := a.t.mesh.memberPeer(from).sp
		a.t.natMessage(sp, from, mesh.TypeRelayGrant, g, sp.UDPEndpoint(), false)
	}
	grant(otherKey, 7) // beta asked other: alpha follows there
	grant(relayKey, 5) // alpha's own relay answers
	nt.mu.Lock()
	granted, via := tr.granted, tr.relayKey
	nt.mu.Unlock()
	if !granted || via != relayKey {
		t.Errorf("after its own relay's grant alpha is chooser %v on %v, want the chooser on relay", granted, via == relayKey)
	}
}

// TestNATBothEndsAskTheSameRelay: the relay a node asks for a member is the one the
// member, asking for this node at the same time, asks too — the first of a ranking of
// the relays that depends on the pair only — not the first its map happens to give.
func TestNATBothEndsAskTheSameRelay(t *testing.T) {
	relay, a, _ := natTrio(t)
	boot := fmt.Sprintf("bootstrap = [%q]", endpointOf(relay.memNode))
	other := startMeshNodeIn(t, relay.seed, "other", "10.77.0.8/24", "relay = true\n"+boot)
	relayKey, otherKey := relayKeyOf(relay), relayKeyOf(other)
	waitUntil(t, "alpha has both relays' records", func() bool {
		r, o := a.t.mesh.eng.Member(relayKey), a.t.mesh.eng.Member(otherKey)
		return r != nil && r.Relay && o != nil && o.Relay && a.t.mesh.memberPeer(otherKey) != nil
	})
	spO := a.t.mesh.memberPeer(otherKey).sp
	spO.Connect()
	waitUntil(t, "alpha has a session with the other relay", spO.HasSession)
	waitUntil(t, "alpha's mesh loop took both relays' records", func() bool {
		m := a.t.mesh
		m.mu.Lock()
		defer m.mu.Unlock()
		return isRelay(m.members[relayKey]) && isRelay(m.members[otherKey])
	})
	// Members with datagrams waiting that alpha cannot reach directly.
	var keys [][32]byte
	for i := range 6 {
		keys = append(keys, offerDeaf(t, a, fmt.Sprintf("far%d", i)))
	}
	for _, k := range keys {
		waitUntil(t, "the member's peer", func() bool { return a.t.mesh.memberPeer(k) != nil })
		sp := a.t.mesh.memberPeer(k).sp
		if err := sp.Send([][]byte{make([]byte, 40, 80)}, []uint16{1}); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, "the handshake for the datagram", sp.Connecting)
	}
	self := a.t.Node().PublicKey()
	a.t.natTick(time.Now().Add(time.Minute))
	a.t.natTick(time.Now().Add(time.Minute + relayAfter))
	nt := a.t.mesh.nat
	nt.mu.Lock()
	defer nt.mu.Unlock()
	for i, k := range keys {
		want := relayKey
		if relayRank(self, k, otherKey) < relayRank(self, k, relayKey) {
			want = otherKey
		}
		if rank := relayRank(k, self, want); rank != relayRank(self, k, want) {
			t.Fatal("the ranking is not the same at both ends")
		}
		// tr.asked, not tr.relayAsked: the relay answers the ask (it refuses, having no
		// session with a deaf member), and a refusal that came back before this check
		// clears relayAsked so that the next tick asks again.
		tr := nt.travels[k]
		if tr == nil || tr.asked == ([32]byte{}) {
			sp := a.t.mesh.memberPeer(k).sp
			t.Fatalf("far%d: no relay asked (travel %v, connecting %v, waiting %v, session %v)", i, tr != nil, sp.Connecting(), sp.Waiting(), sp.HasSession())
		}
		if tr.asked != want {
			t.Errorf("far%d: asked the relay its peer would not ask first", i)
		}
	}
}

// TestNATTraversalStateOfAForgottenMemberGoes: the traversal state of a member that is
// no longer one (it left, its record expired) goes at the next tick: it was only ever
// dropped for a member still listed, so members that came and went piled up.
func TestNATTraversalStateOfAForgottenMemberGoes(t *testing.T) {
	_, a, _ := natTrio(t)
	gone := newIdentity(t).Public
	nt := a.t.mesh.nat
	nt.mu.Lock()
	nt.travels[gone] = &travel{since: time.Now(), installed: true}
	nt.mu.Unlock()
	a.t.natTick(time.Now())
	nt.mu.Lock()
	_, kept := nt.travels[gone]
	nt.mu.Unlock()
	if kept {
		t.Error("the traversal state of a key that is no member was kept")
	}
}

// TestNATFollowerKeepsAFreshRouteUntilTheHandshakeComes: a member granted a route by
// the relay another member asked (a follower), with no session with that member yet and
// no traffic for it, keeps the route while the asker's handshake through the relay is
// on its way: it dropped it at its next tick and told the relay to close it, so the
// asker's handshake found no route whenever that tick came first. A route that has
// carried no session for relayHandshakeWait goes.
func TestNATFollowerKeepsAFreshRouteUntilTheHandshakeComes(t *testing.T) {
	relay, a, _ := natTrio(t)
	relayKey := relayKeyOf(relay)
	waitRelayRecord(t, a, relayKey)
	key := offerDeaf(t, a, "asker")
	waitUntil(t, "the asker's peer", func() bool { return a.t.mesh.memberPeer(key) != nil })
	g, err := mesh.AppendRelayGrant(nil, mesh.RelayGrant{Peer: key, SendID: 9, RecvID: 10})
	if err != nil {
		t.Fatal(err)
	}
	spR := a.t.mesh.memberPeer(relayKey).sp
	a.t.natMessage(spR, relayKey, mesh.TypeRelayGrant, g, spR.UDPEndpoint(), false)
	has := func() bool {
		nt := a.t.mesh.nat
		nt.mu.Lock()
		defer nt.mu.Unlock()
		tr := nt.travels[key]
		return tr != nil && tr.installed
	}
	if !has() {
		t.Fatal("the follower's grant was not installed")
	}
	a.t.natTick(time.Now())
	if !has() {
		t.Fatal("the follower dropped the route the asker's handshake is coming by")
	}
	a.t.natTick(time.Now().Add(relayHandshakeWait + time.Second))
	if has() {
		t.Error("a route that carried no session for relayHandshakeWait was kept")
	}
}

// TestNATRelayThatFailedIsAskedLast: when the route of the relay asked first gives
// nothing (no session through it), the next request goes to another relay, though the
// first still has a session with this node and still ranks first.
func TestNATRelayThatFailedIsAskedLast(t *testing.T) {
	relay, a, _ := natTrio(t)
	boot := fmt.Sprintf("bootstrap = [%q]", endpointOf(relay.memNode))
	other := startMeshNodeIn(t, relay.seed, "other", "10.77.0.8/24", "relay = true\n"+boot)
	relayKey, otherKey := relayKeyOf(relay), relayKeyOf(other)
	waitUntil(t, "alpha has both relays' records", func() bool {
		r, o := a.t.mesh.eng.Member(relayKey), a.t.mesh.eng.Member(otherKey)
		return r != nil && r.Relay && o != nil && o.Relay && a.t.mesh.memberPeer(otherKey) != nil
	})
	spO := a.t.mesh.memberPeer(otherKey).sp
	spO.Connect()
	waitUntil(t, "alpha has a session with the other relay", spO.HasSession)
	waitUntil(t, "alpha's mesh loop took both relays' records", func() bool {
		m := a.t.mesh
		m.mu.Lock()
		defer m.mu.Unlock()
		return isRelay(m.members[relayKey]) && isRelay(m.members[otherKey])
	})
	key, sp := silentMember(t, a)
	waitUntil(t, "the handshake for the datagram", sp.Connecting)
	self := a.t.Node().PublicKey()
	first, second := relayKey, otherKey
	if relayRank(self, key, otherKey) < relayRank(self, key, relayKey) {
		first, second = otherKey, relayKey
	}
	grantAsChooser(t, a, first, key, 5) // a route that carries nothing
	nt := a.t.mesh.nat
	a.t.natTick(time.Now().Add(relayHandshakeWait + time.Second))
	nt.mu.Lock()
	asked := nt.travels[key].asked
	nt.mu.Unlock()
	if asked != second {
		t.Errorf("after the first relay's route carried nothing, asked the same relay again (%v), want the other", asked == first)
	}
}

// TestNATRelayRefusedForNoSessionIsAskedAgainSoon: a relay that refuses because it has
// no session with the target yet is asked again after relayRetry, not barred for
// relayRefusedFor as for the other reasons: the target, behind NAT, dials a relay
// itself and is there a moment later. (Barred for 30 s, a member whose only relay had
// refused that way had no path for 30 s.)
func TestNATRelayRefusedForNoSessionIsAskedAgainSoon(t *testing.T) {
	relay, a, b := natTrio(t)
	bKey, relayKey := b.t.Node().PublicKey(), relay.t.Node().PublicKey()
	waitUntil(t, "alpha knows relay", func() bool { return a.t.mesh.memberPeer(relayKey) != nil })
	spR := a.t.mesh.memberPeer(relayKey).sp
	nt := a.t.mesh.nat
	for _, x := range []struct {
		reason uint8
		want   time.Duration
	}{{mesh.RefuseNoSession, relayRetry}, {mesh.RefuseFull, relayRefusedFor}, {mesh.RefuseShareFull, relayRefusedFor}} {
		tr := &travel{since: time.Now(), relayKey: relayKey, asked: relayKey, relayAsked: time.Now()}
		nt.mu.Lock()
		nt.travels[bKey] = tr
		nt.mu.Unlock()
		body, err := mesh.AppendRelayRefused(nil, mesh.RelayRefused{Target: bKey, Reason: x.reason})
		if err != nil {
			t.Fatal(err)
		}
		before := time.Now()
		a.t.natMessage(spR, relayKey, mesh.TypeRelayRefused, body, spR.UDPEndpoint(), false)
		nt.mu.Lock()
		until, asked := tr.refused[relayKey], tr.relayAsked
		nt.mu.Unlock()
		if got := until.Sub(before); got < x.want || got > x.want+time.Second {
			t.Errorf("refused for reason %d: relay not asked again for %v, want %v", x.reason, got, x.want)
		}
		if !asked.IsZero() {
			t.Errorf("refused for reason %d: the next relay is not asked at the next tick", x.reason)
		}
	}
}

// TestNATMemberStaysWantedThroughTheHandshake: a member found wanted stays wanted for
// wantGrace, though nothing in its state says so for a moment: the queued datagrams that
// made it wanted are sent when the handshake completes, and the session counts only
// once the member confirms it. A tick in that moment dropped the relay route and the
// relayed session never came up.
func TestNATMemberStaysWantedThroughTheHandshake(t *testing.T) {
	now := time.Now()
	var none *travel
	for _, x := range []struct {
		name             string
		tr               *travel
		wanted, isDirect bool
		want             bool
	}{
		{"wanted now", none, true, false, true},
		{"not in traversal", none, false, false, false},
		{"wanted a second ago", &travel{lastWant: now.Add(-time.Second)}, false, false, true},
		{"wanted long ago", &travel{lastWant: now.Add(-wantGrace)}, false, false, false},
		{"direct now", &travel{lastWant: now.Add(-time.Second)}, false, true, false},
	} {
		if got := x.tr.stillWanted(x.wanted, x.isDirect, now); got != x.want {
			t.Errorf("%s: wanted %v, want %v", x.name, got, x.want)
		}
	}
}

// TestNATPunchAboutAMemberNotKnownYetIsHeld: a PUNCH about a member whose record has not
// reached this node yet (a new member: records spread by anti-entropy rounds, 10 s) is
// kept, the sender is asked for the record, and the punch starts when the record comes.
// Dropped, the punch waited for the next request, and a relay's grant was lost.
func TestNATPunchAboutAMemberNotKnownYetIsHeld(t *testing.T) {
	relay, a, _ := natTrio(t)
	relayKey := relayKeyOf(relay)
	waitUntil(t, "alpha knows relay", func() bool { return a.t.mesh.memberPeer(relayKey) != nil })
	spR := a.t.mesh.memberPeer(relayKey).sp
	ap := deafAddr(t)
	newcomer := newForged(t)
	body, err := mesh.AppendPunch(nil, mesh.Punch{Peer: newcomer.id.Public, Addrs: []netip.AddrPort{ap}})
	if err != nil {
		t.Fatal(err)
	}
	ignored, started := natCounter(a, "nat_messages_ignored"), natCounter(a, "punches_started")
	a.t.natMessage(spR, relayKey, mesh.TypePunch, body, spR.UDPEndpoint(), false)
	if natCounter(a, "nat_messages_ignored") != ignored {
		t.Fatal("a PUNCH about a member not known yet was dropped")
	}
	newcomer.offer(t, a, mesh.Record{Name: "newcomer", Endpoints: []mesh.Endpoint{{Kind: mesh.EndpointLocal, Addr: ap}}})
	waitUntil(t, "alpha punches toward the newcomer once its record came", func() bool {
		return natCounter(a, "punches_started") > started
	})
}
