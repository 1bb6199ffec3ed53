package tunnel

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/internal/status"
	"github.com/stt-tun/stt-tun/stt"
	"github.com/stt-tun/stt-tun/stt/mesh"
)

// How the tunnel learned of a member (status "source").
const (
	sourceConfig    = "config"    // a [[peer]] section
	sourceBootstrap = "bootstrap" // reached through a [discovery] bootstrap address
	sourceGossip    = "gossip"    // its record came from another member
	sourceHandshake = "handshake" // it contacted this node first
)

// meshTick is how often the mesh loop looks after neighbours, the node's own record
// and the engine's timers.
const meshTick = time.Second

// meshNeighbours is how many members a node keeps sessions with, so that gossip keeps
// flowing when any one of them leaves.
const meshNeighbours = 3

// dialWindow is how long a member dialed to keep a neighbour counts as a dial in
// flight: no other member is dialed in its place before, so that records whose
// endpoints never answer (a member may announce any address) do not make this node
// send HELLOs to ever more of them.
const dialWindow = 30 * time.Second

// maxObservedEndpoints bounds the reflected addresses a node puts in its own record.
const maxObservedEndpoints = mesh.MaxEndpoints / 2

// bootRetry is how often a node that has no session with any member dials its
// bootstrap addresses again.
const bootRetry = 5 * time.Second

// meshState is the tunnel's side of the mesh: the gossip engine, the members it knows
// and the policy that turns their records into routes.
type meshState struct {
	eng      *mesh.Engine
	seed     [32]byte
	self     [32]byte     // our X25519 public key
	subnet   netip.Prefix // the members' /64
	addr     netip.Addr   // our own derived address
	accept   []netip.Prefix
	announce []netip.Prefix
	extraEPs []netip.AddrPort
	idle     time.Duration
	// nodeName and ifName are the configuration's, which a reload cannot change, kept
	// here for the receive goroutines and the mesh loop, which read no t.cfg unlocked.
	nodeName string
	ifName   string

	wake    chan struct{} // cap 1: a record changed or a session came up
	stop    chan struct{}
	done    chan struct{}
	started atomic.Bool // the loop runs: stopMesh waits for done

	// byKey maps a member's X25519 key to its tunnel peer, for the engine's Send and
	// the extension hook (receive goroutines): a sync.Map so that they take no lock
	// the mesh loop holds.
	byKey sync.Map // [32]byte → *peer

	// mu guards the fields below; the mesh loop and Admit take it, never while calling
	// the engine.
	mu      sync.Mutex
	members map[[32]byte]*member
	boots   []*bootTarget
	// lastBoot is when the bootstrap addresses were last dialled.
	lastBoot time.Time
	// dialed are the members keepNeighbours dialed within dialWindow, and when.
	dialed map[[32]byte]time.Time
	// underlay are the host's own addresses outside the tunnel (localAddrs), as the
	// mesh loop last found them: no member may claim them.
	underlay []netip.Addr

	claimsRefused atomic.Uint64 // prefixes or addresses a member claimed and policy refused
	namesRefused  atomic.Uint64 // records whose name another key holds
}

// member is one member of the mesh this node knows: from its record, a handshake, or
// a [[peer]] that names it.
type member struct {
	key      [32]byte
	name     string
	source   string
	p        *peer          // its tunnel peer; nil when its record was refused
	rec      *mesh.Record   // nil until its record arrives
	accepted []netip.Prefix // its claims that policy accepted, in the table
	refused  []string       // why the others were refused, for status
	routes   []netip.Prefix // OS routes added for it
	admitted time.Time      // when a handshake admitted it (zero if learned otherwise)
}

// recordWait is how long a member admitted by its handshake may stay without a record
// and without a session before it is forgotten: its record normally follows at once.
const recordWait = 5 * time.Minute

// bootTarget is one [discovery] bootstrap entry and the wildcard peer that dials it.
type bootTarget struct {
	target string
	sp     *stt.Peer
}

// startMesh creates the gossip engine and the bootstrap peers; the loop starts with
// startMeshLoop once the tunnel is up.
func (t *Tunnel) startMesh(seed [32]byte, key config.NodeKey) error {
	d := t.cfg.Discovery
	id := mesh.NewIdentity(key.Ed25519Seed)
	m := &meshState{
		seed:     seed,
		self:     id.Public,
		subnet:   mesh.MemberPrefix(seed),
		addr:     mesh.MemberAddr(seed, id.Public),
		accept:   d.AcceptPrefixes,
		announce: d.AnnouncePrefixes,
		extraEPs: d.Endpoints,
		idle:     d.IdleTimeout,
		nodeName: t.cfg.Interface.NodeName,
		ifName:   t.cfg.Interface.Name,
		wake:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
		members:  make(map[[32]byte]*member),
		dialed:   make(map[[32]byte]time.Time),
	}
	m.eng = mesh.New(mesh.Config{
		Identity: id,
		Seed:     seed,
		Logger:   t.log,
		Send: func(to [32]byte, typ byte, body []byte) error {
			v, ok := m.byKey.Load(to)
			if !ok {
				return errors.New("not a member with a peer")
			}
			return v.(*peer).sp.SendReliable(typ, body)
		},
		OnChange: func(old, cur *mesh.Record) { m.kick() },
	})
	t.mesh = m
	return nil
}

func (m *meshState) kick() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// meshAddress is the interface address the mesh gives this node, or an invalid
// prefix without the mesh or with mesh_ipv6 off.
func (t *Tunnel) meshAddress() netip.Prefix {
	if t.mesh == nil || !t.cfg.Discovery.MeshIPv6 {
		return netip.Prefix{}
	}
	return netip.PrefixFrom(t.mesh.addr, t.mesh.subnet.Bits())
}

// addBootstraps creates one wildcard peer per bootstrap entry.
func (t *Tunnel) addBootstraps() error {
	m := t.mesh
	for i, b := range t.cfg.Discovery.Bootstrap {
		pc := stt.PeerConfig{Name: fmt.Sprintf("~bootstrap%d", i+1), AnyName: true}
		if strings.HasPrefix(b, "ws://") || strings.HasPrefix(b, "wss://") {
			pc.WSURL = b
		} else {
			pc.Endpoint = b
		}
		sp, err := t.node.AddPeer(pc)
		if err != nil {
			return fmt.Errorf("bootstrap %s: %w", b, err)
		}
		m.boots = append(m.boots, &bootTarget{target: b, sp: sp})
	}
	return nil
}

// admit is the node's Admit hook: a member this node does not know yet made a session
// with it (or answered a bootstrap handshake). Any holder of the seed is a member; the
// name must be free and the member is pinned to the key it proved.
func (t *Tunnel) admit(name string, static [32]byte) (*stt.Peer, error) {
	m := t.mesh
	if m == nil {
		return nil, errors.New("not a configured peer")
	}
	if static == m.self || name == m.nodeName {
		return nil, errors.New("that is this node")
	}
	if err := config.CheckName(name); err != nil {
		return nil, err
	}
	// No reloadMu: this runs on a receive goroutine, which a reload must not stall.
	// The mesh loop puts the member's address in the table at once (kick).
	m.mu.Lock()
	defer m.mu.Unlock()
	if mb := m.members[static]; mb != nil && mb.p != nil {
		return mb.p.sp, nil
	}
	if len(m.members) >= mesh.DefaultMaxMembers {
		return nil, errors.New("member table full")
	}
	// A member a bootstrap address answered for is marked so by the mesh loop, once the
	// wildcard peer has recorded whom it reached (after this call).
	mb := &member{key: static, name: name, source: sourceHandshake, admitted: time.Now()}
	if err := t.addMemberPeerLocked(mb, nil); err != nil {
		return nil, err
	}
	m.members[static] = mb
	m.kick()
	return mb.p.sp, nil
}

// addMemberPeerLocked creates the stt peer of a discovered member: pinned to its key,
// lazy (no handshake until something is sent), idle sessions closed.
func (t *Tunnel) addMemberPeerLocked(mb *member, rec *mesh.Record) error {
	key := mb.key
	p := &peer{cfg: config.Peer{Name: mb.name, PublicKey: &key}, member: mb}
	pc := stt.PeerConfig{Name: mb.name, PublicKey: &key, Tag: p, IdleTimeout: t.mesh.idle}
	if rec != nil {
		pc.Candidates, pc.WSURL = candidatesOf(rec)
	}
	sp, err := t.node.AddPeer(pc)
	if err != nil {
		return err
	}
	p.sp = sp
	mb.p = p
	t.mesh.byKey.Store(key, p)
	return nil
}

// candidatesOf lists the UDP endpoints of a record to try, observed ones first, and its
// WebSocket URL.
func candidatesOf(rec *mesh.Record) ([]netip.AddrPort, string) {
	eps := slices.Clone(rec.Endpoints)
	sort.SliceStable(eps, func(i, j int) bool {
		return eps[i].Kind == mesh.EndpointObserved && eps[j].Kind != mesh.EndpointObserved
	})
	var out []netip.AddrPort
	for _, e := range eps {
		if !slices.Contains(out, e.Addr) && len(out) < 8 {
			out = append(out, e.Addr)
		}
	}
	return out, rec.WSURL
}

// meshLoop applies the engine's view to peers and routes, keeps neighbours, dials
// bootstraps while the node is alone, and drives the engine's timers.
func (t *Tunnel) meshLoop() {
	m := t.mesh
	defer close(m.done)
	m.started.Store(true)
	tick := time.NewTicker(meshTick)
	defer tick.Stop()
	t.refreshSelf()
	for {
		select {
		case <-m.stop:
			return
		case <-tick.C:
		case <-m.wake:
		}
		now := time.Now()
		t.syncMembers()
		t.refreshSelf()
		m.eng.Tick(now, t.connectedMembers())
		t.keepNeighbours(now)
	}
}

// connectedMembers lists the keys of the members with a session now.
func (t *Tunnel) connectedMembers() [][32]byte {
	m := t.mesh
	m.mu.Lock()
	defer m.mu.Unlock()
	var out [][32]byte
	for k, mb := range m.members {
		if mb.p != nil && mb.p.sp.HasSession() {
			out = append(out, k)
		}
	}
	return out
}

// keepNeighbours keeps sessions with a few members, and dials the bootstrap addresses
// while there is none.
func (t *Tunnel) keepNeighbours(now time.Time) {
	m := t.mesh
	m.mu.Lock()
	var up int
	var idle []*member
	for _, mb := range m.members {
		if mb.p == nil {
			continue
		}
		if mb.p.sp.HasSession() {
			up++
		} else if _, dialing := m.dialed[mb.key]; mb.rec != nil && !dialing {
			idle = append(idle, mb)
		}
	}
	// Dials in flight take a neighbour's place until they answer or dialWindow passes.
	pending := 0
	for k, at := range m.dialed {
		mb := m.members[k]
		if mb == nil || mb.p == nil || mb.p.sp.HasSession() || now.Sub(at) >= dialWindow || now.Before(at) {
			delete(m.dialed, k)
			continue
		}
		pending++
	}
	rand.Shuffle(len(idle), func(i, j int) { idle[i], idle[j] = idle[j], idle[i] })
	var dials []*peer
	for i := 0; i < len(idle) && up+pending+len(dials) < meshNeighbours; i++ {
		m.dialed[idle[i].key] = now
		dials = append(dials, idle[i].p)
	}
	dial := up == 0 && now.Sub(m.lastBoot) >= bootRetry
	if dial {
		m.lastBoot = now
	}
	boots := m.boots
	m.mu.Unlock()
	for _, p := range dials {
		p.sp.Connect()
	}
	if dial {
		for _, b := range boots {
			b.sp.Connect()
		}
	}
}

// refreshSelf gives the engine this node's record as it is now: addresses, prefixes,
// candidate endpoints (interface addresses, configured ones, reflected ones), WebSocket URL.
func (t *Tunnel) refreshSelf() {
	m := t.mesh
	t.mu.RLock()
	cfg := t.cfg
	t.mu.RUnlock()
	rec := mesh.Record{
		Name:      cfg.Interface.NodeName,
		Addresses: slices.Clone(cfg.Interface.Addresses),
		Prefixes:  slices.Clone(m.announce),
		WSURL:     cfg.WebSocket.PublicURL,
	}
	add := func(kind mesh.EndpointKind, ap netip.AddrPort) {
		if len(rec.Endpoints) >= mesh.MaxEndpoints || !ap.IsValid() || ap.Port() == 0 {
			return
		}
		for _, e := range rec.Endpoints {
			if e.Addr == ap {
				return
			}
		}
		rec.Endpoints = append(rec.Endpoints, mesh.Endpoint{Kind: kind, Addr: ap})
	}
	for _, ap := range m.extraEPs {
		add(mesh.EndpointConfigured, ap)
	}
	// Reflected addresses are what members say, and a member with many keys can fill
	// every slot: the latest few only, so that the node's own addresses keep a place.
	obs := m.eng.Observed()
	slices.SortFunc(obs, func(a, b mesh.Observation) int { return b.At.Compare(a.At) })
	nobs := 0
	for _, o := range obs {
		if !o.ViaWS && nobs < maxObservedEndpoints {
			before := len(rec.Endpoints)
			add(mesh.EndpointObserved, o.Addr)
			nobs += len(rec.Endpoints) - before
		}
	}
	local := t.localAddrs()
	m.mu.Lock()
	m.underlay = local
	m.mu.Unlock()
	if t.port != 0 {
		for _, a := range local {
			add(mesh.EndpointLocal, netip.AddrPortFrom(a, t.port))
		}
	}
	// The same endpoints in another order are the same record: no new version.
	slices.SortFunc(rec.Endpoints, func(a, b mesh.Endpoint) int {
		if a.Kind != b.Kind {
			return int(a.Kind) - int(b.Kind)
		}
		return a.Addr.Compare(b.Addr)
	})
	if err := m.eng.SetSelf(rec); err != nil {
		t.log.Warn("mesh: own record", "err", err)
	}
}

// localAddrs are the host's global unicast addresses outside the tunnel, IPv4 first.
func (t *Tunnel) localAddrs() []netip.Addr {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var v4, v6 []netip.Addr
	for _, ifc := range ifs {
		if ifc.Name == t.mesh.ifName || ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(ipn.IP)
			if !ok {
				continue
			}
			ip = ip.Unmap()
			if !ip.IsGlobalUnicast() || t.mesh.subnet.Contains(ip) || slices.Contains(t.ownAddrs, ip) {
				continue
			}
			if ip.Is4() {
				v4 = append(v4, ip)
			} else {
				v6 = append(v6, ip)
			}
		}
	}
	return append(v4, v6...)
}

// syncMembers brings the members, their peers, the prefix table and the routes in line
// with the engine's records.
func (t *Tunnel) syncMembers() {
	m := t.mesh
	recs := m.eng.Members()
	t.reloadMu.Lock()
	defer t.reloadMu.Unlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	changed := false
	seen := make(map[[32]byte]bool, len(recs))
	for _, rec := range recs {
		seen[rec.Key] = true
		mb := m.members[rec.Key]
		if mb != nil && mb.rec != nil && mb.rec.Version == rec.Version {
			continue
		}
		changed = true
		if mb == nil {
			mb = &member{key: rec.Key, name: rec.Name, source: sourceGossip}
			m.members[rec.Key] = mb
		}
		t.applyRecordLocked(mb, rec)
	}
	now := time.Now()
	var freed map[string]bool // names of the members forgotten now
	forget := func(mb *member) {
		if mb.p != nil && mb.source != sourceConfig {
			if freed == nil {
				freed = make(map[string]bool)
			}
			freed[mb.name] = true
		}
		t.forgetMemberLocked(mb)
	}
	for k, mb := range m.members {
		if mb.rec == nil && !mb.admitted.IsZero() && now.Sub(mb.admitted) > recordWait &&
			mb.p != nil && !mb.p.sp.HasSession() && mb.source != sourceConfig {
			// Admitted by a handshake, and never announced itself: forget it.
			changed = true
			forget(mb)
			delete(m.members, k)
			continue
		}
		if seen[k] || mb.rec == nil {
			continue
		}
		// Its record expired: the member is gone.
		changed = true
		forget(mb)
		delete(m.members, k)
	}
	if len(freed) > 0 {
		// A name a forgotten member held is free now for a record refused for it: a
		// member that restarted with a new key under its old name.
		for _, mb := range m.members {
			if mb.p == nil && mb.rec != nil && freed[mb.rec.Name] {
				t.applyRecordLocked(mb, mb.rec)
			}
		}
	}
	for _, b := range m.boots {
		if _, k, ok := b.sp.Reached(); ok {
			if mb := m.members[k]; mb != nil && (mb.source == sourceHandshake || mb.source == sourceGossip) {
				mb.source = sourceBootstrap
			}
		}
	}
	if changed {
		t.rebuildTableLocked()
	}
}

// applyRecordLocked takes a new or changed record of a member: its peer (created, or
// its candidates updated), and which of its claims policy accepts.
func (t *Tunnel) applyRecordLocked(mb *member, rec *mesh.Record) {
	m := t.mesh
	mb.rec = rec
	if mb.name != rec.Name {
		if mb.p != nil {
			// The name a key uses in its handshakes and in its record must agree.
			t.refuseNameLocked(mb, fmt.Sprintf("record names %q, but the member's handshake said %q", rec.Name, mb.name))
			return
		}
		mb.name = rec.Name
	}
	if mb.p == nil {
		if rec.Name == m.nodeName {
			// admit refuses this name in handshakes; a record may not take it either.
			t.refuseNameLocked(mb, fmt.Sprintf("name %q is this node's own", rec.Name))
			return
		}
		if cp := t.configPeerNamed(rec.Name); cp != nil {
			if cp.cfg.PublicKey != nil && *cp.cfg.PublicKey != rec.Key {
				t.refuseNameLocked(mb, fmt.Sprintf("name %q belongs to a [[peer]] with another public_key", rec.Name))
				return
			}
			mb.p, mb.source = cp, sourceConfig
			m.byKey.Store(mb.key, cp)
		} else if other := t.node.Peer(rec.Name); other != nil {
			t.refuseNameLocked(mb, fmt.Sprintf("name %q is held by another key", rec.Name))
			return
		} else if err := t.addMemberPeerLocked(mb, rec); err != nil {
			mb.refused = []string{err.Error()}
			return
		}
	}
	if mb.source != sourceConfig {
		cands, ws := candidatesOf(rec)
		pc := mb.p.sp.Config()
		pc.Candidates, pc.WSURL = cands, ws
		if err := mb.p.sp.Update(pc); err != nil {
			t.log.Debug("mesh: update member", "name", mb.name, "err", err)
		}
	}
	t.claimsLocked(mb)
}

// refuseNameLocked refuses a member's record for its name, with why shown in status;
// it is counted and logged once, not again for each version of the same record.
func (t *Tunnel) refuseNameLocked(mb *member, why string) {
	if !slices.Contains(mb.refused, why) {
		t.mesh.namesRefused.Add(1)
		t.log.Warn("mesh: refused a member's record for its name", "key", config.EncodeKey(mb.key), "reason", why)
	}
	mb.refused = []string{why}
}

// claimsLocked decides which of a member's claimed addresses and prefixes to accept: a
// configured peer's own prefixes always win; otherwise a claim must lie inside
// accept_prefixes, outside the mesh's own address space (where only keys decide), and
// clear of every other peer's prefixes.
func (t *Tunnel) claimsLocked(mb *member) {
	m := t.mesh
	prev := mb.refused
	mb.accepted, mb.refused = nil, nil
	if mb.source == sourceConfig || mb.rec == nil {
		return
	}
	var claims []netip.Prefix
	for _, a := range mb.rec.Addresses {
		claims = append(claims, netip.PrefixFrom(a.Addr(), a.Addr().BitLen()))
	}
	claims = append(claims, mb.rec.Prefixes...)
	for _, c := range claims {
		if why := t.refuseClaimLocked(mb, c); why != "" {
			line := c.String() + ": " + why
			mb.refused = append(mb.refused, line)
			if !slices.Contains(prev, line) { // once, not with every version or reload
				m.claimsRefused.Add(1)
				t.log.Warn("mesh: refused a member's claim", "member", mb.name, "prefix", c, "reason", why)
			}
			continue
		}
		mb.accepted = append(mb.accepted, c)
	}
}

func (t *Tunnel) refuseClaimLocked(mb *member, c netip.Prefix) string {
	m := t.mesh
	if c.Overlaps(m.subnet) || c.Overlaps(mesh.NetworkPrefix(m.seed)) {
		return "inside the mesh's key-derived address space"
	}
	ok := false
	for _, a := range m.accept {
		if a.Bits() <= c.Bits() && a.Contains(c.Addr()) {
			ok = true
			break
		}
	}
	if !ok {
		return "not inside accept_prefixes"
	}
	for _, p := range t.peers {
		for _, q := range p.cfg.AllowedPrefixes {
			if q.Overlaps(c) {
				return fmt.Sprintf("overlaps %s of [[peer]] %q", q, p.cfg.Name)
			}
		}
	}
	for _, a := range t.cfg.Interface.Addresses {
		// A claim narrower than the interface's prefix may still hold its address.
		if c.Contains(a.Addr()) || (c.Bits() < c.Addr().BitLen() && c.Overlaps(a.Masked())) && c.Bits() <= a.Bits() {
			return "covers this node's own address"
		}
	}
	for _, a := range m.underlay {
		if c.Contains(a) {
			return fmt.Sprintf("holds %s, an address of this host outside the tunnel", a)
		}
	}
	for _, q := range m.announce {
		if q.Overlaps(c) {
			return fmt.Sprintf("overlaps %s, which this node announces", q)
		}
	}
	for _, o := range m.members {
		if o == mb {
			continue
		}
		for _, q := range o.accepted {
			if q.Overlaps(c) {
				return fmt.Sprintf("overlaps %s of member %q", q, o.name)
			}
		}
	}
	return ""
}

// forgetMemberLocked removes a member whose record expired.
func (t *Tunnel) forgetMemberLocked(mb *member) {
	m := t.mesh
	if mb.p != nil && mb.source != sourceConfig {
		t.node.RemovePeer(mb.name)
		m.byKey.Delete(mb.key)
	}
	if mb.source == sourceConfig {
		m.byKey.Delete(mb.key)
	}
	mb.accepted = nil
	if t.route != nil {
		for _, r := range mb.routes {
			if err := t.route.DelRoute(r); err != nil {
				t.log.Warn("mesh: delete route", "route", r, "err", err)
			}
		}
	}
	mb.routes = nil
}

// configPeerNamed returns the [[peer]] with that name, or nil. Called with reloadMu held.
func (t *Tunnel) configPeerNamed(name string) *peer {
	for _, p := range t.peers {
		if p.cfg.Name == name {
			return p
		}
	}
	return nil
}

// rebuildTableLocked replaces the prefix table with the configured peers' prefixes and
// the members' derived addresses and accepted claims, and brings the OS routes for
// the members' claims in line. Called with reloadMu and mesh.mu held.
func (t *Tunnel) rebuildTableLocked() {
	t.mu.RLock()
	table := t.configTable(t.cfg, t.peers)
	t.mu.RUnlock()
	t.addMembersToTable(table)
	t.table.Store(table)
	t.syncMemberRoutesLocked()
}

// addMembersToTable inserts the members' key-derived addresses (only for a peer pinned
// to that key) and their accepted claims. Called with mesh.mu held.
func (t *Tunnel) addMembersToTable(table tableT) {
	m := t.mesh
	if m == nil {
		return
	}
	for _, mb := range m.members {
		if mb.p == nil {
			continue
		}
		if k := mb.p.cfg.PublicKey; k != nil && *k == mb.key && t.cfg.Discovery.MeshIPv6 {
			a := mesh.MemberAddr(m.seed, mb.key)
			table.Insert(netip.PrefixFrom(a, 128), mb.p)
		}
		for _, c := range mb.accepted {
			table.Insert(c, mb.p)
		}
	}
}

// syncMemberRoutesLocked adds OS routes for accepted claims the interface's own
// prefixes do not cover, and deletes those of claims no longer accepted.
func (t *Tunnel) syncMemberRoutesLocked() {
	if t.route == nil {
		return
	}
	m := t.mesh
	for _, mb := range m.members {
		var want []netip.Prefix
		for _, c := range mb.accepted {
			if !t.onLink(c) {
				want = append(want, c)
			}
		}
		for _, r := range mb.routes {
			if !slices.Contains(want, r) {
				if err := t.route.DelRoute(r); err != nil {
					t.log.Warn("mesh: delete route", "route", r, "err", err)
				}
			}
		}
		var have []netip.Prefix
		for _, r := range want {
			if slices.Contains(mb.routes, r) {
				have = append(have, r)
				continue
			}
			if err := t.route.AddRoute(r); err != nil {
				t.log.Warn("mesh: add route", "route", r, "member", mb.name, "err", err)
				continue
			}
			have = append(have, r)
		}
		mb.routes = have
	}
}

// onLink reports whether one of the interface's own prefixes covers c.
func (t *Tunnel) onLink(c netip.Prefix) bool {
	for _, a := range t.cfg.Interface.Addresses {
		if a.Bits() <= c.Bits() && a.Masked().Contains(c.Addr()) {
			return true
		}
	}
	return false
}

// stopMesh ends the mesh loop.
func (t *Tunnel) stopMesh() {
	if t.mesh == nil {
		return
	}
	select {
	case <-t.mesh.stop:
	default:
		close(t.mesh.stop)
	}
	if t.mesh.started.Load() {
		<-t.mesh.done
	}
}

// meshExtension is the node's Extension hook: gossip messages from a member's session
// go to the engine, with the address the member was seen at.
func (t *Tunnel) meshExtension(sp *stt.Peer, typ byte, body []byte, from netip.AddrPort, viaWS bool) {
	key, ok := sp.PublicKey()
	if !ok {
		return
	}
	t.mesh.eng.Handle(key, from, viaWS, typ, body)
}

// meshSessionUp is the node's SessionUp hook: a member's fresh session starts an
// exchange of summaries and a reflection.
func (t *Tunnel) meshSessionUp(sp *stt.Peer, fresh bool) {
	key, ok := sp.PublicKey()
	if !ok || !fresh {
		return
	}
	if _, isMember := t.mesh.byKey.Load(key); !isMember {
		if p, _ := sp.Tag().(*peer); p != nil {
			// A [[peer]] this node knows by configuration: a member too.
			t.mesh.byKey.LoadOrStore(key, p)
		}
	}
	t.mesh.eng.SessionUp(key)
	t.mesh.kick()
}

// yieldMemberName removes the peer of a discovered member that holds name, so that a
// [[peer]] a reload adds can take the name. Called with reloadMu held.
func (t *Tunnel) yieldMemberName(name string) {
	m := t.mesh
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, mb := range m.members {
		if mb.name == name && mb.p != nil && mb.source != sourceConfig {
			t.forgetMemberLocked(mb)
			mb.p, mb.rec = nil, nil // syncMembers applies its record again, to the [[peer]]
		}
	}
}

// remesh applies every member's record again after a reload changed the configured
// peers: a [[peer]] that went away releases its member, and claims are decided anew.
// Called with reloadMu held.
func (t *Tunnel) remesh() {
	m := t.mesh
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, mb := range m.members {
		if mb.source == sourceConfig && t.configPeerNamed(mb.name) == nil {
			m.byKey.Delete(mb.key)
			mb.p, mb.source = nil, sourceGossip
		}
	}
	for _, mb := range m.members {
		if mb.rec != nil {
			t.applyRecordLocked(mb, mb.rec)
		}
	}
	t.rebuildTableLocked()
}

// meshStatus adds the mesh's view to st: the members not configured as [[peer]]s,
// what the configured ones announce, reflections and bootstraps.
func (t *Tunnel) meshStatus(st *status.Status) {
	m := t.mesh
	ms := &status.Mesh{
		Address: m.addr.String(),
		Network: mesh.NetworkPrefix(m.seed).String(),
	}
	if own := m.eng.Self(); own != nil {
		ms.RecordVersion = own.Version
	}
	byName := make(map[string]*status.Peer, len(st.Peers))
	for i := range st.Peers {
		byName[st.Peers[i].Name] = &st.Peers[i]
	}
	m.mu.Lock()
	// t.mu too (after mesh.mu, as the lock order says): a [[peer]]'s cfg, which a
	// member's line reads, is the reload's to replace.
	t.mu.RLock()
	keys := make([][32]byte, 0, len(m.members))
	for k := range m.members {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return m.members[keys[i]].name < m.members[keys[j]].name })
	names := make(map[[32]byte]string, len(keys))
	for _, k := range keys {
		mb := m.members[k]
		names[k] = mb.name
		ms.Members++
		var ps *status.Peer
		if mb.p != nil && mb.source == sourceConfig {
			ps = byName[mb.name]
		}
		if ps == nil {
			line := status.Peer{Name: mb.name, Path: stt.PathNone, Source: mb.source, PublicKey: config.EncodeKey(mb.key)}
			if mb.p != nil {
				line = peerStatus(mb.p)
				line.Source = mb.source
				for _, c := range mb.accepted {
					line.AllowedPrefixes = append(line.AllowedPrefixes, c.String())
				}
			}
			st.Peers = append(st.Peers, line)
			ps = &st.Peers[len(st.Peers)-1]
			byName[mb.name] = ps
		}
		if mb.p != nil && mb.p.sp.HasSession() {
			ms.Connected++
		}
		if mb.p != nil && mb.p.cfg.PublicKey != nil && *mb.p.cfg.PublicKey == mb.key {
			ps.MeshAddress = mesh.MemberAddr(m.seed, mb.key).String()
		}
		if mb.rec != nil {
			for _, e := range mb.rec.Endpoints {
				ps.Candidates = append(ps.Candidates, e.Addr.String())
			}
		}
		ps.Refusals = append(ps.Refusals, mb.refused...)
	}
	boots := m.boots
	t.mu.RUnlock()
	m.mu.Unlock()
	for _, o := range m.eng.Observed() {
		r := status.Reflection{By: names[o.By], Address: o.Addr.String(), Transport: "udp"}
		if r.By == "" {
			r.By = config.EncodeKey(o.By)
		}
		if o.ViaWS {
			r.Transport = "ws"
		}
		ms.Reflected = append(ms.Reflected, r)
	}
	for _, b := range boots {
		bs := status.Bootstrap{Target: b.target, Self: b.sp.ReachedSelf()}
		if name, _, ok := b.sp.Reached(); ok {
			bs.Reached = name
		}
		ms.Bootstrap = append(ms.Bootstrap, bs)
	}
	st.Mesh = ms
}
