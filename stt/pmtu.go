// Path MTU discovery (docs/protocol.md 6.3): the largest inner packet that reaches a
// peer on its current path, found with padded PROBE control messages sent with Don't
// Fragment and answered by PROBE_ACK. The node's timer loop drives it (tickPMTU); the
// packet path reads one atomic (PathMTU).
//
// Sizes are handled as DATA frame lengths (the STT message, without the RELAY header):
// what a probe pads to and what the peer's PROBE_ACK reports. A frame of length F
// carries an inner packet of F-32 bytes and goes out as an IP packet of
// F + relay header (8 through a relay) + UDP 8 + IP 20 or 40.

package stt

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/stt-tun/stt-tun/stt/udp"
	"github.com/stt-tun/stt-tun/stt/wire"
)

// Path MTU states, as PeerStats.PathMTUState and status show them.
const (
	PMTUNone      = ""          // no probing: no session, a WebSocket path, or discovery off
	PMTUProbing   = "probing"   // a search runs (first, or upward again); PathMTU is the largest size confirmed so far
	PMTUConfirmed = "confirmed" // PathMTU was confirmed by an acknowledged probe; the search ended
	PMTULowering  = "lowering"  // probes of the confirmed size went unanswered while small ones passed (a black hole): searching below it
	PMTUMinimum   = "minimum"   // not even a 1280-byte IP packet (576 over IPv4) came through while small ones did: PathMTU assumes that size anyway
)

var pmtuStateNames = [...]string{PMTUNone, PMTUProbing, PMTUConfirmed, PMTULowering, PMTUMinimum}

// Values of pmtuState.state (indexes of pmtuStateNames).
const (
	pmtuNone uint32 = iota
	pmtuProbing
	pmtuConfirmed
	pmtuLowering
	pmtuMinimum
)

// Discovery constants (docs/protocol.md 7, the timers table).
const (
	// pmtuFloorIP is the IP packet size every path is assumed to carry (IPv6's
	// minimum MTU): the search starts there and never publishes less.
	pmtuFloorIP = 1280
	// pmtuFloorIP4 is the IP packet every IPv4 path carries (RFC 791's 576): an IPv4
	// path that loses even pmtuFloorIP is searched down to it, since the sockets never
	// fragment (an IPv6 path carries 1280 by definition).
	pmtuFloorIP4 = 576
	// pmtuMaxIP is the largest IP packet probed without Limits.PMTUMax: jumbo frames'
	// (loopback's 64 KiB would only make probes that no TUN packet needs).
	pmtuMaxIP = 9000
	// pmtuSizesPerRound is how many sizes one search round probes at once, spread over
	// the range still unknown.
	pmtuSizesPerRound = 8
	// pmtuRing is how many probes are remembered for their acknowledgement: this
	// round's and the one before.
	pmtuRing = 32
	// pmtuRoundMax bounds how long a round waits for its acknowledgements; a round
	// ends earlier once the first acknowledgement has shown the round trip
	// (twice its delay plus pmtuRoundSlack).
	pmtuRoundMax   = time.Second
	pmtuRoundSlack = 50 * time.Millisecond
	// pmtuRetry is the wait after a round with no acknowledgement at all (the path
	// is silent, or the peer runs a release that skips PROBEs: nothing is learnt from
	// it), doubling with each such round in a row up to Limits.PMTUReprobe.
	pmtuRetry = time.Second
	// pmtuConfirmInterval is how often the confirmed size is probed again while
	// large packets are sent to the peer (black-hole detection), and pmtuMisses how
	// many such probes in a row may be lost, while a small probe sent with each is
	// answered, before the estimate is lowered.
	pmtuConfirmInterval = time.Second
	pmtuMisses          = 3
)

// pmtuState is the peer's path MTU discovery. The published values and the counters
// are atomics, read without a lock (PathMTU by the packet path, Stats); the rest is
// guarded by Peer.mu.
type pmtuState struct {
	mtu   atomic.Int32 // largest confirmed inner packet on the current path; 0 = none known
	dgram atomic.Int32 // the UDP payload of that packet's frame
	state atomic.Uint32
	ctr   pmtuCounters
	// unanswered: on this path two rounds in a row went unanswered and none was ever
	// answered (a peer that skips PROBE, an older release): PathMTUPending gives up.
	unanswered atomic.Bool

	// Guarded by Peer.mu.
	on       bool    // probing the path key names
	key      pmtuKey // the path the figures are for
	extra    int     // bytes in front of each frame on this path: the RELAY header
	ipHdr    int     // 20 (IPv4) or 40 (IPv6)
	floor    int     // frame length of a pmtuFloorIP packet
	ceil     int     // frame length of a packet of the link's MTU
	lo       int     // largest frame length acknowledged on this path, 0 = none
	hi       int     // largest frame length not found too big
	searchUp bool    // a search runs; otherwise the estimate is kept and confirmed
	lowering bool    // the search follows a black hole: publish only at its end
	misses   int     // confirmation probes lost in a row
	silent   int     // rounds in a row with no acknowledgement at all
	// suspect is the smallest size the last search round lost, probed again in the
	// next: a size is too large once lost in two rounds, not on one loss by chance.
	suspect int
	round   pmtuRound
	ring    [pmtuRing]pmtuProbe
	nextID  uint32
	next    int64 // mono: no round starts before this
	reprobe int64 // mono: the next upward search
	// txPackets and txBytes are the peer's data figures at the last confirmation.
	txPackets, txBytes uint64
}

// PMTUCounters are the path MTU discovery's counters, of a peer (PeerStats.PMTU) or
// of every peer (Stats.PMTU).
type PMTUCounters struct {
	// ProbesSent, ProbesAcked: probes sent, and acknowledged by the peer. ProbesLost:
	// probes a round ended without an acknowledgement of, while others of that round
	// were acknowledged (too large for the path, or lost by chance).
	ProbesSent, ProbesAcked, ProbesLost uint64
	// BadAcks counts PROBE_ACKs refused: naming no outstanding probe, a probe already
	// acknowledged, or another frame length than the probe's. They change nothing.
	BadAcks uint64
	// BlackHoles counts the times the confirmed size went unanswered while small
	// probes were answered, and the estimate was lowered.
	BlackHoles uint64
}

// Indexes of pmtuCounters.
const (
	pmtuSent = iota
	pmtuAcked
	pmtuLost
	pmtuBad
	pmtuHoles
	numPMTUCounters
)

// pmtuCounters are PMTUCounters as atomics, indexed by pmtuSent...
type pmtuCounters [numPMTUCounters]atomic.Uint64

func (c *pmtuCounters) load() PMTUCounters {
	return PMTUCounters{ProbesSent: c[pmtuSent].Load(), ProbesAcked: c[pmtuAcked].Load(),
		ProbesLost: c[pmtuLost].Load(), BadAcks: c[pmtuBad].Load(), BlackHoles: c[pmtuHoles].Load()}
}

// pmtuCount counts one event i in the peer's counters and the node's.
func (p *Peer) pmtuCount(i int) {
	p.pmtu.ctr[i].Add(1)
	p.node.ctr.pmtu[i].Add(1)
}

// pmtuKey names a path: its kind, address and relay id. A change of any resets the
// discovery.
type pmtuKey struct {
	relay bool
	ap    netip.AddrPort
	id    uint32
}

// pmtuRound is the round of probes in flight. Guarded by Peer.mu.
type pmtuRound struct {
	open     bool
	confirm  bool // a confirmation round (the current size and a small probe)
	seq      uint32
	start    int64 // mono
	deadline int64 // mono
	probes   int   // sent in it
	acks     int   // acknowledged
}

// pmtuProbe is one probe sent. Guarded by Peer.mu.
type pmtuProbe struct {
	valid, acked bool
	// stale: sent on a path since given up (reset); its answer is expected and ignored.
	stale bool
	id    uint32
	frame int
	round uint32
}

// PathMTU is the largest inner packet (the payload of one DATA frame) known to reach
// the peer on its current path, or 0 when no limit is known or needed (a WebSocket
// path, no session yet, discovery off). One atomic load: the packet pump calls it per
// packet.
func (p *Peer) PathMTU() int { return int(p.pmtu.mtu.Load()) }

// pmtuPendingInner is the inner packet a 1280-byte IP packet carries on the narrowest
// kind of path (IPv6 underlay through a relay): what PathMTUPending reports.
const pmtuPendingInner = pmtuFloorIP - 40 - 8 - wire.RelayHeaderLen - wire.Overhead

// PathMTUPending is what to size TCP by while PathMTU is 0 on a peer whose path may be
// narrow (a UDP or relay path not answered yet, or no session yet): the inner packet
// any such path carries that takes a 1280-byte IP packet (1192). A connection keeps the
// MSS its SYN and SYN-ACK give it, and its first SYN usually starts the session, before
// any probe was answered. 0 when no limit is needed: a WebSocket path, discovery off,
// or a peer that answers no probe (a release without discovery), whose path MTU stays
// unknown. Not for the packet path of every packet: a few atomic loads, for SYNs.
func (p *Peer) PathMTUPending() int {
	if p.node.limits.PMTUDisable || p.pmtu.unanswered.Load() {
		return 0
	}
	if _, ws := p.target().(*wsEndpoint); ws {
		return 0
	}
	return pmtuPendingInner
}

// controlBudget is the largest stream-0 payload to pack control messages into: one
// DATA frame the path carries (PathMTU), or, before it is known, what any path that
// takes a 1280-byte IP packet carries.
func (p *Peer) controlBudget() int {
	if m := p.PathMTU(); m > 0 {
		return m
	}
	return pmtuPendingInner
}

// pmtuStats fills the path MTU fields of s.
func (p *Peer) pmtuStats(s *PeerStats) {
	st := &p.pmtu
	s.PathMTU = int(st.mtu.Load())
	s.PathMTUDatagram = int(st.dgram.Load())
	if i := st.state.Load(); int(i) < len(pmtuStateNames) {
		s.PathMTUState = pmtuStateNames[i]
	}
	s.PMTU = st.ctr.load()
}

// tickPMTU runs the peer's discovery: called by the timer loop after tick, every Tick.
// The change callback runs with no lock held.
func (p *Peer) tickPMTU(now time.Time) {
	if p.pmtu.state.Load() == pmtuNone && (p.node.limits.PMTUDisable || p.keys.current.Load() == nil && p.keys.standby.Load() == nil) {
		return // nothing to probe, nothing to reset: no lock taken
	}
	p.mu.Lock()
	old, cur, changed := p.pmtuStepLocked(now)
	p.mu.Unlock()
	p.pmtuNotify(old, cur, changed)
}

func (p *Peer) pmtuNotify(old, cur int, changed bool) {
	if !changed {
		return
	}
	p.node.log.Debug("path MTU changed", "peer", p.cfg.Name, "old", old, "new", cur, "state", pmtuStateNames[p.pmtu.state.Load()])
	if f := p.node.cfg.PathMTUChanged; f != nil {
		f(p, old, cur)
	}
}

// pmtuStepLocked advances the discovery and reports a change of the published
// estimate. Called with p.mu held.
func (p *Peer) pmtuStepLocked(now time.Time) (old, cur int, changed bool) {
	st := &p.pmtu
	n := p.node
	old = int(st.mtu.Load())
	s := p.keys.current.Load()
	if s == nil || !s.confirmed.Load() {
		s = p.keys.standby.Load() // a rekey in flight: the confirmed session it replaces
	}
	ep := p.target()
	var key pmtuKey
	usable := !n.limits.PMTUDisable && !p.removed && s != nil && s.confirmed.Load() && !s.expired(now, &n.limits) && ep != nil
	if usable {
		switch e := ep.(type) {
		case *wsEndpoint:
			usable = false // TCP carries any frame: no probing
		case *relayEndpoint:
			key = pmtuKey{relay: true, ap: e.addr, id: e.sendID}
		default:
			key = pmtuKey{ap: addrPortOf(ep)}
		}
	}
	if !usable {
		if st.on || st.state.Load() != pmtuNone {
			p.pmtuResetLocked()
		}
		return old, 0, old != 0
	}
	t := p.mono(now)
	if !st.on || st.key != key {
		p.pmtuResetLocked()
		p.pmtuStartLocked(key, t)
	}
	if st.round.open {
		if t < st.round.deadline && st.round.acks < st.round.probes {
			return old, old, false
		}
		p.pmtuEndRoundLocked(t)
	}
	if t >= st.next {
		switch {
		case st.searchUp:
			p.pmtuSearchRoundLocked(s, now, t)
		case t >= st.reprobe:
			// Upward again, up to the link's MTU as it is now.
			st.ceil = max(p.pmtuCeil(key), st.lo)
			st.hi = st.ceil
			st.searchUp = true
			st.state.Store(pmtuProbing)
			p.pmtuSearchRoundLocked(s, now, t)
		case st.lo > 0 && (st.misses > 0 || t-st.round.start >= int64(pmtuConfirmInterval) && p.pmtuBulkLocked()):
			p.pmtuConfirmRoundLocked(s, now, t)
		}
	}
	cur = int(st.mtu.Load())
	return old, cur, cur != old
}

// pmtuBulkLocked reports whether large packets went to the peer since the last
// confirmation: data packets whose average is at least half the estimate (a bulk
// sender; a side that only acknowledges sends small ones, which a black hole lets
// through). Called with p.mu held.
func (p *Peer) pmtuBulkLocked() bool {
	st := &p.pmtu
	pk, by := p.counters.txPackets.Load(), p.counters.txBytes.Load()
	dp, db := pk-st.txPackets, by-st.txBytes
	st.txPackets, st.txBytes = pk, by
	return dp > 0 && db >= dp*uint64(st.mtu.Load())/2
}

// pmtuResetLocked forgets the path's figures: no estimate, no probe outstanding.
// Called with p.mu held.
func (p *Peer) pmtuResetLocked() {
	st := &p.pmtu
	st.on, st.searchUp, st.lowering, st.misses, st.silent, st.lo, st.hi, st.suspect = false, false, false, 0, 0, 0, 0, 0
	st.round = pmtuRound{seq: st.round.seq + 1}
	for i := range st.ring {
		st.ring[i].stale = true
	}
	st.mtu.Store(0)
	st.dgram.Store(0)
	st.state.Store(pmtuNone)
	st.unanswered.Store(false)
}

// pmtuStartLocked begins the search on the path key names. Called with p.mu held.
func (p *Peer) pmtuStartLocked(key pmtuKey, t int64) {
	st := &p.pmtu
	st.on, st.key = true, key
	st.extra = 0
	if key.relay {
		st.extra = wire.RelayHeaderLen
	}
	st.ipHdr = 20
	if key.ap.Addr().Unmap().Is6() {
		st.ipHdr = 40
	}
	st.floor = pmtuFloorIP - st.ipHdr - 8 - st.extra
	st.ceil = p.pmtuCeil(key)
	st.hi = st.ceil
	st.searchUp = true
	st.next = t
	if st.nextID == 0 {
		st.nextID = rand.Uint32() | 1
	}
	st.txPackets, st.txBytes = p.counters.txPackets.Load(), p.counters.txBytes.Load()
	st.state.Store(pmtuProbing)
}

// pmtuCeil is the longest frame worth probing on the path: the MTU of the local link
// toward its address (the relay's, on a relay path), at most pmtuMaxIP, and the frame
// of an inner packet of Limits.PMTUMax when set; never below the floor.
func (p *Peer) pmtuCeil(key pmtuKey) int {
	st := &p.pmtu
	mtu := p.node.routeMTU(key.ap.Addr())
	if mtu <= 0 {
		mtu = 1500
	}
	f := min(mtu, pmtuMaxIP) - st.ipHdr - 8 - st.extra
	if m := p.node.limits.PMTUMax; m > 0 {
		f = min(f, m+wire.Overhead)
	}
	return max(f, st.floor)
}

// pmtuSearchRoundLocked probes up to pmtuSizesPerRound sizes spread over the range
// not yet known (above the largest acknowledged, up to the smallest lost), the floor
// while nothing is acknowledged, and a small probe that tells a silent path from a
// narrow one. Called with p.mu held.
func (p *Peer) pmtuSearchRoundLocked(s *session, now time.Time, t int64) {
	st := &p.pmtu
	if st.hi <= st.lo {
		p.pmtuSearchDoneLocked(t)
		return
	}
	p.pmtuOpenRoundLocked(t, false)
	p.pmtuProbeLocked(s, now, wire.MinProbeFrame)
	if st.suspect <= st.lo || st.suspect > st.hi {
		st.suspect = 0
	}
	if st.suspect > 0 {
		p.pmtuProbeLocked(s, now, st.suspect) // lost once: once more
	}
	base := st.lo
	if st.lo == 0 {
		if st.suspect != st.floor {
			p.pmtuProbeLocked(s, now, st.floor)
		}
		base = st.floor
	}
	last := base
	for i := 1; i <= pmtuSizesPerRound; i++ {
		f := base + ((st.hi-base)*i+pmtuSizesPerRound-1)/pmtuSizesPerRound
		if f > last {
			if f != st.suspect {
				p.pmtuProbeLocked(s, now, f)
			}
			last = f
		}
	}
}

// pmtuConfirmRoundLocked probes the confirmed size again, with a small probe beside
// it: the small one answered and the large one not is a black hole. Called with p.mu
// held.
func (p *Peer) pmtuConfirmRoundLocked(s *session, now time.Time, t int64) {
	st := &p.pmtu
	p.pmtuOpenRoundLocked(t, true)
	p.pmtuProbeLocked(s, now, wire.MinProbeFrame)
	p.pmtuProbeLocked(s, now, st.lo)
}

func (p *Peer) pmtuOpenRoundLocked(t int64, confirm bool) {
	st := &p.pmtu
	wait := pmtuRoundMax
	if rtt := time.Duration(p.counters.rtt.Load()); rtt > 0 {
		wait = min(wait, 2*rtt+pmtuRoundSlack)
	}
	st.round = pmtuRound{open: true, confirm: confirm, seq: st.round.seq + 1, start: t, deadline: t + int64(wait)}
}

// pmtuProbeLocked sends one probe padded to a frame of frameLen bytes in the open
// round. Called with p.mu held.
func (p *Peer) pmtuProbeLocked(s *session, now time.Time, frameLen int) {
	st := &p.pmtu
	id := st.nextID
	st.nextID++
	slot := &st.ring[id%pmtuRing]
	*slot = pmtuProbe{valid: true, id: id, frame: frameLen, round: st.round.seq}
	st.round.probes++
	p.pmtuCount(pmtuSent)
	if err := p.sendProbe(s, id, frameLen, now); errors.Is(err, syscall.EMSGSIZE) {
		// The local stack refused it as larger than the interface allows: too big,
		// as far as the search is concerned. (Other errors leave it to be lost.)
		slot.valid = false
		st.round.probes--
		p.pmtuCount(pmtuLost)
		if frameLen > st.lo {
			st.hi = min(st.hi, frameLen-1)
		}
	}
}

// sendProbe seals a PROBE padded to frameLen on s and sends it on the current path.
func (p *Peer) sendProbe(s *session, id uint32, frameLen int, now time.Time) error {
	frame, err := wire.AppendProbe(make([]byte, wire.HeaderLen, frameLen), id, frameLen)
	if err != nil {
		return err
	}
	ctr, ok := s.reserve(1, p.node.limits.RejectAfterMessages)
	if !ok {
		return ErrNoSession
	}
	nonce := p.node.getNonce()
	frame = s.seal(frame, wire.ControlStream, ctr, nonce)
	p.node.putNonce(nonce)
	ep := p.target()
	if ep == nil {
		return errNoEndpoint
	}
	if err := p.node.send([][]byte{frame}, ep); err != nil {
		return err
	}
	p.node.countTx(TxProbe, 1, len(frame))
	p.times.lastSent.Store(p.mono(now))
	return nil
}

// pmtuEndRoundLocked judges the round that ended: the sizes above the largest
// acknowledged that went unanswered are lost, if anything at all was answered (else
// the path was silent, and nothing is learnt). Called with p.mu held.
func (p *Peer) pmtuEndRoundLocked(t int64) {
	st := &p.pmtu
	r := &st.round
	r.open = false
	if r.acks == 0 {
		st.next = t + min(int64(pmtuRetry)<<min(st.silent, 20), int64(p.node.limits.PMTUReprobe))
		st.silent++
		if st.silent >= 2 && st.lo == 0 {
			st.unanswered.Store(true)
		}
		return
	}
	st.silent = 0
	smallestLost, confirmLost, suspectLost := 0, false, false
	for i := range st.ring {
		pr := &st.ring[i]
		if !pr.valid || pr.round != r.seq || pr.acked {
			continue
		}
		p.pmtuCount(pmtuLost)
		if pr.frame == wire.MinProbeFrame {
			continue
		}
		if pr.frame >= st.lo {
			confirmLost = true
		}
		if pr.frame == st.suspect {
			suspectLost = true
		}
		if pr.frame > st.lo && (smallestLost == 0 || pr.frame < smallestLost) {
			smallestLost = pr.frame
		}
	}
	if r.confirm {
		if !confirmLost {
			st.misses = 0
			return
		}
		st.misses++
		if st.misses < pmtuMisses {
			return // another confirmation at once
		}
		// Large frames are lost while small ones pass: search below the size that
		// worked, publishing only the result.
		p.pmtuCount(pmtuHoles)
		p.node.log.Info("path MTU black hole: large frames to the peer are lost while small ones pass; searching a lower size",
			"peer", p.cfg.Name, "was", st.lo-wire.Overhead)
		st.misses, st.suspect = 0, 0
		st.hi, st.lo = st.lo-1, 0
		st.searchUp, st.lowering = true, true
		st.state.Store(pmtuLowering)
		return
	}
	if suspectLost && st.suspect > st.lo {
		st.hi = min(st.hi, st.suspect-1) // lost twice: too large
	}
	st.suspect = smallestLost
	if st.lo == 0 && st.hi < st.floor {
		if low := pmtuFloorIP4 - st.ipHdr - 8 - st.extra; st.ipHdr == 20 && st.floor > low {
			// Not even a 1280-byte packet came through an IPv4 path, which may be
			// narrower: search down to 576 (the next round probes that floor).
			st.floor, st.suspect = low, 0
			return
		}
		// Not even the floor came through, while the small probe did.
		st.lo, st.hi = st.floor, st.floor
		p.pmtuPublishLocked(st.floor, pmtuMinimum)
		p.pmtuSearchDoneLocked(t)
		return
	}
	if st.hi <= st.lo {
		p.pmtuSearchDoneLocked(t)
	}
}

// pmtuSearchDoneLocked ends a search: the largest size acknowledged is the estimate
// until the next upward search, which comes after Limits.PMTUReprobe, jittered by up to
// an eighth either way. Called with p.mu held.
func (p *Peer) pmtuSearchDoneLocked(t int64) {
	st := &p.pmtu
	st.searchUp, st.lowering, st.suspect = false, false, 0
	if st.state.Load() != pmtuMinimum {
		p.pmtuPublishLocked(st.lo, pmtuConfirmed)
	}
	iv := int64(p.node.limits.PMTUReprobe)
	st.reprobe = t + iv - iv/8 + rand.Int64N(iv/4+1)
	st.round.start = t
	st.txPackets, st.txBytes = p.counters.txPackets.Load(), p.counters.txBytes.Load()
}

// pmtuPublishLocked makes frameLen the estimate. Called with p.mu held.
func (p *Peer) pmtuPublishLocked(frameLen int, state uint32) {
	st := &p.pmtu
	st.mtu.Store(int32(frameLen - wire.Overhead))
	st.dgram.Store(int32(frameLen + st.extra))
	st.state.Store(state)
}

// answerProbe appends the PROBE_ACK for a PROBE that arrived in a stream-0 payload of
// payloadLen bytes: its id and the length of the frame that carried it.
func answerProbe(reply, body []byte, payloadLen int) []byte {
	return wire.AppendProbeAck(reply, wire.ParseProbe(body), uint16(min(payloadLen+wire.Overhead, wire.MaxMessageLen)))
}

// probeAcked takes a PROBE_ACK: one naming a probe outstanding on this path, with the
// frame length that probe had, confirms that size; any other changes nothing and is
// counted (PMTUBadAcks).
func (p *Peer) probeAcked(body []byte, now time.Time) {
	id, l := wire.ParseProbeAck(body)
	st := &p.pmtu
	p.mu.Lock()
	pr := &st.ring[id%pmtuRing]
	if pr.valid && pr.id == id && pr.stale && !pr.acked && pr.frame == int(l) {
		// Sent on the path before a reset: a late answer, not a bad one, that says
		// nothing of the path now.
		pr.acked = true
		p.mu.Unlock()
		return
	}
	if !pr.valid || pr.id != id || pr.acked || pr.frame != int(l) {
		p.mu.Unlock()
		p.pmtuCount(pmtuBad)
		return
	}
	old := int(st.mtu.Load())
	pr.acked = true
	p.pmtuCount(pmtuAcked)
	st.unanswered.Store(false)
	t := p.mono(now)
	if r := &st.round; r.open && pr.round == r.seq {
		if r.acks == 0 {
			// The first answer shows the round trip: the rest come soon or not at all.
			r.deadline = min(r.deadline, t+2*(t-r.start)+int64(pmtuRoundSlack))
		}
		r.acks++
	}
	if pr.frame > st.lo && pr.frame != wire.MinProbeFrame {
		st.lo = pr.frame
		st.hi = max(st.hi, st.lo)
		if st.searchUp && !st.lowering && st.lo-wire.Overhead > old {
			p.pmtuPublishLocked(st.lo, pmtuProbing)
		}
	}
	cur := int(st.mtu.Load())
	done := st.round.open && st.round.acks == st.round.probes
	p.mu.Unlock()
	p.pmtuNotify(old, cur, cur != old)
	if done {
		p.node.kick() // every probe answered: the next round need not wait for the tick
	}
}

// routeMTU is the MTU of the local link toward addr, 0 if unknown.
func (n *Node) routeMTU(addr netip.Addr) int {
	if n.cfg.routeMTU != nil {
		return n.cfg.routeMTU(addr)
	}
	mtu, err := udp.RouteMTU(addr, n.cfg.FwMark)
	if err != nil {
		n.log.Debug("no link MTU toward a peer's address; assuming 1500", "err", err)
		return 0
	}
	return mtu
}
