package tunnel

import (
	"fmt"
	"testing"

	"github.com/stt-tun/stt-tun/config"
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
	// (alpha may have asked relay itself a moment ago, while it dialled beta as a
	// gossip neighbour: then none of these five is answered.)
	before := natCounter(relay, "punches_coordinated")
	for range 5 {
		relay.t.natMessage(spA, aKey, mesh.TypePunchRequest, mesh.AppendKey(nil, bKey), spA.UDPEndpoint(), false)
	}
	if n := natCounter(relay, "punches_coordinated") - before; n > 1 {
		t.Errorf("%d punches coordinated for 5 requests at once, want at most 1", n)
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
