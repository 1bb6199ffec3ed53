// Through NATs: this node's NAT type from members' reflections, hole punching
// coordinated by a member both ends reach, and relaying through a member with
// `relay = true` when punching cannot work (docs/protocol.md §10.7).
//
// The mesh loop (natTick) decides; the receive goroutines (natMessage) answer members'
// requests. Both use nat.mu only, never mesh.mu, so that a receive goroutine waits on
// nothing the mesh loop holds while it changes routes.

package tunnel

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stt-tun/stt-tun/stt"
	"github.com/stt-tun/stt-tun/stt/mesh"
)

const (
	// relayAfter is how long a wanted member may stay without a direct path before
	// this node asks a relay (the punches of the first seconds have had their chance).
	relayAfter = 3 * time.Second
	// relayRetry is how long after a relay request (granted or not) the next may go.
	relayRetry = 5 * time.Second
	// relayRefusedFor is how long a relay that refused is not asked again, unless it
	// refused because it has no session with the target yet (relayBarred).
	relayRefusedFor = 30 * time.Second
	// relayHandshakeWait is how long a relay route may go without a session before it
	// is given up (a handshake through a relay takes well under a second; its
	// retransmissions come at 1, 2, 4 s).
	relayHandshakeWait = 10 * time.Second
	// coordinateEvery bounds a coordinator: one PUNCH pair per (requester, target).
	coordinateEvery = 2 * time.Second
	// punchEvery bounds an end: one punch per member started by PUNCH messages.
	punchEvery = time.Second
	// pingWant is how long a ping makes a member wanted.
	pingWant = 10 * time.Second
	// wantGrace is how long a member stays wanted after it last was. The datagrams
	// that made it wanted leave the queue when the handshake completes, and the
	// session counts only once the member confirms it: a tick in between saw a member
	// nobody wanted, dropped its relay route, and the relayed session never got its
	// confirmation (the NAT lab's matrix, a few pairs in a run).
	wantGrace = 5 * time.Second
	// maxCoordinators is how many members one punch request goes to.
	maxCoordinators = 3
	// maxNATEntries bounds the coordinator's and the ends' rate-limit tables.
	maxNATEntries = 4096
	// relayPairs is the relay's bound when `relay = true`; relayPerMember its bound per
	// member.
	relayPairs     = 64
	relayPerMember = 8
)

// punchSchedule is when the punch requests for a wanted member go, after it became
// wanted: then every punchLater while it is still wanted and not direct.
var punchSchedule = []time.Duration{0, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second}

const punchLater = 30 * time.Second

// Why a member's path is what it is, for status.
const (
	reasonNoPunch    = "no punch yet"
	reasonPunching   = "punching"
	reasonPunchFail  = "punch failed"
	reasonUDPBlocked = "udp blocked"
	reasonNoRelay    = "no relay reachable"
	reasonRelayed    = "punch failed, relayed"
)

// natState is the NAT traversal side of the mesh.
type natState struct {
	relay     bool          // this node relays (`relay = true`)
	keepalive time.Duration // [discovery] nat_keepalive

	mu      sync.Mutex
	typ     mesh.NATType
	travels map[[32]byte]*travel // members wanted without a direct path, or relayed
	// coordinated and punched are the rate limits of PUNCH_REQUEST (per requester and
	// target) and of PUNCH (per member): when each was last acted on.
	coordinated rateTable[[2][32]byte]
	punched     rateTable[[32]byte]
	// relayAnswered is the rate limit of RELAY_REQUEST, per requester and target: a
	// grant goes to the target too, so requests must not make grants at their rate.
	relayAnswered rateTable[[2][32]byte]
	// held are PUNCH and RELAY_GRANT messages about members whose records had not
	// come yet (holdNAT), by member.
	held map[heldKey]heldNAT

	punchRequests  atomic.Uint64 // PUNCH_REQUESTs sent
	punchesCoord   atomic.Uint64 // PUNCH pairs sent as coordinator
	punchesStarted atomic.Uint64 // punches started on a member's PUNCH
	relayRequests  atomic.Uint64 // RELAY_REQUESTs sent
	relayGranted   atomic.Uint64 // RELAY_GRANTs this node (as relay) sent
	relayRefusals  atomic.Uint64 // RELAY_REQUESTs this node refused
	relayUsed      atomic.Uint64 // relay routes this node installed as an end
	natDropped     atomic.Uint64 // NAT messages ignored: malformed, unknown member, over rate
}

// travel is the traversal state of one member this node wants to reach.
type travel struct {
	since     time.Time // wanted since
	lastWant  time.Time // last tick that found it wanted
	attempt   int       // punch requests sent
	nextPunch time.Time
	// relayKey is the relay asked (relayAsked) or granted (granted); asked is the
	// relay this node asked last, which a grant of another relay does not replace.
	relayKey   [32]byte
	asked      [32]byte
	relayAsked time.Time
	granted    bool // the relay this node asked granted the route
	installed  bool // a relay route to the member is installed (asked for or not)
	// via is the relay's peer the route was installed through, and installedAt when:
	// a route whose relay left, or that carried no session for relayHandshakeWait, is
	// given up.
	via         *stt.Peer
	installedAt time.Time
	// failed is the relay whose route was given up last, at failedAt: asked again only
	// when no other relay can be.
	failed   [32]byte
	failedAt time.Time
	refused  map[[32]byte]time.Time // relays that refused: not asked again until then
	reason   string
}

func newNATState(d bool, keepalive time.Duration) *natState {
	return &natState{
		relay:         d,
		keepalive:     keepalive,
		typ:           mesh.NATUnknown,
		travels:       make(map[[32]byte]*travel),
		coordinated:   make(rateTable[[2][32]byte]),
		relayAnswered: make(rateTable[[2][32]byte]),
		punched:       make(rateTable[[32]byte]),
		held:          make(map[heldKey]heldNAT),
	}
}

// rateTable is a rate limit by key: when each key was last let through, at most
// maxNATEntries keys. Guarded by natState.mu.
type rateTable[K comparable] map[K]time.Time

// allow reports whether k may act at now, once per every, and records it if so; a new
// key is refused while the table is full.
func (r rateTable[K]) allow(k K, every time.Duration, now time.Time) bool {
	last, seen := r[k]
	if seen && now.Sub(last) < every || !seen && len(r) >= maxNATEntries {
		return false
	}
	r[k] = now
	return true
}

// prune forgets the keys that no longer limit anything.
func (r rateTable[K]) prune(every time.Duration, now time.Time) {
	for k, at := range r {
		if now.Sub(at) >= every {
			delete(r, k)
		}
	}
}

// memberPeer is the tunnel peer of the member with key, if it has one.
func (m *meshState) memberPeer(key [32]byte) *peer {
	v, ok := m.byKey.Load(key)
	if !ok {
		return nil
	}
	return v.(*peer)
}

// direct reports whether sp has a session whose path is direct and answering.
func direct(sp *stt.Peer, fallback time.Duration) bool {
	if !sp.HasSession() || sp.RelayVia() != nil {
		return false
	}
	switch sp.Path() {
	case stt.PathUDP, stt.PathWS:
		return sp.Unanswered() < fallback
	}
	return false
}

// relayRank is relay r's place for the pair of members x and y, the same at both
// ends: lower is asked first.
func relayRank(x, y, r [32]byte) uint64 {
	if bytes.Compare(x[:], y[:]) > 0 {
		x, y = y, x
	}
	h := sha256.New()
	h.Write(x[:])
	h.Write(y[:])
	h.Write(r[:])
	return binary.BigEndian.Uint64(h.Sum(nil))
}

// relayAnswers reports whether sp's traffic goes through a relay on a session that
// answers.
func relayAnswers(sp *stt.Peer, fallback time.Duration) bool {
	return sp.RelayVia() != nil && sp.HasSession() && sp.Unanswered() < fallback
}

// natTick is the mesh loop's NAT work: the NAT type, keepalives, and for every member
// wanted without a direct path, punch requests on their schedule and a relay.
func (t *Tunnel) natTick(now time.Time) {
	m := t.mesh
	nt := m.nat
	t.classifyNAT(now)
	t.releaseHeldNAT(now)
	nt.mu.Lock()
	typ := nt.typ
	nt.mu.Unlock()

	type cand struct {
		key   [32]byte
		p     *peer
		relay bool // its record offers relaying
	}
	var all []cand
	var discovered []*peer
	m.mu.Lock()
	for k, mb := range m.members {
		if mb.p != nil {
			all = append(all, cand{k, mb.p, mb.rec != nil && mb.rec.Relay})
			if mb.source != sourceConfig {
				discovered = append(discovered, mb.p)
			}
		}
	}
	m.mu.Unlock()
	for _, p := range discovered {
		t.setNATKeepalive(p)
	}

	fallback := t.node.Limits().FallbackAfter
	var coords, relays []cand // members with a session: who can coordinate, who can relay
	for _, c := range all {
		if c.p.sp.HasSession() {
			coords = append(coords, c)
			if c.relay {
				relays = append(relays, c)
			}
		}
	}
	// Relays first among the coordinators: a node behind NAT keeps its session with
	// one, and so does the member it wants.
	slices.SortStableFunc(coords, func(a, b cand) int {
		switch {
		case a.relay && !b.relay:
			return -1
		case b.relay && !a.relay:
			return 1
		}
		return 0
	})

	for _, c := range all {
		sp := c.p.sp
		isDirect := direct(sp, fallback)
		// Traffic (or a ping) wants the member: a dial that only looks for a gossip
		// neighbour is no reason to punch or to take a relay's route.
		byTraffic := sp.Waiting() || now.Sub(time.Unix(0, c.p.pinged.Load())) < pingWant
		wanted := !isDirect && (sp.HasSession() || byTraffic)
		nt.mu.Lock()
		tr := nt.travels[c.key]
		wanted = tr.stillWanted(wanted, isDirect, now)
		if !wanted {
			// A follower's fresh route stays while the other end's handshake through
			// the relay is on its way (telling the relay to close it would leave that
			// handshake no route).
			arriving := tr != nil && tr.installed && !tr.granted && now.Sub(tr.installedAt) < relayHandshakeWait
			if tr != nil && !sp.HasSession() && !arriving {
				delete(nt.travels, c.key)
				nt.mu.Unlock()
				t.leaveRelay(c.p, tr)
				continue
			}
			if tr != nil && isDirect {
				tr.reason = ""
			}
			nt.mu.Unlock()
			continue
		}
		if tr == nil {
			tr = &travel{since: now, nextPunch: now}
			nt.travels[c.key] = tr
		}
		tr.lastWant = now
		punch := !now.Before(tr.nextPunch)
		if punch {
			tr.attempt++
			i := min(tr.attempt, len(punchSchedule))
			if i < len(punchSchedule) {
				tr.nextPunch = tr.since.Add(punchSchedule[i])
			} else {
				tr.nextPunch = now.Add(punchLater)
			}
		}
		var askRelay *cand
		needRelay := now.Sub(tr.since) >= relayAfter || typ == mesh.NATUDPBlocked
		if tr.installed {
			// The relay path does not answer (the relay forgot the route, or went
			// away), never carried a session, or its relay is no longer the member it
			// was: ask again, another relay if there is one.
			rp := m.memberPeer(tr.relayKey)
			gone := tr.via == nil || rp == nil || rp.sp != tr.via
			silent := sp.RelayVia() != nil && sp.Unanswered() >= relayRetry
			never := !sp.HasSession() && now.Sub(tr.installedAt) >= relayHandshakeWait
			if gone || silent || never {
				tr.installed = false
				tr.failed, tr.failedAt = tr.relayKey, now
			}
		}
		if needRelay && !tr.installed && now.Sub(tr.relayAsked) >= relayRetry && !c.relay {
			// Both ends rank the relays alike for their pair: asking at once, they ask
			// the same one (each its own relay leaves each a path the other does not
			// use), and after a failure move on to the same next one.
			ranked := slices.Clone(relays)
			slices.SortFunc(ranked, func(x, y cand) int {
				return cmp.Compare(relayRank(m.self, c.key, x.key), relayRank(m.self, c.key, y.key))
			})
			for i := range ranked {
				r := &ranked[i]
				if r.key == c.key || now.Before(tr.refused[r.key]) {
					continue
				}
				if r.key == tr.failed && now.Sub(tr.failedAt) < relayRefusedFor {
					if askRelay == nil {
						askRelay = r // the last resort
					}
					continue
				}
				askRelay = r
				break
			}
			if askRelay != nil {
				tr.relayKey, tr.asked, tr.relayAsked, tr.granted = askRelay.key, askRelay.key, now, false
			}
		}
		switch {
		case sp.RelayVia() != nil:
			tr.reason = reasonRelayed
		case typ == mesh.NATUDPBlocked:
			tr.reason = reasonUDPBlocked
		case needRelay && len(relays) == 0:
			tr.reason = reasonNoRelay
		case tr.attempt <= 1:
			tr.reason = reasonPunching
		default:
			tr.reason = reasonPunchFail
		}
		nt.mu.Unlock()

		if punch && typ != mesh.NATUDPBlocked {
			body := mesh.AppendKey(nil, c.key)
			sent := 0
			for _, co := range coords {
				if co.key == c.key {
					continue
				}
				if co.p.sp.SendReliable(mesh.TypePunchRequest, body) == nil {
					nt.punchRequests.Add(1)
					sent++
				}
				if sent == maxCoordinators {
					break
				}
			}
		}
		if askRelay != nil {
			if askRelay.p.sp.SendReliable(mesh.TypeRelayRequest, mesh.AppendKey(nil, c.key)) == nil {
				nt.relayRequests.Add(1)
			}
		}
	}
	// A node with no relay among its sessions dials one, so that relaying and
	// coordination have somewhere to go. Also when its NAT type is public: members
	// see it at its own address, but a stateful firewall may still drop what it did
	// not ask for, and then a relay can reach it only on a session it opened (a
	// relay member itself, if public, need not).
	if len(relays) == 0 && (typ != mesh.NATPublic || !nt.relay) {
		var idle []cand
		for _, c := range all {
			if c.relay && !c.p.sp.HasSession() && !c.p.sp.Connecting() {
				idle = append(idle, c)
			}
		}
		if len(idle) > 0 {
			idle[rand.IntN(len(idle))].p.sp.Connect()
		}
	}
	t.pruneNAT(now)
}

// leaveRelay drops a member's relay route when the member is no longer wanted, and
// tells the relay.
func (t *Tunnel) leaveRelay(p *peer, tr *travel) {
	via := p.sp.RelayVia()
	p.sp.ClearRelay()
	if via == nil && !tr.installed && !tr.granted {
		return
	}
	key, ok := p.sp.PublicKey()
	if !ok {
		return
	}
	if r := t.mesh.memberPeer(tr.relayKey); r != nil {
		_ = r.sp.SendReliable(mesh.TypeRelayClose, mesh.AppendKey(nil, key))
	}
}

// pruneNAT forgets rate-limit entries that no longer limit anything.
func (t *Tunnel) pruneNAT(now time.Time) {
	nt := t.mesh.nat
	nt.mu.Lock()
	defer nt.mu.Unlock()
	// And the traversal state of members that are no longer (their peer went with
	// them, and with it any relay path to them).
	for k := range nt.travels {
		if t.mesh.memberPeer(k) == nil {
			delete(nt.travels, k)
		}
	}
	nt.coordinated.prune(coordinateEvery, now)
	nt.punched.prune(punchEvery, now)
	nt.relayAnswered.prune(coordinateEvery, now)
}

// classifyNAT works out this node's NAT type from the members' reflections and, when
// it changes, sets the keepalive on the member sessions.
func (t *Tunnel) classifyNAT(now time.Time) {
	m := t.mesh
	m.mu.Lock()
	hostAddrs := m.underlay
	m.mu.Unlock()
	var own []netip.AddrPort
	if t.port != 0 {
		for _, a := range hostAddrs {
			own = append(own, netip.AddrPortFrom(a, t.port))
		}
	}
	own = append(own, m.extraEPs...)
	typ := mesh.ClassifyNAT(m.eng.Observed(), own, now)
	nt := m.nat
	nt.mu.Lock()
	old := nt.typ
	nt.typ = typ
	nt.mu.Unlock()
	if typ == old {
		return
	}
	t.log.Info("mesh: NAT type", "nat", string(typ), "was", string(old))
	var discovered []*peer
	m.mu.Lock()
	for _, mb := range m.members {
		if mb.p != nil && mb.source != sourceConfig {
			discovered = append(discovered, mb.p)
		}
	}
	m.mu.Unlock()
	for _, p := range discovered {
		t.setNATKeepalive(p)
	}
}

// natKeepalive is the persistent keepalive a member session gets: nat_keepalive while
// this node is behind NAT (or does not know yet), none when it is public.
func (t *Tunnel) natKeepalive() time.Duration {
	nt := t.mesh.nat
	nt.mu.Lock()
	defer nt.mu.Unlock()
	if nt.typ == mesh.NATPublic {
		return 0
	}
	return nt.keepalive
}

// setNATKeepalive gives a discovered member's peer the keepalive natKeepalive says (the
// caller leaves out [[peer]]s, which keep their own persistent_keepalive).
//
// Only a peer with a session gets it: the keepalive holds the mapping of a session, it
// must not open one (stt brings a session up for a persistent keepalive on a peer that
// never closes when idle, idle_timeout = "0s", and every member would be dialled). The
// mesh loop gives it and takes it back as sessions come and go.
func (t *Tunnel) setNATKeepalive(p *peer) {
	ka := t.natKeepalive()
	if !p.sp.HasSession() {
		ka = 0
	}
	pc := p.sp.Config()
	if pc.PersistentKeepalive == ka {
		return
	}
	pc.PersistentKeepalive = ka
	if err := p.sp.Update(pc); err != nil && !errors.Is(err, stt.ErrPeerRemoved) {
		t.log.Debug("mesh: keepalive", "peer", p.cfg.Name, "err", err)
	}
}

// natMessage handles the NAT control messages a member sent (receive goroutine).
func (t *Tunnel) natMessage(sp *stt.Peer, from [32]byte, typ byte, body []byte, seen netip.AddrPort, viaWS bool) {
	m := t.mesh
	nt := m.nat
	bad := func(why string, args ...any) {
		nt.natDropped.Add(1)
		t.log.Debug("mesh: NAT message ignored", append([]any{"type", typ, "from", sp.Name(), "why", why}, args...)...)
	}
	if m.memberPeer(from) == nil {
		bad("not a member")
		return
	}
	now := time.Now()
	switch typ {
	case mesh.TypePunchRequest:
		target, err := mesh.ParseKey(body)
		if err != nil {
			bad("malformed", "err", err)
			return
		}
		tp := m.memberPeer(target)
		if tp == nil || target == from || !tp.sp.HasSession() {
			bad("target has no session here")
			return
		}
		nt.mu.Lock()
		ok := nt.coordinated.allow([2][32]byte{from, target}, coordinateEvery, now)
		nt.mu.Unlock()
		if !ok {
			bad("over rate")
			return
		}
		// Each side learns where this node sees the other over UDP (nothing when the
		// other reaches this node over WebSocket: that address takes no datagram).
		var fromAddrs, targetAddrs []netip.AddrPort
		if !viaWS && seen.IsValid() {
			fromAddrs = append(fromAddrs, seen)
		}
		if ap := tp.sp.UDPEndpoint(); ap.IsValid() && tp.sp.Path() == stt.PathUDP {
			targetAddrs = append(targetAddrs, ap)
		}
		toTarget, err1 := mesh.AppendPunch(nil, mesh.Punch{Peer: from, Addrs: fromAddrs})
		toFrom, err2 := mesh.AppendPunch(nil, mesh.Punch{Peer: target, Addrs: targetAddrs})
		if err1 != nil || err2 != nil {
			bad("cannot encode", "err", errors.Join(err1, err2))
			return
		}
		_ = tp.sp.SendReliable(mesh.TypePunch, toTarget)
		_ = sp.SendReliable(mesh.TypePunch, toFrom)
		nt.punchesCoord.Add(1)

	case mesh.TypePunch:
		pu, err := mesh.ParsePunch(body)
		if err != nil {
			bad("malformed", "err", err)
			return
		}
		tp := m.memberPeer(pu.Peer)
		if pu.Peer == m.self || (tp == nil && !t.holdNAT(pu.Peer, typ, body, sp, from, now)) {
			bad("unknown member")
			return
		}
		if tp == nil {
			return // held until the member's record arrives (holdNAT)
		}
		if direct(tp.sp, t.node.Limits().FallbackAfter) {
			return // nothing to punch: the path is direct
		}
		nt.mu.Lock()
		tr := nt.travels[pu.Peer]
		relayed := tr != nil && tr.installed && tr.granted
		nt.mu.Unlock()
		if relayed && !tp.sp.HasSession() {
			// The handshake through the relay is under way: a punch now would take
			// its place (one handshake in flight per member). Punches resume once
			// the relayed session is up, and move it to UDP if they get through.
			return
		}
		nt.mu.Lock()
		if !nt.punched.allow(pu.Peer, punchEvery, now) {
			nt.mu.Unlock()
			bad("over rate")
			return
		}
		nt.mu.Unlock()
		addrs := pu.Addrs
		if rec := m.eng.Member(pu.Peer); rec != nil {
			cands, _ := candidatesOf(rec)
			for _, c := range cands {
				if !slices.Contains(addrs, c) {
					addrs = append(addrs, c)
				}
			}
		}
		tp.sp.Punch(addrs)
		nt.punchesStarted.Add(1)

	case mesh.TypeRelayRequest:
		target, err := mesh.ParseKey(body)
		if err != nil {
			bad("malformed", "err", err)
			return
		}
		nt.mu.Lock()
		ok := nt.relayAnswered.allow([2][32]byte{from, target}, coordinateEvery, now)
		nt.mu.Unlock()
		if !ok {
			bad("over rate")
			return
		}
		reason := uint8(0)
		tp := m.memberPeer(target)
		var idAB, idBA uint32
		switch {
		case !nt.relay:
			reason = mesh.RefuseNotRelay
		case tp == nil || target == from || target == m.self:
			reason = mesh.RefuseNotAllowed
		default:
			idAB, idBA, err = t.node.RelayOpen(sp, tp.sp)
			switch {
			case err == nil:
			case errors.Is(err, stt.ErrRelayNoSession):
				reason = mesh.RefuseNoSession
			case errors.Is(err, stt.ErrRelayShareFull):
				reason = mesh.RefuseShareFull
			case errors.Is(err, stt.ErrRelayFull):
				reason = mesh.RefuseFull
			default:
				reason = mesh.RefuseNotRelay
			}
		}
		if reason != 0 {
			nt.relayRefusals.Add(1)
			b, _ := mesh.AppendRelayRefused(nil, mesh.RelayRefused{Target: target, Reason: reason})
			_ = sp.SendReliable(mesh.TypeRelayRefused, b)
			t.log.Debug("mesh: relay refused", "from", sp.Name(), "reason", reason)
			return
		}
		toFrom, _ := mesh.AppendRelayGrant(nil, mesh.RelayGrant{Peer: target, SendID: idAB, RecvID: idBA})
		toTarget, _ := mesh.AppendRelayGrant(nil, mesh.RelayGrant{Peer: from, SendID: idBA, RecvID: idAB})
		_ = tp.sp.SendReliable(mesh.TypeRelayGrant, toTarget)
		_ = sp.SendReliable(mesh.TypeRelayGrant, toFrom)
		nt.relayGranted.Add(1)
		t.log.Info("mesh: relaying", "between", sp.Name(), "and", tp.sp.Name())

	case mesh.TypeRelayGrant:
		g, err := mesh.ParseRelayGrant(body)
		if err != nil {
			bad("malformed", "err", err)
			return
		}
		tp := m.memberPeer(g.Peer)
		if g.Peer == from || g.Peer == m.self || (tp == nil && !t.holdNAT(g.Peer, typ, body, sp, from, now)) {
			bad("unknown member")
			return
		}
		if tp == nil {
			return // held until the member's record arrives (holdNAT)
		}
		// Only a member that announces relaying may carry our traffic, and as the
		// chooser only the relay this node asked.
		if rec := m.eng.Member(from); rec == nil || !rec.Relay {
			bad("granted by a member that does not relay")
			return
		}
		nt.mu.Lock()
		tr := nt.travels[g.Peer]
		choose := tr != nil && tr.asked == from && !tr.relayAsked.IsZero()
		if tr != nil && tr.installed && tr.relayKey != from && !choose &&
			(tr.granted || relayAnswers(tp.sp, t.node.Limits().FallbackAfter)) {
			// A relay path to the member is in place: the one this node asked for,
			// or one that works. Another member's grant must not replace it (SetRelay
			// would move the traffic onto it at once); a chooser that needs another
			// relay asks it, and a follower's path that stopped answering may be
			// replaced.
			nt.mu.Unlock()
			bad("a relay path through another member is in place")
			return
		}
		if tr == nil {
			if len(nt.travels) >= maxNATEntries {
				nt.mu.Unlock()
				bad("too many members in traversal")
				return
			}
			// The other end asked: this node follows it onto the relay.
			tr = &travel{since: now, nextPunch: now.Add(punchLater)}
			nt.travels[g.Peer] = tr
		}
		tr.relayKey, tr.installed, tr.via, tr.installedAt = from, true, sp, now
		tr.granted = tr.granted || choose
		tr.lastWant = now // the follower too: its session comes through the route
		nt.mu.Unlock()
		if err := tp.sp.SetRelay(sp, g.SendID, g.RecvID, choose); err != nil {
			bad("cannot install", "err", err)
			return
		}
		nt.relayUsed.Add(1)
		t.log.Info("mesh: relay path", "peer", tp.sp.Name(), "via", sp.Name(), "chooser", choose)

	case mesh.TypeRelayRefused:
		rf, err := mesh.ParseRelayRefused(body)
		if err != nil {
			bad("malformed", "err", err)
			return
		}
		nt.mu.Lock()
		if tr := nt.travels[rf.Target]; tr != nil && tr.asked == from {
			if tr.refused == nil {
				tr.refused = make(map[[32]byte]time.Time)
			}
			tr.refused[from] = now.Add(relayBarred(rf.Reason))
			tr.relayAsked = time.Time{} // ask the next relay at the next tick
		}
		nt.mu.Unlock()
		t.log.Debug("mesh: relay refused us", "relay", sp.Name(), "reason", rf.Reason)

	case mesh.TypeRelayClose:
		peerKey, err := mesh.ParseKey(body)
		if err != nil {
			bad("malformed", "err", err)
			return
		}
		if tp := m.memberPeer(peerKey); tp != nil {
			if nt.relay {
				t.node.RelayClose(sp, tp.sp)
			}
			nt.mu.Lock()
			if tr := nt.travels[peerKey]; tr != nil && tr.relayKey == from && tr.installed {
				tr.installed = false
				nt.mu.Unlock()
				tp.sp.ClearRelay()
			} else {
				nt.mu.Unlock()
			}
		}
	}
}

// stillWanted is whether a member whose state says wanted (or not) is wanted: also
// for wantGrace after a tick last found it wanted, unless it is direct now. tr may be
// nil (the member is in no traversal).
func (tr *travel) stillWanted(wanted, isDirect bool, now time.Time) bool {
	return wanted || !isDirect && tr != nil && now.Sub(tr.lastWant) < wantGrace
}

// relayBarred is how long a relay that refused for reason is not asked again. "No
// session with the target" passes as soon as the target, which dials a relay itself
// when it is behind NAT, reaches it: barring it for relayRefusedFor left a member
// whose only relay refused that way without a path for 30 s (the NAT lab's matrix,
// two UDP-blocked members started together).
func relayBarred(reason uint8) time.Duration {
	if reason == mesh.RefuseNoSession {
		return relayRetry
	}
	return relayRefusedFor
}

// heldNAT is a PUNCH or RELAY_GRANT about a member whose record had not reached this
// node yet: a member learns a new member's record from its neighbours, within an
// anti-entropy round (10 s), and the coordinator or relay that names it may be quicker.
type heldNAT struct {
	typ  byte
	body []byte
	sp   *stt.Peer // who sent it
	from [32]byte
	at   time.Time
}

// heldKey names a held message: the member it is about, and its type.
type heldKey struct {
	key [32]byte
	typ byte
}

const (
	// maxHeldNAT bounds the held messages; heldNATWait is how long one is kept.
	maxHeldNAT  = 64
	heldNATWait = 10 * time.Second
)

// holdNAT keeps a PUNCH or RELAY_GRANT about key, a member this node has no peer for
// yet, and asks the sender for key's record (WANT): the sender knows the member, or it
// would not have sent it. natTick acts on the message once the member's peer is there.
// It reports false when there is no room (the message is then dropped). Receive
// goroutine.
func (t *Tunnel) holdNAT(key [32]byte, typ byte, body []byte, sp *stt.Peer, from [32]byte, now time.Time) bool {
	nt := t.mesh.nat
	nt.mu.Lock()
	hk := heldKey{key, typ}
	_, again := nt.held[hk]
	if !again && len(nt.held) >= maxHeldNAT {
		nt.mu.Unlock()
		return false
	}
	nt.held[hk] = heldNAT{typ: typ, body: slices.Clone(body), sp: sp, from: from, at: now}
	nt.mu.Unlock()
	if !again {
		if want, err := mesh.AppendWant(nil, [][32]byte{key}); err == nil {
			_ = sp.SendReliable(mesh.MsgWant, want)
		}
	}
	return true
}

// releaseHeldNAT acts on the held messages whose member now has a peer, and forgets
// those held for heldNATWait. Mesh loop, after syncMembers made the peers of the
// records that came.
func (t *Tunnel) releaseHeldNAT(now time.Time) {
	m := t.mesh
	nt := m.nat
	var ready []heldNAT
	nt.mu.Lock()
	for k, h := range nt.held {
		switch {
		case now.Sub(h.at) >= heldNATWait:
			delete(nt.held, k)
		case m.memberPeer(k.key) != nil:
			ready = append(ready, h)
			delete(nt.held, k)
		}
	}
	nt.mu.Unlock()
	for _, h := range ready {
		t.natMessage(h.sp, h.from, h.typ, h.body, netip.AddrPort{}, false)
	}
}

// natEvent is one of the NAT traversal counters.
type natEvent struct {
	name string
	n    uint64
}

// natEvents lists the NAT traversal counters, named as in status ("mesh_" + name)
// and as the event label of stt_mesh_nat_events_total.
func (t *Tunnel) natEvents() []natEvent {
	nt := t.mesh.nat
	return []natEvent{
		{"punch_requests_sent", nt.punchRequests.Load()},
		{"punches_coordinated", nt.punchesCoord.Load()},
		{"punches_started", nt.punchesStarted.Load()},
		{"relay_requests_sent", nt.relayRequests.Load()},
		{"relay_granted", nt.relayGranted.Load()},
		{"relay_refused", nt.relayRefusals.Load()},
		{"relay_paths_installed", nt.relayUsed.Load()},
		{"nat_messages_ignored", nt.natDropped.Load()},
	}
}

// natStatus is this node's NAT type, and why a member's path is what it is.
func (t *Tunnel) natStatus() (string, map[[32]byte]string) {
	nt := t.mesh.nat
	nt.mu.Lock()
	defer nt.mu.Unlock()
	why := make(map[[32]byte]string, len(nt.travels))
	for k, tr := range nt.travels {
		if tr.reason != "" {
			why[k] = tr.reason
		}
	}
	return string(nt.typ), why
}
