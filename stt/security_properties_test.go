package stt

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/stt-tun/stt-tun/stt/handshake"
	"github.com/stt-tun/stt-tun/stt/udp"
	"github.com/stt-tun/stt-tun/stt/wire"
)

// These tests drive the receive path, Send and the timers of a node that is not
// started, with sessions whose keys and creation times the test chooses: a time past
// a limit is set on the session rather than waited for.

// sinkBind parses endpoints as the UDP bind does and keeps every message sent instead
// of sending it.
type sinkBind struct {
	conn.Bind
	mu   sync.Mutex
	sent [][]byte
}

func (b *sinkBind) Send(bufs [][]byte, _ conn.Endpoint) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, m := range bufs {
		b.sent = append(b.sent, bytes.Clone(m))
	}
	return nil
}

func (b *sinkBind) ofType(typ byte) [][]byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out [][]byte
	for _, m := range b.sent {
		if len(m) > 0 && m[0] == typ {
			out = append(out, m)
		}
	}
	return out
}

// offline is a node that is not started, with one peer whose endpoint is a discard
// address that nothing is ever sent to.
type offline struct {
	n    *Node
	p    *Peer
	h    *recordHandler
	bind *sinkBind
	ep   conn.Endpoint
}

const (
	testLocalIndex  = 0x11223344 // our index of the test session
	testRemoteIndex = 0x55667788 // the peer's
)

func newOffline(t *testing.T, timers Limits) *offline {
	t.Helper()
	h := &recordHandler{}
	b := &sinkBind{Bind: udp.New()}
	n, err := New(Config{Seed: fixedKey(1), PrivateKey: fixedKey(2), Name: "me", Handler: h, Bind: b, Limits: timers})
	if err != nil {
		t.Fatal(err)
	}
	p, err := n.AddPeer(PeerConfig{Name: "peer", Endpoint: "127.0.0.1:9"})
	if err != nil {
		t.Fatal(err)
	}
	ep, _ := b.ParseEndpoint("127.0.0.1:9")
	return &offline{n: n, p: p, h: h, bind: b, ep: ep}
}

// session makes a live session of the peer with index local, created at created, and
// returns it with the peer's side of it, which seals frames the session opens.
func (o *offline) session(t *testing.T, local uint32, initiator bool, created time.Time, keyBase byte) (ours, theirs *session) {
	t.Helper()
	k1, k2 := fixedKey(keyBase), fixedKey(keyBase+0x40)
	ours, err := newSession(o.p, local, testRemoteIndex, initiator, wire.CipherChaCha20Poly1305, &k1, &k2, created)
	if err != nil {
		t.Fatal(err)
	}
	theirs, err = newSession(nil, testRemoteIndex, local, !initiator, wire.CipherChaCha20Poly1305, &k2, &k1, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	o.n.index.install(ours)
	return ours, theirs
}

// sealed is a frame s seals on stream with counter.
func sealed(s *session, stream uint16, counter uint64, payload string) []byte {
	f := make([]byte, wire.HeaderLen+len(payload), wire.HeaderLen+len(payload)+wire.TagLen)
	copy(f[wire.HeaderLen:], payload)
	return s.seal(f, stream, counter, new([12]byte))
}

// receive hands frames to the receive path as one batch from the peer's address.
func (o *offline) receive(frames ...[]byte) {
	bufs := make([][]byte, len(frames))
	rx := make([][]byte, len(frames))
	sizes := make([]int, len(frames))
	eps := make([]conn.Endpoint, len(frames))
	for i, f := range frames {
		bufs[i] = make([]byte, BufferSize)
		rx[i] = bufs[i][recvBase:]
		sizes[i] = copy(rx[i], f)
		eps[i] = o.ep
	}
	k := len(frames)
	in := &Inbound{Bufs: make([][]byte, k), Sizes: make([]int, k), Peers: make([]*Peer, k), Scratch: make([][]byte, 0, k)}
	o.n.receiveBatch(bufs, rx, sizes, eps, in, new([12]byte), make([]byte, 0, 256), new(relayFwd))
}

func (o *offline) delivered() []string {
	var out []string
	for _, b := range o.h.got {
		out = append(out, string(b))
	}
	return out
}

func (o *offline) drops(r DropReason) uint64 { return o.n.Stats().Drops[r] }

// queued is how many datagrams the peer holds for its next session.
func (o *offline) queued() int {
	o.p.mu.Lock()
	defer o.p.mu.Unlock()
	return len(o.p.queue)
}

// initiations is how many of the node's handshake initiations a COOKIE_REPLY
// could still find.
func (o *offline) initiations() int {
	o.n.mu.RLock()
	defer o.n.mu.RUnlock()
	return len(o.n.inits)
}

// expiredAt is a creation time that puts a session past REJECT_AFTER_TIME.
func expiredAt() time.Time { return time.Now().Add(-DefaultRejectAfterTime - time.Second) }

// TestForgedFarAheadCounterDoesNotAdvanceReplayWindow: a frame that does not
// authenticate, addressed to a live receiver index with a counter far ahead, moves
// nothing: genuine frames with the counters that follow are still delivered. Were the
// replay window advanced before the frame is opened, anyone who saw one receiver
// index could make a session drop everything its peer sends.
func TestForgedFarAheadCounterDoesNotAdvanceReplayWindow(t *testing.T) {
	o := newOffline(t, Limits{})
	s, peer := o.session(t, testLocalIndex, false, time.Now(), 0x10)
	o.p.keys.current.Store(s)
	o.receive(sealed(peer, 3, 0, "first"))

	// Far beyond the replay window (8192 behind the highest), yet below
	// REJECT_AFTER_MESSAGES, so that only authentication can refuse it.
	forged := sealed(peer, 3, 1<<20, "forged")
	forged[len(forged)-1] ^= 1 // the tag no longer matches
	o.receive(forged)
	if got := o.drops(DropAuth); got != 1 {
		t.Fatalf("forged frame: %d auth drops, want 1", got)
	}

	o.receive(sealed(peer, 3, 1, "second"), sealed(peer, 3, 2, "third"))
	if got, want := o.delivered(), []string{"first", "second", "third"}; !equalStrings(got, want) {
		t.Fatalf("delivered %q, want %q (replay drops: %d): a forged frame advanced the replay window",
			got, want, o.drops(DropReplay))
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestExpiredSessionOpensNothing: a frame under a session older than
// REJECT_AFTER_TIME is dropped as expired even though it authenticates.
func TestExpiredSessionOpensNothing(t *testing.T) {
	o := newOffline(t, Limits{})
	old := expiredAt()
	s, peer := o.session(t, testLocalIndex, false, old, 0x10)
	o.p.keys.current.Store(s)
	o.receive(sealed(peer, 3, 0, "too late"))
	if got := o.delivered(); len(got) != 0 {
		t.Fatalf("delivered %q under a session past REJECT_AFTER_TIME", got)
	}
	if got := o.drops(DropExpired); got != 1 {
		t.Fatalf("%d expired drops, want 1", got)
	}
}

// TestExpiredSessionSealsNothing: Send does not seal on a current session older than
// REJECT_AFTER_TIME; the datagram waits for a new session instead.
func TestExpiredSessionSealsNothing(t *testing.T) {
	o := newOffline(t, Limits{})
	old := expiredAt()
	s, _ := o.session(t, testLocalIndex, true, old, 0x10)
	o.p.keys.current.Store(s)
	sendOne(t, o.p, 0, []byte("must wait"))
	if n := s.sendCounter.Load(); n != 0 {
		t.Fatalf("%d frames sealed on a session past REJECT_AFTER_TIME", n)
	}
	if got := len(o.bind.ofType(wire.TypeData)); got != 0 {
		t.Fatalf("%d DATA frames sent", got)
	}
	if queued := o.queued(); queued != 1 {
		t.Fatalf("%d datagrams queued for the next session, want 1", queued)
	}
}

// TestExpiredStandbySealsNothing: while a rekey's new session is unconfirmed, Send
// falls back to the standby session only if that is not past REJECT_AFTER_TIME;
// otherwise it seals on the new session.
func TestExpiredStandbySealsNothing(t *testing.T) {
	o := newOffline(t, Limits{})
	old := expiredAt()
	sb, _ := o.session(t, testLocalIndex, true, old, 0x10)
	sb.confirmed.Store(true)
	cur, _ := o.session(t, testLocalIndex+1, true, time.Now(), 0x20)
	if cur.confirmed.Load() {
		t.Fatal("a new initiator session is confirmed before any frame")
	}
	o.p.keys.standby.Store(sb)
	o.p.keys.current.Store(cur)
	sendOne(t, o.p, 0, []byte("new keys"))
	if n := sb.sendCounter.Load(); n != 0 {
		t.Fatalf("%d frames sealed on an expired standby session", n)
	}
	if n := cur.sendCounter.Load(); n != 1 {
		t.Fatalf("%d frames sealed on the unconfirmed new session, want 1", n)
	}
}

// TestInitiatorRekeysAfterRekeyAfterTime: the initiator of a session that has sent
// recently starts a new handshake once the session is REKEY_AFTER_TIME old (less its
// jitter, at most an eighth), before the responder's later deadline, and the responder
// waits for its own.
func TestInitiatorRekeysAfterRekeyAfterTime(t *testing.T) {
	for _, tc := range []struct {
		initiator bool
		age       time.Duration
		want      bool
	}{
		{true, DefaultRekeyAfterTime - DefaultRekeyAfterTime/jitterDiv - time.Second, false},
		{true, DefaultRekeyAfterTime + time.Millisecond, true},
		{false, DefaultRekeyAfterTime + time.Millisecond, false},
		{false, DefaultRekeyAfterTime + DefaultRekeyAfterTime/8 + time.Millisecond, true},
	} {
		o := newOffline(t, Limits{})
		now := time.Now()
		s, _ := o.session(t, testLocalIndex, tc.initiator, now.Add(-tc.age), 0x10)
		s.confirmed.Store(true)
		o.p.keys.current.Store(s)
		o.p.times.lastSent.Store(o.p.mono(now)) // traffic goes out: the session is in use
		o.p.tick(now)
		o.p.mu.Lock()
		started := o.p.handshake.init != nil
		o.p.mu.Unlock()
		hellos := len(o.bind.ofType(wire.TypeHello))
		if started != tc.want || (hellos == 1) != tc.want {
			t.Errorf("initiator %v, session %v old: handshake started %v (%d HELLOs), want %v",
				tc.initiator, tc.age, started, hellos, tc.want)
		}
	}
}

// TestHelloTimestampMustIncrease: the responder refuses a handshake whose HELLO
// timestamp is not newer than the last one it accepted from the same key, equal
// included (docs/protocol.md 4.5), and accepts a newer one.
func TestHelloTimestampMustIncrease(t *testing.T) {
	o := newOffline(t, Limits{})
	static := fixedKey(0x77)
	var last [12]byte
	last[0], last[11] = 0x40, 0x10
	o.p.mu.Lock()
	o.p.handshake.static, o.p.handshake.staticKnown, o.p.handshake.lastTimestamp = static, true, last
	o.p.mu.Unlock()
	result := func(ts [12]byte) handshake.Result {
		return handshake.Result{
			LocalIndex: o.n.index.reserve(), RemoteIndex: testRemoteIndex,
			SendKey: fixedKey(3), RecvKey: fixedKey(4), Cipher: wire.CipherChaCha20Poly1305,
			PeerStatic: static, PeerName: "peer", Timestamp: ts,
		}
	}
	older := last
	older[11]--
	for i, ts := range [][12]byte{last, older} {
		o.p.completeResponder(result(ts), o.ep)
		if got := o.drops(DropStaleTimestamp); got != uint64(i+1) {
			t.Fatalf("timestamp %x after %x: %d stale_timestamp drops, want %d", ts, last, got, i+1)
		}
		if s := o.p.keys.current.Load(); s != nil {
			t.Fatalf("timestamp %x after %x: a session was installed", ts, last)
		}
	}
	newer := last
	newer[11]++
	o.p.completeResponder(result(newer), o.ep)
	if o.p.keys.current.Load() == nil {
		t.Fatal("a newer timestamp was refused")
	}
	if sessions, pending := o.n.index.counts(); sessions != 1 || pending != 0 {
		t.Fatalf("%d sessions and %d reserved indices, want 1 and 0: refused handshakes keep their index", sessions, pending)
	}
}

// TestReliableQueueHoldsAtMost256: the reliable control queue refuses the 257th
// unacknowledged message, and a rekey's inheritance keeps to the same bound.
func TestReliableQueueHoldsAtMost256(t *testing.T) {
	var r reliableState
	now := time.Now()
	for i := 0; i < reliableQueueMax; i++ {
		if _, err := r.enqueue(0x80, []byte{byte(i)}, now); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	if _, err := r.enqueue(0x80, nil, now); !errors.Is(err, ErrReliableQueueFull) {
		t.Fatalf("message %d: %v, want ErrReliableQueueFull", reliableQueueMax+1, err)
	}
	if len(r.queue) != reliableQueueMax {
		t.Fatalf("queue holds %d", len(r.queue))
	}
	var next reliableState
	if _, err := next.enqueue(0x81, nil, now); err != nil {
		t.Fatal(err)
	}
	next.inherit(&r)
	if len(next.queue) != reliableQueueMax {
		t.Fatalf("after inheriting a full queue the new session's holds %d, want %d", len(next.queue), reliableQueueMax)
	}
}

// TestNothingSealedAtRejectAfterMessages: counters run up to REJECT_AFTER_MESSAGES-1;
// no frame, data or control, is sealed with the counter REJECT_AFTER_MESSAGES, and
// none with it is opened.
func TestNothingSealedAtRejectAfterMessages(t *testing.T) {
	const limit = 16
	o := newOffline(t, Limits{RekeyAfterMessages: 8, RejectAfterMessages: limit})
	if o.n.limits.RejectAfterMessages != limit {
		t.Fatalf("REJECT_AFTER_MESSAGES is %d, want %d", o.n.limits.RejectAfterMessages, limit)
	}
	s, peer := o.session(t, testLocalIndex, true, time.Now(), 0x10)
	s.confirmed.Store(true)
	o.p.keys.current.Store(s)
	s.sendCounter.Store(limit - 1)
	sendOne(t, o.p, 0, []byte("last"))
	sendOne(t, o.p, 0, []byte("one too many"))
	o.p.sendControl(s, nil)
	var ctrs []uint64
	for _, f := range o.bind.ofType(wire.TypeData) {
		h, _ := wire.ParseHeader(f)
		ctrs = append(ctrs, h.Counter)
	}
	if len(ctrs) != 1 || ctrs[0] != limit-1 {
		t.Fatalf("sealed counters %v, want only %d", ctrs, limit-1)
	}

	o.receive(sealed(peer, 2, limit-1, "last"), sealed(peer, 2, limit, "beyond"))
	if got := o.delivered(); !equalStrings(got, []string{"last"}) {
		t.Fatalf("delivered %q, want only the frame with counter %d", got, limit-1)
	}
}

// TestUnknownReceiverIndexResolvesToNoSession: a frame whose receiver index is not a
// live session's is dropped as unknown_index, even when it is sealed with the keys of
// a live session whose index is close to it.
func TestUnknownReceiverIndexResolvesToNoSession(t *testing.T) {
	o := newOffline(t, Limits{})
	s, _ := o.session(t, testLocalIndex, false, time.Now(), 0x10)
	o.p.keys.current.Store(s)
	k1, k2 := fixedKey(0x10), fixedKey(0x50)
	wrong := []uint32{0, testLocalIndex + 1, testLocalIndex - 1, testLocalIndex ^ 0x80000000, testLocalIndex ^ 1<<16, 0x44332211, testRemoteIndex}
	for i, idx := range wrong {
		// Same keys as the live session, another receiver index.
		forger, err := newSession(nil, testRemoteIndex, idx, true, wire.CipherChaCha20Poly1305, &k2, &k1, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		o.receive(sealed(forger, 3, uint64(i), "misaddressed"))
	}
	if got := o.delivered(); len(got) != 0 {
		t.Fatalf("delivered %q from frames to no live index", got)
	}
	if got := o.drops(DropUnknownIndex); got != uint64(len(wrong)) {
		t.Fatalf("%d unknown_index drops, want %d (auth %d)", got, len(wrong), o.drops(DropAuth))
	}
}

// TestHeaderIsAuthenticated: every byte of the DATA header but the type and the
// receiver index is covered by the AEAD's associated data: changing one makes the
// frame fail to open (auth), even for a counter never seen, so the replay filter
// cannot be what stops it.
func TestHeaderIsAuthenticated(t *testing.T) {
	o := newOffline(t, Limits{})
	s, peer := o.session(t, testLocalIndex, false, time.Now(), 0x10)
	o.p.keys.current.Store(s)
	var want uint64
	for i := 1; i < wire.HeaderLen; i++ {
		if i >= wire.DataReceiverOff && i < wire.DataReceiverOff+4 {
			continue
		}
		f := sealed(peer, 3, uint64(100+i), "header")
		// Low bits, so that a tampered counter stays inside the replay window.
		f[i] ^= 0x01
		o.receive(f)
		want++
		if got := o.drops(DropAuth); got != want {
			t.Fatalf("header byte %d changed: %d auth drops, want %d (delivered %q)", i, got, want, o.delivered())
		}
	}
	if got := o.delivered(); len(got) != 0 {
		t.Fatalf("delivered %q from frames with a changed header", got)
	}
}

// TestInitiatorRefusesResponderWithAnotherName: a node that handshakes with the
// address it has for peer "c" and is answered by a member named "b" sends no
// AUTH_PROOF and installs no session: the seed proves membership, not which member.
func TestInitiatorRefusesResponderWithAnotherName(t *testing.T) {
	seed := randKey(t)
	a := startNode(t, nodeOpts{seed: seed, name: "a"})
	b := startNode(t, nodeOpts{seed: seed, name: "b"})
	if _, err := b.AddPeer(PeerConfig{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	pc, err := a.AddPeer(PeerConfig{Name: "c", Endpoint: loopback(b.Node)})
	if err != nil {
		t.Fatal(err)
	}
	sendOne(t, pc, 0, []byte("for c only"))
	waitFor(t, 5*time.Second, "the CHALLENGE from b", func() bool { return len(b.bind.ofType(wire.TypeChallenge)) >= 1 })
	waitFor(t, 5*time.Second, "the CHALLENGE refused or accepted", func() bool {
		return a.Stats().Drops[DropUnknownPeer] >= 1 || pc.keys.current.Load() != nil
	})
	if pc.keys.current.Load() != nil {
		t.Fatal("a session was installed for c with a responder named b")
	}
	if n := len(a.bind.ofType(wire.TypeAuthProof)); n != 0 {
		t.Fatalf("%d AUTH_PROOFs sent to a responder with the wrong name", n)
	}
	if n := len(a.bind.ofType(wire.TypeData)); n != 0 {
		t.Fatalf("%d DATA frames sent to a responder with the wrong name", n)
	}
}

// TestExpiredSessionSealsNoControl: control messages are not sealed on a session past
// REJECT_AFTER_TIME either, in the time before the timer takes it away: a reliable
// message waits for the next session, a ping finds no session, and a CLOSE is not sent.
func TestExpiredSessionSealsNoControl(t *testing.T) {
	o := newOffline(t, Limits{})
	old := expiredAt()
	s, _ := o.session(t, testLocalIndex, true, old, 0x10)
	s.confirmed.Store(true)
	o.p.keys.current.Store(s)
	if err := o.p.SendReliable(0x80, []byte("later")); err != nil {
		t.Errorf("SendReliable on an expired session: %v, want it kept for the next session", err)
	}
	o.p.mu.Lock()
	kept, want := len(o.p.relQueue), o.p.handshake.want
	o.p.mu.Unlock()
	if kept != 1 || !want {
		t.Errorf("SendReliable on an expired session: %d messages kept, handshake wanted %v; want 1, true", kept, want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := o.p.Ping(ctx); !errors.Is(err, ErrNoSession) {
		t.Errorf("Ping on an expired session: %v, want ErrNoSession", err)
	}
	o.p.sendClose(s) // as Node.Close does for every peer's current session
	if n := s.sendCounter.Load(); n != 0 {
		t.Fatalf("%d control frames sealed on a session past REJECT_AFTER_TIME", n)
	}
}
