//go:build e2e

package e2e

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	binenc "encoding/binary"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/internal/nslab"
	"github.com/stt-tun/stt-tun/stt"
	"github.com/stt-tun/stt-tun/stt/mesh"
	"github.com/stt-tun/stt-tun/stt/wire"
)

// attackTimeout bounds how long a victim may take to count what an attacker sent.
const attackTimeout = 15 * time.Second

// attacker is a malicious member: it holds the seed and a key of its own, and speaks
// STT and the gossip protocol directly, so that it can send a victim what no stt-tun
// would. It runs in this test process, its socket in its own namespace.
type attacker struct {
	t     *testing.T
	node  *stt.Node
	id    mesh.Identity
	netID [16]byte
	seed  [32]byte
	ep    netip.AddrPort // its own underlay endpoint
	name  string

	up      chan struct{} // closed when the first session comes up
	upOnce  sync.Once
	dataIn  atomic.Uint64 // data packets delivered to it: a hijack would show here
	mu      sync.Mutex
	records map[[32]byte][]byte // records the victim sent it, by X25519 key
	version uint64
}

type attackHandler struct{ a *attacker }

func (h attackHandler) Deliver(in *stt.Inbound) { h.a.dataIn.Add(uint64(in.N)) }

// newAttacker creates the attacker in a new namespace of m's lab, linked to the router
// like any member, and starts its STT node (not yet talking to anyone).
func newAttacker(t *testing.T, m *meshLab, name string) *attacker {
	t.Helper()
	m.n++
	i := m.n
	ns := m.lab.NS(name)
	m.lab.Link(m.router, []string{fmt.Sprintf("198.18.%d.1/24", i)}, ns, []string{underlay(i) + "/24"})
	ns.MustRun(t, "ip", "route", "add", "default", "via", fmt.Sprintf("198.18.%d.1", i))
	seed, err := config.LoadSeed(m.seed)
	if err != nil {
		t.Fatal(err)
	}
	var edSeed [32]byte
	if _, err := rand.Read(edSeed[:]); err != nil {
		t.Fatal(err)
	}
	a := &attacker{
		t: t, id: mesh.NewIdentity(edSeed), netID: mesh.NetworkID(seed), seed: seed, name: name,
		ep: netip.MustParseAddrPort(fmt.Sprintf("%s:%d", underlay(i), port)),
		up: make(chan struct{}), records: map[[32]byte][]byte{},
	}
	var admit func(string, [32]byte) (*stt.Peer, error)
	n, err := stt.New(stt.Config{
		Seed: seed, PrivateKey: config.X25519FromEd25519Seed(edSeed), Name: name, ListenPort: port,
		Handler: attackHandler{a},
		Admit:   func(name string, k [32]byte) (*stt.Peer, error) { return admit(name, k) },
		Extension: func(p *stt.Peer, typ byte, body []byte, _ netip.AddrPort, _ bool) {
			if typ != mesh.MsgRecords {
				return
			}
			raws, err := mesh.ParseRecords(body, nil)
			if err != nil {
				return
			}
			a.mu.Lock()
			defer a.mu.Unlock()
			for _, raw := range raws {
				if rec, err := mesh.ParseRecord(raw, a.netID, time.Now()); err == nil {
					a.records[rec.Key] = slices.Clone(raw)
				}
			}
		},
		SessionUp: func(*stt.Peer, bool) { a.upOnce.Do(func() { close(a.up) }) },
	})
	// It takes every member that calls: were a claim of its accepted, the traffic
	// would come.
	cfgAdmit := func(name string, _ [32]byte) (*stt.Peer, error) {
		return a.node.AddPeer(stt.PeerConfig{Name: name})
	}
	if err != nil {
		t.Fatal(err)
	}
	admit = cfgAdmit
	if err := ns.Do(n.Start); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	a.node = n
	return a
}

// dial makes a session with the member name at the underlay address addr.
func (a *attacker) dial(name, addr string) *stt.Peer {
	a.t.Helper()
	sp, err := a.node.AddPeer(stt.PeerConfig{Name: name, Endpoint: addr})
	if err != nil {
		a.t.Fatal(err)
	}
	sp.Connect()
	select {
	case <-a.up:
	case <-time.After(reachTimeout):
		a.t.Fatalf("attacker: no session with %s at %s within %v", name, addr, reachTimeout)
	}
	return sp
}

// record signs a record of the attacker's own key with the next version.
func (a *attacker) record(r mesh.Record) []byte {
	a.t.Helper()
	a.version++
	return a.recordAt(r, uint64(time.Now().UnixNano())+a.version)
}

// recordAt signs r, as the attacker, with the given version.
func (a *attacker) recordAt(r mesh.Record, version uint64) []byte {
	a.t.Helper()
	return a.recordExp(r, version, time.Now().Add(10*time.Minute))
}

// recordExp signs r, as the attacker, with the given version and expiry.
func (a *attacker) recordExp(r mesh.Record, version uint64, expires time.Time) []byte {
	a.t.Helper()
	if r.Name == "" {
		r.Name = a.name
	}
	r.Version = version
	r.Expires = expires
	raw, err := r.Marshal(a.id, a.netID)
	if err != nil {
		a.t.Fatal(err)
	}
	return raw
}

// signAs re-signs the body of raw (everything before the signature) with the
// attacker's signing key, whatever signing key the body names.
func (a *attacker) signAs(body []byte) []byte {
	msg := append([]byte("stt-tun member record v1\x00"), a.netID[:]...)
	msg = append(msg, body...)
	return append(slices.Clone(body), ed25519.Sign(a.id.Signing, msg)...)
}

// send sends one gossip message to p.
func (a *attacker) send(p *stt.Peer, typ byte, body []byte) {
	a.t.Helper()
	if err := p.SendReliable(typ, body); err != nil {
		a.t.Fatalf("attacker: send %#x (%d bytes): %v", typ, len(body), err)
	}
}

// sendRecord sends raw in a RECORDS message.
func (a *attacker) sendRecord(p *stt.Peer, raw []byte) {
	a.t.Helper()
	body, err := mesh.AppendRecords(nil, raw)
	if err != nil {
		a.t.Fatal(err)
	}
	a.send(p, mesh.MsgRecords, body)
}

// fetch asks p for the record of key (WANT) and waits for it.
func (a *attacker) fetch(p *stt.Peer, key [32]byte) []byte {
	a.t.Helper()
	body, err := mesh.AppendWant(nil, [][32]byte{key})
	if err != nil {
		a.t.Fatal(err)
	}
	a.send(p, mesh.MsgWant, body)
	ctx, cancel := context.WithTimeout(context.Background(), attackTimeout)
	defer cancel()
	var raw []byte
	if err := nslab.WaitFor(ctx, func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		raw = a.records[key]
		return raw != nil
	}); err != nil {
		a.t.Fatalf("attacker: the victim did not send the record it was asked for")
	}
	return raw
}

// sendFrom sends p one IPv6/UDP datagram from src to dst through the session.
func (a *attacker) sendFrom(p *stt.Peer, src, dst netip.Addr) {
	a.t.Helper()
	pkt := make([]byte, wire.HeaderLen+48, wire.HeaderLen+48+wire.TagLen)
	ip := pkt[wire.HeaderLen:]
	ip[0] = 0x60
	binenc.BigEndian.PutUint16(ip[4:], 8) // payload length
	ip[6], ip[7] = 17, 64                 // UDP, hop limit
	s16, d16 := src.As16(), dst.As16()
	copy(ip[8:], s16[:])
	copy(ip[24:], d16[:])
	binenc.BigEndian.PutUint16(ip[40:], 4000)
	binenc.BigEndian.PutUint16(ip[42:], 4000)
	binenc.BigEndian.PutUint16(ip[44:], 8)
	if err := p.Send([][]byte{pkt}, []uint16{0}); err != nil {
		a.t.Fatalf("attacker: send a datagram: %v", err)
	}
}

// peerView is what a victim's status says of one peer.
type peerView struct {
	Name            string   `json:"name"`
	PublicKey       string   `json:"public_key"`
	Source          string   `json:"source"`
	MeshAddress     string   `json:"mesh_address"`
	Candidates      []string `json:"candidates"`
	AllowedPrefixes []string `json:"allowed_prefixes"`
	Refusals        []string `json:"refusals"`
}

type meshView struct {
	Peers    []peerView        `json:"peers"`
	Counters map[string]uint64 `json:"counters"`
}

func (v meshView) peer(name string) *peerView {
	for i := range v.Peers {
		if v.Peers[i].Name == name {
			return &v.Peers[i]
		}
	}
	return nil
}

func viewOf(t *testing.T, nd *node) meshView {
	t.Helper()
	r := nd.stt("status", "--json", linkName)
	if r.err != nil {
		t.Fatalf("%s: status: %v: %s", nd.name, r.err, r.stderr)
	}
	var v meshView
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatalf("%s: status --json: %v", nd.name, err)
	}
	return v
}

// waitView polls nd's status until cond holds, and fails with what it saw last.
func waitView(t *testing.T, nd *node, what string, cond func(v meshView) bool) meshView {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), attackTimeout)
	defer cancel()
	var v meshView
	if err := nslab.WaitFor(ctx, func() bool { v = viewOf(t, nd); return cond(v) }); err != nil {
		t.Fatalf("%s: %s: not within %v; peers %+v counters %v", nd.name, what, attackTimeout, v.Peers, meshCountersOf(v.Counters))
	}
	return v
}

// waitCounted waits until nd's counter has grown by at least n since before.
func waitCounted(t *testing.T, nd *node, before map[string]uint64, counter string, n uint64) meshView {
	t.Helper()
	return waitView(t, nd, fmt.Sprintf("counts %d more %s (was %d)", n, counter, before[counter]), func(v meshView) bool {
		return v.Counters[counter] >= before[counter]+n
	})
}

func meshCountersOf(c map[string]uint64) map[string]uint64 {
	out := map[string]uint64{}
	for k, v := range c {
		if strings.HasPrefix(k, "mesh_") && v != 0 {
			out[k] = v
		}
	}
	return out
}

func keyOf(t *testing.T, nd *node) [32]byte {
	t.Helper()
	k, err := config.DecodeKey(nd.publicKey())
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// sameView fails unless nd still sees the peer as want saw it: the same key, mesh
// address and accepted prefixes, and no candidate the attacker made up (its candidates
// may grow by what its owner learns of itself meanwhile).
func sameView(t *testing.T, nd *node, want *peerView, ownerUnderlay string) {
	t.Helper()
	var got *peerView
	v := viewOf(t, nd)
	for i := range v.Peers {
		// By key: a refused impostor may show under the same name.
		if v.Peers[i].PublicKey == want.PublicKey {
			got = &v.Peers[i]
		}
	}
	if got == nil || got.Name != want.Name || got.PublicKey != want.PublicKey || got.MeshAddress != want.MeshAddress ||
		!slices.Equal(got.AllowedPrefixes, want.AllowedPrefixes) ||
		len(got.Candidates) == 0 ||
		slices.ContainsFunc(got.Candidates, func(c string) bool { return !strings.HasPrefix(c, ownerUnderlay+":") }) {
		t.Fatalf("%s's view of %s changed: was %+v, now %+v", nd.name, want.Name, *want, got)
	}
}

// TestMeshForgedStaleAndOversizedRecordsAreDropped: a member that holds the seed sends a
// victim records with a bad signature (its own, and another member's record altered or
// re-signed under that member's signing key), an older version of its own record after
// a newer one, the replay of another member's record, newer versions that expired or
// expire too far ahead, an oversized record and body, garbage gossip messages, a
// record of a second key that takes an honest member's name, and a burst of versions
// beyond the rate bound. The victim counts each by kind, its view of the honest member
// (key, address, candidates, prefixes) and of the attacker (the newest valid record)
// does not change, and the honest members still reach each other.
func TestMeshForgedStaleAndOversizedRecordsAreDropped(t *testing.T) {
	m := newMeshLab(t)
	victim, _ := m.add("m1", "\n[discovery]\naccept_prefixes = [\"10.77.0.0/24\"]\n")
	honest, _ := m.add("m2", discovery(underlay(1)+fmt.Sprintf(":%d", port)))
	victim.upDaemon()
	honest.upDaemon()
	waitMembers(t, victim, 1)
	waitMembers(t, honest, 1)
	honestKey := keyOf(t, honest)

	a := newAttacker(t, m, "evil")
	sp := a.dial("m1", fmt.Sprintf("%s:%d", underlay(1), port))
	own := mesh.Record{
		Addresses: []netip.Prefix{netip.MustParsePrefix("10.77.0.99/24")},
		Endpoints: []mesh.Endpoint{{Kind: mesh.EndpointLocal, Addr: a.ep}},
	}
	a.sendRecord(sp, a.record(own))
	wantCands := []string{a.ep.String()}
	base := waitView(t, victim, "takes the attacker's first record", func(v meshView) bool {
		p := v.peer("evil")
		return p != nil && slices.Equal(p.Candidates, wantCands) && v.peer("m2") != nil && v.peer("m2").MeshAddress != ""
	})
	honestView := *base.peer("m2")
	c := base.Counters

	// A bad signature on its own record: a flipped byte.
	bad := own
	bad.Endpoints = []mesh.Endpoint{{Kind: mesh.EndpointLocal, Addr: netip.MustParseAddrPort("192.0.2.66:4444")}}
	raw := a.record(bad)
	raw[len(raw)-1] ^= 0x01
	a.sendRecord(sp, raw)
	c = waitCounted(t, victim, c, "mesh_record_bad_signature", 1).Counters

	// Another member's record, altered (a newer version) with its signature kept.
	real := a.fetch(sp, honestKey)
	forged := slices.Clone(real)
	binenc.LittleEndian.PutUint64(forged[8:16], binenc.LittleEndian.Uint64(forged[8:16])+1)
	a.sendRecord(sp, forged)
	c = waitCounted(t, victim, c, "mesh_record_bad_signature", 1).Counters

	// Another member's signing key, the body re-signed with the attacker's key.
	a.sendRecord(sp, a.signAs(forged[:len(forged)-ed25519.SignatureSize]))
	c = waitCounted(t, victim, c, "mesh_record_bad_signature", 1).Counters
	sameView(t, victim, &honestView, underlay(2))

	// A stale version: a newer record of its own, then an older one with other content.
	newer := own
	newer.Endpoints = append(newer.Endpoints, mesh.Endpoint{Kind: mesh.EndpointConfigured, Addr: netip.MustParseAddrPort("192.0.2.7:5007")})
	vNew := uint64(time.Now().UnixNano()) + 1e12
	a.sendRecord(sp, a.recordAt(newer, vNew))
	wantCands = []string{a.ep.String(), "192.0.2.7:5007"}
	c = waitView(t, victim, "takes the attacker's newer record", func(v meshView) bool {
		p := v.peer("evil")
		return p != nil && slices.Equal(p.Candidates, wantCands)
	}).Counters
	older := own
	older.Endpoints = []mesh.Endpoint{{Kind: mesh.EndpointConfigured, Addr: netip.MustParseAddrPort("192.0.2.8:5008")}}
	a.sendRecord(sp, a.recordAt(older, vNew-1))
	c = waitCounted(t, victim, c, "mesh_record_stale", 1).Counters
	// A replay of the honest member's record as it was fetched.
	a.sendRecord(sp, real)
	c = waitCounted(t, victim, c, "mesh_record_stale", 1).Counters

	// Newer versions that expired already, or expire further ahead than a record may.
	a.sendRecord(sp, a.recordExp(older, vNew+10, time.Now().Add(-time.Minute)))
	c = waitCounted(t, victim, c, "mesh_record_expired", 1).Counters
	a.sendRecord(sp, a.recordExp(older, vNew+11, time.Now().Add(mesh.MaxLifetime+time.Hour)))
	c = waitCounted(t, victim, c, "mesh_record_future", 1).Counters

	// Oversized: a RECORDS body whose record is longer than a record may be, and one
	// whose body is longer than a RECORDS body may be.
	big := make([]byte, 3+mesh.MaxRecordLen+76)
	big[0] = 1
	binenc.LittleEndian.PutUint16(big[1:], uint16(len(big)-3))
	copy(big[3:], real)
	a.send(sp, mesh.MsgRecords, big)
	c = waitCounted(t, victim, c, "mesh_bad_messages", 1).Counters
	huge := make([]byte, mesh.MaxRecordsBody+1)
	huge[0] = 2
	binenc.LittleEndian.PutUint16(huge[1:], mesh.MaxRecordLen)
	copy(huge[3:], real)
	a.send(sp, mesh.MsgRecords, huge)
	c = waitCounted(t, victim, c, "mesh_bad_messages", 1).Counters

	// Garbage: every gossip message type with a body of the wrong shape, and a type
	// no one defined.
	for _, typ := range []byte{mesh.MsgSummary, mesh.MsgDigest, mesh.MsgWant, mesh.MsgRecords, mesh.MsgObserve, mesh.MsgObserved} {
		a.send(sp, typ, []byte{0xff, 0xfe, 0xfd})
	}
	a.send(sp, 0xf7, []byte("hello"))
	waitCounted(t, victim, c, "mesh_bad_messages", 6)
	c = waitCounted(t, victim, c, "mesh_unknown_messages", 1).Counters

	// A second key of the attacker's, never seen in a handshake, whose record takes the
	// honest member's name.
	var edSeed2 [32]byte
	_, _ = rand.Read(edSeed2[:])
	squat := mesh.Record{Name: "m2", Version: uint64(time.Now().UnixNano()), Expires: time.Now().Add(10 * time.Minute),
		Endpoints: []mesh.Endpoint{{Kind: mesh.EndpointLocal, Addr: a.ep}}}
	raw, err := squat.Marshal(mesh.NewIdentity(edSeed2), a.netID)
	if err != nil {
		t.Fatal(err)
	}
	hc := viewOf(t, honest).Counters
	a.sendRecord(sp, raw)
	waitCounted(t, victim, c, "mesh_names_refused", 1)
	// The victim passes the (validly signed) record on; m2 refuses its own name.
	waitCounted(t, honest, hc, "mesh_names_refused", 1)

	// Nothing changed: the victim sees the honest member as before and the attacker
	// by its newest valid record; the honest members still reach each other.
	sameView(t, victim, &honestView, underlay(2))
	if p := viewOf(t, victim).peer("evil"); p == nil || !slices.Equal(p.Candidates, wantCands) {
		t.Fatalf("the victim's view of the attacker is %+v, want candidates %v (its newest valid record)", p, wantCands)
	}
	vst, _ := victim.meshStatus()
	hst, _ := honest.meshStatus()
	waitPing(t, victim.ns, hst.Mesh.Address)
	waitPing(t, honest.ns, vst.Mesh.Address)
	if n := a.dataIn.Load(); n != 0 {
		t.Fatalf("the attacker received %d data packets", n)
	}

	// A burst of new versions: past the per-member rate, the rest are refused.
	c = viewOf(t, victim).Counters
	for i := range 10 {
		a.sendRecord(sp, a.recordAt(newer, vNew+100+uint64(i)))
	}
	waitCounted(t, victim, c, "mesh_record_rate_limited", 1)
}

// TestMeshClaimsOnOthersAddressesAreRefused: a member announces another member's
// key-derived address, a prefix a [[peer]] of the victim owns, and another member's
// accepted address. The victim refuses each, counts them and says why in status; a
// third member that got the record through gossip refuses the claim on the derived
// address too, and its pings to that address reach the member that owns it, never
// the attacker.
func TestMeshClaimsOnOthersAddressesAreRefused(t *testing.T) {
	m := newMeshLab(t)
	victim, _ := m.add("m1", "")
	owner, _ := m.add("m2", discovery(underlay(1)+fmt.Sprintf(":%d", port)))
	third, _ := m.add("m3", discovery(underlay(1)+fmt.Sprintf(":%d", port)))
	// The victim knows m2 as a [[peer]] too, pinned to its key, owning 10.88.0.0/24.
	victim.writeConfig(nodeConf{addresses: []string{overlay4(1) + "/24"}, seedFile: m.seed,
		peers: []peerConf{{name: "m2", allowed: []string{"10.88.0.0/24"}, publicKey: owner.publicKey()}},
		extra: "\n[discovery]\naccept_prefixes = [\"10.77.0.0/24\", \"10.88.0.0/16\"]\n"})
	victim.upDaemon()
	owner.upDaemon()
	third.upDaemon()
	for _, nd := range []*node{victim, owner, third} {
		waitMembers(t, nd, 2)
	}
	ownerSt, err := owner.meshStatus()
	if err != nil {
		t.Fatal(err)
	}
	ownerAddr := netip.MustParseAddr(ownerSt.Mesh.Address)

	a := newAttacker(t, m, "evil")
	sp := a.dial("m1", fmt.Sprintf("%s:%d", underlay(1), port))
	claim := mesh.Record{
		Addresses: []netip.Prefix{netip.MustParsePrefix("10.77.0.99/24")},
		Prefixes: []netip.Prefix{
			netip.PrefixFrom(ownerAddr, 128),           // m2's key-derived address
			netip.MustParsePrefix("10.88.0.0/25"),      // inside the [[peer]] m2's prefix
			netip.MustParsePrefix(overlay4(3) + "/32"), // m3's accepted address
		},
		Endpoints: []mesh.Endpoint{{Kind: mesh.EndpointLocal, Addr: a.ep}},
	}
	before := viewOf(t, victim).Counters
	thirdBefore := viewOf(t, third).Counters
	a.sendRecord(sp, a.record(claim))

	v := waitCounted(t, victim, before, "mesh_claims_refused", 3)
	p := v.peer("evil")
	if p == nil {
		t.Fatalf("the victim shows no peer evil: %+v", v.Peers)
	}
	for _, want := range []string{
		ownerAddr.String() + "/128: inside the mesh's key-derived address space",
		"10.88.0.0/25: overlaps 10.88.0.0/24 of [[peer]] \"m2\"",
		overlay4(3) + "/32: overlaps " + overlay4(3) + "/32 claimed by member \"m3\"; neither gets it",
	} {
		if !slices.Contains(p.Refusals, want) {
			t.Errorf("the victim's refusals for evil are %q, want one %q", p.Refusals, want)
		}
	}
	if !slices.Equal(p.AllowedPrefixes, []string{"10.77.0.99/32"}) {
		t.Errorf("the victim accepted %v of evil's claims, want only its own address 10.77.0.99/32", p.AllowedPrefixes)
	}
	if o := v.peer("m2"); o == nil || o.MeshAddress != ownerAddr.String() {
		t.Errorf("the victim's view of m2 is %+v, want mesh address %s", o, ownerAddr)
	}

	// Nor may it send from m2's address: the victim drops such packets.
	vst, err := victim.meshStatus()
	if err != nil {
		t.Fatal(err)
	}
	a.sendFrom(sp, ownerAddr, netip.MustParseAddr(vst.Mesh.Address))
	waitCounted(t, victim, v.Counters, "tunnel_source_denied", 1)

	// The third member got the record by gossip and refuses the derived address too.
	tv := waitCounted(t, third, thirdBefore, "mesh_claims_refused", 1)
	if tp := tv.peer("evil"); tp == nil || !slices.Contains(tp.Refusals, ownerAddr.String()+"/128: inside the mesh's key-derived address space") {
		t.Fatalf("m3's view of evil %+v has no refusal of %s", tp, ownerAddr)
	}
	// Its traffic to m2's derived address reaches m2, not the attacker.
	ownerRx := func() uint64 {
		st, err := third.status()
		if err != nil {
			t.Fatal(err)
		}
		for _, ps := range st.Peers {
			if ps.Name == "m2" {
				return ps.TxPackets
			}
		}
		return 0
	}
	tx0 := ownerRx()
	for range 3 {
		waitPing(t, third.ns, ownerAddr.String())
	}
	if tx := ownerRx(); tx < tx0+3 {
		t.Errorf("m3 sent %d packets to m2 for 3 pings of m2's address", tx-tx0)
	}
	if n := a.dataIn.Load(); n != 0 {
		t.Fatalf("the attacker received %d data packets for an address it claimed", n)
	}
}
