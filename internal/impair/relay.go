// Package impair is a userspace UDP impairment relay for lab tests: the kernel of the
// project's machines has no netem, so loss, delay, jitter, reordering, duplication,
// corruption, rate limits and black holes come from here.
//
// A Relay has two sides, A and B, each a UDP socket on its own address. A datagram that
// arrives on side A is impaired according to the A→B setting and sent from side B to
// B's peer; the mirror image for B→A. Put the relay in a namespace between two others,
// give each end the relay's address on its side as the address of the other end, and
// every datagram between them passes through it:
//
//	A ── veth ── [ListenA  relay  ListenB] ── veth ── B
//
// Like a NAT, a side without a fixed peer address sends to the last address it heard
// from. Settings change while the relay runs (SetA2B, SetB2A); randomness comes from a
// seeded generator per direction, so a run with the same seed and the same arrival
// order makes the same decisions. Every queue is bounded and every decision counted
// (Stats), so that tests assert on counters rather than on timing.
package impair

import (
	"container/heap"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Side names one of the relay's two sockets.
type Side int

// The relay's sides.
const (
	SideA Side = iota
	SideB
)

func (s Side) String() string {
	if s == SideA {
		return "A"
	}
	return "B"
}

// Dir names a direction of traffic through the relay.
type Dir int

// Directions: datagrams that arrive on side A and leave on side B, and back.
const (
	AtoB Dir = iota
	BtoA
)

func (d Dir) String() string {
	if d == AtoB {
		return "a2b"
	}
	return "b2a"
}

// DefaultMaxQueue is the default bound on datagrams a direction holds at once.
const DefaultMaxQueue = 4096

// maxDatagram is the largest UDP payload.
const maxDatagram = 65535

// Config configures a Relay.
type Config struct {
	// ListenA and ListenB are the addresses ("ip:port", port 0 = any) of the relay's
	// two sockets.
	ListenA, ListenB string
	// PeerA and PeerB are where datagrams leaving on side A (B) go. Empty means the
	// last address side A (B) received a datagram from.
	PeerA, PeerB string
	// Seed seeds the per-direction random generators.
	Seed uint64
	// MaxQueue bounds the datagrams each direction holds (delayed, shaped or held
	// back); beyond it arrivals are dropped and counted. 0 means DefaultMaxQueue.
	MaxQueue int
	// Capture keeps copies of the last Capture datagrams of each direction as they
	// arrived, before any impairment (see Captured).
	Capture int
	// ListenPacket opens the sockets; nil means net.ListenPacket. Tests pass a
	// function that creates them inside a network namespace.
	ListenPacket func(network, address string) (net.PacketConn, error)
}

// DirStats counts what happened to one direction's datagrams.
type DirStats struct {
	Received, ReceivedBytes uint64 // arrived on the input side
	Sent, SentBytes         uint64 // left on the output side (duplicates included)

	Filtered     uint64 // dropped by the SetDrop predicate
	BlackHoled   uint64 // dropped by BlackHole
	Lost         uint64 // dropped by Loss
	Corrupted    uint64 // one byte changed
	Duplicated   uint64 // sent twice
	Delayed      uint64 // held for Delay/Jitter
	Reordered    uint64 // held back for later datagrams to overtake
	RateDropped  uint64 // the rate limiter's backlog was full
	RateDelayed  uint64 // waited for the rate limiter's tokens
	QueueDropped uint64 // the direction already held MaxQueue datagrams
	NoPeer       uint64 // no address to send to yet
	SendErrors   uint64

	// MinHold and MaxHold are the shortest and longest time a sent datagram spent in
	// the relay (zero before the first one).
	MinHold, MaxHold time.Duration
}

// Stats is a snapshot of both directions' counters.
type Stats struct {
	A2B, B2A DirStats
}

// Relay is a running impairment relay. Its methods are safe for concurrent use.
type Relay struct {
	cfg    Config
	sides  [2]*side
	dirs   [2]*direction
	done   chan struct{}
	wg     sync.WaitGroup
	closed atomic.Bool
	mu     sync.Mutex // serialises Rebind and Close
}

// side is one socket and where its outgoing datagrams go.
type side struct {
	conn    atomic.Pointer[net.UDPConn]
	fixed   netip.AddrPort // valid when the peer is fixed
	learned atomic.Pointer[netip.AddrPort]
}

func (s *side) dest() (netip.AddrPort, bool) {
	if s.fixed.IsValid() {
		return s.fixed, true
	}
	if p := s.learned.Load(); p != nil {
		return *p, true
	}
	return netip.AddrPort{}, false
}

func (s *side) heard(from netip.AddrPort) {
	if s.fixed.IsValid() {
		return
	}
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	if p := s.learned.Load(); p == nil || *p != from {
		s.learned.Store(&from)
	}
}

// New opens the relay's sockets and starts forwarding with no impairment.
func New(cfg Config) (*Relay, error) {
	if cfg.MaxQueue <= 0 {
		cfg.MaxQueue = DefaultMaxQueue
	}
	if cfg.ListenPacket == nil {
		cfg.ListenPacket = net.ListenPacket
	}
	r := &Relay{cfg: cfg, done: make(chan struct{})}
	for i, peer := range []string{cfg.PeerA, cfg.PeerB} {
		s := &side{}
		if peer != "" {
			ap, err := netip.ParseAddrPort(peer)
			if err != nil {
				return nil, fmt.Errorf("impair: peer of side %s: %w", Side(i), err)
			}
			s.fixed = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		}
		r.sides[i] = s
	}
	for i := range r.dirs {
		// Datagrams that arrive on one side leave on the other.
		r.dirs[i] = &direction{
			relay: r,
			dir:   Dir(i),
			out:   r.sides[1-i],
			rng:   rand.New(rand.NewPCG(cfg.Seed, uint64(i)+0x9e3779b97f4a7c15)),
			wake:  make(chan struct{}, 1),
		}
	}
	var conns [2]*net.UDPConn
	for i, addr := range []string{cfg.ListenA, cfg.ListenB} {
		c, err := r.listen(addr)
		if err != nil {
			for _, c := range conns {
				if c != nil {
					c.Close()
				}
			}
			return nil, fmt.Errorf("impair: side %s: %w", Side(i), err)
		}
		conns[i] = c
	}
	for i, c := range conns {
		r.sides[i].conn.Store(c)
		r.wg.Add(1)
		go r.readLoop(Side(i), c)
	}
	for _, d := range r.dirs {
		r.wg.Add(1)
		go d.sendLoop()
	}
	return r, nil
}

func (r *Relay) listen(addr string) (*net.UDPConn, error) {
	pc, err := r.cfg.ListenPacket("udp", addr)
	if err != nil {
		return nil, err
	}
	c, ok := pc.(*net.UDPConn)
	if !ok {
		pc.Close()
		return nil, fmt.Errorf("listen %s: not a UDP socket (%T)", addr, pc)
	}
	// Bursts through the tunnel are larger than default socket buffers; the relay
	// should drop only what it is told to.
	_ = c.SetReadBuffer(4 << 20)
	_ = c.SetWriteBuffer(4 << 20)
	return c, nil
}

// Addr is the address of the relay's socket on side s.
func (r *Relay) Addr(s Side) netip.AddrPort {
	c := r.sides[s].conn.Load()
	ap := c.LocalAddr().(*net.UDPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// AddrA is the address the A end sends to.
func (r *Relay) AddrA() netip.AddrPort { return r.Addr(SideA) }

// AddrB is the address the B end sends to, and sees the A end's datagrams come from.
func (r *Relay) AddrB() netip.AddrPort { return r.Addr(SideB) }

// Set applies im to both directions.
func (r *Relay) Set(im Impairment) error {
	if err := r.SetA2B(im); err != nil {
		return err
	}
	return r.SetB2A(im)
}

// SetA2B changes the impairment of datagrams from A to B; it applies to datagrams that
// arrive from now on.
func (r *Relay) SetA2B(im Impairment) error { return r.set(AtoB, im) }

// SetB2A changes the impairment of datagrams from B to A.
func (r *Relay) SetB2A(im Impairment) error { return r.set(BtoA, im) }

func (r *Relay) set(d Dir, im Impairment) error {
	if err := im.Validate(); err != nil {
		return err
	}
	dir := r.dirs[d]
	dir.mu.Lock()
	dir.im = im
	dir.mu.Unlock()
	return nil
}

// SetDrop installs a predicate on direction d: a datagram for which drop returns true
// is dropped (and counted as Filtered) before any other impairment applies, so that a
// test can lose one particular message. drop runs on the relay's receive goroutine with
// the direction locked, sees each datagram once and must not keep it; nil removes it.
func (r *Relay) SetDrop(d Dir, drop func(b []byte) bool) {
	dir := r.dirs[d]
	dir.mu.Lock()
	dir.drop = drop
	dir.mu.Unlock()
}

// Impairment returns the current setting of direction d.
func (r *Relay) Impairment(d Dir) Impairment {
	dir := r.dirs[d]
	dir.mu.Lock()
	defer dir.mu.Unlock()
	return dir.im
}

// Stats returns a snapshot of the counters.
func (r *Relay) Stats() Stats {
	return Stats{A2B: r.dirs[AtoB].snapshot(), B2A: r.dirs[BtoA].snapshot()}
}

// Captured returns copies of the last datagrams (Config.Capture of them at most) that
// arrived in direction d, oldest first, as they arrived.
func (r *Relay) Captured(d Dir) [][]byte {
	dir := r.dirs[d]
	dir.mu.Lock()
	defer dir.mu.Unlock()
	out := make([][]byte, 0, len(dir.capture))
	n := len(dir.capture)
	for i := 0; i < n; i++ {
		b := dir.capture[(dir.capNext+i)%n]
		out = append(out, append([]byte(nil), b...))
	}
	return out
}

// Rebind replaces side s's socket with a new one on addr: the other end then sees
// datagrams come from a new address, as when a NAT rebinds or a host changes networks.
// Datagrams still sent to the old address are lost, as they would be.
func (r *Relay) Rebind(s Side, addr string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed.Load() {
		return net.ErrClosed
	}
	c, err := r.listen(addr)
	if err != nil {
		return fmt.Errorf("impair: rebind side %s: %w", s, err)
	}
	old := r.sides[s].conn.Swap(c)
	r.wg.Add(1)
	go r.readLoop(s, c)
	return old.Close()
}

// Close stops the relay and closes its sockets; queued datagrams are discarded.
func (r *Relay) Close() error {
	r.mu.Lock()
	if r.closed.Swap(true) {
		r.mu.Unlock()
		return nil
	}
	close(r.done)
	var errs []error
	for _, s := range r.sides {
		if err := s.conn.Load().Close(); err != nil {
			errs = append(errs, err)
		}
	}
	r.mu.Unlock()
	r.wg.Wait()
	return errors.Join(errs...)
}

// readLoop reads side s's socket c until it is closed or replaced.
func (r *Relay) readLoop(s Side, c *net.UDPConn) {
	defer r.wg.Done()
	buf := make([]byte, maxDatagram)
	d := r.dirs[s] // datagrams arriving on A go A→B, on B go B→A
	errs := 0
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if r.closed.Load() || r.sides[s].conn.Load() != c || errors.Is(err, net.ErrClosed) {
				return
			}
			// A transient error on an unconnected UDP socket; one that repeats must
			// not spin.
			if errs++; errs > 100 {
				time.Sleep(10 * time.Millisecond)
			}
			continue
		}
		errs = 0
		r.sides[s].heard(from)
		d.admit(buf[:n], time.Now())
	}
}

// pkt is one datagram waiting in a direction.
type pkt struct {
	data      []byte
	at        time.Time // when it may leave
	seq       uint64    // arrival order
	arrived   time.Time
	holdFor   int       // later datagrams still to overtake it (reordering)
	holdUntil time.Time // when it leaves even if they do not come
}

type pktHeap []*pkt

func (h pktHeap) Len() int { return len(h) }
func (h pktHeap) Less(i, j int) bool {
	if !h[i].at.Equal(h[j].at) {
		return h[i].at.Before(h[j].at)
	}
	return h[i].seq < h[j].seq
}
func (h pktHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *pktHeap) Push(x any)   { *h = append(*h, x.(*pkt)) }
func (h *pktHeap) Pop() any {
	old := *h
	p := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return p
}

// direction is the impairment and the queue of one direction.
type direction struct {
	relay *Relay
	dir   Dir
	out   *side
	wake  chan struct{}

	mu      sync.Mutex
	im      Impairment
	drop    func([]byte) bool
	rng     *rand.Rand
	tokens  float64
	tokenAt time.Time
	queue   pktHeap
	held    []*pkt // popped but held back for reordering, in pop order
	seq     uint64
	stats   DirStats
	capture [][]byte
	capNext int
}

func (d *direction) snapshot() DirStats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stats
}

// admit applies the impairment's drop, corrupt and duplicate decisions to a datagram
// that just arrived, and queues what survives with its departure time.
func (d *direction) admit(b []byte, now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := &d.stats
	st.Received++
	st.ReceivedBytes += uint64(len(b))
	if n := d.relay.cfg.Capture; n > 0 {
		c := append([]byte(nil), b...)
		if len(d.capture) < n {
			d.capture = append(d.capture, c)
		} else {
			d.capture[d.capNext] = c
			d.capNext = (d.capNext + 1) % n
		}
	}
	im := d.im
	if d.drop != nil && d.drop(b) {
		st.Filtered++
		return
	}
	if im.BlackHole {
		st.BlackHoled++
		return
	}
	if im.Loss > 0 && d.rng.Float64() < im.Loss {
		st.Lost++
		return
	}
	data := append([]byte(nil), b...)
	if im.Corrupt > 0 && len(data) > 0 && d.rng.Float64() < im.Corrupt {
		data[d.rng.IntN(len(data))] ^= byte(1 + d.rng.IntN(255))
		st.Corrupted++
	}
	copies := 1
	if im.Duplicate > 0 && d.rng.Float64() < im.Duplicate {
		copies = 2
	}
	reorder := im.Reorder > 0 && d.rng.Float64() < im.Reorder
	queued := false
	for c := 0; c < copies; c++ {
		if len(d.queue)+len(d.held) >= d.relay.cfg.MaxQueue {
			st.QueueDropped++
			continue
		}
		depart, ok := d.shape(im, len(data), now)
		if !ok {
			continue
		}
		at := depart.Add(im.Delay)
		if im.Jitter > 0 {
			at = at.Add(time.Duration(d.rng.Int64N(int64(im.Jitter) + 1)))
		}
		if im.Delay > 0 || im.Jitter > 0 {
			st.Delayed++
		}
		p := &pkt{data: data, at: at, arrived: now}
		if c == 1 {
			st.Duplicated++
		} else if reorder {
			p.holdFor = im.reorderDepth()
			p.holdUntil = at.Add(ReorderTimeout)
			st.Reordered++
		}
		d.seq++
		p.seq = d.seq
		heap.Push(&d.queue, p)
		queued = true
	}
	if queued {
		select {
		case d.wake <- struct{}{}:
		default:
		}
	}
}

// shape runs the token bucket: it returns when a datagram of size bytes may leave, or
// false (counted) when the backlog waiting for tokens is full. Called with d.mu held.
func (d *direction) shape(im Impairment, size int, now time.Time) (time.Time, bool) {
	if im.Rate <= 0 {
		return now, true
	}
	burst := im.burst()
	if d.tokenAt.IsZero() {
		d.tokens = burst
	} else if el := now.Sub(d.tokenAt); el > 0 {
		d.tokens = min(burst, d.tokens+el.Seconds()*float64(im.Rate))
	}
	d.tokenAt = now
	need := float64(size)
	if d.tokens >= need {
		d.tokens -= need
		return now, true
	}
	// Tokens may go negative: the debt is the backlog already waiting.
	if need-d.tokens > im.queueBytes() {
		d.stats.RateDropped++
		return time.Time{}, false
	}
	wait := time.Duration((need - d.tokens) / float64(im.Rate) * float64(time.Second))
	d.tokens -= need
	d.stats.RateDelayed++
	return now.Add(wait), true
}

// sendLoop sends each queued datagram when it is due.
func (d *direction) sendLoop() {
	defer d.relay.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var out []*pkt
	for {
		now := time.Now()
		d.mu.Lock()
		out = out[:0]
		for len(d.queue) > 0 && !d.queue[0].at.After(now) {
			p := heap.Pop(&d.queue).(*pkt)
			if p.holdFor > 0 {
				d.held = append(d.held, p)
				continue
			}
			out = append(out, p)
			out = d.releaseHeldLocked(out, p.seq, now)
		}
		out = d.releaseHeldLocked(out, 0, now)
		next := time.Duration(-1)
		if len(d.queue) > 0 {
			next = d.queue[0].at.Sub(now)
		}
		for _, h := range d.held {
			if w := h.holdUntil.Sub(now); next < 0 || w < next {
				next = w
			}
		}
		d.mu.Unlock()

		d.send(out)

		var tc <-chan time.Time
		if next >= 0 {
			timer.Reset(max(next, 0))
			tc = timer.C
		}
		select {
		case <-d.relay.done:
			return
		case <-d.wake:
		case <-tc:
		}
		timer.Stop() // since Go 1.23 a stopped timer delivers no stale tick after Reset
	}
}

// releaseHeldLocked lets held datagrams go once enough later ones (seq > theirs) have
// overtaken them, or their hold expired. sentSeq is the datagram just sent, 0 for none.
func (d *direction) releaseHeldLocked(out []*pkt, sentSeq uint64, now time.Time) []*pkt {
	kept := d.held[:0]
	for _, h := range d.held {
		if sentSeq > h.seq {
			h.holdFor--
		}
		if h.holdFor <= 0 || !now.Before(h.holdUntil) {
			out = append(out, h)
			continue
		}
		kept = append(kept, h)
	}
	clear(d.held[len(kept):])
	d.held = kept
	return out
}

func (d *direction) send(out []*pkt) {
	if len(out) == 0 {
		return
	}
	c := d.out.conn.Load()
	dst, ok := d.out.dest()
	var sent, sentBytes, errs uint64
	var minHold, maxHold time.Duration
	for _, p := range out {
		if !ok {
			continue
		}
		if _, err := c.WriteToUDPAddrPort(p.data, dst); err != nil {
			errs++
			continue
		}
		hold := time.Since(p.arrived)
		if sent == 0 || hold < minHold {
			minHold = hold
		}
		maxHold = max(maxHold, hold)
		sent++
		sentBytes += uint64(len(p.data))
	}
	d.mu.Lock()
	st := &d.stats
	if !ok {
		st.NoPeer += uint64(len(out))
	}
	st.SendErrors += errs
	if sent > 0 {
		if st.Sent == 0 || minHold < st.MinHold {
			st.MinHold = minHold
		}
		st.MaxHold = max(st.MaxHold, maxHold)
	}
	st.Sent += sent
	st.SentBytes += sentBytes
	d.mu.Unlock()
}
