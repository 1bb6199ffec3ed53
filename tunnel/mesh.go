package tunnel

import (
	"bytes"
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

// leaveLinger is how long the record a leaving node sends lasts: the members forget it
// (its routes, its peer) then, rather than after a whole record lifetime.
const leaveLinger = 15 * time.Second

// leaveWait bounds how long Close waits for the members with a session to acknowledge
// the leave record: a WebSocket connection only queues what it sends, and the sessions
// close right after.
const leaveWait = time.Second

// neighbourRetry is the wait after a neighbour dial that made no session; it doubles with
// each further failure up to neighbourRetryMax, and a dial that succeeds resets it. A node
// whose only reachable members are fewer than meshNeighbours (behind a NAT, most of the
// others behind NATs too) otherwise dials one member after another for good.
// A neighbour dial with no session after neighbourDialWait is abandoned, unless traffic
// came to need it meanwhile: a handshake answers within round trips, and a HELLO is
// retried after 5 s.
const (
	neighbourDialWait = 12 * time.Second
	neighbourRetry    = 5 * time.Second
	neighbourRetryMax = 5 * time.Minute
)

// bootRetry is how often a node that has no session with any member dials its
// bootstrap addresses again.
const bootRetry = 5 * time.Second

// meshState is the tunnel's side of the mesh: the gossip engine, the members it knows
// and the policy that turns their records into routes.
type meshState struct {
	eng      *mesh.Engine
	network  mesh.Network // the network's identity: it does not change with the seed
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
	// redecide: admit changed the members (one added, or a handshake under another
	// name) without a record changing; the mesh loop decides names and claims again.
	redecide bool
	// neighbours are the members this node keeps sessions with for gossip.
	neighbours map[[32]byte]bool
	// lastDial is the member the latest neighbour dial went to (nil: none pending),
	// dialFails how many in a row made no session, nextDial when the next may start.
	lastDial  *member
	dialAt    time.Time
	dialFails int
	nextDial  time.Time
	dials     int // neighbour dials started, for tests
	// dialState reports whether a member's dial is in flight and whether it has a
	// session: the stt peer's state; tests replace it to play dials that fail.
	dialState func(mb *member, abandon bool) (connecting, up bool)

	// selfSigned is when refreshSelf last had the engine sign a new version of the
	// node's record (mesh loop only).
	selfSigned time.Time
	// underlay are the host's own addresses outside the tunnel (localAddrs), as the
	// mesh loop last found them: no member may claim them.
	underlay []netip.Addr

	nat *natState    // NAT type, punching, relaying (mesh_nat.go)
	rot *rotateState // the seed rotation held (mesh_rotate.go)

	// netID is the network id statements are signed for; stmtPath the statements
	// file ("" for none); stmtDirty says the statements changed since it was written;
	// redecideRevoked makes the mesh loop forget revoked members (mesh_statements.go).
	netID           [16]byte
	stmtPath        string
	stmtDirty       atomic.Bool
	redecideRevoked atomic.Bool
	// stmtSaveMu guards stmtSaveErr, the last error saving the statements ("" after a
	// success), and stmtSaveAt, when it came: a failing save is said once and tried
	// again every stmtSaveRetry, not at every pass of the loop.
	stmtSaveMu  sync.Mutex
	stmtSaveErr string
	stmtSaveAt  time.Time
	// revokeMu makes reading the revoked keys and handing them to the node one step,
	// so that two revocations taken at once cannot leave the node the older set.
	revokeMu sync.Mutex

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
	fresh    bool           // rec changed since resolveLocked last applied it
	recBad   bool           // its record names another name than its handshake: no claims
	hsName   string         // the name its latest handshake with this node gave, if any
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
func (t *Tunnel) startMesh(network mesh.Network, key config.NodeKey) error {
	d := t.cfg.Discovery
	id := mesh.NewIdentity(key.Ed25519Seed)
	m := &meshState{
		network:   network,
		self:      id.Public,
		subnet:    network.MemberPrefix(),
		addr:      network.MemberAddr(id.Public),
		accept:    d.AcceptPrefixes,
		announce:  d.AnnouncePrefixes,
		extraEPs:  d.Endpoints,
		idle:      d.IdleTimeout,
		nodeName:  t.cfg.Interface.NodeName,
		ifName:    t.cfg.Interface.Name,
		wake:      make(chan struct{}, 1),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
		members:   make(map[[32]byte]*member),
		nat:       newNATState(d.Relay, d.NATKeepalive),
		rot:       newRotateState(key.X25519),
		netID:     network.ID,
		dialState: peerDialState,
	}
	m.eng = mesh.New(mesh.Config{
		Identity: id,
		Network:  network,
		Logger:   t.log,
		Send: func(to [32]byte, typ byte, body []byte) error {
			v, ok := m.byKey.Load(to)
			if !ok {
				return errors.New("not a member with a peer")
			}
			return v.(*peer).sp.SendReliable(typ, body)
		},
		SendOnce: func(to [32]byte, typ byte, body []byte) error {
			v, ok := m.byKey.Load(to)
			if !ok {
				return errors.New("not a member with a peer")
			}
			return v.(*peer).sp.SendUnreliable(typ, body)
		},
		OnChange:    func(old, cur *mesh.Record) { m.kick() },
		Admins:      t.cfg.Membership.Admins,
		OnStatement: t.statementAccepted,
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
	if t.node.Revoked(static) {
		return nil, errors.New("its key is revoked")
	}
	if err := config.CheckName(name); err != nil {
		return nil, err
	}
	// No reloadMu: this runs on a receive goroutine, which a reload must not stall.
	// The mesh loop puts the member's address in the table at once (kick).
	m.mu.Lock()
	defer m.mu.Unlock()
	if mb := m.members[static]; mb != nil {
		if mb.p != nil && mb.p.cfg.Name == name {
			return mb.p.sp, nil
		}
		// Known under another name, or its name is refused: the mesh loop decides
		// again with the name this handshake gave.
		if mb.hsName != name {
			mb.hsName = name
			m.redecide = true
			m.kick()
		}
		return nil, fmt.Errorf("member not admitted under the name %q", name)
	}
	for _, o := range m.members {
		if o.wantName() == name {
			return nil, fmt.Errorf("name %q is claimed by another key", name)
		}
	}
	if len(m.members) >= mesh.DefaultMaxMembers {
		return nil, errors.New("member table full")
	}
	// A member a bootstrap address answered for is marked so by the mesh loop, once the
	// wildcard peer has recorded whom it reached (after this call).
	mb := &member{key: static, name: name, hsName: name, source: sourceHandshake, admitted: time.Now()}
	m.rot.noteSeen(static, mb.admitted)
	if err := t.addMemberPeerLocked(mb, nil); err != nil {
		return nil, err
	}
	m.members[static] = mb
	m.redecide = true
	m.kick()
	return mb.p.sp, nil
}

// addMemberPeerLocked creates the stt peer of a discovered member: pinned to its key,
// lazy (no handshake until something is sent), idle sessions closed.
func (t *Tunnel) addMemberPeerLocked(mb *member, rec *mesh.Record) error {
	key := mb.key
	p := &peer{cfg: config.Peer{Name: mb.name, PublicKey: &key}, member: mb}
	pc := stt.PeerConfig{Name: mb.name, PublicKey: &key, Tag: p, IdleTimeout: t.mesh.idle} // the NAT keepalive comes with a session (setNATKeepalive)
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
	rotDone := make(chan struct{})
	go func() { t.rotateLoop(); close(rotDone) }()
	defer func() { <-rotDone }() // the rotation worker ends with the loop (m.stop)
	tick := time.NewTicker(meshTick)
	defer tick.Stop()
	t.refreshSelf()
	// The engine's Tick sends a SUMMARY to up to three members each call, so it runs
	// every mesh.DefaultInterval, not every loop pass: at each meshTick it sent ten
	// times the designed anti-entropy traffic (docs/benchmarks.md, "Mesh").
	var lastTick time.Time
	for {
		select {
		case <-m.stop:
			return
		case <-tick.C:
		case <-m.wake:
		}
		now := time.Now()
		t.syncMembers()
		t.saveStatements()
		t.refreshSelf()
		// The neighbours first, then the engine is told them on every pass: the first
		// pass (the kick of the first session) ran the engine's Tick before the
		// neighbour was taken, which emptied the set SessionUp had just filled, and
		// for up to a round nothing was flooded — a node going down then told no one.
		// Between rounds they are added to the set, which keeps the members whose
		// sessions came up since (pushes reach a joiner's first contacts at once).
		t.keepNeighbours(now)
		if now.Sub(lastTick) >= mesh.DefaultInterval {
			lastTick = now
			m.eng.Tick(now, t.connectedMembers())
		} else {
			m.eng.AddConnected(t.connectedMembers())
		}
		t.natTick(now)
	}
}

// connectedMembers lists the keys of the neighbours: the few members with a session
// that this node keeps for gossip. Only they are given to the engine, so that gossip
// keeps their sessions up and no other: a member's session that carried traffic once
// closes when it has been idle for idle_timeout, however long the node runs.
func (t *Tunnel) connectedMembers() [][32]byte {
	m := t.mesh
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([][32]byte, 0, len(m.neighbours))
	for k := range m.neighbours {
		out = append(out, k)
	}
	return out
}

// keepNeighbours keeps meshNeighbours members with a session as neighbours: it drops
// those whose session is gone, takes members that already have a session first, dials
// one more when that is not enough, and dials the bootstrap addresses while the node
// has no session with any member.
func (t *Tunnel) keepNeighbours(now time.Time) {
	m := t.mesh
	m.mu.Lock()
	if m.neighbours == nil {
		m.neighbours = make(map[[32]byte]bool)
	}
	for k := range m.neighbours {
		if mb := m.members[k]; mb == nil || mb.p == nil || !mb.p.sp.HasSession() {
			delete(m.neighbours, k)
		}
	}
	var up, dialing int
	var spare []*member // a session, not a neighbour
	var idle []*peer
	for k, mb := range m.members {
		if mb.p == nil {
			continue
		}
		switch {
		case mb.p.sp.HasSession():
			up++
			if !m.neighbours[k] {
				spare = append(spare, mb)
			}
		case m.connecting(mb):
			dialing++
		case mb.rec != nil:
			idle = append(idle, mb.p)
		}
	}
	rand.Shuffle(len(spare), func(i, j int) { spare[i], spare[j] = spare[j], spare[i] })
	// Relays first: a node behind NAT needs a session with one to be relayed, and
	// with a member the others also reach to have its punches coordinated.
	slices.SortStableFunc(spare, func(a, b *member) int { return boolOrder(isRelay(b), isRelay(a)) })
	for _, mb := range spare {
		if len(m.neighbours) >= meshNeighbours {
			break
		}
		m.neighbours[mb.key] = true
	}
	hasRelay := false
	for k := range m.neighbours {
		hasRelay = hasRelay || isRelay(m.members[k])
	}
	if !hasRelay && len(spare) > 0 && isRelay(spare[0]) && !m.neighbours[spare[0].key] {
		// The neighbours are full of members that do not relay, and one that does has
		// a session (natTick dialled it): it takes the place of one of them.
		for k := range m.neighbours {
			delete(m.neighbours, k)
			break
		}
		m.neighbours[spare[0].key] = true
		hasRelay = true
	}
	need := len(m.neighbours) < meshNeighbours
	dial := up == 0 && now.Sub(m.lastBoot) >= bootRetry
	if dial {
		m.lastBoot = now
	}
	boots := m.boots
	if d := m.lastDial; d != nil {
		if connecting, up := m.dialState(d, now.Sub(m.dialAt) >= neighbourDialWait); up {
			m.lastDial, m.dialFails = nil, 0
		} else if !connecting {
			// The last neighbour dial is over and made no session.
			m.lastDial = nil
			m.dialFails++
			m.nextDial = now.Add(neighbourBackoff(m.dialFails))
		}
	}
	// One new neighbour per tick at most, none while the handshakes in flight could
	// make up the number (members that do not answer, gone or behind NAT, must not turn
	// into a handshake to every member), and after failures only once the backoff
	// has passed.
	var pick *peer
	if need && len(idle) > 0 && dialing == 0 && m.lastDial == nil && !now.Before(m.nextDial) {
		pick = idle[rand.IntN(len(idle))]
		if i := slices.IndexFunc(idle, func(p *peer) bool { return isRelay(p.member) }); i >= 0 && !hasRelay {
			pick = idle[i]
		}
		m.lastDial, m.dialAt = pick.member, now
		m.dials++
	}
	m.mu.Unlock()
	if pick != nil {
		pick.sp.Connect()
	}
	if dial {
		for _, b := range boots {
			b.sp.Connect()
		}
	}
}

// connecting says whether a handshake of ours with mb is in flight. Called with m.mu held.
func (m *meshState) connecting(mb *member) bool {
	c, _ := m.dialState(mb, false)
	return c
}

// peerDialState is meshState.dialState outside tests: the stt peer's state, after
// abandoning its handshake when abandon is set and nothing else needs it.
func peerDialState(mb *member, abandon bool) (connecting, up bool) {
	if mb.p == nil {
		return false, false
	}
	if abandon {
		mb.p.sp.Abandon()
	}
	return mb.p.sp.Connecting(), mb.p.sp.HasSession()
}

// neighbourBackoff is the wait before the next neighbour dial after fails failed ones in a
// row: neighbourRetry doubled per further failure, at most neighbourRetryMax, less up to a
// quarter at random so that members that failed together do not retry together.
func neighbourBackoff(fails int) time.Duration {
	d := neighbourRetry
	for i := 1; i < fails && d < neighbourRetryMax; i++ {
		d *= 2
	}
	d = min(d, neighbourRetryMax)
	return d - time.Duration(rand.Int64N(int64(d/4)+1))
}

// isRelay says whether a member's record offers relaying.
func isRelay(mb *member) bool { return mb != nil && mb.rec != nil && mb.rec.Relay }

// boolOrder orders false before true.
func boolOrder(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
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
		Relay:     m.nat.relay,
	}
	var local []netip.AddrPort
	hostAddrs := t.localAddrs()
	m.mu.Lock()
	m.underlay = hostAddrs
	m.mu.Unlock()
	if t.port != 0 {
		for _, a := range hostAddrs {
			local = append(local, netip.AddrPortFrom(a, t.port))
		}
	}
	rec.Endpoints = ownEndpoints(m.extraEPs, local, m.eng.Observed())
	now := time.Now()
	own := m.eng.Self()
	if own != nil && onlyEndpointsDiffer(own, &rec) && now.Sub(m.selfSigned) < mesh.RateInterval {
		// Members report what they like as observed addresses: a stream of new reports
		// must not make this node re-sign and flood its record faster than members
		// accept versions of it. The change goes out at a later tick.
		return
	}
	if err := m.eng.SetSelf(rec); err != nil {
		t.log.Warn("mesh: own record", "err", err)
	}
	if m.eng.Self() != own {
		m.selfSigned = now
	}
}

// onlyEndpointsDiffer says whether b is a with other candidate endpoints.
func onlyEndpointsDiffer(a, b *mesh.Record) bool {
	return a.Name == b.Name && a.WSURL == b.WSURL && a.Relay == b.Relay &&
		slices.Equal(a.Addresses, b.Addresses) && slices.Equal(a.Prefixes, b.Prefixes) &&
		!slices.Equal(a.Endpoints, b.Endpoints)
}

// observedSlots is how many of a record's endpoints are kept for observed addresses
// when the interface addresses would fill them all.
const observedSlots = 2

// ownEndpoints chooses the candidate endpoints of this node's record (at most
// mesh.MaxEndpoints): the configured ones; the interface addresses, leaving
// observedSlots; the addresses members observed over UDP, those more members reported
// first; then the remaining interface addresses. Any member can report any address, and
// one holding the seed can be many members: observations must not push the node's own
// addresses out of its record, and one that several members agree on goes first. The
// result is sorted, so that the same endpoints in another order make no new version.
func ownEndpoints(configured, local []netip.AddrPort, observed []mesh.Observation) []mesh.Endpoint {
	var eps []mesh.Endpoint
	add := func(kind mesh.EndpointKind, ap netip.AddrPort) {
		if len(eps) >= mesh.MaxEndpoints || !ap.IsValid() || ap.Port() == 0 {
			return
		}
		for _, e := range eps {
			if e.Addr == ap {
				return
			}
		}
		eps = append(eps, mesh.Endpoint{Kind: kind, Addr: ap})
	}
	for _, ap := range configured {
		add(mesh.EndpointConfigured, ap)
	}
	rest := local
	for len(rest) > 0 && len(eps) < mesh.MaxEndpoints-observedSlots {
		add(mesh.EndpointLocal, rest[0])
		rest = rest[1:]
	}
	// Observations are one per member (mesh.MaxObservations at most): count the
	// members behind each address.
	type seen struct {
		addr netip.AddrPort
		n    int
	}
	var byAddr []seen
	for _, o := range observed {
		if o.ViaWS {
			continue
		}
		if i := slices.IndexFunc(byAddr, func(s seen) bool { return s.addr == o.Addr }); i >= 0 {
			byAddr[i].n++
		} else {
			byAddr = append(byAddr, seen{o.Addr, 1})
		}
	}
	slices.SortStableFunc(byAddr, func(a, b seen) int { return b.n - a.n })
	for _, s := range byAddr {
		add(mesh.EndpointObserved, s.addr)
	}
	for _, ap := range rest {
		add(mesh.EndpointLocal, ap)
	}
	slices.SortFunc(eps, func(a, b mesh.Endpoint) int {
		if a.Kind != b.Kind {
			return int(a.Kind) - int(b.Kind)
		}
		return a.Addr.Compare(b.Addr)
	})
	return eps
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
	changed := m.redecide
	m.redecide = false
	if m.redecideRevoked.Swap(false) && t.forgetRevokedLocked() {
		changed = true
	}
	seen := make(map[[32]byte]bool, len(recs))
	for _, rec := range recs {
		if t.node.Revoked(rec.Key) {
			continue // revoked since recs was read: forgotten, not made again
		}
		seen[rec.Key] = true
		mb := m.members[rec.Key]
		if mb != nil && mb.rec != nil && mb.rec.Version == rec.Version {
			continue
		}
		changed = true
		if mb == nil {
			mb = &member{key: rec.Key, name: rec.Name, source: sourceGossip}
			m.rot.noteSeen(rec.Key, time.Now())
			m.members[rec.Key] = mb
		}
		mb.rec, mb.fresh = rec, true
	}
	now := time.Now()
	for k, mb := range m.members {
		if mb.rec == nil && !mb.admitted.IsZero() && now.Sub(mb.admitted) > recordWait &&
			(mb.p == nil || !mb.p.sp.HasSession()) && mb.source != sourceConfig {
			// Admitted by a handshake, and never announced itself (or its peer went
			// with a name it was refused): forget it.
			changed = true
			t.forgetMemberLocked(mb)
			delete(m.members, k)
			continue
		}
		if seen[k] || mb.rec == nil {
			continue
		}
		// Its record expired: the member is gone. (A name it held is free: resolveLocked
		// gives it to a record refused for it, such as the member's own new key.)
		changed = true
		t.forgetMemberLocked(mb)
		delete(m.members, k)
	}
	for _, b := range m.boots {
		if _, k, ok := b.sp.Reached(); ok {
			if mb := m.members[k]; mb != nil && (mb.source == sourceHandshake || mb.source == sourceGossip) {
				mb.source = sourceBootstrap
			}
		}
	}
	if changed {
		t.resolveLocked()
		t.rebuildTableLocked()
	}
}

// resolveLocked decides, from all the members this node knows at once, which of them
// get a peer under their name and which of their claims are accepted. The outcome
// depends only on the set of records, never on the order they arrived in, so every
// member decides the same; and where two members want the same name or overlapping
// prefixes, neither gets it: a hostile member can deny a name or an address (visibly:
// status, a counter, one log line), but never take it. Called with reloadMu and mesh.mu
// held.
func (t *Tunnel) resolveLocked() {
	m := t.mesh
	keys := make([][32]byte, 0, len(m.members))
	for k := range m.members {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b [32]byte) int { return bytes.Compare(a[:], b[:]) })

	// Names: who wants which.
	wanted := make(map[string]int, len(keys))
	for _, k := range keys {
		name := m.members[k].wantName()
		if cp := t.configPeerNamed(name); cp != nil && cp.cfg.PublicKey != nil && *cp.cfg.PublicKey != k {
			continue // refused for the [[peer]]'s pin: it contests nothing
		}
		wanted[name]++
	}
	// A name already held by a member's peer at this node stays with it: a later key
	// cannot displace a member this node knows (and cut it off) by announcing its name.
	holder := make(map[string][32]byte)
	for _, k := range keys {
		mb := m.members[k]
		if mb.p != nil && mb.source != sourceConfig && mb.p.cfg.Name == mb.wantName() {
			holder[mb.wantName()] = k
		}
	}
	for _, k := range keys {
		mb := m.members[k]
		before := mb.refused
		mb.refused = nil
		// Decided first, so that it is never left over from an earlier pass.
		mb.recBad = mb.rec != nil && mb.hsName != "" && mb.rec.Name != mb.hsName
		if mb.p != nil && mb.source != sourceConfig && mb.p.cfg.Name != mb.wantName() {
			// Renamed (a new record, or a handshake under the new name): its peer goes,
			// and one under the new name is made below if nothing stands against it.
			t.forgetMemberLocked(mb)
			mb.p = nil
		}
		if why := t.nameConflictLocked(mb, wanted, holder); why != "" {
			if mb.p != nil && mb.source != sourceConfig {
				t.forgetMemberLocked(mb)
				mb.p = nil
			}
			if mb.source == sourceConfig {
				m.byKey.Delete(mb.key)
				mb.p, mb.source = nil, sourceGossip
			}
			mb.accepted = nil
			t.refuseNameLocked(mb, before, why)
			continue
		}
		mb.name = mb.wantName()
		if mb.p == nil {
			if cp := t.configPeerNamed(mb.name); cp != nil {
				mb.p, mb.source = cp, sourceConfig
				m.byKey.Store(mb.key, cp)
			} else if err := t.addMemberPeerLocked(mb, mb.rec); err != nil {
				t.refuseNameLocked(mb, before, err.Error())
				continue
			}
		} else if mb.fresh && mb.source != sourceConfig {
			cands, ws := candidatesOf(mb.rec)
			pc := mb.p.sp.Config()
			pc.Candidates, pc.WSURL = cands, ws
			if err := mb.p.sp.Update(pc); err != nil {
				t.log.Debug("mesh: update member", "name", mb.name, "err", err)
			}
		}
		mb.fresh = false
		if mb.recBad {
			// The name a key gives in its handshakes and in its record must agree: the
			// member keeps its peer under its handshake's name, its record claims nothing.
			mb.accepted = nil
			t.refuseNameLocked(mb, before, fmt.Sprintf("record names %q, but the member's handshake said %q", mb.rec.Name, mb.hsName))
			continue
		}
		mb.refused = before // claimsLocked compares against what was refused before
	}
	t.claimsLocked(keys)
}

// wantName is the name the member goes by: the one it gave in its latest handshake
// with this node, else its record's.
func (mb *member) wantName() string {
	switch {
	case mb.hsName != "":
		return mb.hsName
	case mb.rec != nil:
		return mb.rec.Name
	}
	return mb.name
}

// nameConflictLocked says why a member may not have the name it wants, or "".
func (t *Tunnel) nameConflictLocked(mb *member, wanted map[string]int, holder map[string][32]byte) string {
	name := mb.wantName()
	// A [[peer]] that pins a key decides its name first: the pinned key has it, however
	// many others want it.
	if cp := t.configPeerNamed(name); cp != nil && cp.cfg.PublicKey != nil {
		if *cp.cfg.PublicKey != mb.key {
			return fmt.Sprintf("name %q belongs to a [[peer]] with another public_key", name)
		}
		return ""
	}
	switch {
	case name == t.cfg.Interface.NodeName:
		return fmt.Sprintf("name %q is this node's own", name)
	case wanted[name] > 1:
		if h, held := holder[name]; held {
			if h == mb.key {
				return ""
			}
			return fmt.Sprintf("name %q is held by another key", name)
		}
		return fmt.Sprintf("name %q is claimed by %d keys; none of them gets it", name, wanted[name])
	}
	if sp := t.node.Peer(name); sp != nil {
		if tp, _ := sp.Tag().(*peer); tp == nil || (tp.member != mb && t.configPeerNamed(name) == nil) {
			return fmt.Sprintf("name %q is held by another peer of this node", name)
		}
	}
	return ""
}

// refuseNameLocked records why a member's record was refused for its name: counted and
// logged once, not again on every refresh of the record.
func (t *Tunnel) refuseNameLocked(mb *member, before []string, why string) {
	mb.refused = []string{why}
	if len(before) == 1 && before[0] == why {
		return
	}
	t.mesh.namesRefused.Add(1)
	t.log.Warn("mesh: refused a member's record", "key", config.EncodeKey(mb.key), "reason", why)
}

// claim is one address or prefix a member claims.
type claim struct {
	p  netip.Prefix
	mb *member
}

// claimsLocked decides which claimed addresses and prefixes to accept, over all members
// at once: each claim must pass its own checks (refuseClaimLocked), and a claim that
// overlaps another member's is refused for both. A [[peer]]'s own prefixes always win,
// and a configured peer's record claims nothing. Called with mesh.mu held.
func (t *Tunnel) claimsLocked(keys [][32]byte) {
	m := t.mesh
	var all []claim
	why := make(map[*member]map[netip.Prefix]string)
	refuse := func(mb *member, c netip.Prefix, reason string) {
		if why[mb] == nil {
			why[mb] = make(map[netip.Prefix]string)
		}
		if _, ok := why[mb][c]; !ok {
			why[mb][c] = reason
		}
	}
	for _, k := range keys {
		mb := m.members[k]
		if mb.recBad {
			continue
		}
		mb.accepted = nil
		if mb.source == sourceConfig || mb.rec == nil {
			continue
		}
		// A member refused its name is no peer here, but its claims still contest
		// others': a member that took its name elsewhere cannot take its addresses.
		for _, c := range memberClaims(mb.rec) {
			if reason := t.refuseClaimLocked(c); reason != "" {
				refuse(mb, c, reason)
				continue
			}
			all = append(all, claim{c, mb})
		}
	}
	// Overlaps between members: sorted by address then length, a prefix is followed by
	// every prefix it contains; a stack holds the ones enclosing the current one.
	slices.SortFunc(all, func(a, b claim) int {
		if c := a.p.Addr().Compare(b.p.Addr()); c != 0 {
			return c
		}
		return a.p.Bits() - b.p.Bits()
	})
	var stack []claim
	for _, c := range all {
		for len(stack) > 0 && !stack[len(stack)-1].p.Contains(c.p.Addr()) {
			stack = stack[:len(stack)-1]
		}
		for _, s := range stack {
			if s.mb != c.mb {
				refuse(c.mb, c.p, fmt.Sprintf("overlaps %s claimed by member %q; neither gets it", s.p, s.mb.name))
				refuse(s.mb, s.p, fmt.Sprintf("overlaps %s claimed by member %q; neither gets it", c.p, c.mb.name))
			}
		}
		stack = append(stack, c)
	}
	for _, k := range keys {
		mb := m.members[k]
		if mb.p == nil || mb.source == sourceConfig || mb.rec == nil || mb.recBad {
			continue
		}
		before := mb.refused
		mb.refused = nil
		for _, c := range memberClaims(mb.rec) {
			reason, bad := why[mb][c]
			if !bad {
				mb.accepted = append(mb.accepted, c)
				continue
			}
			line := c.String() + ": " + reason
			mb.refused = append(mb.refused, line)
			if !slices.Contains(before, line) {
				// Counted and logged once per claim, not on every refresh of the record.
				m.claimsRefused.Add(1)
				t.log.Warn("mesh: refused a member's claim", "member", mb.name, "prefix", c, "reason", reason)
			}
		}
	}
}

// memberClaims are a record's interface addresses (as host prefixes) and the prefixes
// it announces, each once.
func memberClaims(rec *mesh.Record) []netip.Prefix {
	var out []netip.Prefix
	for _, a := range rec.Addresses {
		out = append(out, netip.PrefixFrom(a.Addr(), a.Addr().BitLen()))
	}
	for _, p := range rec.Prefixes {
		out = append(out, p.Masked())
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(out)
}

// refuseClaimLocked says why one claim is refused on its own, or "": it must lie inside
// accept_prefixes, outside the mesh's key-derived address space (where only keys
// decide), clear of every [[peer]]'s prefixes, and must not contain this node's own
// addresses.
func (t *Tunnel) refuseClaimLocked(c netip.Prefix) string {
	m := t.mesh
	if c.Overlaps(m.subnet) || c.Overlaps(m.network.Prefix) {
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
		if c.Contains(a.Addr()) {
			return "contains this node's own address " + a.Addr().String()
		}
	}
	for _, a := range m.underlay {
		if c.Contains(a) {
			// Routed into the tunnel, it would take the node's own underlay traffic.
			return fmt.Sprintf("holds %s, an address of this host outside the tunnel", a)
		}
	}
	for _, q := range m.announce {
		if q.Overlaps(c) {
			return fmt.Sprintf("overlaps %s, which this node announces", q)
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
			a := m.network.MemberAddr(mb.key)
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
	if mesh.IsNATMessage(typ) {
		t.natMessage(sp, key, typ, body, from, viaWS)
		return
	}
	if typ == mesh.MsgSeedOffer {
		t.seedOfferMessage(key, body)
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
	t.rotateSessionUp(key)
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

// remesh decides names and claims anew after a reload changed the configured peers:
// a [[peer]] that went away releases its member, and a new one wins its name. Called
// with reloadMu held.
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
	t.resolveLocked()
	t.rebuildTableLocked()
}

// meshStatus adds the mesh's view to st: the members not configured as [[peer]]s,
// what the configured ones announce, reflections and bootstraps.
func (t *Tunnel) meshStatus(st *status.Status) {
	m := t.mesh
	ms := &status.Mesh{
		Address: m.addr.String(),
		Network: m.network.Prefix.String(),
	}
	if own := m.eng.Self(); own != nil {
		ms.RecordVersion = own.Version
	}
	var why map[[32]byte]string
	ms.NAT, why = t.natStatus()
	ms.Relay = m.nat.relay
	if ms.Relay {
		ms.Relaying = t.node.Stats().RelayRoutes
	}
	// Indexes, not pointers: appending the discovered members moves st.Peers.
	byName := make(map[string]int, len(st.Peers))
	for i := range st.Peers {
		byName[st.Peers[i].Name] = i
	}
	m.mu.Lock()
	// t.mu too (after mesh.mu, as the lock order says): a [[peer]]'s cfg, which a
	// member's line reads, is the reload's to replace.
	t.mu.RLock()
	keys := make([][32]byte, 0, len(m.members))
	for k := range m.members {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		// By name, then key: a refused impostor may carry a member's name.
		a, b := m.members[keys[i]], m.members[keys[j]]
		if a.name != b.name {
			return a.name < b.name
		}
		return bytes.Compare(keys[i][:], keys[j][:]) < 0
	})
	names := make(map[[32]byte]string, len(keys))
	for _, k := range keys {
		mb := m.members[k]
		names[k] = mb.name
		ms.Members++
		i, found := -1, false
		if mb.p != nil && mb.source == sourceConfig {
			i, found = byName[mb.name]
		}
		if !found {
			line := status.Peer{Name: mb.name, Path: stt.PathNone, Source: mb.source, PublicKey: config.EncodeKey(mb.key)}
			if mb.p != nil {
				line = peerStatus(mb.p)
				line.Source = mb.source
				for _, c := range mb.accepted {
					line.AllowedPrefixes = append(line.AllowedPrefixes, c.String())
				}
			}
			// (Not in byName: only the [[peer]]s' own lines are looked up, and a
			// refused member may carry a configured peer's name.)
			st.Peers = append(st.Peers, line)
			i = len(st.Peers) - 1
		}
		ps := &st.Peers[i]
		if mb.p != nil && mb.p.sp.HasSession() {
			ms.Connected++
		}
		if mb.p != nil && mb.p.cfg.PublicKey != nil && *mb.p.cfg.PublicKey == mb.key {
			ps.MeshAddress = m.network.MemberAddr(mb.key).String()
		}
		if mb.rec != nil {
			for _, e := range mb.rec.Endpoints {
				ps.Candidates = append(ps.Candidates, e.Addr.String())
			}
		}
		ps.Refusals = append(ps.Refusals, mb.refused...)
		ps.PathReason = why[k]
	}
	boots := m.boots
	t.mu.RUnlock()
	m.mu.Unlock()
	t.statementsStatus(ms, names)
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

// awaitLeaveAcks waits, leaveWait at most, until every member with a session has
// acknowledged what was sent to it reliably (the leave record among it), so that the
// record is not lost when the sessions close.
func (t *Tunnel) awaitLeaveAcks() {
	var sps []*stt.Peer
	t.mesh.byKey.Range(func(_, v any) bool {
		if p := v.(*peer); p.sp.HasSession() {
			sps = append(sps, p.sp)
		}
		return true
	})
	deadline := time.Now().Add(leaveWait)
	for _, sp := range sps {
		for sp.ReliableBacklog() > 0 && sp.HasSession() && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond) // polls the acknowledgements, bounded by leaveWait
		}
	}
}
