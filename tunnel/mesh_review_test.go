package tunnel

import (
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/stt"
	"github.com/stt-tun/stt-tun/stt/mesh"
)

// rvNode is a tunnel with [discovery] on an in-memory device, and what a test needs
// to forge members of its network.
type rvNode struct {
	*memNode
	seed [32]byte
	key  config.NodeKey
	cfg  *config.Config
}

// meshConfig parses a configuration for node name with address addr, the [discovery]
// lines given, and more sections.
func meshConfig(t *testing.T, seedFile, keyFile, name, addr, discovery string, sections ...string) *config.Config {
	t.Helper()
	src := fmt.Sprintf("[interface]\nname = \"mem-%s\"\nnode_name = %q\naddresses = [%q]\nlisten_port = 0\nseed_file = %q\nkey_file = %q\n\n[discovery]\n%s\n%s",
		name, name, addr, seedFile, keyFile, discovery, strings.Join(sections, "\n"))
	cfg, err := config.Parse([]byte(src), filepath.Join(t.TempDir(), name+".toml"))
	if err != nil {
		t.Fatalf("test configuration:\n%s\n%v", src, err)
	}
	return cfg
}

func startMeshNode(t *testing.T, name, addr, discovery string, sections ...string) *rvNode {
	t.Helper()
	seed, _ := config.GenerateSeed()
	return startMeshNodeIn(t, seed, name, addr, discovery, sections...)
}

// startMeshNodeIn starts a mesh node of the network seed.
func startMeshNodeIn(t *testing.T, seed [32]byte, name, addr, discovery string, sections ...string) *rvNode {
	t.Helper()
	seedFile := writeSecret(t, t.TempDir(), "seed", seed)
	key, err := config.GenerateNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), name+".key")
	writeFileT(t, keyFile, key.Encode()+"\n")
	cfg := meshConfig(t, seedFile, keyFile, name, addr, discovery, sections...)
	return &rvNode{memNode: startCfg(t, cfg), seed: seed, key: key, cfg: cfg}
}

// forged is a member of a mesh node's network that the test plays: it holds the seed
// and its own key, and signs what it likes.
type forged struct {
	id mesh.Identity
}

func newForged(t *testing.T) forged {
	t.Helper()
	var s [32]byte
	if _, err := rand.Read(s[:]); err != nil {
		t.Fatal(err)
	}
	return forged{id: mesh.NewIdentity(s)}
}

// offer signs r as f's record (fresh version, 10 minutes to live) and hands it to n's
// engine as if f had sent it over its session.
func (f forged) offer(t *testing.T, n *rvNode, r mesh.Record) {
	t.Helper()
	f.offerTTL(t, n, r, 10*time.Minute)
}

// offerTTL is offer with the record expiring after ttl.
func (f forged) offerTTL(t *testing.T, n *rvNode, r mesh.Record, ttl time.Duration) {
	t.Helper()
	r.Version = uint64(time.Now().UnixNano())
	r.Expires = time.Now().Add(ttl)
	raw, err := r.Marshal(f.id, mesh.NetworkID(n.seed))
	if err != nil {
		t.Fatal(err)
	}
	body, err := mesh.AppendRecords(nil, raw)
	if err != nil {
		t.Fatal(err)
	}
	n.t.mesh.eng.Handle(f.id.Public, netip.MustParseAddrPort("127.0.0.1:9"), false, mesh.MsgRecords, body)
}

// memberOf waits until n's mesh loop has taken f's record and returns a copy of what it
// made of it.
func (n *rvNode) memberOf(t *testing.T, f forged) member {
	t.Helper()
	var mb member
	waitUntil(t, "the member's record is applied", func() bool {
		m := n.t.mesh
		m.mu.Lock()
		defer m.mu.Unlock()
		if x := m.members[f.id.Public]; x != nil && x.rec != nil {
			mb = *x
			return true
		}
		return false
	})
	return mb
}

func writeFileT(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// A member's record that names this node itself gets no peer: a peer named like the
// node would answer `ping NAME` and take the node's name in status.
func TestMeshRecordCannotTakeThisNodesName(t *testing.T) {
	n := startMeshNode(t, "alpha", "10.77.0.1/24", `accept_prefixes = ["10.77.0.0/24"]`)
	f := newForged(t)
	f.offer(t, n, mesh.Record{Name: "alpha", Addresses: []netip.Prefix{netip.MustParsePrefix("10.77.0.9/24")}})
	mb := n.memberOf(t, f)
	if mb.p != nil || n.t.Node().Peer("alpha") != nil {
		t.Fatalf("a record named like this node got a peer (source %s)", mb.source)
	}
	if len(mb.refused) == 0 {
		t.Fatal("the refusal is not shown")
	}
}

// A member may not claim a prefix that holds this node's own address, even one
// narrower than the interface's prefix, nor a prefix this node announces itself: the
// table would send the node's own traffic to it, and accept packets from it with the
// node's own address as source.
func TestMeshClaimOfThisNodesAddressOrPrefixRefused(t *testing.T) {
	n := startMeshNode(t, "alpha", "10.77.0.1/24", `accept_prefixes = ["10.0.0.0/8"]
announce_prefixes = ["10.50.0.0/24"]`)
	for _, claim := range []string{"10.50.0.0/16", "10.77.0.1/32", "10.77.0.0/25", "10.50.0.0/25"} {
		f := newForged(t)
		f.offer(t, n, mesh.Record{Name: "m" + strings.NewReplacer(".", "-", "/", "-").Replace(claim),
			Prefixes: []netip.Prefix{netip.MustParsePrefix(claim)}})
		mb := n.memberOf(t, f)
		if len(mb.accepted) != 0 {
			t.Errorf("claim %s accepted", claim)
		}
	}
	// A claim clear of both is accepted: the refusals are about the overlap.
	f := newForged(t)
	f.offer(t, n, mesh.Record{Name: "fine", Prefixes: []netip.Prefix{netip.MustParsePrefix("10.60.0.0/24")}})
	if mb := n.memberOf(t, f); len(mb.accepted) != 1 {
		t.Fatalf("a claim clear of the node's own was refused: %v", mb.refused)
	}
}

// Admit runs on a receive goroutine, the mesh loop reads the interface's name for its
// endpoints: neither may read the configuration a reload replaces without a lock
// (go test -race); nor may status read a [[peer]]'s settings under the mesh's lock alone.
func TestMeshAdmitAndEndpointsDuringReload(t *testing.T) {
	cm := newForged(t)
	n := startMeshNode(t, "alpha", "10.77.0.1/24", `accept_prefixes = ["10.77.0.0/24"]`,
		fmt.Sprintf("[[peer]]\nname = \"cfgm\"\npublic_key = %q\nallowed_prefixes = [\"10.77.0.5/32\"]\n", config.EncodeKey(cm.id.Public)))
	cm.offer(t, n, mesh.Record{Name: "cfgm"}) // a [[peer]] that is a member too: status reads its pin
	if mb := n.memberOf(t, cm); mb.source != sourceConfig {
		t.Fatalf("the [[peer]]'s record made a %s member", mb.source)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 20 {
			if _, err := n.t.ReloadChanges(n.cfg); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for i := 0; ; i++ {
		select {
		case <-done:
			return
		default:
		}
		_, _ = n.t.admit(fmt.Sprintf("m%d", i%50), newForged(t).id.Public)
		_ = n.t.localAddrs()
		_ = n.t.Status()
	}
}

// Records whose endpoints point at third parties that never answer (a member can
// announce any address) must not make this node dial ever more of them: while it has
// fewer than meshNeighbours sessions it dials members to keep gossip flowing, and each
// dial sends HELLOs to every candidate for up to HandshakeGiveUp. At most
// meshNeighbours dials may be in flight, not meshNeighbours more every second.
func TestMeshNeighbourDialsToSilentAddressesBounded(t *testing.T) {
	n := startMeshNode(t, "alpha", "10.77.0.1/24", `accept_prefixes = ["10.77.0.0/24"]`)
	const k = 12
	victims := silentMembersDialled(t, n, k, 5*meshTick)
	if len(victims) == 0 {
		t.Fatal("no member was dialed at all")
	}
	if len(victims) > meshNeighbours {
		t.Fatalf("HELLOs went to %d silent members' addresses within %v; at most %d dials may be in flight", len(victims), 5*meshTick, meshNeighbours)
	}
}

// silentMembersDialled gives n k members whose only candidate is a UDP socket that
// never answers, and returns which of them received anything (a HELLO) within d.
func silentMembersDialled(t *testing.T, n *rvNode, k int, d time.Duration) map[int]bool {
	t.Helper()
	hit := make(chan int, 1024)
	for i := range k {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		go func() {
			buf := make([]byte, 2048)
			for {
				if _, _, err := c.ReadFromUDP(buf); err != nil {
					return
				}
				hit <- i
			}
		}()
		f := newForged(t)
		f.offer(t, n, mesh.Record{Name: fmt.Sprintf("silent%d", i), Endpoints: []mesh.Endpoint{
			{Kind: mesh.EndpointLocal, Addr: c.LocalAddr().(*net.UDPAddr).AddrPort()}}})
	}
	// Observe d of the mesh loop's work: a bound must hold throughout.
	victims := map[int]bool{}
	deadline := time.After(d)
	for {
		select {
		case i := <-hit:
			victims[i] = true
			continue
		case <-deadline:
		}
		return victims
	}
}

// A member that restarts with a new key under the same name is refused while the old
// key's record lives; once that record expires the name is free, and the new key's
// record, held all along, must take it then, not only after its owner re-signs it
// (up to a third of a lifetime later).
func TestMeshNameFreedByExpiryGoesToTheWaitingRecord(t *testing.T) {
	n := startMeshNode(t, "alpha", "10.77.0.1/24", `accept_prefixes = ["10.77.0.0/24"]`)
	old, cur := newForged(t), newForged(t)
	old.offerTTL(t, n, mesh.Record{Name: "db"}, 2*time.Second)
	if mb := n.memberOf(t, old); mb.p == nil {
		t.Fatalf("the first key's record was refused: %v", mb.refused)
	}
	cur.offer(t, n, mesh.Record{Name: "db"})
	if mb := n.memberOf(t, cur); mb.p != nil {
		t.Fatal("a second key took a name another key holds")
	}
	waitUntil(t, "the new key holds the name once the old record expired", func() bool {
		m := n.t.mesh
		m.mu.Lock()
		defer m.mu.Unlock()
		mb := m.members[cur.id.Public]
		return mb != nil && mb.p != nil && m.members[old.id.Public] == nil
	})
	if k, ok := n.t.Node().Peer("db").PublicKey(); !ok || k != cur.id.Public {
		t.Fatal("peer db is not pinned to the new key")
	}
}

// A member can answer OBSERVE with any address, and with many keys fill every slot of
// the reflected addresses: that must not push this node's own interface endpoints out
// of its record, or the other members would only find the addresses the attacker chose.
func TestMeshReflectedAddressesCannotCrowdOutOwnEndpoints(t *testing.T) {
	n := startMeshNode(t, "alpha", "10.77.0.1/24", `accept_prefixes = ["10.77.0.0/24"]`)
	local := n.t.localAddrs()
	if len(local) == 0 {
		t.Skip("this host has no global unicast address to announce")
	}
	want := netip.AddrPortFrom(local[0], n.t.port)
	for i := range mesh.MaxObservations {
		body, err := mesh.AppendObserved(nil, mesh.Observed{Transport: mesh.TransportUDP,
			Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(1 + i)}), 5000)})
		if err != nil {
			t.Fatal(err)
		}
		n.t.mesh.eng.Handle(newForged(t).id.Public, netip.MustParseAddrPort("127.0.0.1:9"), false, mesh.MsgObserved, body)
	}
	n.t.mesh.kick()
	var eps []mesh.Endpoint
	waitUntil(t, "the own record holds the reflected addresses", func() bool {
		own := n.t.mesh.eng.Self()
		if own == nil {
			return false
		}
		eps = own.Endpoints
		for _, e := range eps {
			if e.Kind == mesh.EndpointObserved {
				return true
			}
		}
		return false
	})
	for _, e := range eps {
		if e.Addr == want {
			return
		}
	}
	t.Fatalf("own endpoint %v is not in the record any more: %v", want, eps)
}

// A member may not claim a prefix that holds one of this node's own underlay
// addresses: the OS route for the claim would be narrower than the node's own LAN
// route and draw its traffic there (its UDP to members on that LAN too) into the
// tunnel (accept_prefixes = ["10.0.0.0/8"] over a 10.x underlay is common).
func TestMeshClaimOverUnderlayRefused(t *testing.T) {
	n := startMeshNode(t, "alpha", "10.77.0.1/24", `accept_prefixes = ["0.0.0.0/1", "128.0.0.0/1"]`)
	var claims []string
	for _, a := range n.t.localAddrs() {
		if a.Is4() {
			claims = append(claims, netip.PrefixFrom(a, 25).Masked().String(), netip.PrefixFrom(a, 32).String())
		}
	}
	if len(claims) == 0 {
		t.Skip("this host has no IPv4 underlay address")
	}
	for i, c := range claims {
		f := newForged(t)
		f.offer(t, n, mesh.Record{Name: fmt.Sprintf("grab%d", i), Prefixes: []netip.Prefix{netip.MustParsePrefix(c)}})
		if mb := n.memberOf(t, f); len(mb.accepted) != 0 {
			t.Errorf("claim %s over this node's underlay address accepted", c)
		}
	}
	f := newForged(t)
	f.offer(t, n, mesh.Record{Name: "fine", Prefixes: []netip.Prefix{netip.MustParsePrefix("10.60.0.0/24")}})
	if mb := n.memberOf(t, f); len(mb.accepted) != 1 {
		t.Fatalf("a claim clear of the underlay was refused: %v", mb.refused)
	}
}

// A member that keeps its session up but never acknowledges reliable messages (here
// its receive goroutine is stuck) must not make this node hold every record it floods:
// per session the reliable queue allows 256 messages of up to 1.2 kB, and a member
// can hold thousands of sessions (one per key), so gossip keeps a small backlog per
// member and leaves the rest to anti-entropy.
//
// FINDING (not fixed): a cap of 32 in the mesh's Send (tried: the test passes) cuts a
// DIGEST of more than 32 chunks (864 members) short every round, so anti-entropy in a
// large mesh never compares the keys past it; and a member can fill the queue with
// DIGESTs anyway by sending a SUMMARY a second. It needs digest paging (a cursor per
// exchange, a few chunks per round) together with a per-member backlog cap.
func TestMeshFloodBacklogPerMemberBounded(t *testing.T) {
	t.Skip("FINDING: a member session that acknowledges nothing holds 256 gossip messages (~300 kB); thousands of keys make it GBs")
	n := startMeshNode(t, "alpha", "10.77.0.1/24", `accept_prefixes = ["10.77.0.0/24"]`)
	const backlogBound = 32
	f := newForged(t)
	edSeed := [32]byte{}
	copy(edSeed[:], f.id.Signing.Seed())
	stuck := make(chan struct{})
	raw, err := stt.New(stt.Config{
		Seed: n.seed, PrivateKey: config.X25519FromEd25519Seed(edSeed), Name: "raw", Handler: discard{},
		Extension: func(*stt.Peer, byte, []byte, netip.AddrPort, bool) { <-stuck },
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = raw.Close() })
	t.Cleanup(func() { close(stuck) }) // first: Close waits for the receive goroutine
	alphaPub := n.key.PublicKey()
	rp, err := raw.AddPeer(stt.PeerConfig{Name: "alpha", Endpoint: endpointOf(n.memNode), PublicKey: &alphaPub, PersistentKeepalive: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	rp.Connect()
	var sp *stt.Peer
	waitUntil(t, "alpha admits raw and has a session", func() bool {
		sp = n.t.Node().Peer("raw")
		return sp != nil && sp.HasSession()
	})
	waitUntil(t, "raw is gossiped with", func() bool { return n.t.mesh.eng.Stats().MsgsOut > 0 })
	for i := range 300 {
		newForged(t).offer(t, n, mesh.Record{Name: fmt.Sprintf("m%d", i)})
	}
	if !sp.HasSession() {
		t.Fatal("the session went down: the test shows nothing")
	}
	if got := sp.ReliableBacklog(); got > backlogBound {
		t.Fatalf("alpha holds %d reliable messages for a member that acknowledges none; want at most %d", got, backlogBound)
	}
}

type discard struct{}

func (discard) Deliver(*stt.Inbound) {}

// A refused claim is logged and counted once, not again with every new version of the
// member's record (it re-signs every 10 minutes) nor on every reload: the issue asks
// for "refused, logged once and shown in status".
func TestMeshRefusedClaimCountedOnce(t *testing.T) {
	n := startMeshNode(t, "alpha", "10.77.0.1/24", `accept_prefixes = ["10.77.0.0/24"]`)
	f := newForged(t)
	rec := mesh.Record{Name: "m", Prefixes: []netip.Prefix{netip.MustParsePrefix("10.88.0.0/24")}}
	for v := range 3 {
		f.offer(t, n, rec)
		waitUntil(t, "the new version is applied", func() bool {
			m := n.t.mesh
			m.mu.Lock()
			defer m.mu.Unlock()
			mb := m.members[f.id.Public]
			return mb != nil && mb.rec != nil && n.t.mesh.eng.Stats().Accepted == uint64(v+1) && mb.rec.Version == n.t.mesh.eng.Member(f.id.Public).Version
		})
	}
	if _, err := n.t.ReloadChanges(n.cfg); err != nil {
		t.Fatal(err)
	}
	if got := n.t.mesh.claimsRefused.Load(); got != 1 {
		t.Fatalf("one refused claim counted %d times", got)
	}
	if mb := n.memberOf(t, f); len(mb.refused) != 1 {
		t.Fatalf("status shows %v", mb.refused)
	}
}

// A record refused for its name is counted once, however many versions of it come.
func TestMeshRefusedNameCountedOnce(t *testing.T) {
	n := startMeshNode(t, "alpha", "10.77.0.1/24", `accept_prefixes = ["10.77.0.0/24"]`)
	holder, squatter := newForged(t), newForged(t)
	holder.offer(t, n, mesh.Record{Name: "db"})
	n.memberOf(t, holder)
	for v := range 3 {
		squatter.offer(t, n, mesh.Record{Name: "db"})
		waitUntil(t, "the new version is applied", func() bool {
			m := n.t.mesh
			m.mu.Lock()
			defer m.mu.Unlock()
			mb := m.members[squatter.id.Public]
			cur := n.t.mesh.eng.Member(squatter.id.Public)
			return mb != nil && mb.rec != nil && cur != nil && mb.rec.Version == cur.Version && n.t.mesh.eng.Stats().Accepted == uint64(v+2)
		})
	}
	if got := n.t.mesh.namesRefused.Load(); got != 1 {
		t.Fatalf("one refused name counted %d times", got)
	}
}

// TestMeshNeighbourDialsBackOffWhenNobodyAnswers: a node short of neighbours whose
// candidates never answer (members behind NATs no punch has opened) dials them with a
// growing wait, a handful of times in ten minutes, not one after another for good; a
// dial that makes a session resets the wait.
func TestMeshNeighbourDialsBackOffWhenNobodyAnswers(t *testing.T) {
	n := startMeshNode(t, "alpha", "10.77.0.1/24", `accept_prefixes = ["10.77.0.0/24"]`)
	for i := range 3 {
		offerDeaf(t, n, fmt.Sprintf("deaf%d", i))
	}
	m := n.t.mesh
	waitUntil(t, "three member peers", func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		k := 0
		for _, mb := range m.members {
			if mb.p != nil && mb.rec != nil {
				k++
			}
		}
		return k == 3
	})
	// The test plays the dials' outcome: none is in flight at the next look (it was
	// given up, as one nobody answers is after neighbourDialWait), and none makes a
	// session until up says so.
	var up atomic.Bool
	m.mu.Lock()
	m.dialState = func(*member, bool) (bool, bool) { return false, up.Load() }
	m.mu.Unlock()
	dials := func() int { m.mu.Lock(); defer m.mu.Unlock(); return m.dials }
	now := time.Now()
	start := dials()
	for range 600 {
		n.t.keepNeighbours(now)
		now = now.Add(time.Second)
	}
	got := dials() - start
	if got == 0 {
		t.Fatal("no neighbour dial at all")
	}
	// 5, 10, 20, 40, 80, 160, 300, 300 s apart (less jitter): 8 dials at most, and one
	// more the mesh loop may start meanwhile in real time.
	if got > 9 {
		t.Fatalf("%d neighbour dials in 10 minutes of nobody answering, want a backoff (at most 9)", got)
	}
	// A dial that makes a session resets the count: the next failure waits 5 s again.
	m.mu.Lock()
	fails := m.dialFails
	for _, mb := range m.members {
		m.lastDial = mb
		break
	}
	m.mu.Unlock()
	if fails < 5 {
		t.Fatalf("%d failed dials counted, want the ones above", fails)
	}
	up.Store(true)
	n.t.keepNeighbours(now)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.dialFails != 0 {
		t.Fatalf("a dial that made a session left %d failures counted", m.dialFails)
	}
}
