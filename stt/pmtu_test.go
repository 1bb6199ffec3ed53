package stt

import (
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/stt-tun/stt-tun/stt/udp"
	"github.com/stt-tun/stt-tun/stt/wire"
)

// narrowBind drops every datagram longer than limit bytes (the UDP payload), silently:
// a path whose MTU is below what the link says and which sends no ICMP.
type narrowBind struct {
	conn.Bind
	limit *atomic.Int64 // 0 = none
	// alt, when set, is the limit toward altAddr instead: another path.
	alt     *atomic.Int64
	altAddr netip.Addr
	dropped atomic.Uint64
}

func (b *narrowBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	l := int(b.limit.Load())
	if b.alt != nil && addrPortOf(ep).Addr() == b.altAddr {
		l = int(b.alt.Load())
	}
	if l == 0 {
		return b.Bind.Send(bufs, ep)
	}
	keep := make([][]byte, 0, len(bufs))
	for _, m := range bufs {
		if len(m) > l {
			b.dropped.Add(1)
			continue
		}
		keep = append(keep, m)
	}
	if len(keep) == 0 {
		return nil
	}
	return b.Bind.Send(keep, ep)
}

// mtuChanges records PathMTUChanged calls.
type mtuChanges struct {
	mu  sync.Mutex
	got [][2]int
}

func (c *mtuChanges) add(_ *Peer, old, new int) {
	c.mu.Lock()
	c.got = append(c.got, [2]int{old, new})
	c.mu.Unlock()
}

func (c *mtuChanges) last() (int, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.got) == 0 {
		return -1, -1
	}
	l := c.got[len(c.got)-1]
	return l[0], l[1]
}

// linkMTU is the link MTU the test nodes see toward every address: Ethernet's.
const linkMTU = 1500

// narrowPair starts two nodes whose path carries datagrams up to *limit bytes, over
// links of linkMTU; a initiates. changes records a's PathMTUChanged calls.
func narrowPair(t *testing.T, timers Limits, limit *atomic.Int64) (a, b *testNode, changes *mtuChanges) {
	seed := randKey(t)
	changes = &mtuChanges{}
	cfg := func(rec *mtuChanges) func(*Config) {
		return func(c *Config) {
			c.Bind = &narrowBind{Bind: c.Bind, limit: limit}
			c.routeMTU = func(netip.Addr) int { return linkMTU }
			if rec != nil {
				c.PathMTUChanged = rec.add
			}
		}
	}
	a = startNode(t, nodeOpts{seed: seed, name: "a", timers: timers, config: cfg(changes)})
	b = startNode(t, nodeOpts{seed: seed, name: "b", timers: timers, config: cfg(nil)})
	if _, err := b.AddPeer(PeerConfig{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AddPeer(PeerConfig{Name: "b", Endpoint: loopback(b.Node)}); err != nil {
		t.Fatal(err)
	}
	return a, b, changes
}

// waitPMTU waits until the peer's estimate is want (an inner packet size) and its
// state confirmed, and returns how long that took.
func waitPMTU(t *testing.T, p *Peer, want int, d time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	waitFor(t, d, "path MTU "+strconv.Itoa(want), func() bool {
		s := p.Stats()
		return s.PathMTU == want && s.PathMTUState == PMTUConfirmed
	})
	return time.Since(start)
}

// TestPathMTUConvergesToWhatThePathCarries: over a path that silently drops datagrams
// above N bytes, the estimate settles at exactly N (an inner packet of N-32), on both
// sides, its datagram size says N, and the callback saw the final value.
func TestPathMTUConvergesToWhatThePathCarries(t *testing.T) {
	var limit atomic.Int64
	limit.Store(1400)
	a, b, changes := narrowPair(t, Limits{}, &limit)
	established(t, a, b)
	took := waitPMTU(t, a.Peer("b"), 1400-wire.Overhead, 10*time.Second)
	t.Logf("session up to confirmed path MTU: %v", took.Round(time.Millisecond))
	waitPMTU(t, b.Peer("a"), 1400-wire.Overhead, 10*time.Second)
	s := a.Peer("b").Stats()
	if s.PathMTUDatagram != 1400 {
		t.Errorf("datagram size %d, want 1400", s.PathMTUDatagram)
	}
	if s.PMTU.ProbesAcked == 0 || s.PMTU.ProbesLost == 0 || s.PMTU.BadAcks != 0 {
		t.Errorf("probe counters %+v", s)
	}
	if old, cur := changes.last(); cur != 1400-wire.Overhead {
		t.Errorf("last PathMTUChanged(%d, %d), want the new value %d", old, cur, 1400-wire.Overhead)
	}
}

// TestPathMTUWholeLinkWhenNothingIsNarrower: a path as wide as the link confirms the
// link's MTU (1500 - IPv4 20 - UDP 8 - STT 32 = 1440).
func TestPathMTUWholeLinkWhenNothingIsNarrower(t *testing.T) {
	var limit atomic.Int64
	a, b, _ := narrowPair(t, Limits{}, &limit)
	established(t, a, b)
	waitPMTU(t, a.Peer("b"), linkMTU-20-8-wire.Overhead, 10*time.Second)
}

// TestPathMTUStopsAtPMTUMax: on a path wider than the TUN device's MTU the search
// stops there (Limits.PMTUMax): a larger path MTU helps no packet.
func TestPathMTUStopsAtPMTUMax(t *testing.T) {
	var limit atomic.Int64
	a, b, _ := narrowPair(t, Limits{PMTUMax: 1380}, &limit)
	established(t, a, b)
	waitPMTU(t, a.Peer("b"), 1380, 10*time.Second)
	if s := a.Peer("b").Stats(); s.PMTU.ProbesLost != 0 {
		t.Errorf("%d probes lost: probed above PMTUMax", s.PMTU.ProbesLost)
	}
}

// bulk sends inner packets of size bytes to p until stop is closed.
func bulk(t *testing.T, p *Peer, size int, stop <-chan struct{}, done *sync.WaitGroup) {
	defer done.Done()
	buf := make([]byte, wire.HeaderLen+size, wire.HeaderLen+size+wire.TagLen)
	for {
		select {
		case <-stop:
			return
		default:
		}
		if err := p.Send([][]byte{buf[:wire.HeaderLen+size]}, []uint16{1}); err != nil {
			t.Error(err)
			return
		}
		time.Sleep(2 * time.Millisecond) // pacing traffic for the test, not synchronisation
	}
}

// TestPathMTUBlackHoleLowersQuickly: once the path narrows below the confirmed size
// with no ICMP (large frames lost, small ones passing), the estimate follows it down
// within seconds while data flows, and the black hole is counted.
func TestPathMTUBlackHoleLowersQuickly(t *testing.T) {
	var limit atomic.Int64
	limit.Store(1400)
	a, b, changes := narrowPair(t, Limits{}, &limit)
	established(t, a, b)
	p := a.Peer("b")
	waitPMTU(t, p, 1400-wire.Overhead, 10*time.Second)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go bulk(t, p, 1300, stop, &wg)
	defer func() { close(stop); wg.Wait() }()
	limit.Store(1300)
	took := waitPMTU(t, p, 1300-wire.Overhead, 10*time.Second)
	t.Logf("black hole to lowered estimate: %v", took.Round(time.Millisecond))
	if s := p.Stats(); s.PMTU.BlackHoles != 1 {
		t.Errorf("%d black holes counted, want 1", s.PMTU.BlackHoles)
	}
	if old, cur := changes.last(); old != 1400-wire.Overhead || cur != 1300-wire.Overhead {
		t.Errorf("last PathMTUChanged(%d, %d), want straight from %d to %d", old, cur, 1400-wire.Overhead, 1300-wire.Overhead)
	}
}

// TestPathMTURisesAtTheNextReprobe: when the path widens, the estimate stays until
// the next upward search (Limits.PMTUReprobe), then rises to the new width.
func TestPathMTURisesAtTheNextReprobe(t *testing.T) {
	var limit atomic.Int64
	limit.Store(1300)
	a, b, _ := narrowPair(t, Limits{PMTUReprobe: 2 * time.Second}, &limit)
	established(t, a, b)
	p := a.Peer("b")
	waitPMTU(t, p, 1300-wire.Overhead, 10*time.Second)
	limit.Store(1450)
	took := waitPMTU(t, p, 1450-wire.Overhead, 10*time.Second)
	t.Logf("path widened to raised estimate: %v (re-probe every 2 s ± 1/8)", took.Round(time.Millisecond))
}

// TestPathMTUBadAcksChangeNothing: PROBE_ACKs that name no outstanding probe, a probe
// already answered, or a probe with another frame length (larger: a probe that was
// lost claimed as arrived bigger, or smaller) leave the estimate as it is, and each is
// counted.
func TestPathMTUBadAcksChangeNothing(t *testing.T) {
	var limit atomic.Int64
	limit.Store(1400)
	a, b, _ := narrowPair(t, Limits{}, &limit)
	established(t, a, b)
	pa := a.Peer("b")
	want := 1400 - wire.Overhead
	waitPMTU(t, pa, want, 10*time.Second)

	// A lost probe (too big) and an answered one, from a's memory of its probes.
	pa.mu.Lock()
	var lost, answered pmtuProbe
	for _, pr := range pa.pmtu.ring {
		switch {
		case pr.valid && !pr.acked && pr.frame > 1400 && lost.id == 0:
			lost = pr
		case pr.valid && pr.acked && answered.id == 0:
			answered = pr
		}
	}
	pa.mu.Unlock()
	if lost.id == 0 || answered.id == 0 {
		t.Fatalf("no lost or answered probe remembered: %+v %+v", lost, answered)
	}
	pb := b.Peer("a")
	s := pb.keys.current.Load()
	before := pa.Stats()
	acks := [][]byte{
		wire.AppendProbeAck(nil, lost.id^0x5a5a5a5a, uint16(lost.frame)),     // unsolicited
		wire.AppendProbeAck(nil, lost.id, uint16(lost.frame+100)),            // oversized
		wire.AppendProbeAck(nil, lost.id, uint16(1400)),                      // mismatched
		wire.AppendProbeAck(nil, answered.id, uint16(answered.frame)),        // duplicate
		wire.AppendProbeAck(nil, lost.id+pmtuRing, uint16(lost.frame)),       // same slot, other id
		wire.AppendProbeAck(nil, answered.id, uint16(answered.frame+0x1000)), // duplicate, oversized
	}
	for _, m := range acks {
		pb.sendControl(s, m)
	}
	waitFor(t, 5*time.Second, "bad acks counted", func() bool {
		return pa.Stats().PMTU.BadAcks-before.PMTU.BadAcks >= uint64(len(acks))
	})
	after := pa.Stats()
	if got := after.PMTU.BadAcks - before.PMTU.BadAcks; got != uint64(len(acks)) {
		t.Errorf("%d bad acks counted, want %d", got, len(acks))
	}
	if after.PathMTU != want || after.PathMTUState != PMTUConfirmed || after.PMTU.ProbesAcked != before.PMTU.ProbesAcked {
		t.Errorf("after bad acks: %+v, want the estimate %d kept", after, want)
	}
	pa.mu.Lock()
	lo := pa.pmtu.lo
	pa.mu.Unlock()
	if lo != 1400 {
		t.Errorf("largest acknowledged frame %d after bad acks, want 1400", lo)
	}
	if got := a.Stats().PMTU.BadAcks; got != uint64(len(acks)) {
		t.Errorf("node counts %d bad acks, want %d", got, len(acks))
	}
	if a.Stats().Drops[DropControl] != 0 {
		t.Errorf("bad acks counted as malformed control messages too")
	}
}

// TestPathMTUDisabledSendsNoProbes: with discovery off there are no probes and no
// estimate.
func TestPathMTUDisabledSendsNoProbes(t *testing.T) {
	var limit atomic.Int64
	limit.Store(1400)
	a, b, _ := narrowPair(t, Limits{PMTUDisable: true}, &limit)
	established(t, a, b)
	sendOne(t, b.Peer("a"), 0, []byte("back"))
	a.h.waitCount(t, 1, 5*time.Second)
	// The timer loop has ticked with the session up (the answer needed one).
	deadline := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(deadline) {
		if s := a.Peer("b").Stats(); s.PMTU.ProbesSent != 0 || s.PathMTU != 0 || s.PathMTUState != PMTUNone {
			t.Fatalf("discovery off: %+v", s)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPathMTUAllocationFree: reading the estimate allocates nothing (the pump reads it
// per packet).
func TestPathMTUAllocationFree(t *testing.T) {
	var limit atomic.Int64
	a, b, _ := narrowPair(t, Limits{}, &limit)
	established(t, a, b)
	p := a.Peer("b")
	sink := 0
	if n := allocsPerCall(1000, func() { sink += p.PathMTU() }); n != 0 {
		t.Fatalf("%v allocations per PathMTU", n)
	}
}

// TestPathMTUResetsOnPathChange: when the peer's traffic moves to another endpoint,
// the estimate of the old path is forgotten and the new path's found, even when it is
// narrower and no data flows (nothing would show the old one lost).
func TestPathMTUResetsOnPathChange(t *testing.T) {
	var limit, alt atomic.Int64
	limit.Store(1400)
	alt.Store(1300)
	other := netip.MustParseAddr("127.0.0.2")
	seed := randKey(t)
	var changes mtuChanges
	cfg := func(c *Config) {
		c.Bind = &narrowBind{Bind: c.Bind, limit: &limit, alt: &alt, altAddr: other}
		c.routeMTU = func(netip.Addr) int { return linkMTU }
	}
	a := startNode(t, nodeOpts{seed: seed, name: "a", config: func(c *Config) { cfg(c); c.PathMTUChanged = changes.add }})
	b := startNode(t, nodeOpts{seed: seed, name: "b", config: cfg})
	if _, err := b.AddPeer(PeerConfig{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AddPeer(PeerConfig{Name: "b", Endpoint: loopback(b.Node)}); err != nil {
		t.Fatal(err)
	}
	established(t, a, b)
	p := a.Peer("b")
	waitPMTU(t, p, 1400-wire.Overhead, 10*time.Second)
	// b listens on every address: 127.0.0.2 reaches it too, over a narrower path.
	if err := p.setEndpoint(netip.AddrPortFrom(other, b.Port())); err != nil {
		t.Fatal(err)
	}
	waitPMTU(t, p, 1300-wire.Overhead, 10*time.Second)
	changes.mu.Lock()
	defer changes.mu.Unlock()
	var sawReset bool
	for _, c := range changes.got {
		if c == [2]int{1400 - wire.Overhead, 0} {
			sawReset = true
		}
	}
	if !sawReset {
		t.Errorf("changes %v: the old path's estimate was not dropped to 0 first", changes.got)
	}
}

// TestPathMTUThroughRelayCountsTheRelayHeader: on a relay path the probes go end to
// end through the relay; the datagram carries the RELAY header, so a path of N bytes
// gives an inner packet of N-8-32. A WebSocket path (a to r here) is not probed: its
// path MTU is 0.
func TestPathMTUThroughRelayCountsTheRelayHeader(t *testing.T) {
	var limit atomic.Int64
	limit.Store(1400)
	l := newRelayLab(t, labOpts{wsA: true, config: func(c *Config) {
		c.Bind = &narrowBind{Bind: c.Bind, limit: &limit}
		c.routeMTU = func(netip.Addr) int { return linkMTU }
	}})
	l.open(t)
	l.exchange(t, "relayed")
	l.checkRelayedEndToEnd(t)
	want := 1400 - wire.RelayHeaderLen - wire.Overhead
	waitPMTU(t, l.ab, want, 10*time.Second)
	waitPMTU(t, l.ba, want, 10*time.Second)
	if s := l.ab.Stats(); s.PathMTUDatagram != 1400 {
		t.Errorf("datagram %d, want 1400 (RELAY header included)", s.PathMTUDatagram)
	}
	if l.ar.Path() != PathWS {
		t.Fatalf("a reaches r over %s, want ws", l.ar.Path())
	}
	if s := l.ar.Stats(); s.PathMTU != 0 || s.PathMTUState != PMTUNone || s.PMTU.ProbesSent != 0 {
		t.Errorf("WebSocket path probed: %+v", s)
	}
}

// TestPathMTUSilentRoundsBackOff: a round with no acknowledgement at all (a dead path,
// or a peer of a release that skips PROBEs) teaches nothing, and the next waits twice
// as long as the last, up to the re-probe interval: such a peer is not sent a round of
// probes every second forever.
func TestPathMTUSilentRoundsBackOff(t *testing.T) {
	n := &Node{limits: Limits{PMTUReprobe: 20 * time.Second}.withDefaults()}
	p := &Peer{node: n}
	st := &p.pmtu
	st.lo, st.hi = 1300, 1472
	var waits []time.Duration
	for i := 0; i < 7; i++ {
		t0 := int64(i) * int64(time.Hour)
		st.round = pmtuRound{open: true, probes: 9, seq: st.round.seq + 1}
		p.pmtuEndRoundLocked(t0)
		waits = append(waits, time.Duration(st.next-t0))
	}
	var want []time.Duration
	for _, s := range []time.Duration{1, 2, 4, 8, 16, 20, 20} {
		want = append(want, s*time.Second)
	}
	if !slices.Equal(waits, want) {
		t.Fatalf("waits after silent rounds %v, want %v", waits, want)
	}
	if st.lo != 1300 || st.hi != 1472 || st.ctr[pmtuLost].Load() != 0 {
		t.Fatalf("a silent round changed the search: lo %d hi %d lost %d", st.lo, st.hi, st.ctr[pmtuLost].Load())
	}
	// One acknowledged round ends the back-off.
	st.round = pmtuRound{open: true, probes: 2, acks: 2, seq: st.round.seq + 1}
	p.pmtuEndRoundLocked(0)
	if st.silent != 0 {
		t.Fatalf("silent rounds %d after an answered one", st.silent)
	}
}

// tooBigBind refuses, like a socket that never fragments, every datagram longer than
// limit with udp.MessageTooBigError, and sends the others.
type tooBigBind struct {
	conn.Bind
	limit int
}

func (b *tooBigBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	keep := make([][]byte, 0, len(bufs))
	for _, m := range bufs {
		if len(m) <= b.limit {
			keep = append(keep, m)
		}
	}
	if err := b.Bind.Send(keep, ep); err != nil {
		return err
	}
	if n := len(bufs) - len(keep); n > 0 {
		return &udp.MessageTooBigError{Dropped: n}
	}
	return nil
}

// TestTooBigFrameLosesOnlyItself: a frame the local interface refuses as too big
// (no local fragmentation) is counted alone as a send error; the rest of its batch is
// delivered.
func TestTooBigFrameLosesOnlyItself(t *testing.T) {
	seed := randKey(t)
	a := startNode(t, nodeOpts{seed: seed, name: "a", config: func(c *Config) { c.Bind = &tooBigBind{Bind: c.Bind, limit: 1500} }})
	b := startNode(t, nodeOpts{seed: seed, name: "b"})
	if _, err := b.AddPeer(PeerConfig{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AddPeer(PeerConfig{Name: "b", Endpoint: loopback(b.Node)}); err != nil {
		t.Fatal(err)
	}
	established(t, a, b)
	p := a.Peer("b")
	before := a.Stats().Drops[DropSendError]
	got := b.h.count.Load()
	pkts := [][]byte{datagram([]byte("small one")), datagram(make([]byte, 2000)), datagram([]byte("small two"))}
	if err := p.Send(pkts, []uint16{1, 1, 1}); err != nil {
		t.Fatal(err)
	}
	b.h.waitCount(t, got+2, 5*time.Second)
	if d := a.Stats().Drops[DropSendError] - before; d != 1 {
		t.Errorf("%d send errors counted, want the one too-big frame", d)
	}
}

// TestPathMTUAckFromAGivenUpPathIgnored: an acknowledgement of a probe sent before the
// path changed (a reset) confirms nothing on the new path, and is no bad ack either: a
// correct peer sends it.
func TestPathMTUAckFromAGivenUpPathIgnored(t *testing.T) {
	n := &Node{limits: Limits{}.withDefaults(), log: slog.New(slog.DiscardHandler)}
	p := &Peer{node: n}
	st := &p.pmtu
	st.on, st.nextID = true, 100
	st.round = pmtuRound{open: true, seq: 1}
	st.ring[100%pmtuRing] = pmtuProbe{valid: true, id: 100, frame: 1400, round: 1}
	p.pmtuResetLocked()
	p.probeAcked(wire.AppendProbeAck(nil, 100, 1400)[wire.ControlHeaderLen:], time.Now())
	if st.lo != 0 || p.PathMTU() != 0 {
		t.Errorf("an old path's answer set lo %d, PathMTU %d", st.lo, p.PathMTU())
	}
	if c := st.ctr.load(); c.BadAcks != 0 || c.ProbesAcked != 0 {
		t.Errorf("counters %+v, want nothing counted", c)
	}
	// A second copy of it is a duplicate: bad.
	p.probeAcked(wire.AppendProbeAck(nil, 100, 1400)[wire.ControlHeaderLen:], time.Now())
	if c := st.ctr.load(); c.BadAcks != 1 {
		t.Errorf("duplicate of an old path's answer: %d bad acks, want 1", c.BadAcks)
	}
}

// loseOnceBind loses the first datagram of exactly size bytes, once: a loss by chance.
type loseOnceBind struct {
	conn.Bind
	size int
	done atomic.Bool
}

func (b *loseOnceBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	for i, m := range bufs {
		if len(m) == b.size && b.done.CompareAndSwap(false, true) {
			keep := append(append([][]byte{}, bufs[:i]...), bufs[i+1:]...)
			return b.Bind.Send(keep, ep)
		}
	}
	return b.Bind.Send(bufs, ep)
}

// TestPathMTUOneLostProbeIsNotTooBig: a probe lost once by chance (the largest size
// of the first round, here) does not make its size too large: it is probed again, and
// the estimate is the whole link's.
func TestPathMTUOneLostProbeIsNotTooBig(t *testing.T) {
	seed := randKey(t)
	full := linkMTU - 20 - 8 // the largest frame on the link
	cfg := func(c *Config) {
		c.Bind = &loseOnceBind{Bind: c.Bind, size: full}
		c.routeMTU = func(netip.Addr) int { return linkMTU }
	}
	a := startNode(t, nodeOpts{seed: seed, name: "a", config: cfg})
	b := startNode(t, nodeOpts{seed: seed, name: "b"})
	if _, err := b.AddPeer(PeerConfig{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AddPeer(PeerConfig{Name: "b", Endpoint: loopback(b.Node)}); err != nil {
		t.Fatal(err)
	}
	established(t, a, b)
	waitPMTU(t, a.Peer("b"), full-wire.Overhead, 10*time.Second)
	if s := a.Peer("b").Stats(); s.PMTU.ProbesLost == 0 {
		t.Errorf("no probe lost: the test lost nothing (%+v)", s.PMTU)
	}
}

// TestPathMTUMessagesMoveNoPath: a PROBE or a PROBE_ACK, however late its counter,
// moves no path (an answer goes back the way its probe came, which may be the path the
// traffic just left); any other frame would.
func TestPathMTUMessagesMoveNoPath(t *testing.T) {
	o := newOffline(t, Limits{})
	via, err := o.n.AddPeer(PeerConfig{Name: "relay", Endpoint: "127.0.0.1:10"})
	if err != nil {
		t.Fatal(err)
	}
	s, theirs := o.session(t, testLocalIndex, false, time.Now(), 0x10)
	if err := o.p.SetRelay(via, 5, 6, false); err != nil {
		t.Fatal(err)
	}
	o.p.learnEndpoint(o.p.path.relay.Load(), false, s, 10) // the follower moves onto the relay
	if o.p.Path() != PathRelay {
		t.Fatalf("path %s, want relay", o.p.Path())
	}
	probe, _ := wire.AppendProbe(nil, 1, 100)
	o.receive(sealed(theirs, wire.ControlStream, 20, string(probe)))
	o.receive(sealed(theirs, wire.ControlStream, 21, string(wire.AppendProbeAck(nil, 7, 100))))
	if o.p.Path() != PathRelay {
		t.Fatalf("a PROBE or PROBE_ACK over UDP moved the follower to %s", o.p.Path())
	}
	o.receive(sealed(theirs, wire.ControlStream, 22, "")) // a keepalive does
	if o.p.Path() != PathUDP {
		t.Fatalf("a later keepalive over UDP left the follower on %s", o.p.Path())
	}
}

// TestPathMTUBelow1280OnIPv4: an IPv4 path may carry less than a 1280-byte IP packet
// (IPv4 only promises 576), and the sockets never fragment: the search goes below the
// 1280 floor and finds what the path carries, instead of assuming 1280 and losing every
// packet between the two.
func TestPathMTUBelow1280OnIPv4(t *testing.T) {
	var limit atomic.Int64
	limit.Store(1000) // an IP packet of 1028
	a, b, _ := narrowPair(t, Limits{}, &limit)
	established(t, a, b)
	waitPMTU(t, a.Peer("b"), 1000-wire.Overhead, 15*time.Second)
	waitPMTU(t, b.Peer("a"), 1000-wire.Overhead, 15*time.Second)
}

// TestPathMTUBlackHoleBelow1280OnIPv4: a black hole that narrows an IPv4 path below a
// 1280-byte IP packet lowers the estimate to what the path now carries.
func TestPathMTUBlackHoleBelow1280OnIPv4(t *testing.T) {
	var limit atomic.Int64
	limit.Store(1400)
	a, b, _ := narrowPair(t, Limits{}, &limit)
	established(t, a, b)
	p := a.Peer("b")
	waitPMTU(t, p, 1400-wire.Overhead, 10*time.Second)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go bulk(t, p, 1300, stop, &wg)
	defer func() { close(stop); wg.Wait() }()
	limit.Store(800)
	waitPMTU(t, p, 800-wire.Overhead, 15*time.Second)
}

// TestPathMTUPendingUntilAnsweredOrGivenUp: while no estimate is known, SYNs are sized
// by the floor of any path (PathMTUPending); a peer whose probes go unanswered two rounds
// in a row, none ever answered (a release that skips PROBE), gets no such clamp: its
// path MTU would stay unknown for good, and every connection to it would keep the small
// MSS. A reset (another path, another session) tries again.
func TestPathMTUPendingUntilAnsweredOrGivenUp(t *testing.T) {
	n := &Node{limits: Limits{}.withDefaults()}
	p := &Peer{node: n}
	const want = 1280 - 40 - 8 - wire.RelayHeaderLen - wire.Overhead
	if got := p.PathMTUPending(); got != want {
		t.Fatalf("PathMTUPending %d before any round, want %d", got, want)
	}
	st := &p.pmtu
	st.round = pmtuRound{open: true, probes: 3, seq: st.round.seq + 1}
	p.pmtuEndRoundLocked(0)
	if got := p.PathMTUPending(); got != want {
		t.Fatalf("PathMTUPending %d after one silent round, want %d", got, want)
	}
	st.round = pmtuRound{open: true, probes: 3, seq: st.round.seq + 1}
	p.pmtuEndRoundLocked(int64(time.Second))
	if got := p.PathMTUPending(); got != 0 {
		t.Fatalf("PathMTUPending %d after two silent rounds, want 0", got)
	}
	p.pmtuResetLocked()
	if got := p.PathMTUPending(); got != want {
		t.Fatalf("PathMTUPending %d after a reset, want %d", got, want)
	}
}

// TestReliableFramesFitThePath: reliable control messages queued before the session,
// or sent again after a loss, go out packed together; the sockets never fragment
// (IP_PMTUDISC_PROBE), so a pack larger than the interface's MTU is refused whole, and
// its retransmissions with it: in-order delivery then stalls for good. Packs are kept
// to what the path carries (at most one message over it), and all messages arrive.
func TestReliableFramesFitThePath(t *testing.T) {
	var mu sync.Mutex
	var got []byte
	seed := randKey(t)
	b := startNode(t, nodeOpts{seed: seed, name: "b", config: func(c *Config) {
		c.Extension = func(_ *Peer, _ byte, body []byte, _ netip.AddrPort, _ bool) {
			mu.Lock()
			got = append(got, body[0])
			mu.Unlock()
		}
	}})
	a := startNode(t, nodeOpts{seed: seed, name: "a", config: func(c *Config) { c.Bind = &tooBigBind{Bind: c.Bind, limit: 1500} }})
	if _, err := b.AddPeer(PeerConfig{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	p, err := a.AddPeer(PeerConfig{Name: "b", Endpoint: loopback(b.Node)})
	if err != nil {
		t.Fatal(err)
	}
	// Queued without a session: the session, once up, sends them together.
	for i := range 6 {
		body := make([]byte, 1000)
		body[0] = byte(i)
		if err := p.SendReliable(wire.CtlExtensionMin, body); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "6 reliable messages of 1000 bytes", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == 6
	})
	for i, v := range got {
		if int(v) != i {
			t.Fatalf("order %v", got)
		}
	}
}
