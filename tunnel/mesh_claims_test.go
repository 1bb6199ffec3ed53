package tunnel

import (
	"crypto/rand"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/internal/status"
	"github.com/stt-tun/stt-tun/stt/mesh"
)

// meshNode is a tunnel with [discovery] on an in-memory device, and what a test needs to
// hand it member records as if a member had gossiped them.
type meshNode struct {
	*memNode
	seed  [32]byte
	netID [16]byte
	cn    *cfgNode
}

// newMeshNode starts node "alice" (10.99.0.1/24, an Ed25519 key) with a [discovery]
// section accepting 10.99.0.0/16 and fd00::/8 (which holds the mesh's own /48: only the mesh's rule keeps members out of it) and the given [[peer]] sections.
func newMeshNode(t *testing.T, sections ...string) *meshNode {
	t.Helper()
	seed, err := config.GenerateSeed()
	if err != nil {
		t.Fatal(err)
	}
	cn := newCfgNode(t, writeSecret(t, t.TempDir(), "seed", seed), "alice", "10.99.0.1/24")
	nk, err := config.GenerateNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cn.keyFile, []byte(nk.Encode()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := cn.config(t, "", append([]string{meshSection}, sections...)...)
	return &meshNode{memNode: startCfg(t, cfg), seed: seed, netID: mesh.NetworkID(seed), cn: cn}
}

const meshSection = "[discovery]\naccept_prefixes = [\"10.99.0.0/16\", \"fd00::/8\"]\n"

// identity is a member's key pair, made up for a test.
func newIdentity(t *testing.T) mesh.Identity {
	t.Helper()
	var s [32]byte
	if _, err := rand.Read(s[:]); err != nil {
		t.Fatal(err)
	}
	return mesh.NewIdentity(s)
}

// offer signs rec as id and hands it to the node's gossip engine as a RECORDS message
// from a member (the first argument of Handle: any key, here the owner's).
func (n *meshNode) offer(t *testing.T, id mesh.Identity, rec mesh.Record) {
	t.Helper()
	rec.Version = uint64(time.Now().UnixNano())
	rec.Expires = time.Now().Add(10 * time.Minute)
	raw, err := rec.Marshal(id, n.netID)
	if err != nil {
		t.Fatal(err)
	}
	body, err := mesh.AppendRecords(nil, raw)
	if err != nil {
		t.Fatal(err)
	}
	before := n.t.mesh.eng.Stats().Accepted
	n.t.mesh.eng.Handle(id.Public, netip.MustParseAddrPort("192.0.2.1:51900"), false, mesh.MsgRecords, body)
	if n.t.mesh.eng.Stats().Accepted != before+1 {
		t.Fatalf("the engine did not accept the record of %q: %+v", rec.Name, n.t.mesh.eng.Stats())
	}
}

// member waits until the node's status shows the member of key id (by public key) with
// its record applied (refusals or accepted prefixes, or a mesh address), and returns it.
func (n *meshNode) member(t *testing.T, id mesh.Identity, done func(p status.Peer) bool) status.Peer {
	t.Helper()
	key := config.EncodeKey(id.Public)
	var got status.Peer
	waitUntil(t, "the member "+key+" shows in status", func() bool {
		for _, p := range n.t.Status().Peers {
			if p.PublicKey == key && done(p) {
				got = p
				return true
			}
		}
		return false
	})
	return got
}

// route is the peer the node's prefix table sends addr to ("" = none).
func (n *meshNode) route(addr netip.Addr) string {
	p, ok := n.t.table.Load().Lookup(addr)
	if !ok {
		return ""
	}
	return p.cfg.Name
}

func (n *meshNode) counter(name string) uint64 { return n.t.counterMap()[name] }

func hasRefusal(p status.Peer, prefix, why string) bool {
	return slices.ContainsFunc(p.Refusals, func(r string) bool {
		return strings.HasPrefix(r, prefix+": ") && strings.Contains(r, why)
	})
}

func applied(p status.Peer) bool { return len(p.Refusals) > 0 || len(p.AllowedPrefixes) > 0 }

// TestMeshClaimPolicyRefusesWhatIsNotTheMembers: of a member's claimed addresses and
// prefixes, the node accepts only those inside accept_prefixes, outside the mesh's
// key-derived space, clear of every [[peer]]'s prefixes and of this node's own address;
// a claim overlapping another member's is refused for both (neither gets it); each
// refusal is counted, said in status, and routes nothing to the member.
func TestMeshClaimPolicyRefusesWhatIsNotTheMembers(t *testing.T) {
	n := newMeshNode(t, peerSection("carol", "", []string{"10.99.5.0/24"}))
	bob, eve := newIdentity(t), newIdentity(t)
	bobAddr := mesh.MemberAddr(n.seed, bob.Public)

	n.offer(t, bob, mesh.Record{Name: "bob", Addresses: []netip.Prefix{netip.MustParsePrefix("10.99.0.2/24")},
		Prefixes: []netip.Prefix{netip.MustParsePrefix("10.99.1.0/24")}})
	b := n.member(t, bob, applied)
	if !slices.Equal(b.AllowedPrefixes, []string{"10.99.0.2/32", "10.99.1.0/24"}) || len(b.Refusals) != 0 {
		t.Fatalf("bob's claims: accepted %v, refused %v; want both accepted", b.AllowedPrefixes, b.Refusals)
	}
	if r := n.route(netip.MustParseAddr("10.99.1.7")); r != "bob" {
		t.Fatalf("10.99.1.7 routes to %q, want bob", r)
	}
	refused0 := n.counter("mesh_claims_refused")

	inMesh := netip.PrefixFrom(netip.MustParseAddr(strings.TrimSuffix(mesh.NetworkPrefix(n.seed).Addr().String(), "::")+":77::"), 64)
	claims := []struct {
		prefix netip.Prefix
		why    string
	}{
		{netip.MustParsePrefix("10.50.0.0/24"), "not inside accept_prefixes"},
		{netip.MustParsePrefix("10.99.5.128/25"), `overlaps 10.99.5.0/24 of [[peer]] "carol"`},
		{netip.MustParsePrefix("10.99.1.128/25"), `overlaps 10.99.1.0/24 claimed by member "bob"; neither gets it`},
		{netip.PrefixFrom(bobAddr, 128), "inside the mesh's key-derived address space"},
		{inMesh, "inside the mesh's key-derived address space"},
		{netip.MustParsePrefix("10.99.0.1/32"), "contains this node's own address"},
	}
	rec := mesh.Record{Name: "eve", Addresses: []netip.Prefix{netip.MustParsePrefix("10.99.0.66/24")}}
	for _, c := range claims {
		rec.Prefixes = append(rec.Prefixes, c.prefix)
	}
	n.offer(t, eve, rec)
	e := n.member(t, eve, applied)
	for _, c := range claims {
		if !hasRefusal(e, c.prefix.String(), c.why) {
			t.Errorf("eve's claim %s: want refused (%s); refusals %q", c.prefix, c.why, e.Refusals)
		}
	}
	if !slices.Equal(e.AllowedPrefixes, []string{"10.99.0.66/32"}) {
		t.Errorf("eve's accepted claims %v, want only its own address", e.AllowedPrefixes)
	}
	// Eve's claims, and bob's 10.99.1.0/24, which eve contests.
	if got := n.counter("mesh_claims_refused") - refused0; got != uint64(len(claims))+1 {
		t.Errorf("mesh_claims_refused grew by %d, want %d", got, len(claims)+1)
	}
	b = n.member(t, bob, func(p status.Peer) bool { return len(p.Refusals) > 0 })
	if !hasRefusal(b, "10.99.1.0/24", `claimed by member "eve"; neither gets it`) {
		t.Errorf("bob's contested claim: refusals %q", b.Refusals)
	}
	for addr, want := range map[string]string{
		"10.50.0.1":                   "",
		"10.99.5.200":                 "carol",
		"10.99.1.200":                 "", // contested: nobody's
		"10.99.0.2":                   "bob",
		bobAddr.String():              "bob",
		"10.99.0.66":                  "eve",
		inMesh.Addr().Next().String(): "",
	} {
		if got := n.route(netip.MustParseAddr(addr)); got != want {
			t.Errorf("%s routes to %q, want %q", addr, got, want)
		}
	}
}

// TestMeshNameOfConfiguredPeerWithOtherKeyRefused: a record under the name of a
// [[peer]] pinned to another key is refused and counted, and its key-derived address
// routes nowhere; so is a record under this node's own name or under the name another
// member's key already holds.
func TestMeshNameOfConfiguredPeerWithOtherKeyRefused(t *testing.T) {
	carol := newIdentity(t)
	n := newMeshNode(t, peerSection("carol", "", []string{"10.99.5.0/24"}, fmt.Sprintf("public_key = %q", config.EncodeKey(carol.Public))))
	bob := newIdentity(t)
	n.offer(t, bob, mesh.Record{Name: "bob"})
	n.member(t, bob, func(p status.Peer) bool { return p.MeshAddress != "" })

	for _, tc := range []struct{ name, why string }{
		{"carol", `name "carol" belongs to a [[peer]] with another public_key`},
		{"bob", `name "bob" is held by another key`},
		{"alice", `name "alice" is this node's own`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			impostor := newIdentity(t)
			refused0 := n.counter("mesh_names_refused")
			n.offer(t, impostor, mesh.Record{Name: tc.name, Prefixes: []netip.Prefix{netip.MustParsePrefix("10.99.9.0/24")}})
			p := n.member(t, impostor, func(p status.Peer) bool { return len(p.Refusals) > 0 })
			if !slices.ContainsFunc(p.Refusals, func(r string) bool { return strings.Contains(r, tc.why) }) {
				t.Errorf("refusals %q, want one saying %s", p.Refusals, tc.why)
			}
			if got := n.counter("mesh_names_refused") - refused0; got != 1 {
				t.Errorf("mesh_names_refused grew by %d, want 1", got)
			}
			if r := n.route(mesh.MemberAddr(n.seed, impostor.Public)); r != "" {
				t.Errorf("the impostor's key-derived address routes to %q", r)
			}
			if r := n.route(netip.MustParseAddr("10.99.9.1")); r != "" {
				t.Errorf("the impostor's prefix routes to %q", r)
			}
			if r := n.route(mesh.MemberAddr(n.seed, bob.Public)); r != "bob" {
				t.Errorf("bob's address routes to %q, want bob", r)
			}
		})
	}
	if sp := n.t.Node().Peer("alice"); sp != nil {
		t.Errorf("the node has a peer under its own name")
	}
}

// TestMeshConfiguredPeerWins: a member that is also a [[peer]] (same name, same key)
// is routed by the [[peer]]'s allowed_prefixes, not by its record's claims, and gets
// its key-derived address; status shows it once, as config, with that address, even
// when a discovered member sorts before it.
func TestMeshConfiguredPeerWins(t *testing.T) {
	carol := newIdentity(t)
	n := newMeshNode(t, peerSection("carol", "", []string{"10.99.5.0/24"}, fmt.Sprintf("public_key = %q", config.EncodeKey(carol.Public))))
	aaron := newIdentity(t) // sorts before carol
	n.offer(t, aaron, mesh.Record{Name: "aaron"})
	n.offer(t, carol, mesh.Record{Name: "carol", Addresses: []netip.Prefix{netip.MustParsePrefix("10.99.3.3/24")},
		Prefixes: []netip.Prefix{netip.MustParsePrefix("10.99.9.0/24")}})
	carolAddr := mesh.MemberAddr(n.seed, carol.Public)
	p := n.member(t, carol, func(p status.Peer) bool { return p.MeshAddress != "" })
	if p.Source != "config" || !slices.Equal(p.AllowedPrefixes, []string{"10.99.5.0/24"}) || p.MeshAddress != carolAddr.String() {
		t.Errorf("carol in status: %+v; want source config, allowed 10.99.5.0/24, mesh address %s", p, carolAddr)
	}
	n.member(t, aaron, func(p status.Peer) bool { return p.MeshAddress != "" })
	lines := 0
	for _, q := range n.t.Status().Peers {
		if q.Name == "carol" {
			lines++
			if q.MeshAddress != carolAddr.String() {
				t.Errorf("status line of carol lost its mesh address: %+v", q)
			}
		}
	}
	if lines != 1 {
		t.Errorf("status shows carol %d times", lines)
	}
	for addr, want := range map[string]string{"10.99.5.1": "carol", "10.99.9.1": "", "10.99.3.3": "", carolAddr.String(): "carol"} {
		if got := n.route(netip.MustParseAddr(addr)); got != want {
			t.Errorf("%s routes to %q, want %q", addr, got, want)
		}
	}
}

// TestMeshReloadedPeerTakesNameFromMember: a [[peer]] that a reload adds under the name
// of a discovered member (pinned to its key) takes the member over: its prefixes
// replace the record's claims, the key-derived address stays, the source is config.
func TestMeshReloadedPeerTakesNameFromMember(t *testing.T) {
	n := newMeshNode(t)
	bob := newIdentity(t)
	n.offer(t, bob, mesh.Record{Name: "bob", Prefixes: []netip.Prefix{netip.MustParsePrefix("10.99.1.0/24")}})
	n.member(t, bob, applied)
	if r := n.route(netip.MustParseAddr("10.99.1.1")); r != "bob" {
		t.Fatalf("before the reload 10.99.1.1 routes to %q, want bob", r)
	}
	cfg := n.cn.config(t, "", meshSection, peerSection("bob", "", []string{"10.99.7.0/24"}, fmt.Sprintf("public_key = %q", config.EncodeKey(bob.Public))))
	if err := n.t.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	bobAddr := mesh.MemberAddr(n.seed, bob.Public)
	p := n.member(t, bob, func(p status.Peer) bool { return p.Source == "config" && p.MeshAddress != "" })
	if !slices.Equal(p.AllowedPrefixes, []string{"10.99.7.0/24"}) || p.MeshAddress != bobAddr.String() {
		t.Errorf("bob after the reload: %+v; want allowed 10.99.7.0/24 and mesh address %s", p, bobAddr)
	}
	for addr, want := range map[string]string{"10.99.7.1": "bob", "10.99.1.1": "", bobAddr.String(): "bob"} {
		if got := n.route(netip.MustParseAddr(addr)); got != want {
			t.Errorf("after the reload %s routes to %q, want %q", addr, got, want)
		}
	}
}

// TestMeshRecordMustCarryHandshakeName: a member admitted by its handshake under one name
// cannot rename itself in its record to another member's name: the record is refused
// and counted, and the name stays with its holder.
func TestMeshRecordMustCarryHandshakeName(t *testing.T) {
	n := newMeshNode(t)
	bob, eve := newIdentity(t), newIdentity(t)
	n.offer(t, bob, mesh.Record{Name: "bob"})
	n.member(t, bob, func(p status.Peer) bool { return p.MeshAddress != "" })
	if _, err := n.t.admit("eve", eve.Public); err != nil {
		t.Fatal(err)
	}
	refused0 := n.counter("mesh_names_refused")
	n.offer(t, eve, mesh.Record{Name: "bob", Prefixes: []netip.Prefix{netip.MustParsePrefix("10.99.9.0/24")}})
	p := n.member(t, eve, func(p status.Peer) bool { return len(p.Refusals) > 0 })
	if p.Name != "eve" || !slices.ContainsFunc(p.Refusals, func(r string) bool { return strings.Contains(r, `record names "bob"`) }) {
		t.Errorf("eve after renaming itself bob: %+v", p)
	}
	if got := n.counter("mesh_names_refused") - refused0; got != 1 {
		t.Errorf("mesh_names_refused grew by %d, want 1", got)
	}
	for addr, want := range map[string]string{
		mesh.MemberAddr(n.seed, bob.Public).String(): "bob",
		mesh.MemberAddr(n.seed, eve.Public).String(): "eve",
		"10.99.9.1": "",
	} {
		if got := n.route(netip.MustParseAddr(addr)); got != want {
			t.Errorf("%s routes to %q, want %q", addr, got, want)
		}
	}
}

// TestMeshRefusalCountedOncePerClaim: a member that re-signs its record with the same
// refused claim, or under the same refused name, is not counted (nor logged) again;
// a new refused claim is.
func TestMeshRefusalCountedOncePerClaim(t *testing.T) {
	n := newMeshNode(t)
	bob, eve, squat := newIdentity(t), newIdentity(t), newIdentity(t)
	n.offer(t, bob, mesh.Record{Name: "bob"})
	n.member(t, bob, func(p status.Peer) bool { return p.MeshAddress != "" })
	outside := mesh.Record{Name: "eve", Prefixes: []netip.Prefix{netip.MustParsePrefix("10.50.0.0/24")}}
	n.offer(t, eve, outside)
	n.member(t, eve, func(p status.Peer) bool { return len(p.Refusals) == 1 })
	n.offer(t, squat, mesh.Record{Name: "bob"})
	n.member(t, squat, func(p status.Peer) bool { return len(p.Refusals) == 1 })
	claims0, names0 := n.counter("mesh_claims_refused"), n.counter("mesh_names_refused")
	if claims0 != 1 || names0 != 1 {
		t.Fatalf("after one refused claim and one refused name: claims %d, names %d", claims0, names0)
	}
	for range 2 { // within the rate bound's burst (4 versions)
		time.Sleep(time.Millisecond) // a new version (unix ns)
		n.offer(t, eve, outside)
		n.offer(t, squat, mesh.Record{Name: "bob"})
	}
	outside.Prefixes = append(outside.Prefixes, netip.MustParsePrefix("10.51.0.0/24"))
	n.offer(t, eve, outside)
	n.member(t, eve, func(p status.Peer) bool { return len(p.Refusals) == 2 })
	if c, nm := n.counter("mesh_claims_refused"), n.counter("mesh_names_refused"); c != 2 || nm != 1 {
		t.Errorf("after re-signed records and one new refused claim: claims %d (want 2), names %d (want 1)", c, nm)
	}
}

// TestMeshObservationsCannotCrowdOutOwnEndpoints: any member can report any address as
// where it sees this node, and a holder of the seed can be many members. However many
// such reports come, the node's record keeps its configured and interface endpoints,
// and an address several members agree on goes before one a single member reported.
func TestMeshObservationsCannotCrowdOutOwnEndpoints(t *testing.T) {
	ap := func(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
	obs := func(by byte, addr string) mesh.Observation {
		return mesh.Observation{By: [32]byte{by}, Addr: ap(addr)}
	}
	var fakes []mesh.Observation
	for i := range mesh.MaxObservations {
		fakes = append(fakes, obs(byte(i), fmt.Sprintf("203.0.113.9:%d", 1000+i)))
	}
	has := func(eps []mesh.Endpoint, kind mesh.EndpointKind, addr string) bool {
		return slices.Contains(eps, mesh.Endpoint{Kind: kind, Addr: ap(addr)})
	}

	conf := []netip.AddrPort{ap("198.51.100.1:51900")}
	local := []netip.AddrPort{ap("192.168.1.2:51900"), ap("10.1.1.2:51900")}
	eps := ownEndpoints(conf, local, fakes)
	if len(eps) != mesh.MaxEndpoints || !has(eps, mesh.EndpointConfigured, "198.51.100.1:51900") ||
		!has(eps, mesh.EndpointLocal, "192.168.1.2:51900") || !has(eps, mesh.EndpointLocal, "10.1.1.2:51900") {
		t.Errorf("with %d made-up observations the record's endpoints are %v; want the configured and both local ones among %d", len(fakes), eps, mesh.MaxEndpoints)
	}

	// Many interface addresses: two slots stay for observations, and the address
	// two members agree on beats any single report.
	var many []netip.AddrPort
	for i := range 10 {
		many = append(many, ap(fmt.Sprintf("10.2.0.%d:51900", i+1)))
	}
	agreed := append(slices.Clone(fakes[:5]), obs(100, "198.51.100.77:40000"), obs(101, "198.51.100.77:40000"))
	eps = ownEndpoints(nil, many, agreed)
	if len(eps) != mesh.MaxEndpoints || !has(eps, mesh.EndpointObserved, "198.51.100.77:40000") {
		t.Errorf("endpoints %v: want %d, with the observation two members agree on", eps, mesh.MaxEndpoints)
	}
	nLocal := 0
	for _, e := range eps {
		if e.Kind == mesh.EndpointLocal {
			nLocal++
		}
	}
	if nLocal != mesh.MaxEndpoints-observedSlots {
		t.Errorf("%d local endpoints among %v, want %d", nLocal, eps, mesh.MaxEndpoints-observedSlots)
	}

	// No observations: the interface addresses take every slot.
	if eps := ownEndpoints(nil, many, nil); len(eps) != mesh.MaxEndpoints {
		t.Errorf("without observations %d endpoints, want %d", len(eps), mesh.MaxEndpoints)
	}
}

// TestMeshObservationChurnDoesNotFloodOwnRecord: a member reporting a new address for
// this node every few hundred milliseconds does not make it re-sign (and flood) its
// record at that pace: endpoint changes wait out mesh.RateInterval since the last
// version, so that members never refuse this node's versions for their rate.
func TestMeshObservationChurnDoesNotFloodOwnRecord(t *testing.T) {
	n := newMeshNode(t)
	waitUntil(t, "the node signs its record", func() bool { return n.t.mesh.eng.Self() != nil })
	versions := map[uint64]bool{n.t.mesh.eng.Self().Version: true}
	deadline := time.Now().Add(3500 * time.Millisecond)
	for i := 0; time.Now().Before(deadline); i++ {
		body, err := mesh.AppendObserved(nil, mesh.Observed{Transport: mesh.TransportUDP,
			Addr: netip.AddrPortFrom(netip.MustParseAddr("203.0.113.9"), uint16(1000+i))})
		if err != nil {
			t.Fatal(err)
		}
		n.t.mesh.eng.Handle([32]byte{1}, netip.MustParseAddrPort("192.0.2.1:1"), false, mesh.MsgObserved, body)
		time.Sleep(200 * time.Millisecond) // the pace of the reports, not a synchronisation
		versions[n.t.mesh.eng.Self().Version] = true
	}
	// Within 3.5 s of the first version at most one more may go out.
	if len(versions) > 2 {
		t.Errorf("the node signed %d versions of its record in 3.5 s of changing reports, want at most 2", len(versions))
	}
}

// TestMeshPinnedPeerKeepsItsName: a [[peer]] that pins a key reserves its name: another
// key announcing that name is refused, and contests nothing — the pinned member keeps
// its name and its key-derived address, whatever arrives first.
func TestMeshPinnedPeerKeepsItsName(t *testing.T) {
	carol := newIdentity(t)
	n := newMeshNode(t, peerSection("carol", "", []string{"10.99.5.0/24"}, fmt.Sprintf("public_key = %q", config.EncodeKey(carol.Public))))
	impostor := newIdentity(t)
	n.offer(t, impostor, mesh.Record{Name: "carol"})
	n.offer(t, carol, mesh.Record{Name: "carol"})
	p := n.member(t, carol, func(p status.Peer) bool { return p.MeshAddress != "" })
	if p.Source != "config" || len(p.Refusals) != 0 {
		t.Errorf("the pinned carol: %+v", p)
	}
	q := n.member(t, impostor, func(p status.Peer) bool { return len(p.Refusals) > 0 })
	if !slices.ContainsFunc(q.Refusals, func(r string) bool { return strings.Contains(r, "belongs to a [[peer]] with another public_key") }) {
		t.Errorf("the impostor's refusals: %q", q.Refusals)
	}
	if r := n.route(mesh.MemberAddr(n.seed, carol.Public)); r != "carol" {
		t.Errorf("carol's key-derived address routes to %q, want carol", r)
	}
}
