package stt

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// gatedResolver stands in for DNS: it answers endpoint names from a table, and while
// its gate is closed every lookup waits for the test to open it (or for its context).
type gatedResolver struct {
	mu      sync.Mutex
	addrs   map[string]netip.AddrPort
	gate    chan struct{} // nil = answer at once
	once    *sync.Once
	entered chan string // the name of each lookup, as it starts

	calls, inflight, maxInflight atomic.Int32
}

func newGatedResolver() *gatedResolver {
	return &gatedResolver{addrs: make(map[string]netip.AddrPort), entered: make(chan string, 64)}
}

func (r *gatedResolver) set(name string, ap netip.AddrPort) {
	r.mu.Lock()
	r.addrs[name] = ap
	r.mu.Unlock()
}

// close makes lookups wait until open.
func (r *gatedResolver) close() {
	r.mu.Lock()
	r.gate, r.once = make(chan struct{}), new(sync.Once)
	r.mu.Unlock()
}

// open lets waiting and later lookups through. It may be called more than once.
func (r *gatedResolver) open() {
	r.mu.Lock()
	gate, once := r.gate, r.once
	r.mu.Unlock()
	if gate != nil {
		once.Do(func() { close(gate) })
	}
}

func (r *gatedResolver) resolve(ctx context.Context, hostport string) (netip.AddrPort, error) {
	r.calls.Add(1)
	k := r.inflight.Add(1)
	defer r.inflight.Add(-1)
	for m := r.maxInflight.Load(); k > m && !r.maxInflight.CompareAndSwap(m, k); m = r.maxInflight.Load() {
	}
	r.entered <- hostport
	r.mu.Lock()
	gate := r.gate
	r.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return netip.AddrPort{}, ctx.Err()
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	ap, ok := r.addrs[hostport]
	if !ok {
		return netip.AddrPort{}, errors.New("no such host")
	}
	return ap, nil
}

// waitLookups waits for a lookup of each name to start, in any order.
func (r *gatedResolver) waitLookups(t *testing.T, names ...string) {
	t.Helper()
	want := make(map[string]int)
	for _, n := range names {
		want[n]++
	}
	deadline := time.After(10 * time.Second)
	for range names {
		select {
		case got := <-r.entered:
			if want[got] == 0 {
				t.Fatalf("lookup of %q, want one of %q", got, names)
			}
			want[got]--
		case <-deadline:
			t.Fatalf("lookups of %q did not all start", names)
		}
	}
}

// TestEndpointLookupHoldsUpNoTimers: a peer that went quiet has its endpoint name looked
// up again, and while that lookup hangs (a dead DNS server) the other peers' handshakes
// and traffic go on, the quiet peer's lock is free, and no second lookup starts. When
// the answer comes, it is the peer's new address.
func TestEndpointLookupHoldsUpNoTimers(t *testing.T) {
	seed := randKey(t)
	timers := Limits{DeadPeerTimeout: 300 * time.Millisecond}
	a := startNode(t, nodeOpts{seed: seed, name: "a", timers: timers})
	b1 := startNode(t, nodeOpts{seed: seed, name: "b", timers: timers})
	// b2 is b after it moved to another address.
	b2 := startNode(t, nodeOpts{seed: seed, name: "b", key: &b1.key, timers: timers})
	c := startNode(t, nodeOpts{seed: seed, name: "c", timers: timers})
	for _, x := range []*testNode{b1, b2, c} {
		if _, err := x.AddPeer(PeerConfig{Name: "a"}); err != nil {
			t.Fatal(err)
		}
	}
	r := newGatedResolver()
	t.Cleanup(r.open) // before the nodes close, which waits for their lookups
	const name = "b.test:51900"
	b1Addr := netip.MustParseAddrPort(loopback(b1.Node))
	b2Addr := netip.MustParseAddrPort(loopback(b2.Node))
	r.set(name, b1Addr)
	a.resolver = r.resolve
	pb, err := a.AddPeer(PeerConfig{Name: "b", Endpoint: name})
	if err != nil {
		t.Fatal(err)
	}
	r.waitLookups(t, name)
	pc, err := a.AddPeer(PeerConfig{Name: "c", Endpoint: loopback(c.Node)})
	if err != nil {
		t.Fatal(err)
	}
	established(t, a, b1)
	oldID := sessionOf(t, pb)

	// b moves: the old address goes silent, and its name, looked up again, hangs.
	r.close()
	r.set(name, b2Addr)
	b1.bind.blocked.Store(true)
	// Unanswered data starts the dead-peer clock; it is sent again until the lookup
	// starts, since frames b sent before it went silent (its first PING, say) may still
	// be arriving and stop that clock.
	deadline := time.After(10 * time.Second)
	for looking := false; !looking; {
		sendOne(t, pb, 0, []byte("into the void"))
		select {
		case got := <-r.entered:
			if got != name {
				t.Fatalf("lookup of %q, want %q", got, name)
			}
			looking = true
		case <-time.After(timers.DeadPeerTimeout / 2):
		case <-deadline:
			t.Fatal("no lookup for a peer that stopped answering")
		}
	}

	locked := make(chan struct{})
	go func() {
		pb.LastHandshake() // takes the peer's lock, as Send does to queue
		close(locked)
	}()
	select {
	case <-locked:
	case <-time.After(5 * time.Second):
		t.Fatal("the quiet peer's lock is held during the lookup")
	}
	// Another dead-peer check while the lookup runs starts no second one.
	pb.mu.Lock()
	pb.reresolveLocked()
	pb.mu.Unlock()
	// An IP address is not looked up.
	pc.mu.Lock()
	pc.reresolveLocked()
	lit := pc.lookup.running
	pc.mu.Unlock()
	if lit {
		t.Fatal("a lookup started for an IP address endpoint")
	}
	// A handshake with c needs the timer loop.
	sendOne(t, pc, 0, []byte("c is reachable while b's name hangs"))
	c.h.waitCount(t, 1, 5*time.Second)
	if got := r.inflight.Load(); got != 1 {
		t.Fatalf("%d lookups in flight after c's handshake, want the one still waiting", got)
	}

	r.open()
	waitFor(t, 5*time.Second, "the new address", func() bool { return pb.UDPEndpoint() == b2Addr })
	waitFor(t, 5*time.Second, "a session with b at its new address", func() bool {
		// Until the new session is confirmed, data still goes out under the old one.
		s := pb.keys.current.Load()
		return s != nil && s.localIndex != oldID && s.confirmed.Load()
	})
	sendOne(t, pb, 0, []byte("at the new address"))
	b2.h.waitCount(t, 1, 5*time.Second)
	if got := r.maxInflight.Load(); got != 1 {
		t.Fatalf("%d lookups of one peer's endpoint ran at once, want 1", got)
	}
	if got := r.calls.Load(); got != 2 {
		t.Fatalf("%d lookups, want 2 (AddPeer, then one for the quiet peer)", got)
	}
}

// TestStaleEndpointLookupNotApplied: a lookup that ends after a reload changed the
// peer's endpoint, or after the peer was removed, changes nothing.
func TestStaleEndpointLookupNotApplied(t *testing.T) {
	a := startNode(t, nodeOpts{seed: randKey(t), name: "a"})
	r := newGatedResolver()
	t.Cleanup(r.open)
	a.resolver = r.resolve
	first := netip.MustParseAddrPort("127.0.0.1:9")
	r.set("b.test:9", first)
	r.set("c.test:9", first)
	pb, err := a.AddPeer(PeerConfig{Name: "b", Endpoint: "b.test:9"})
	if err != nil {
		t.Fatal(err)
	}
	pc, err := a.AddPeer(PeerConfig{Name: "c", Endpoint: "c.test:9"})
	if err != nil {
		t.Fatal(err)
	}
	r.waitLookups(t, "b.test:9", "c.test:9")
	<-pb.LookupDone()
	<-pc.LookupDone()

	r.close()
	stale := netip.MustParseAddrPort("127.0.0.1:7")
	r.set("b.test:9", stale)
	r.set("c.test:9", stale)
	for _, p := range []*Peer{pb, pc} {
		p.mu.Lock()
		p.reresolveLocked()
		p.mu.Unlock()
	}
	r.waitLookups(t, "b.test:9", "c.test:9")
	reloaded := netip.MustParseAddrPort("127.0.0.1:13")
	if err := pb.Update(PeerConfig{Name: "b", Endpoint: reloaded.String()}); err != nil {
		t.Fatal(err)
	}
	a.RemovePeer("c")
	r.open()
	for _, p := range []*Peer{pb, pc} {
		waitFor(t, 5*time.Second, "the lookup to end", func() bool {
			p.mu.Lock()
			defer p.mu.Unlock()
			return !p.lookup.running
		})
	}
	if got := pb.UDPEndpoint(); got != reloaded {
		t.Fatalf("endpoint %s after a reload to %s and a stale lookup", got, reloaded)
	}
	if got := pc.UDPEndpoint(); got != first {
		t.Fatalf("a removed peer's endpoint changed to %s", got)
	}
}

// seqDatagrams builds datagrams from..to-1, each holding its number.
func seqDatagrams(from, to int) ([][]byte, []uint16) {
	pkts := make([][]byte, 0, to-from)
	flows := make([]uint16, 0, to-from)
	for i := from; i < to; i++ {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(i))
		pkts = append(pkts, datagram(b[:]))
		flows = append(flows, uint16(i))
	}
	return pkts, flows
}

// TestHandshakeQueueKeepsNewestMaxQueued: while no handshake completes, a peer holds
// the newest MaxQueued datagrams and counts each older one it drops; when a session
// comes up, exactly those are delivered, in the order they were sent.
func TestHandshakeQueueKeepsNewestMaxQueued(t *testing.T) {
	seed := randKey(t)
	timers := Limits{HandshakeRetry: 100 * time.Millisecond, HandshakeRetryMax: 200 * time.Millisecond}
	a := startNode(t, nodeOpts{seed: seed, name: "a", timers: timers})
	// Nothing answers there: a socket the test holds and never reads.
	silent, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = silent.Close() })
	pb, err := a.AddPeer(PeerConfig{Name: "b", Endpoint: silent.LocalAddr().String()})
	if err != nil {
		t.Fatal(err)
	}
	const total = MaxQueued + 44
	for i := 0; i < total; i += 50 {
		pkts, flows := seqDatagrams(i, min(i+50, total))
		if err := pb.Send(pkts, flows); err != nil {
			t.Fatal(err)
		}
	}
	pb.mu.Lock()
	queued := len(pb.queue)
	pb.mu.Unlock()
	if queued != MaxQueued {
		t.Fatalf("%d datagrams queued, want %d", queued, MaxQueued)
	}
	if got := pb.Stats().Drops; got != total-MaxQueued {
		t.Fatalf("peer drops %d, want %d", got, total-MaxQueued)
	}
	if got := a.Stats().Drops[DropNoSession]; got != total-MaxQueued {
		t.Fatalf("node no_session drops %d, want %d", got, total-MaxQueued)
	}
	waitFor(t, 5*time.Second, "a HELLO retransmitted, unanswered", func() bool { return a.Stats().HandshakesStarted >= 2 })
	if pb.HasSession() {
		t.Fatal("a session with a socket that never answers")
	}
	pb.mu.Lock()
	queued = len(pb.queue)
	pb.mu.Unlock()
	if queued != MaxQueued {
		t.Fatalf("%d datagrams queued while the handshake runs, want %d", queued, MaxQueued)
	}

	// The peer turns up at another address.
	b := startNode(t, nodeOpts{seed: seed, name: "b", timers: timers})
	if _, err := b.AddPeer(PeerConfig{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	if err := pb.Update(PeerConfig{Name: "b", Endpoint: loopback(b.Node)}); err != nil {
		t.Fatal(err)
	}
	b.h.waitCount(t, MaxQueued, 10*time.Second)
	b.h.mu.Lock()
	got := b.h.got
	b.h.mu.Unlock()
	if len(got) != MaxQueued || b.h.count.Load() != MaxQueued {
		t.Fatalf("%d datagrams delivered, want %d", len(got), MaxQueued)
	}
	// The initiator's queued datagrams all go on its first stream, in order.
	if streams := dataStreams(a.bind); len(streams) != 1 || !streams[1] {
		t.Fatalf("queued datagrams sent on streams %v, want only stream 1", streams)
	}
	for i, d := range got {
		if want := uint32(total - MaxQueued + i); binary.BigEndian.Uint32(d) != want {
			t.Fatalf("datagram %d delivered is number %d, want %d", i, binary.BigEndian.Uint32(d), want)
		}
	}
	pb.mu.Lock()
	queued = len(pb.queue)
	pb.mu.Unlock()
	if queued != 0 {
		t.Fatalf("%d datagrams still queued with a session", queued)
	}
	if got := pb.Stats().Drops; got != total-MaxQueued {
		t.Fatalf("peer drops %d after delivery, want %d", got, total-MaxQueued)
	}
}

// TestQueuedDatagramsNoSessionCanSealAreCounted: datagrams that waited for a handshake
// and that the new session may not seal (more of them than REJECT_AFTER_MESSAGES) are
// lost, and counted as dropped like those pushed out of a full queue.
func TestQueuedDatagramsNoSessionCanSealAreCounted(t *testing.T) {
	const limit = 100
	a, b := pair(t, Limits{RekeyAfterMessages: limit / 2, RejectAfterMessages: limit})
	pb := a.Peer("b")
	const n = limit + 50 // fits the queue, not the session
	// One call queues them all before the handshake it starts can complete.
	pkts, flows := seqDatagrams(0, n)
	if err := pb.Send(pkts, flows); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the queued datagrams counted as dropped", func() bool { return pb.Stats().Drops >= n })
	if got := pb.Stats().Drops; got != n {
		t.Fatalf("peer drops %d, want %d", got, n)
	}
	if got := a.Stats().Drops[DropNoSession]; got != n {
		t.Fatalf("node no_session drops %d, want %d", got, n)
	}
	// The session that could not seal them was made: the peer confirms it.
	waitFor(t, 5*time.Second, "the session confirmed", func() bool { return a.Stats().HandshakesDone != 0 })
	pb.mu.Lock()
	queued := len(pb.queue)
	pb.mu.Unlock()
	if queued != 0 || b.h.count.Load() != 0 {
		t.Fatalf("%d still queued, %d delivered; want the lot dropped", queued, b.h.count.Load())
	}
}

// TestHandshakeGiveUpCountsItsQueue: when a handshake gives up, the datagrams that
// waited for it are counted under no_session on the node as well as on the peer, so
// that every discarded datagram has exactly one reason.
func TestHandshakeGiveUpCountsItsQueue(t *testing.T) {
	seed := randKey(t)
	timers := Limits{HandshakeRetry: 50 * time.Millisecond, HandshakeRetryMax: 50 * time.Millisecond, HandshakeGiveUp: 300 * time.Millisecond}
	a := startNode(t, nodeOpts{seed: seed, name: "a", timers: timers})
	silent, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = silent.Close() })
	pb, err := a.AddPeer(PeerConfig{Name: "b", Endpoint: silent.LocalAddr().String()})
	if err != nil {
		t.Fatal(err)
	}
	pkts, flows := seqDatagrams(0, 10)
	if err := pb.Send(pkts, flows); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the handshake to give up", func() bool { return pb.Stats().Drops == 10 })
	if got := a.Stats().Drops[DropNoSession]; got != 10 {
		t.Fatalf("node no_session drops %d after the give-up, want 10", got)
	}
}

// TestSendErrorsCountedPerPacket: a batch the transport refuses counts every one of its
// packets, on the node as on the peer: drop_send_error is in packets.
func TestSendErrorsCountedPerPacket(t *testing.T) {
	a, b := pair(t, Limits{})
	established(t, a, b)
	pb := a.Peer("b")
	before, nodeBefore := pb.Stats().Drops, a.Stats().Drops[DropSendError]
	a.bind.refuse.Store(true)
	pkts, flows := seqDatagrams(0, 10)
	_ = pb.Send(pkts, flows)
	// (A timer's control frame may fail in between too; it counts on both alike.)
	peerRise, nodeRise := pb.Stats().Drops-before, a.Stats().Drops[DropSendError]-nodeBefore
	if peerRise < 10 || nodeRise != peerRise {
		t.Fatalf("peer drops rose by %d, node send_error by %d; want both the same, at least 10", peerRise, nodeRise)
	}
}

// TestUnresolvableEndpointStartsWithoutAddress: a peer whose endpoint name does not
// resolve is added at once, without an address, and does not hold up the other peers:
// their handshakes and traffic go on. Its name is looked up again in the background
// (backing off) and, once it answers, the peer gets the address and its queued traffic
// goes out. EndpointError says why it has none meanwhile.
func TestUnresolvableEndpointStartsWithoutAddress(t *testing.T) {
	seed := randKey(t)
	a := startNode(t, nodeOpts{seed: seed, name: "a"})
	b := startNode(t, nodeOpts{seed: seed, name: "b"})
	c := startNode(t, nodeOpts{seed: seed, name: "c"})
	for _, x := range []*testNode{b, c} {
		if _, err := x.AddPeer(PeerConfig{Name: "a"}); err != nil {
			t.Fatal(err)
		}
	}
	r := newGatedResolver()
	t.Cleanup(r.open)
	a.resolver = r.resolve
	const name = "b.invalid:51900"
	pb, err := a.AddPeer(PeerConfig{Name: "b", Endpoint: name})
	if err != nil {
		t.Fatalf("AddPeer with a name that does not resolve: %v", err)
	}
	pc, err := a.AddPeer(PeerConfig{Name: "c", Endpoint: loopback(c.Node)})
	if err != nil {
		t.Fatal(err)
	}
	<-pb.LookupDone()
	r.waitLookups(t, name) // the first
	if ep := pb.Endpoint(); ep.IsValid() {
		t.Fatalf("endpoint %s for a name that does not resolve", ep)
	}
	if got := pb.EndpointError(); !strings.Contains(got, "no such host") {
		t.Fatalf("EndpointError %q, want the lookup's error", got)
	}
	// c works meanwhile; b's traffic waits in its queue.
	sendOne(t, pc, 0, []byte("c is reachable"))
	c.h.waitCount(t, 1, 5*time.Second)
	sendOne(t, pb, 0, []byte("waits for b's address"))
	// Retried in the background.
	r.waitLookups(t, name)
	if ep := pb.Endpoint(); ep.IsValid() {
		t.Fatalf("endpoint %s for a name that does not resolve", ep)
	}
	// The name starts to resolve: the next lookup gives b its address, and the
	// queued datagram goes out.
	r.set(name, netip.MustParseAddrPort(loopback(b.Node)))
	b.h.waitCount(t, 1, 10*time.Second)
	if got := pb.EndpointError(); got != "" {
		t.Fatalf("EndpointError %q after the name resolved", got)
	}
	if got := pb.UDPEndpoint().String(); got != loopback(b.Node) {
		t.Fatalf("endpoint %s, want %s", got, loopback(b.Node))
	}
}
