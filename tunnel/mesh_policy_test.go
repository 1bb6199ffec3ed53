package tunnel

import (
	"context"
	"crypto/rand"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/stt/mesh"
)

// policyNode starts one mesh node on the in-memory device (nobody else: the members are
// fed to its policy directly) with accept_prefixes 10.50.0.0/16 and a [[peer]] "cfg"
// owning 10.50.9.0/24.
func policyNode(t *testing.T) (*memNode, [32]byte) {
	t.Helper()
	seed, _ := config.GenerateSeed()
	return policyNodeWithSeed(t, seed)
}

// fakeMember signs a record for a fresh identity: name, interface addresses and
// announced prefixes.
func fakeMember(t *testing.T, seed [32]byte, name string, addrs, prefixes []string) *mesh.Record {
	t.Helper()
	var edSeed [32]byte
	if _, err := rand.Read(edSeed[:]); err != nil {
		t.Fatal(err)
	}
	id := mesh.NewIdentity(edSeed)
	r := mesh.Record{Name: name, Version: uint64(time.Now().UnixNano()), Expires: time.Now().Add(time.Hour)}
	for _, a := range addrs {
		r.Addresses = append(r.Addresses, netip.MustParsePrefix(a))
	}
	for _, p := range prefixes {
		r.Prefixes = append(r.Prefixes, netip.MustParsePrefix(p))
	}
	nid := mesh.NetworkID(seed)
	raw, err := r.Marshal(id, nid)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := mesh.ParseRecord(raw, nid, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// learn hands records to the node's policy as syncMembers does after the engine
// accepted them, then decides.
func learn(tn *Tunnel, recs ...*mesh.Record) {
	m := tn.mesh
	tn.reloadMu.Lock()
	defer tn.reloadMu.Unlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, rec := range recs {
		m.members[rec.Key] = &member{key: rec.Key, name: rec.Name, source: sourceGossip, rec: rec, fresh: true}
	}
	tn.resolveLocked()
	tn.rebuildTableLocked()
}

// outcome is, per member name, its peer's name ("" without one), accepted claims and
// refusals, for comparing two nodes' decisions.
func outcome(tn *Tunnel) map[string]string {
	m := tn.mesh
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]string{}
	for _, mb := range m.members {
		var acc []string
		for _, c := range mb.accepted {
			acc = append(acc, c.String())
		}
		peer := ""
		if mb.p != nil {
			peer = mb.p.cfg.Name
		}
		key := mb.wantName() + "/" + config.EncodeKey(mb.key)[:8]
		out[key] = peer + " | " + strings.Join(acc, ",") + " | " + strings.Join(mb.refused, "; ")
	}
	return out
}

// TestMeshClaimsDecidedAlikeWhateverTheOrder: a member claiming an address another
// member already holds takes it from nobody — both lose it — and a node that learns the
// two records together decides exactly as one that learned them one at a time, in
// either order. (It used to be first come, first served per node, so a node started
// later could hand the victim's address to the attacker.)
func TestMeshClaimsDecidedAlikeWhateverTheOrder(t *testing.T) {
	a, seed := policyNode(t)
	victim := fakeMember(t, seed, "victim", []string{"10.50.0.3/24"}, nil)
	thief := fakeMember(t, seed, "thief", []string{"10.50.0.4/24"}, []string{"10.50.0.2/31"})
	learn(a.t, victim)
	if got := outcome(a.t); !strings.Contains(got["victim/"+config.EncodeKey(victim.Key)[:8]], "10.50.0.3/32 |") {
		t.Fatalf("alone, the victim's address is not accepted: %v", got)
	}
	learn(a.t, thief)
	first := outcome(a.t)
	for k, v := range first {
		acc := strings.Split(v, " | ")[1]
		if strings.Contains(acc, "10.50.0.3/32") || strings.Contains(acc, "10.50.0.0/28") {
			t.Fatalf("%s kept a contested claim: %q", k, v)
		}
	}
	if p, ok := a.t.table.Load().Lookup(netip.MustParseAddr("10.50.0.3")); ok && p.member != nil {
		t.Fatalf("10.50.0.3 is routed to member %q", p.member.name)
	}

	for _, order := range [][]*mesh.Record{{thief, victim}, {victim, thief}} {
		b, _ := policyNodeWithSeed(t, seed)
		learn(b.t, order...)
		if got := outcome(b.t); !mapsEqual(got, first) {
			t.Fatalf("learning %s then %s decides\n%v\nbut learning them one by one decided\n%v", order[0].Name, order[1].Name, got, first)
		}
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// policyNodeWithSeed is policyNode in a given network.
func policyNodeWithSeed(t *testing.T, seed [32]byte) (*memNode, [32]byte) {
	t.Helper()
	cfg := &config.Config{
		Interface: config.Interface{
			Name: "mem-pol", NodeName: "pol",
			Addresses: []netip.Prefix{netip.MustParsePrefix("10.50.0.1/24")},
			MTU:       1420, SeedFile: writeSecret(t, t.TempDir(), "seed", seed),
			KeyFile: filepath.Join(t.TempDir(), "pol.key"),
		},
		Discovery: config.Discovery{Enabled: true, MeshIPv6: true, IdleTimeout: time.Minute,
			AcceptPrefixes: []netip.Prefix{netip.MustParsePrefix("10.50.0.0/16")}},
		Peers: []config.Peer{{Name: "cfg", AllowedPrefixes: []netip.Prefix{netip.MustParsePrefix("10.50.9.0/24")}}},
	}
	return startCfg(t, cfg), seed
}

// TestMeshNamesContestedGoToNobody: a name already held by a member's peer stays with
// it — a later key announcing it is refused, and cuts nobody off — while two keys that
// reach a node together wanting one name both go without it, whatever their order.
func TestMeshNamesContestedGoToNobody(t *testing.T) {
	a, seed := policyNode(t)
	real := fakeMember(t, seed, "db", []string{"10.50.0.5/24"}, nil)
	learn(a.t, real)
	if sp := a.t.node.Peer("db"); sp == nil {
		t.Fatal("a member alone with its name got no peer")
	}
	squatter := fakeMember(t, seed, "db", []string{"10.50.0.6/24"}, nil)
	learn(a.t, squatter)
	sp := a.t.node.Peer("db")
	if sp == nil {
		t.Fatal("the member holding the name lost its peer to a later key")
	}
	if k, _ := sp.PublicKey(); k != real.Key {
		t.Fatalf("the name went to the later key")
	}
	if n := a.t.Status().Counters["mesh_names_refused"]; n != 1 {
		t.Errorf("mesh_names_refused = %d, want 1 (the later key)", n)
	}
	for _, order := range [][]*mesh.Record{{real, squatter}, {squatter, real}} {
		b, _ := policyNodeWithSeed(t, seed)
		learn(b.t, order...)
		if sp := b.t.node.Peer("db"); sp != nil {
			k, _ := sp.PublicKey()
			t.Fatalf("learned together, a contested name has a peer, pinned to %s", config.EncodeKey(k)[:8])
		}
		if n := b.t.Status().Counters["mesh_names_refused"]; n != 2 {
			t.Errorf("mesh_names_refused = %d, want 2 (one per key)", n)
		}
	}
}

// TestMeshClaimRules: each rule of a single claim, on a member alone.
func TestMeshClaimRules(t *testing.T) {
	a, seed := policyNode(t)
	subnet := mesh.MemberPrefix(seed)
	other := mesh.MemberAddr(seed, [32]byte{1, 2, 3})
	rec := fakeMember(t, seed, "m", []string{"10.50.0.7/24"}, []string{
		"10.60.0.0/24",                        // outside accept_prefixes
		"10.50.9.128/25",                      // a [[peer]]'s prefix
		netip.PrefixFrom(other, 128).String(), // another member's key-derived address
		"10.50.0.0/30",                        // contains this node's own address 10.50.0.1
		"10.50.7.0/24",                        // fine
	})
	learn(a.t, rec)
	m := a.t.mesh
	m.mu.Lock()
	mb := m.members[rec.Key]
	accepted := slices.Clone(mb.accepted)
	refused := strings.Join(mb.refused, "\n")
	m.mu.Unlock()
	want := []netip.Prefix{netip.MustParsePrefix("10.50.0.7/32"), netip.MustParsePrefix("10.50.7.0/24")}
	if !slices.Equal(accepted, want) {
		t.Fatalf("accepted %v, want %v; refused:\n%s", accepted, want, refused)
	}
	for _, s := range []string{"10.60.0.0/24: not inside accept_prefixes", "10.50.9.128/25: overlaps 10.50.9.0/24 of [[peer]]",
		"key-derived address space", "10.50.0.0/30: contains this node's own address"} {
		if !strings.Contains(refused, s) {
			t.Errorf("refusals lack %q:\n%s", s, refused)
		}
	}
	_ = subnet
	if p, ok := a.t.table.Load().Lookup(other); ok && p.member == mb {
		t.Fatal("the member got another member's key-derived address")
	}
}

// TestMeshGossipOnlyToNeighbours: a node with sessions to more members than it keeps as
// neighbours gives the engine only its neighbours (at most meshNeighbours), so that
// anti-entropy keeps those sessions up and lets the others close when idle.
func TestMeshGossipOnlyToNeighbours(t *testing.T) {
	seed, _ := config.GenerateSeed()
	seedFile := writeSecret(t, t.TempDir(), "seed", seed)
	start := func(name string, boot []string) *memNode {
		return startCfg(t, &config.Config{
			Interface: config.Interface{
				Name: "mem-" + name, NodeName: name,
				MTU: 1420, SeedFile: seedFile,
				KeyFile: filepath.Join(t.TempDir(), name+".key"),
			},
			Discovery: config.Discovery{Enabled: true, MeshIPv6: true, IdleTimeout: time.Minute, Bootstrap: boot},
		})
	}
	a := start("a", nil)
	boot := []string{endpointOf(a)}
	b := start("b", boot)
	others := []string{"a"}
	for _, n := range []string{"c", "d", "e"} {
		start(n, boot)
		others = append(others, n)
	}
	waitUntil(t, "b to know 4 members", func() bool { return b.t.Status().Mesh.Members == 4 })
	// Traffic to every member gives b a session with each.
	for _, n := range others {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if _, err := b.t.Ping(ctx, n); err != nil {
			cancel()
			t.Fatalf("ping %s: %v", n, err)
		}
		cancel()
	}
	waitUntil(t, "b to keep its neighbours", func() bool {
		b.t.keepNeighbours(time.Now())
		return len(b.t.connectedMembers()) == meshNeighbours
	})
	if got := b.t.Status().Mesh.Connected; got != 4 {
		t.Fatalf("b has sessions with %d members, want 4", got)
	}
	if got := len(b.t.connectedMembers()); got > meshNeighbours {
		t.Fatalf("b gossips with %d members, want at most %d", got, meshNeighbours)
	}
}

// TestMeshLeaveReachesAWebSocketMember: a node that goes down over WebSocket gets its
// leave record to the member before the connection closes (a WebSocket connection only
// queues what it sends), so the member forgets it in seconds.
func TestMeshLeaveReachesAWebSocketMember(t *testing.T) {
	seed, _ := config.GenerateSeed()
	seedFile := writeSecret(t, t.TempDir(), "seed", seed)
	start := func(name string, mod func(*config.Config)) *memNode {
		cfg := &config.Config{
			Interface: config.Interface{Name: "mem-" + name, NodeName: name, MTU: 1420, SeedFile: seedFile,
				KeyFile: filepath.Join(t.TempDir(), name+".key")},
			WebSocket: config.WebSocket{Path: config.DefaultWSPath},
			Discovery: config.Discovery{Enabled: true, MeshIPv6: true, IdleTimeout: time.Minute},
			Advanced:  config.Advanced{FallbackAfter: config.DefaultFallbackAfter, ProbeInterval: config.DefaultProbeInterval},
		}
		mod(cfg)
		return startCfg(t, cfg)
	}
	a := start("a", func(c *config.Config) {
		c.Interface.DisableUDP = true
		c.WebSocket.Listen = "127.0.0.1:0"
	})
	b := start("b", func(c *config.Config) {
		c.Interface.DisableUDP = true
		c.Discovery.Bootstrap = []string{"ws://" + a.t.Node().WSAddr() + config.DefaultWSPath}
	})
	bKey := b.t.Node().PublicKey()
	waitUntil(t, "a to hold b's record", func() bool { return a.t.mesh.eng.Member(bKey) != nil })
	if err := b.t.Close(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "a to get b's leave record", func() bool {
		r := a.t.mesh.eng.Member(bKey)
		return r == nil || time.Until(r.Expires) <= leaveLinger+time.Second
	})
}
