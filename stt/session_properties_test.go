package stt

import (
	"context"
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/stt/handshake"
	"github.com/stt-tun/stt-tun/stt/wire"
	"github.com/stt-tun/stt-tun/stt/ws"
)

// TestCloseUnderOldSessionKeepsCurrent: a CLOSE sealed under a session a rekey
// replaced ends only that session: the current one, made after it, stays.
func TestCloseUnderOldSessionKeepsCurrent(t *testing.T) {
	o := newOffline(t, Limits{})
	old, oldPeer := o.session(t, testLocalIndex, false, time.Now(), 0x10)
	cur, _ := o.session(t, testLocalIndex+1, false, time.Now(), 0x20)
	o.p.keys.previous = old
	o.p.keys.current.Store(cur)
	o.receive(sealed(oldPeer, 0, 0, string(wire.AppendControl(nil, wire.CtlClose, []byte{wire.CodeShutdown, 0}))))
	if got := o.p.keys.current.Load(); got != cur {
		t.Fatalf("a CLOSE under the previous session replaced the current one with %p", got)
	}
	if o.n.index.lookup(cur.localIndex) != cur {
		t.Fatal("a CLOSE under the previous session removed the current one from the index")
	}
}

// TestRemovingOldSessionKeepsNewOneAtItsIndex: removing a session from the index
// table removes it only if it is still the one installed at its index.
func TestRemovingOldSessionKeepsNewOneAtItsIndex(t *testing.T) {
	tbl := newIndexTable()
	k := fixedKey(1)
	a, _ := newSession(nil, 7, 1, true, wire.CipherChaCha20Poly1305, &k, &k, time.Now())
	b, _ := newSession(nil, 7, 2, true, wire.CipherChaCha20Poly1305, &k, &k, time.Now())
	tbl.install(a)
	tbl.install(b) // the same index, reused
	tbl.remove(a)
	if got := tbl.lookup(7); got != b {
		t.Fatalf("removing the old session at index 7 left %p, want the new one %p", got, b)
	}
}

// peerResponder is the handshake engine of the offline peer "peer", which answers
// the HELLOs the node under test sends it.
func peerResponder(t *testing.T) *handshake.Engine {
	t.Helper()
	resp, err := handshake.New(handshake.Config{Seed: fixedKey(1), Static: fixedKey(9), Name: "peer", LoadThreshold: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// TestStaleInitiationCannotInstallSession: a CHALLENGE for an initiation the peer has
// replaced (a retransmission started a new one) installs nothing, and a COOKIE_REPLY
// for it stores no cookie.
func TestStaleInitiationCannotInstallSession(t *testing.T) {
	o := newOffline(t, Limits{})
	resp := peerResponder(t)
	o.p.mu.Lock()
	o.p.startHandshakeLocked(time.Now())
	stale := o.p.handshake.init
	o.p.startHandshakeLocked(time.Now()) // a retransmission: a new initiation
	o.p.mu.Unlock()
	hellos := o.bind.ofType(wire.TypeHello)
	if len(hellos) != 2 || stale == nil {
		t.Fatalf("%d HELLOs sent", len(hellos))
	}
	chal, err := resp.HandleHello(hellos[0], addrPortOf(o.ep), nil)
	if err != nil {
		t.Fatal(err)
	}
	o.p.consumeChallenge(stale, chal, o.ep)
	if o.p.keys.current.Load() != nil || len(o.bind.ofType(wire.TypeAuthProof)) != 0 {
		t.Fatal("the CHALLENGE of a replaced initiation made a session")
	}
	if got := o.drops(DropHandshake); got != 1 {
		t.Fatalf("%d handshake drops, want 1", got)
	}

	loaded, err := handshake.New(handshake.Config{Seed: fixedKey(1), Static: fixedKey(9), Name: "peer", LoadThreshold: -1})
	if err != nil {
		t.Fatal(err)
	}
	cr, err := loaded.HandleHello(hellos[0], addrPortOf(o.ep), nil)
	if err != nil || cr[0] != wire.TypeCookieReply {
		t.Fatalf("no COOKIE_REPLY: %v", err)
	}
	o.p.consumeCookie(stale, cr)
	o.p.mu.Lock()
	cookie := o.p.handshake.cookie
	o.p.mu.Unlock()
	if cookie != nil {
		t.Fatal("a COOKIE_REPLY for a replaced initiation was stored")
	}
}

// TestRemovedPeerCompletesNoHandshake: an AUTH_PROOF that completes after its peer
// was removed installs no session and gives its index back.
func TestRemovedPeerCompletesNoHandshake(t *testing.T) {
	o := newOffline(t, Limits{})
	o.n.RemovePeer("peer")
	idx := o.n.index.reserve()
	o.p.completeResponder(handshake.Result{
		LocalIndex: idx, RemoteIndex: testRemoteIndex, SendKey: fixedKey(3), RecvKey: fixedKey(4),
		Cipher: wire.CipherChaCha20Poly1305, PeerStatic: fixedKey(5), PeerName: "peer", Timestamp: [12]byte{0x40},
	}, o.ep)
	if o.p.keys.current.Load() != nil {
		t.Fatal("a removed peer got a session")
	}
	if sessions, pending := o.n.index.counts(); sessions != 0 || pending != 0 {
		t.Fatalf("%d sessions, %d reserved indices; want 0 and 0", sessions, pending)
	}
}

// TestReliableReceiveDeliversOnlyInOrder: a RELIABLE message other than the next
// expected one is not delivered, and the ACK keeps naming the one expected.
func TestReliableReceiveDeliversOnlyInOrder(t *testing.T) {
	var r reliableState
	for _, step := range []struct {
		seq     uint32
		deliver bool
		ack     uint32
	}{{1, false, 0}, {0, true, 1}, {0, false, 1}, {5, false, 1}, {1, true, 2}} {
		d, a := r.receive(step.seq)
		if d != step.deliver || a != step.ack {
			t.Fatalf("receive(%d) = %v, ack %d; want %v, ack %d", step.seq, d, a, step.deliver, step.ack)
		}
	}
}

// controlNode is an offline node with a live session and an extension that records
// the control types it is handed.
func controlNode(t *testing.T) (*offline, *session, *[]byte) {
	o := newOffline(t, Limits{})
	s, _ := o.session(t, testLocalIndex, false, time.Now(), 0x10)
	o.p.keys.current.Store(s)
	var ext []byte
	o.n.cfg.Extension = func(p *Peer, typ byte, body []byte, _ netip.AddrPort, _ bool) { ext = append(ext, typ) }
	return o, s, &ext
}

// TestControlMessagesCheckedBeforeUse: a control message with a body of the wrong
// length, a RELIABLE inside a RELIABLE and an unassigned type below the extension
// range are each dropped as control, not acted on nor handed to the extension.
func TestControlMessagesCheckedBeforeUse(t *testing.T) {
	for name, payload := range map[string][]byte{
		"short PONG":      wire.AppendControl(nil, wire.CtlPong, []byte{1, 2, 3}),
		"short PING":      wire.AppendControl(nil, wire.CtlPing, []byte{1}),
		"short ACK":       wire.AppendControl(nil, wire.CtlAck, []byte{1}),
		"nested RELIABLE": wire.AppendControl(nil, wire.CtlReliable, binary.LittleEndian.AppendUint32(nil, 0)),
		"unassigned type": wire.AppendControl(nil, 0x20, []byte("x")),
		"RELIABLE in RELIABLE": wire.AppendControl(nil, wire.CtlReliable,
			wire.AppendControl(binary.LittleEndian.AppendUint32(nil, 0), wire.CtlReliable,
				wire.AppendControl(binary.LittleEndian.AppendUint32(nil, 0), 0x81, []byte("x")))),
	} {
		t.Run(name, func(t *testing.T) {
			o, s, ext := controlNode(t)
			func() {
				defer func() {
					if r := recover(); r != nil {
						t.Fatalf("panic: %v", r)
					}
				}()
				o.n.handleControl(o.p, s, payload, o.ep)
			}()
			if got := o.drops(DropControl); got != 1 {
				t.Errorf("%d control drops, want 1", got)
			}
			if len(*ext) != 0 {
				t.Errorf("the extension was handed types %x", *ext)
			}
			// Whatever the node answered (an ACK may be due) holds no PONG.
			for _, f := range o.bind.ofType(wire.TypeData) {
				h, _ := wire.ParseHeader(f)
				pt, err := newSessionPeerSide(t, s).open(f, h.Counter, new([12]byte))
				if err != nil {
					t.Fatal(err)
				}
				it := wire.NewControlIter(pt)
				for m, ok := it.Next(); ok; m, ok = it.Next() {
					if m.Type == wire.CtlPong {
						t.Errorf("answered with a PONG")
					}
				}
			}
		})
	}
}

// newSessionPeerSide is the peer's side of a session the offline helper made with key
// base 0x10, to open what the node sent.
func newSessionPeerSide(t *testing.T, s *session) *session {
	k1, k2 := fixedKey(0x10), fixedKey(0x50)
	ps, err := newSession(nil, s.remoteIndex, s.localIndex, !s.initiator, s.cipherID, &k2, &k1, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// TestPendingPingsBounded: the table of pings waiting for their PONG stays bounded
// however many go unanswered.
func TestPendingPingsBounded(t *testing.T) {
	o := newOffline(t, Limits{})
	o.p.mu.Lock()
	defer o.p.mu.Unlock()
	for i := 0; i < 1000; i++ {
		o.p.pingPayloadLocked(time.Now(), make(chan time.Duration, 1))
	}
	if n := len(o.p.ping.waiting); n > 64 {
		t.Fatalf("%d pings pending, want at most 64", n)
	}
}

// TestStaleCookieNotUsed: a cookie older than two minutes (the responder's secret has
// rotated) is not put into the mac2 of a new HELLO.
func TestStaleCookieNotUsed(t *testing.T) {
	o := newOffline(t, Limits{})
	now := time.Now()
	o.p.mu.Lock()
	o.p.handshake.cookie = make([]byte, wire.MACLen)
	o.p.handshake.cookie[0] = 1
	o.p.handshake.cookieAt = now.Add(-121 * time.Second)
	o.p.startHandshakeLocked(now)
	o.p.mu.Unlock()
	hellos := o.bind.ofType(wire.TypeHello)
	if len(hellos) != 1 {
		t.Fatalf("%d HELLOs", len(hellos))
	}
	var zero [wire.MACLen]byte
	if mac2 := hellos[0][wire.HelloMAC2Off:]; string(mac2) != string(zero[:]) {
		t.Fatalf("HELLO carries mac2 %x from a stale cookie", mac2)
	}
}

// TestTimersDropExpiredSessionsFromIndex: the timer removes sessions past
// REJECT_AFTER_TIME, current, previous and older, from the index, so their receiver
// indices resolve to nothing.
func TestTimersDropExpiredSessionsFromIndex(t *testing.T) {
	o := newOffline(t, Limits{})
	old := expiredAt()
	older, _ := o.session(t, testLocalIndex+2, false, old, 0x30)
	prev, _ := o.session(t, testLocalIndex, false, old, 0x10)
	cur, _ := o.session(t, testLocalIndex+1, false, old, 0x20)
	o.p.mu.Lock()
	o.p.keys.previous, o.p.keys.older = prev, older
	o.p.mu.Unlock()
	o.p.keys.current.Store(cur)
	o.p.tick(time.Now())
	if sessions, _ := o.n.index.counts(); sessions != 0 {
		t.Fatalf("%d sessions in the index after expiry, want 0", sessions)
	}
	if o.p.keys.current.Load() != nil {
		t.Fatal("an expired session is still current")
	}
}

// TestPeerNameLongerThanWireFieldRefused: a peer name that does not fit the
// handshake's name field is refused when the peer is added (it could never match).
func TestPeerNameLongerThanWireFieldRefused(t *testing.T) {
	o := newOffline(t, Limits{})
	long := make([]byte, wire.NameLen+1)
	for i := range long {
		long[i] = 'n'
	}
	if _, err := o.n.AddPeer(PeerConfig{Name: string(long)}); err == nil {
		t.Fatal("a name longer than the wire field was accepted")
	}
	if _, err := o.n.AddPeer(PeerConfig{Name: string(long[:wire.NameLen])}); err != nil {
		t.Fatalf("a name of exactly %d bytes: %v", wire.NameLen, err)
	}
}

// TestStandbyIsOnlyAConfirmedSession: a rekey keeps the session it replaces for
// sending only if that one was confirmed; an unconfirmed one is no fallback.
func TestStandbyIsOnlyAConfirmedSession(t *testing.T) {
	o := newOffline(t, Limits{})
	first, _ := o.session(t, testLocalIndex, true, time.Now(), 0x10)
	o.p.mu.Lock()
	o.p.installLocked(first, fixedKey(5), time.Now())
	second, _ := o.session(t, testLocalIndex+1, true, time.Now(), 0x20)
	o.p.installLocked(second, fixedKey(5), time.Now())
	o.p.mu.Unlock()
	if sb := o.p.keys.standby.Load(); sb != nil {
		t.Fatalf("an unconfirmed session became the standby")
	}
}

// TestWebSocketConnectionMarkedOnlyByAuthenticatedFrame: a WebSocket connection
// counts as authenticated (exempt from eviction and the small pre-authentication
// batches) only once a frame on it authenticates, not because frames arrive.
func TestWebSocketConnectionMarkedOnlyByAuthenticatedFrame(t *testing.T) {
	n := startNode(t, nodeOpts{seed: fixedKey(1), name: "me"})
	p, err := n.AddPeer(PeerConfig{Name: "peer"})
	if err != nil {
		t.Fatal(err)
	}
	k1, k2 := fixedKey(0x10), fixedKey(0x50)
	s, _ := newSession(p, testLocalIndex, testRemoteIndex, false, wire.CipherChaCha20Poly1305, &k1, &k2, time.Now())
	n.index.install(s)
	p.keys.current.Store(s)
	peer, _ := newSession(nil, testRemoteIndex, testLocalIndex, true, wire.CipherChaCha20Poly1305, &k2, &k1, time.Now())

	conns := make(chan *ws.Conn, 1)
	srv, err := ws.Listen(ws.ServerConfig{Addr: "127.0.0.1:0", Offset: recvBase, BufSize: BufferSize,
		Receive: n.wsReceive, OnConnect: func(c *ws.Conn) { conns <- c }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	cl, err := ws.Dial(context.Background(), ws.DialConfig{URL: srv.URL(), Proxy: "none", Offset: recvBase, BufSize: BufferSize,
		Receive: func(*ws.Conn, [][]byte, []int) {}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close(); <-cl.Done() })
	var sc *ws.Conn
	select {
	case sc = <-conns:
	case <-time.After(5 * time.Second):
		t.Fatal("no connection")
	}
	forged := sealed(peer, 3, 0, "forged")
	forged[len(forged)-1] ^= 1
	if err := cl.Send([][]byte{forged, sealed(peer, 3, 1, "x")[:wire.HeaderLen+2]}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the forged frames handled", func() bool {
		st := n.Stats()
		return st.Drops[DropAuth]+st.Drops[DropMalformed] >= 2
	})
	if sc.Authenticated() {
		t.Fatal("frames that do not authenticate marked the connection authenticated")
	}
	if err := cl.Send([][]byte{sealed(peer, 3, 2, "genuine")}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the genuine frame marking the connection", sc.Authenticated)
}

// TestProbeOverUDPDoesNotMovePeerOffWebSocket: while the peer's traffic goes over
// WebSocket, a lone PING arriving over UDP (the peer probing whether UDP works again)
// is answered but moves nothing; a data frame over UDP does move the traffic back.
func TestProbeOverUDPDoesNotMovePeerOffWebSocket(t *testing.T) {
	o := newOffline(t, Limits{})
	s, peer := o.session(t, testLocalIndex, false, time.Now(), 0x10)
	o.p.keys.current.Store(s)
	o.p.path.on.Store(onWS)
	ping := wire.AppendControl(nil, wire.CtlPing, make([]byte, wire.PingBodyLen))
	o.receive(sealed(peer, 0, 0, string(ping)))
	if o.p.path.on.Load() != onWS {
		t.Fatal("a probe over UDP moved the peer's traffic off WebSocket")
	}
	if len(o.bind.ofType(wire.TypeData)) == 0 {
		t.Fatal("the probe was not answered")
	}
	o.receive(sealed(peer, 1, 1, "data over UDP"))
	if o.p.path.on.Load() == onWS {
		t.Fatal("data over UDP did not move the traffic back (the test's premise)")
	}
}

// TestNewKeyRestartsTimestampSequence: replay protection of HELLO timestamps is per
// static key: a peer that comes back with a new key (not pinned) is accepted even if
// its clock is behind the timestamps of its old key.
func TestNewKeyRestartsTimestampSequence(t *testing.T) {
	o := newOffline(t, Limits{})
	var last [12]byte
	last[0] = 0x40
	last[7] = 0x10
	o.p.mu.Lock()
	o.p.handshake.static, o.p.handshake.staticKnown, o.p.handshake.lastTimestamp = fixedKey(0x77), true, last
	o.p.mu.Unlock()
	older := last
	older[7]--
	o.p.completeResponder(handshake.Result{
		LocalIndex: o.n.index.reserve(), RemoteIndex: testRemoteIndex, SendKey: fixedKey(3), RecvKey: fixedKey(4),
		Cipher: wire.CipherChaCha20Poly1305, PeerStatic: fixedKey(0x78), PeerName: "peer", Timestamp: older,
	}, o.ep)
	if o.p.keys.current.Load() == nil {
		t.Fatalf("a new key was refused for a timestamp older than the old key's (%d stale_timestamp drops)", o.drops(DropStaleTimestamp))
	}
}

// countingHandler counts deliveries; safe for concurrent receivers.
type countingHandler struct{ n atomic.Int64 }

func (h *countingHandler) Deliver(in *Inbound) { h.n.Add(int64(in.N)) }

// TestConcurrentReceiversDeliverEachCounterOnce: two receive goroutines given the
// same frames of one session (a duplicating network, two sockets) deliver each
// counter once between them: the replay filter is checked and updated under the
// session's lock.
func TestConcurrentReceiversDeliverEachCounterOnce(t *testing.T) {
	o := newOffline(t, Limits{})
	h := &countingHandler{}
	o.n.cfg.Handler = h
	s, peer := o.session(t, testLocalIndex, false, time.Now(), 0x10)
	o.p.keys.current.Store(s)
	const total, batch = 400, 8
	frames := make([][]byte, total)
	for i := range frames {
		frames[i] = sealed(peer, 3, uint64(i), "dup")
	}
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < total; i += batch {
				o.receive(frames[i : i+batch]...)
			}
		}()
	}
	wg.Wait()
	if got := h.n.Load(); got != total {
		t.Fatalf("%d datagrams delivered from %d distinct counters sent twice", got, total)
	}
	if got := o.drops(DropReplay); got != total {
		t.Fatalf("%d replay drops, want %d", got, total)
	}
}

// TestUnknownPeerNameReleasesIndex: an AUTH_PROOF from a member whose name is not a
// configured peer is refused and gives back the index its handshake reserved.
func TestUnknownPeerNameReleasesIndex(t *testing.T) {
	o := newOffline(t, Limits{})
	o.n.completeResponder(handshake.Result{
		LocalIndex: o.n.index.reserve(), RemoteIndex: testRemoteIndex, SendKey: fixedKey(3), RecvKey: fixedKey(4),
		Cipher: wire.CipherChaCha20Poly1305, PeerStatic: fixedKey(5), PeerName: "stranger", Timestamp: [12]byte{0x40},
	}, o.ep)
	if got := o.drops(DropUnknownPeer); got != 1 {
		t.Fatalf("%d unknown_peer drops, want 1", got)
	}
	if sessions, pending := o.n.index.counts(); sessions != 0 || pending != 0 {
		t.Fatalf("%d sessions, %d reserved indices; want 0 and 0", sessions, pending)
	}
}

// TestRetransmissionsHoldOneIndex: each retransmission of a HELLO is a new initiation
// with a new index; the one it replaces gives its index back and is no longer found
// for CHALLENGEs, so a peer that never answers holds one index, not one per retry.
func TestRetransmissionsHoldOneIndex(t *testing.T) {
	o := newOffline(t, Limits{})
	o.p.mu.Lock()
	for range 5 {
		o.p.startHandshakeLocked(time.Now())
	}
	o.p.mu.Unlock()
	if _, pending := o.n.index.counts(); pending != 1 {
		t.Fatalf("%d reserved indices after 5 attempts, want 1", pending)
	}
	if inits := o.initiations(); inits != 1 {
		t.Fatalf("%d initiations findable, want 1", inits)
	}
}

// TestConfirmedSessionForgetsItsInitiation: once the session an AUTH_PROOF made is
// confirmed, its initiation is no longer findable (for COOKIE_REPLYs), so the table of
// initiations does not grow with every handshake.
func TestConfirmedSessionForgetsItsInitiation(t *testing.T) {
	o := newOffline(t, Limits{})
	resp := peerResponder(t)
	o.p.mu.Lock()
	o.p.startHandshakeLocked(time.Now())
	in := o.p.handshake.init
	o.p.mu.Unlock()
	chal, err := resp.HandleHello(o.bind.ofType(wire.TypeHello)[0], addrPortOf(o.ep), nil)
	if err != nil {
		t.Fatal(err)
	}
	o.p.consumeChallenge(in, chal, o.ep)
	s := o.p.keys.current.Load()
	if s == nil {
		t.Fatal("no session from the CHALLENGE")
	}
	s.confirmed.Store(true)
	o.p.tick(time.Now())
	if inits := o.initiations(); inits != 0 {
		t.Fatalf("%d initiations still findable after the session was confirmed", inits)
	}
}

// TestQueuedDatagramsAreCopies: datagrams queued while a handshake runs are copied:
// the caller may reuse its buffers as soon as Send returns.
func TestQueuedDatagramsAreCopies(t *testing.T) {
	o := newOffline(t, Limits{})
	buf := datagram([]byte("queued payload"))
	if err := o.p.Send([][]byte{buf}, []uint16{0}); err != nil {
		t.Fatal(err)
	}
	copy(buf[wire.HeaderLen:], "overwritten!!!")
	o.p.mu.Lock()
	defer o.p.mu.Unlock()
	if len(o.p.queue) != 1 || string(o.p.queue[0][wire.HeaderLen:]) != "queued payload" {
		t.Fatalf("queue holds %q, want the payload as it was sent", o.p.queue)
	}
}

// TestPeerCloseRemovesSessionFromIndex: a CLOSE under the current session takes it
// off the receive path too: later frames under it are for no session.
func TestPeerCloseRemovesSessionFromIndex(t *testing.T) {
	o := newOffline(t, Limits{})
	s, peer := o.session(t, testLocalIndex, false, time.Now(), 0x10)
	o.p.keys.current.Store(s)
	o.receive(sealed(peer, 0, 0, string(wire.AppendControl(nil, wire.CtlClose, []byte{wire.CodeShutdown, 0}))))
	if o.p.keys.current.Load() != nil {
		t.Fatal("the session the peer closed is still current")
	}
	o.receive(sealed(peer, 3, 1, "after close"))
	if got := o.delivered(); len(got) != 0 {
		t.Fatalf("delivered %q under a closed session", got)
	}
	if got := o.drops(DropUnknownIndex); got != 1 {
		t.Fatalf("%d unknown_index drops, want 1", got)
	}
}

// TestFollowerMovesOnlyOnLaterFrames: the node that follows its peer's path moves only
// on a frame the peer sealed after the frame of the last move (a later counter of the
// same session, or a later session); a frame sealed before it, however late it
// arrives over the other transport, moves nothing.
func TestFollowerMovesOnlyOnLaterFrames(t *testing.T) {
	o := newOffline(t, Limits{})
	old, _ := o.session(t, testLocalIndex, false, time.Now(), 0x10)
	s, _ := o.session(t, testLocalIndex+1, false, time.Now(), 0x20) // a later session: larger gen
	steps := []struct {
		name  string
		ws    bool
		s     *session
		ctr   uint64
		onWS  bool // where the traffic is after the frame
		moved bool
	}{
		{"frame 10 over WebSocket", true, s, 10, true, false},
		{"late frame 5 over UDP", false, s, 5, true, false},
		{"late frame of the older session over UDP", false, old, 100, true, false},
		{"frame 20 over UDP", false, s, 20, false, true},
		{"late frame 15 over WebSocket", true, s, 15, false, false},
		{"frame 21 over WebSocket", true, s, 21, true, false},
	}
	for _, st := range steps {
		via := onUDP
		if st.ws {
			via = onWS
		}
		moved := o.p.follow(via, st.s, st.ctr)
		if (o.p.path.on.Load() == onWS) != st.onWS || moved != st.moved {
			t.Fatalf("%s: on WebSocket %v, moved to UDP %v; want %v and %v", st.name, o.p.path.on.Load() == onWS, moved, st.onWS, st.moved)
		}
	}
}
