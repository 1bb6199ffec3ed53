package stt

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/stt-tun/stt-tun/stt/handshake"
	"github.com/stt-tun/stt-tun/stt/udp"
	"github.com/stt-tun/stt-tun/stt/wire"
)

// collector is a Handler that records what it is given.
type collector struct {
	mu     sync.Mutex
	got    [][]byte // in the order delivered
	from   []*Peer  // the peer each came from
	count  atomic.Int64
	notify chan struct{}
}

func newCollector() *collector {
	return &collector{notify: make(chan struct{}, 1)}
}

func (c *collector) Deliver(in *Inbound) {
	c.mu.Lock()
	for i := 0; i < in.N; i++ {
		b := append([]byte(nil), in.Bufs[i][Headroom:Headroom+in.Sizes[i]]...)
		c.got = append(c.got, b)
		c.from = append(c.from, in.Peers[i])
	}
	c.mu.Unlock()
	c.count.Add(int64(in.N))
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// waitCount waits until the collector has seen at least n datagrams or the deadline.
func (c *collector) waitCount(t *testing.T, n int64, d time.Duration) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for c.count.Load() < n {
		select {
		case <-c.notify:
		case <-deadline.C:
			t.Fatalf("received %d datagrams, want %d", c.count.Load(), n)
		}
	}
}

// captureBind wraps a Bind and keeps a copy of every message sent, for replay and
// tampering tests.
type captureBind struct {
	conn.Bind
	mu       sync.Mutex
	sent     [][]byte
	blocked  atomic.Bool  // drop every UDP datagram silently, like a firewall
	refuse   atomic.Bool  // fail every send, like a firewall answering EPERM
	dropOnce atomic.Int32 // drop the next single message of this type
	// cut holds the ports on 127.0.0.1 whose UDP datagrams are dropped silently, like a
	// firewall between two nodes that lets each reach the others.
	cutMu sync.Mutex
	cut   map[uint16]bool
	// holding keeps every message back (recorded in held, with where it was going)
	// until release sends it: a test orders the messages of two nodes as it likes.
	holding atomic.Bool
	heldMu  sync.Mutex
	held    []heldMsg
}

type heldMsg struct {
	msg []byte
	ep  conn.Endpoint
}

// release sends, in the order they were held, the held messages of type typ, and
// reports how many.
func (b *captureBind) release(typ byte) int {
	b.heldMu.Lock()
	var out, keep []heldMsg
	for _, h := range b.held {
		if h.msg[0] == typ {
			out = append(out, h)
		} else {
			keep = append(keep, h)
		}
	}
	b.held = keep
	b.heldMu.Unlock()
	for _, h := range out {
		_ = b.Bind.Send([][]byte{h.msg}, h.ep)
	}
	return len(out)
}

// holds reports how many messages of type typ are held.
func (b *captureBind) holds(typ byte) int {
	b.heldMu.Lock()
	defer b.heldMu.Unlock()
	k := 0
	for _, h := range b.held {
		if h.msg[0] == typ {
			k++
		}
	}
	return k
}

// cutTo drops (on) or lets through (off) every UDP datagram this bind sends to port.
func (b *captureBind) cutTo(port uint16, on bool) {
	b.cutMu.Lock()
	defer b.cutMu.Unlock()
	if b.cut == nil {
		b.cut = make(map[uint16]bool)
	}
	b.cut[port] = on
}

func (b *captureBind) isCut(ep conn.Endpoint) bool {
	b.cutMu.Lock()
	defer b.cutMu.Unlock()
	return b.cut[addrPortOf(ep).Port()]
}

func (b *captureBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	if b.blocked.Load() || b.isCut(ep) {
		return nil
	}
	if b.refuse.Load() {
		return syscall.EPERM
	}
	if t := b.dropOnce.Load(); t != 0 && len(bufs) == 1 && int32(bufs[0][0]) == t && b.dropOnce.CompareAndSwap(t, 0) {
		return nil
	}
	if b.holding.Load() {
		b.heldMu.Lock()
		for _, m := range bufs {
			b.held = append(b.held, heldMsg{append([]byte(nil), m...), ep})
		}
		b.heldMu.Unlock()
		return nil
	}
	b.mu.Lock()
	for _, m := range bufs {
		b.sent = append(b.sent, append([]byte(nil), m...))
	}
	b.mu.Unlock()
	return b.Bind.Send(bufs, ep)
}

func (b *captureBind) ofType(typ byte) [][]byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out [][]byte
	for _, m := range b.sent {
		if m[0] == typ {
			out = append(out, m)
		}
	}
	return out
}

type testNode struct {
	*Node
	h    *collector
	bind *captureBind
	key  [32]byte
}

type nodeOpts struct {
	seed    [32]byte
	key     *[32]byte
	name    string
	port    uint16
	timers  Limits
	noAES   bool
	loadThr int
	handler Handler // nil = a collector
	noUDP   bool
	noCap   bool // a plain bind, for benchmarks: the capture copies every datagram
	logger  *slog.Logger
	ws      bool          // listen for WebSocket on loopback
	config  func(*Config) // sets what the fields above do not (Admit, SessionUp, Extension)
}

func randKey(t testing.TB) [32]byte {
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		t.Fatal(err)
	}
	return k
}

func startNode(t testing.TB, o nodeOpts) *testNode {
	t.Helper()
	key := randKey(t)
	if o.key != nil {
		key = *o.key
	}
	h := newCollector()
	var handler Handler = h
	if o.handler != nil {
		handler = o.handler
	}
	b := &captureBind{Bind: udp.New()}
	var bind conn.Bind = b
	if o.noCap {
		bind = b.Bind
	}
	cfg := Config{
		Seed: o.seed, PrivateKey: key, Name: o.name, ListenPort: o.port,
		Handler: handler, Bind: bind, Logger: o.logger, Limits: o.timers, DisableAES: o.noAES,
		HandshakeLoadThreshold: o.loadThr,
		DisableUDP:             o.noUDP,
		WSListen:               map[bool]string{true: "127.0.0.1:0"}[o.ws],
	}
	if o.config != nil {
		o.config(&cfg)
	}
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return &testNode{Node: n, h: h, bind: b, key: key}
}

func loopback(n *Node) string { return fmt.Sprintf("127.0.0.1:%d", n.Port()) }

// pair starts two nodes that know each other; a initiates.
func pair(t testing.TB, timers Limits) (a, b *testNode) {
	seed := randKey(t)
	a = startNode(t, nodeOpts{seed: seed, name: "a", timers: timers})
	b = startNode(t, nodeOpts{seed: seed, name: "b", timers: timers})
	if _, err := b.AddPeer(PeerConfig{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AddPeer(PeerConfig{Name: "b", Endpoint: loopback(b.Node)}); err != nil {
		t.Fatal(err)
	}
	return a, b
}

// datagram builds a send buffer: headroom, then payload, with room for the tag.
func datagram(payload []byte) []byte {
	b := make([]byte, wire.HeaderLen+len(payload), wire.HeaderLen+len(payload)+wire.TagLen)
	copy(b[wire.HeaderLen:], payload)
	return b
}

func sendOne(t testing.TB, p *Peer, flow uint16, payload []byte) {
	t.Helper()
	if err := p.Send([][]byte{datagram(payload)}, []uint16{flow}); err != nil {
		t.Fatal(err)
	}
}

// waitFor polls an observable condition with a bound; the conditions are counters the
// node updates, so there is no event to wait on.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func established(t testing.TB, a, b *testNode) {
	t.Helper()
	sendOne(t, a.Peer("b"), 0, []byte("hello"))
	b.h.waitCount(t.(*testing.T), 1, 5*time.Second)
	waitFor(t, 5*time.Second, "session on both sides", func() bool {
		return a.Peer("b").HasSession() && b.Peer("a").HasSession()
	})
}

func TestSessionEstablishedAndQueuedDatagramDelivered(t *testing.T) {
	a, b := pair(t, Limits{})
	established(t, a, b)
	if got := string(b.h.got[0]); got != "hello" {
		t.Fatalf("got %q", got)
	}
	// And back.
	sendOne(t, b.Peer("a"), 0, []byte("world"))
	a.h.waitCount(t, 1, 5*time.Second)
}

func TestWrongSeedGetsNoSessionAndCostsNoDH(t *testing.T) {
	b := startNode(t, nodeOpts{seed: randKey(t), name: "b"})
	if _, err := b.AddPeer(PeerConfig{Name: "x"}); err != nil {
		t.Fatal(err)
	}
	x := startNode(t, nodeOpts{seed: randKey(t), name: "x"})
	px, err := x.AddPeer(PeerConfig{Name: "b", Endpoint: loopback(b.Node)})
	if err != nil {
		t.Fatal(err)
	}
	dhBefore := b.hs.DHCount()
	sendOne(t, px, 0, []byte("let me in"))
	waitFor(t, 5*time.Second, "bad mac1 drops", func() bool { return b.Stats().Drops[DropBadMAC1] >= 1 })
	if got := b.hs.DHCount(); got != dhBefore {
		t.Fatalf("responder did %d DH operations for a non-member", got-dhBefore)
	}
	if b.Stats().Sessions != 0 || px.HasSession() {
		t.Fatal("a session exists with a non-member")
	}
	if b.h.count.Load() != 0 {
		t.Fatal("non-member datagram delivered")
	}
}

func TestTamperedDataFrameDropped(t *testing.T) {
	a, b := pair(t, Limits{})
	established(t, a, b)
	before := b.h.count.Load()
	sendOne(t, a.Peer("b"), 3, []byte("original payload"))
	b.h.waitCount(t, before+1, 5*time.Second)
	frames := a.bind.ofType(wire.TypeData)
	frame := frames[len(frames)-1]
	raw := rawSender(t)
	st0 := b.Stats()
	for i := range frame {
		bad := append([]byte(nil), frame...)
		bad[i] ^= 0x40
		raw(bad, b.Node)
	}
	waitFor(t, 5*time.Second, "drops for every tampered frame", func() bool {
		return b.Stats().DropsTotal-st0.DropsTotal >= uint64(len(frame))
	})
	if got := b.h.count.Load(); got != before+1 {
		t.Fatalf("a tampered frame was delivered: %d datagrams, want %d", got, before+1)
	}
	// Each for its reason: the type byte makes no DATA frame, the receiver index names
	// no session, and every other byte, header included, fails authentication. A
	// header outside the associated data would show as replays of the original.
	st := b.Stats()
	for _, w := range []struct {
		r    DropReason
		want uint64
	}{
		{DropMalformed, 1},
		{DropUnknownIndex, 4},
		{DropAuth, uint64(len(frame) - 5)},
		{DropReplay, 0},
	} {
		if got := st.Drops[w.r] - st0.Drops[w.r]; got != w.want {
			t.Errorf("%d tampered frames dropped as %s, want %d", got, w.r, w.want)
		}
	}
}

func TestReplayedDataFrameDropped(t *testing.T) {
	a, b := pair(t, Limits{})
	established(t, a, b)
	before := b.h.count.Load()
	sendOne(t, a.Peer("b"), 3, []byte("once only"))
	b.h.waitCount(t, before+1, 5*time.Second)
	frames := a.bind.ofType(wire.TypeData)
	raw := rawSender(t)
	replays := b.Stats().Drops[DropReplay]
	raw(frames[len(frames)-1], b.Node)
	waitFor(t, 5*time.Second, "replay drop", func() bool {
		return b.Stats().Drops[DropReplay] == replays+1
	})
	if got := b.h.count.Load(); got != before+1 {
		t.Fatalf("replayed frame delivered")
	}
}

func TestReplayedHelloRefused(t *testing.T) {
	a, b := pair(t, Limits{})
	established(t, a, b)
	hello := a.bind.ofType(wire.TypeHello)[0]
	challengesBefore := len(b.bind.ofType(wire.TypeChallenge))
	dh := b.hs.DHCount()
	rawSender(t)(hello, b.Node)
	waitFor(t, 5*time.Second, "hello replay drop", func() bool {
		return b.Stats().Drops[DropHandshakeReplay] == 1
	})
	if b.hs.DHCount() != dh || len(b.bind.ofType(wire.TypeChallenge)) != challengesBefore {
		t.Fatal("a replayed HELLO was answered")
	}
}

func TestPinnedKeyMismatchRefused(t *testing.T) {
	seed := randKey(t)
	a := startNode(t, nodeOpts{seed: seed, name: "a"})
	b := startNode(t, nodeOpts{seed: seed, name: "b"})
	wrong := handshake.PublicKey(randKey(t))
	// b pins a wrong key for a: a's handshakes must be refused at AUTH_PROOF.
	if _, err := b.AddPeer(PeerConfig{Name: "a", PublicKey: &wrong}); err != nil {
		t.Fatal(err)
	}
	pa, _ := a.AddPeer(PeerConfig{Name: "b", Endpoint: loopback(b.Node)})
	sendOne(t, pa, 0, []byte("x"))
	waitFor(t, 5*time.Second, "pin mismatch at responder", func() bool {
		return b.Stats().Drops[DropPinMismatch] >= 1
	})
	if b.Peer("a").HasSession() || b.h.count.Load() != 0 {
		t.Fatal("responder accepted a peer whose key is not the pinned one")
	}

	// And the initiator side: c pins a wrong key for d.
	c := startNode(t, nodeOpts{seed: seed, name: "c"})
	d := startNode(t, nodeOpts{seed: seed, name: "d"})
	_, _ = d.AddPeer(PeerConfig{Name: "c"})
	pd, _ := c.AddPeer(PeerConfig{Name: "d", Endpoint: loopback(d.Node), PublicKey: &wrong})
	sendOne(t, pd, 0, []byte("x"))
	waitFor(t, 5*time.Second, "pin mismatch at initiator", func() bool {
		return c.Stats().Drops[DropPinMismatch] >= 1
	})
	if pd.HasSession() || len(c.bind.ofType(wire.TypeAuthProof)) != 0 {
		t.Fatal("initiator continued with a responder whose key is not the pinned one")
	}
}

func TestStreamIDsNeverCollideBetweenSides(t *testing.T) {
	for flow := 0; flow < 1<<16; flow++ {
		i := (&session{initiator: true}).streamFor(uint16(flow))
		r := (&session{initiator: false}).streamFor(uint16(flow))
		if i%2 != 1 || r%2 != 0 || r == 0 || i == 0 {
			t.Fatalf("flow %d: initiator stream %d, responder stream %d", flow, i, r)
		}
	}
	a, b := pair(t, Limits{})
	established(t, a, b)
	for f := uint16(0); f < 8; f++ {
		sendOne(t, a.Peer("b"), f, []byte{byte(f)})
		sendOne(t, b.Peer("a"), f, []byte{byte(f)})
	}
	b.h.waitCount(t, 9, 5*time.Second)
	a.h.waitCount(t, 8, 5*time.Second)
	bStreams := dataStreams(b.bind)
	for s := range dataStreams(a.bind) {
		if bStreams[s] {
			t.Fatalf("both sides used stream %d", s)
		}
	}
}

// dataStreams is the set of data streams (not stream 0) of the DATA frames b sent.
func dataStreams(b *captureBind) map[uint16]bool {
	set := make(map[uint16]bool)
	for _, m := range b.ofType(wire.TypeData) {
		h, err := wire.ParseHeader(m)
		if err == nil && h.Stream != wire.ControlStream {
			set[h.Stream] = true
		}
	}
	return set
}

func TestTwoSessionsHaveUnrelatedKeys(t *testing.T) {
	a, b := pair(t, Limits{})
	established(t, a, b)
	s1 := a.Peer("b").keys.current.Load()
	a.Peer("b").Rekey()
	waitFor(t, 5*time.Second, "rekey", func() bool { return a.Peer("b").keys.current.Load() != s1 })
	s2 := a.Peer("b").keys.current.Load()
	var n [12]byte
	pt := make([]byte, 64)
	c1 := s1.send.Seal(nil, n[:], pt, nil)
	c2 := s2.send.Seal(nil, n[:], pt, nil)
	if string(c1) == string(c2) {
		t.Fatal("two sessions produce the same keystream")
	}
	if s1.localIndex == s2.localIndex {
		t.Fatal("two sessions share a receiver index")
	}
}

func TestTrafficFlowsAcrossRekeyWithNothingLost(t *testing.T) {
	a, b := pair(t, Limits{RekeyAfterMessages: 2000})
	established(t, a, b)
	const total = 20000
	pa := a.Peer("b")
	start := b.h.count.Load()
	sendPaced(t, pa, b.h, start, total, 4, 256)
	// The first handshake plus at least two rekeys on the way.
	if hs := a.Stats().HandshakesDone; hs < 3 {
		t.Fatalf("only %d handshakes for %d datagrams with a 2000-message rekey limit", hs, total)
	}
	checkStreams(t, b.h, 4, total)
}

// sendPaced sends total datagrams on nflows flows, at most window in flight, each
// payload carrying its flow and per-flow sequence number.
func sendPaced(t *testing.T, p *Peer, h *collector, start int64, total, nflows, window int) {
	t.Helper()
	seq := make([]uint32, nflows)
	deadline := time.Now().Add(60 * time.Second)
	for sent := 0; sent < total; {
		for int64(sent)-(h.count.Load()-start) >= int64(window) {
			select {
			case <-h.notify:
			case <-time.After(time.Until(deadline)):
				t.Fatalf("stalled: sent %d, received %d", sent, h.count.Load()-start)
			}
		}
		batch := min(32, total-sent)
		pkts := make([][]byte, batch)
		flows := make([]uint16, batch)
		for i := range pkts {
			f := (sent + i) % nflows
			payload := make([]byte, 200+f*100)
			binary.LittleEndian.PutUint16(payload, uint16(f))
			binary.LittleEndian.PutUint32(payload[2:], seq[f])
			for j := 6; j < len(payload); j++ {
				payload[j] = byte(int(seq[f]) + j)
			}
			seq[f]++
			pkts[i] = datagram(payload)
			flows[i] = uint16(f)
		}
		if err := p.Send(pkts, flows); err != nil {
			t.Fatal(err)
		}
		sent += batch
	}
	h.waitCount(t, start+int64(total), 30*time.Second)
}

// checkStreams verifies that every datagram arrived intact, in order within its flow.
func checkStreams(t *testing.T, h *collector, nflows, total int) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	next := make(map[uint16]uint32)
	count := 0
	for _, p := range h.got {
		if len(p) < 6 {
			continue // handshake probe payloads
		}
		f := binary.LittleEndian.Uint16(p)
		s := binary.LittleEndian.Uint32(p[2:])
		if len(p) != 200+int(f)*100 {
			continue
		}
		for j := 6; j < len(p); j++ {
			if p[j] != byte(int(s)+j) {
				t.Fatalf("flow %d seq %d corrupted at byte %d", f, s, j)
			}
		}
		if s != next[f] {
			t.Fatalf("flow %d: seq %d, want %d", f, s, next[f])
		}
		next[f]++
		count++
	}
	if count != total {
		t.Fatalf("%d datagrams intact, want %d", count, total)
	}
}

func TestLoopbackFourStreamsBothWays(t *testing.T) {
	a, b := pair(t, Limits{})
	established(t, a, b)
	const total = 40000
	startB := b.h.count.Load()
	startA := a.h.count.Load()
	var wg sync.WaitGroup
	wg.Add(2)
	errs := make(chan string, 2)
	go func() {
		defer wg.Done()
		defer func() {
			if r := recover(); r != nil {
				errs <- fmt.Sprint(r)
			}
		}()
		sendPaced(t, a.Peer("b"), b.h, startB, total, 4, 512)
	}()
	go func() {
		defer wg.Done()
		sendPaced(t, b.Peer("a"), a.h, startA, total, 4, 512)
	}()
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	checkStreams(t, b.h, 4, total)
	checkStreams(t, a.h, 4, total)

	// A node holding another seed, on the same loopback, gets nothing through.
	x := startNode(t, nodeOpts{seed: randKey(t), name: "a"})
	px, _ := x.AddPeer(PeerConfig{Name: "b", Endpoint: loopback(b.Node)})
	before := b.h.count.Load()
	sendOne(t, px, 0, []byte("intruder"))
	waitFor(t, 5*time.Second, "intruder dropped", func() bool { return b.Stats().Drops[DropBadMAC1] >= 1 })
	if b.h.count.Load() != before {
		t.Fatal("datagram from a non-member delivered")
	}
}

func TestRestartedPeerGetsNewSession(t *testing.T) {
	timers := Limits{DeadPeerTimeout: 300 * time.Millisecond, KeepaliveTimeout: 100 * time.Millisecond, Tick: 20 * time.Millisecond}
	seed := randKey(t)
	keyB := randKey(t)
	a := startNode(t, nodeOpts{seed: seed, name: "a", timers: timers})
	b := startNode(t, nodeOpts{seed: seed, name: "b", key: &keyB, timers: timers})
	_, _ = b.AddPeer(PeerConfig{Name: "a"})
	pa, _ := a.AddPeer(PeerConfig{Name: "b", Endpoint: loopback(b.Node)})
	established(t, a, b)
	port := b.Port()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	// The same node comes back on the same port with the same key and no memory.
	b2 := startNode(t, nodeOpts{seed: seed, name: "b", key: &keyB, port: port, timers: timers})
	_, _ = b2.AddPeer(PeerConfig{Name: "a"})
	// a keeps sending; nothing is done by hand on a's side.
	deadline := time.Now().Add(10 * time.Second)
	for b2.h.count.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no traffic reached the restarted peer")
		}
		sendOne(t, pa, 0, []byte("still there?"))
		select {
		case <-b2.h.notify:
		case <-time.After(50 * time.Millisecond):
		}
	}
	if !b2.Peer("a").HasSession() {
		t.Fatal("restarted peer has no session")
	}
}

func TestReliableControlDeliveredInOrder(t *testing.T) {
	var mu sync.Mutex
	var got []byte
	opens := 0
	seed := randKey(t)
	h := newCollector()
	bKey := randKey(t)
	b, err := New(Config{Seed: seed, PrivateKey: bKey, Name: "b", Handler: h,
		Extension: func(p *Peer, typ byte, body []byte, _ netip.AddrPort, _ bool) {
			mu.Lock()
			if typ == wire.CtlStreamOpen {
				opens++
			} else {
				got = append(got, body[0])
			}
			mu.Unlock()
		}})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, _ = b.AddPeer(PeerConfig{Name: "a"})
	a := startNode(t, nodeOpts{seed: seed, name: "a"})
	pa, _ := a.AddPeer(PeerConfig{Name: "b", Endpoint: fmt.Sprintf("127.0.0.1:%d", b.Port())})
	sendOne(t, pa, 0, []byte("x"))
	h.waitCount(t, 1, 5*time.Second)
	for i := 0; i < 100; i++ {
		if err := pa.SendReliable(0x80, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "100 reliable messages", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == 100
	})
	for i, v := range got {
		if int(v) != i {
			t.Fatalf("message %d carried %d", i, v)
		}
	}
	// A STREAM_OPEN is an announcement the node hands to the extension too.
	if err := pa.SendReliable(wire.CtlStreamOpen, make([]byte, wire.StreamBodyLen)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the STREAM_OPEN at the extension", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return opens == 1
	})
}

func TestPingMeasuresRTT(t *testing.T) {
	a, b := pair(t, Limits{})
	established(t, a, b)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rtt, err := a.Peer("b").Ping(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rtt <= 0 {
		t.Fatalf("rtt %v", rtt)
	}
}

// rawSender returns a function that sends raw bytes to a node from a fresh socket.
func rawSender(t *testing.T) func(msg []byte, to *Node) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return func(msg []byte, to *Node) {
		if _, err := c.WriteToUDPAddrPort(msg, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), to.Port())); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCookiePathUnderLoadStillConnects(t *testing.T) {
	seed := randKey(t)
	// A negative threshold keeps b permanently "under load": every handshake message
	// must carry a cookie for b's view of a's address.
	b := startNode(t, nodeOpts{seed: seed, name: "b", loadThr: -1})
	a := startNode(t, nodeOpts{seed: seed, name: "a"})
	_, _ = b.AddPeer(PeerConfig{Name: "a"})
	pa, _ := a.AddPeer(PeerConfig{Name: "b", Endpoint: loopback(b.Node)})
	sendOne(t, pa, 0, []byte("through the cookie"))
	b.h.waitCount(t, 1, 10*time.Second)
	if b.Stats().CookieRepliesSent == 0 {
		t.Fatal("responder under load established a session without the cookie round trip")
	}
	if len(a.bind.ofType(wire.TypeCookieReply)) != 0 || len(b.bind.ofType(wire.TypeCookieReply)) == 0 {
		t.Fatal("cookie replies went the wrong way")
	}
}

func TestLostAuthProofLosesNoDataAndRecovers(t *testing.T) {
	// Dead-peer detection is pushed out of reach, so only the unconfirmed-session rule
	// can recover a lost AUTH_PROOF within the test's bounds.
	timers := Limits{DeadPeerTimeout: time.Hour, HandshakeRetry: 100 * time.Millisecond, Tick: 10 * time.Millisecond}
	a, b := pair(t, timers)
	established(t, a, b)
	pa := a.Peer("b")
	old := pa.keys.current.Load()

	// A rekey whose AUTH_PROOF is lost: data keeps flowing on the old session.
	a.bind.dropOnce.Store(wire.TypeAuthProof)
	pa.Rekey()
	waitFor(t, 5*time.Second, "the new, unconfirmed session", func() bool {
		s := pa.keys.current.Load()
		return s != old && !s.confirmed.Load()
	})
	start := b.h.count.Load()
	for i := 0; i < 50; i++ {
		sendOne(t, pa, 2, []byte{byte(i)})
	}
	b.h.waitCount(t, start+50, 5*time.Second)

	// And the handshake is redone, confirming a session without operator action.
	waitFor(t, 10*time.Second, "a confirmed new session", func() bool {
		s := pa.keys.current.Load()
		return s != old && s.confirmed.Load()
	})
	if n := len(a.bind.ofType(wire.TypeAuthProof)); n < 2 {
		t.Fatalf("%d AUTH_PROOFs sent, want a second one after the loss", n)
	}
}

// lockedBuffer is a log sink safe for the node's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	return len(p), nil
}

func (l *lockedBuffer) lines() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Count(l.b, []byte("\n"))
}

func TestOtherVersionCountedAndLoggedSparingly(t *testing.T) {
	logs := &lockedBuffer{}
	b := startNode(t, nodeOpts{seed: randKey(t), name: "b", logger: slog.New(slog.NewTextHandler(logs, nil))})
	raw := rawSender(t)
	for i := 0; i < 100; i++ {
		msg := make([]byte, wire.HelloLen+8*(i%3)) // a later version may well be longer
		msg[0], msg[1] = wire.TypeHello, wire.Version+1
		raw(msg, b.Node)
	}
	waitFor(t, 5*time.Second, "100 version drops", func() bool {
		return b.Stats().Drops[DropVersion] == 100
	})
	if n := logs.lines(); n != 1 {
		t.Fatalf("%d log lines for 100 messages of another version, want 1", n)
	}
}

// TestPeerCloseEndsSession: a CLOSE from the peer ends the session it names at once, so
// that the next datagram starts a handshake rather than vanish into a session the peer
// no longer has.
func TestPeerCloseEndsSession(t *testing.T) {
	a, b := pair(t, Limits{})
	established(t, a, b)
	b.RemovePeer("a") // sends CLOSE
	waitFor(t, 5*time.Second, "the session closed by the peer", func() bool {
		_, ok := a.Peer("b").SessionID()
		return !ok
	})
}

// TestPeerRekeyRequestStartsHandshake: a REKEY from the peer makes this node start a new
// handshake now, long before its own rekey timer would.
func TestPeerRekeyRequestStartsHandshake(t *testing.T) {
	a, b := pair(t, Limits{})
	established(t, a, b)
	pb := a.Peer("b")
	id := sessionOf(t, pb)
	s := b.Peer("a").keys.current.Load()
	b.Peer("a").sendControl(s, wire.AppendControl(nil, wire.CtlRekey, nil))
	waitFor(t, 5*time.Second, "a new session after the peer's REKEY", func() bool {
		got, ok := pb.SessionID()
		return ok && got != id
	})
}

// TestReliableControlSurvivesRekey: reliable messages the old session never got
// acknowledged move to the new session and are delivered over it.
func TestReliableControlSurvivesRekey(t *testing.T) {
	var got atomic.Int64
	seed := randKey(t)
	h := newCollector()
	b, err := New(Config{Seed: seed, PrivateKey: randKey(t), Name: "b", Handler: h,
		Extension: func(p *Peer, typ byte, body []byte, _ netip.AddrPort, _ bool) { got.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, _ = b.AddPeer(PeerConfig{Name: "a"})
	a := startNode(t, nodeOpts{seed: seed, name: "a"})
	pa, _ := a.AddPeer(PeerConfig{Name: "b", Endpoint: fmt.Sprintf("127.0.0.1:%d", b.Port())})
	sendOne(t, pa, 0, []byte("x"))
	h.waitCount(t, 1, 5*time.Second)
	old := pa.keys.current.Load()
	// A long smoothed RTT puts the old session's retransmission (2*RTT) beyond the wait
	// below: what arrives in time came over the new session.
	pa.counters.rtt.Store(int64(2 * time.Second))
	// Queued on the old session and never sent: as good as lost on the way.
	for i := 0; i < 3; i++ {
		if _, err := old.rel.enqueue(0x80, []byte{byte(i)}, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	pa.Rekey()
	waitFor(t, 3*time.Second, "the old session's reliable messages over the new one", func() bool {
		return got.Load() == 3 && pa.keys.current.Load() != old
	})
}

// TestReceivedDataIsAnsweredByKeepalive: a node that receives data and has nothing to
// send back answers with a keepalive after KeepaliveTimeout, so that the sender learns
// the path works.
func TestReceivedDataIsAnsweredByKeepalive(t *testing.T) {
	// No RTT probes after the first, which goes out on the first tick.
	a, b := pair(t, Limits{KeepaliveTimeout: 200 * time.Millisecond, RTTProbeInterval: time.Hour, Tick: 10 * time.Millisecond})
	established(t, a, b)
	time.Sleep(100 * time.Millisecond)
	pa := b.Peer("a")
	before := pa.times.lastSent.Load()
	sendOne(t, a.Peer("b"), 0, []byte("answer me"))
	b.h.waitCount(t, 2, 5*time.Second)
	waitFor(t, 3*time.Second, "a keepalive answering the data", func() bool { return pa.times.lastSent.Load() > before })
}
