package stt

import (
	"bytes"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/blake2s"

	"github.com/stt-tun/stt-tun/stt/handshake"
	"github.com/stt-tun/stt-tun/stt/wire"
)

// fakeResponder plays the responder's side of the handshake by hand on a UDP socket,
// so that a test decides what the initiator's new session receives after AUTH_PROOF.
type fakeResponder struct {
	c  *net.UDPConn
	hs *handshake.Engine
}

func newFakeResponder(t *testing.T, seed [32]byte, name string) *fakeResponder {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	hs, err := handshake.New(handshake.Config{Seed: seed, Static: randKey(t), Name: name})
	if err != nil {
		t.Fatal(err)
	}
	return &fakeResponder{c: c, hs: hs}
}

func (f *fakeResponder) addr() string { return f.c.LocalAddr().String() }

// read returns the next message of type typ, skipping others.
func (f *fakeResponder) read(t *testing.T, typ byte) ([]byte, netip.AddrPort) {
	t.Helper()
	buf := make([]byte, 2048)
	_ = f.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		n, from, err := f.c.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("waiting for message type %d: %v", typ, err)
		}
		if n > 0 && buf[0] == typ {
			return append([]byte(nil), buf[:n]...), from
		}
	}
}

func (f *fakeResponder) send(t *testing.T, msg []byte, to netip.AddrPort) {
	t.Helper()
	if _, err := f.c.WriteToUDPAddrPort(msg, to); err != nil {
		t.Fatal(err)
	}
}

// handshake answers the initiator's HELLO and verifies its AUTH_PROOF, and returns the
// responder's Result, the AUTH_PROOF and where it came from. It sends no FINAL.
func (f *fakeResponder) handshake(t *testing.T) (handshake.Result, []byte, netip.AddrPort) {
	t.Helper()
	hello, from := f.read(t, wire.TypeHello)
	chal, err := f.hs.HandleHello(hello, from, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.send(t, chal, from)
	auth, from := f.read(t, wire.TypeAuthProof)
	res, reply, err := f.hs.HandleAuthProof(auth, from, nil)
	if err != nil || reply != nil {
		t.Fatalf("AUTH_PROOF: %v", err)
	}
	return res, auth, from
}

// sealControl seals a stream-0 payload as the responder of res would, with sendKey.
func sealControl(t *testing.T, res handshake.Result, sendKey [32]byte, ctr uint64, payload []byte) []byte {
	t.Helper()
	s, err := newSession(nil, res.LocalIndex, res.RemoteIndex, false, res.Cipher, &sendKey, &res.RecvKey, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	frame := make([]byte, wire.HeaderLen, wire.HeaderLen+len(payload)+wire.TagLen)
	frame = append(frame, payload...)
	return s.seal(frame, wire.ControlStream, ctr, new([12]byte))
}

// slowRetry keeps the initiator from redoing an unconfirmed handshake during a test
// that holds its session unconfirmed on purpose.
var slowRetry = Limits{HandshakeRetry: 10 * time.Second, HandshakeRetryMax: 10 * time.Second}

// TestSessionUpOnlyAfterPeerConfirms: an initiator that has sent AUTH_PROOF has a
// session, but the peer has not confirmed it: it is not up, no handshake counts as
// completed and last_handshake does not move, until the responder's FINAL arrives.
func TestSessionUpOnlyAfterPeerConfirms(t *testing.T) {
	seed := randKey(t)
	a := startNode(t, nodeOpts{seed: seed, name: "a", timers: slowRetry})
	f := newFakeResponder(t, seed, "b")
	pb, err := a.AddPeer(PeerConfig{Name: "b", Endpoint: f.addr()})
	if err != nil {
		t.Fatal(err)
	}
	sendOne(t, pb, 0, []byte("x"))
	res, _, from := f.handshake(t)
	waitFor(t, 5*time.Second, "a's unconfirmed session", func() bool { return pb.keys.current.Load() != nil })
	if pb.HasSession() || !pb.LastHandshake().IsZero() || a.Stats().HandshakesDone != 0 {
		t.Fatalf("before FINAL: session up %v, last handshake %v, %d completed; want down, never, 0",
			pb.HasSession(), pb.LastHandshake(), a.Stats().HandshakesDone)
	}
	f.send(t, sealControl(t, res, res.SendKey, 0, wire.AppendControl(nil, wire.CtlFinal, nil)), from)
	waitFor(t, 5*time.Second, "the session confirmed by FINAL", pb.HasSession)
	if pb.LastHandshake().IsZero() || a.Stats().HandshakesDone != 1 {
		t.Fatalf("after FINAL: last handshake %v, %d completed; want set, 1", pb.LastHandshake(), a.Stats().HandshakesDone)
	}
}

// TestForgedRefusalChangesNothing: a refusal the initiator cannot authenticate under the
// handshake's keys (sealed with another key, or with the initiator's own direction key)
// is dropped as a failed frame and changes nothing; the genuine one then refuses.
func TestForgedRefusalChangesNothing(t *testing.T) {
	seed := randKey(t)
	a := startNode(t, nodeOpts{seed: seed, name: "a", timers: slowRetry})
	f := newFakeResponder(t, seed, "b")
	pb, _ := a.AddPeer(PeerConfig{Name: "b", Endpoint: f.addr()})
	sendOne(t, pb, 0, []byte("x"))
	res, _, from := f.handshake(t)
	waitFor(t, 5*time.Second, "a's unconfirmed session", func() bool { return pb.keys.current.Load() != nil })
	s := pb.keys.current.Load()

	refusal := wire.AppendRefusal(nil, wire.CodeNotPeer)
	forged := [][]byte{
		sealControl(t, res, randKey(t), 0, refusal),                          // someone without the keys
		sealControl(t, res, res.RecvKey, 0, refusal),                         // reflected: a's own direction
		sealControl(t, res, randKey(t), 1, refusal),                          // another counter, no better
		append([]byte(nil), sealControl(t, res, res.SendKey, 0, refusal)...), // tampered below
	}
	forged[3][len(forged[3])-1] ^= 1
	for _, m := range forged {
		f.send(t, m, from)
	}
	waitFor(t, 5*time.Second, "the forged refusals dropped", func() bool { return a.Stats().Drops[DropAuth] == uint64(len(forged)) })
	if _, refused := pb.Refusal(); refused || pb.keys.current.Load() != s || s.confirmed.Load() {
		t.Fatal("a refusal that does not authenticate changed the peer's state")
	}

	// The genuine refusal, sealed by the responder that verified the AUTH_PROOF.
	frame, err := handshake.SealRefusal(nil, res, wire.CodeNotPeer)
	if err != nil {
		t.Fatal(err)
	}
	f.send(t, frame, from)
	waitFor(t, 5*time.Second, "the refusal", func() bool { _, ok := pb.Refusal(); return ok })
	if pb.keys.current.Load() != nil || pb.HasSession() || a.Stats().HandshakesDone != 0 {
		t.Fatal("the refused session is still there, or counted as completed")
	}
	// A refusal confirms nothing: it must not have marked the session as confirmed.
	if s.confirmed.Load() {
		t.Fatal("the refusal confirmed the session it refused")
	}
}

// refusedPair starts a, which has b as a peer, and b, which refuses a: it has no
// [[peer]] for a (pin = false) or pins another key for it (pin = true).
func refusedPair(t *testing.T, pin bool, timers Limits, logs *lockedBuffer) (a, b *testNode) {
	t.Helper()
	seed := randKey(t)
	var logger *slog.Logger
	if logs != nil {
		logger = slog.New(slog.NewTextHandler(logs, nil))
	}
	a = startNode(t, nodeOpts{seed: seed, name: "a", timers: timers, logger: logger})
	b = startNode(t, nodeOpts{seed: seed, name: "b", timers: timers})
	if pin {
		wrong := handshake.PublicKey(randKey(t))
		if _, err := b.AddPeer(PeerConfig{Name: "a", PublicKey: &wrong}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.AddPeer(PeerConfig{Name: "b", Endpoint: loopback(b.Node)}); err != nil {
		t.Fatal(err)
	}
	return a, b
}

// TestRefusedInitiatorShowsWhy: for both refusals (no [[peer]] for us; a pinned key that
// is not ours) the initiator shows the peer as refused with the reason, not as up; no
// handshake counts as completed; the responder counts the refusal under its reason and
// answers the AUTH_PROOF with exactly one frame smaller than it; one info line is logged
// however many refusals follow; datagrams sent meanwhile are counted as refused.
func TestRefusedInitiatorShowsWhy(t *testing.T) {
	for _, tc := range []struct {
		pin        bool
		name, drop string
		reason     DropReason
	}{
		{false, "unknown_peer", "not a configured peer", DropUnknownPeer},
		{true, "pin_mismatch", "our key is not the public_key it pins for us", DropPinMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs := &lockedBuffer{}
			// A short back-off, so that the test sees a second refusal.
			timers := Limits{HandshakeRetry: 100 * time.Millisecond, Tick: 10 * time.Millisecond}
			a, b := refusedPair(t, tc.pin, timers, logs)
			pb := a.Peer("b")
			sendOne(t, pb, 0, []byte("x"))
			waitFor(t, 5*time.Second, "the refusal", func() bool { _, ok := pb.Refusal(); return ok })
			r, _ := pb.Refusal()
			if r.Name != tc.name || r.Reason != tc.drop {
				t.Fatalf("refusal %+v, want %s (%s)", r, tc.name, tc.drop)
			}
			if pb.HasSession() || !pb.LastHandshake().IsZero() || a.Stats().HandshakesDone != 0 {
				t.Fatalf("refused peer: session up %v, last handshake %v, %d completed",
					pb.HasSession(), pb.LastHandshake(), a.Stats().HandshakesDone)
			}
			if b.Stats().Drops[tc.reason] == 0 {
				t.Fatalf("responder did not count the refusal under %s", tc.reason)
			}
			// Sent during the back-off: counted, not queued for a handshake that would
			// be refused again.
			sendOne(t, pb, 0, []byte("y"))
			if got := a.Stats().Drops[DropRefused]; got == 0 {
				t.Fatal("a datagram for a refusing peer was not counted as refused")
			}
			// The back-off ends, the datagram asks for a new handshake, and it is refused
			// again: still one log line.
			waitFor(t, 5*time.Second, "a second refusal", func() bool {
				pb.mu.Lock()
				defer pb.mu.Unlock()
				return pb.refused.count >= 2
			})
			if n := strings.Count(string(logs.bytes()), "peer refused our handshake"); n != 1 {
				t.Fatalf("%d info lines for repeated refusals of the same kind, want 1:\n%s", n, logs.bytes())
			}
			data := b.bind.ofType(wire.TypeData)
			if len(data) == 0 {
				t.Fatal("the responder sent no refusal")
			}
			auths := len(a.bind.ofType(wire.TypeAuthProof))
			if len(data) > auths {
				t.Fatalf("the responder sent %d frames for %d AUTH_PROOFs", len(data), auths)
			}
			for _, d := range data {
				if len(d) >= wire.AuthProofLen {
					t.Fatalf("refusal of %d bytes is not smaller than the AUTH_PROOF", len(d))
				}
			}
		})
	}
}

// TestRefusedInitiatorBacksOff: a refused initiator with traffic waits out a back-off
// (HandshakeRetry doubling per refusal) instead of starting a handshake for every
// datagram that finds no session.
func TestRefusedInitiatorBacksOff(t *testing.T) {
	timers := Limits{HandshakeRetry: 200 * time.Millisecond, Tick: 5 * time.Millisecond, RekeyAfterTime: time.Hour}
	a, _ := refusedPair(t, false, timers, nil)
	pb := a.Peer("b")
	sendOne(t, pb, 0, []byte("x"))
	waitFor(t, 5*time.Second, "the refusal", func() bool { _, ok := pb.Refusal(); return ok })
	start := time.Now()
	first, _ := pb.Refusal()
	if d := first.RetryAt.Sub(first.Since); d < 200*time.Millisecond-time.Millisecond {
		t.Fatalf("first back-off %v, want HandshakeRetry (200ms)", d)
	}
	proofs := len(a.bind.ofType(wire.TypeAuthProof))
	// Keep traffic coming for a second: the node wants a handshake all along.
	for time.Since(start) < time.Second {
		sendOne(t, pb, 0, []byte("y"))
		time.Sleep(10 * time.Millisecond)
	}
	// Handshakes (one AUTH_PROOF each; HELLOs may be retransmitted) at about 0.2 and
	// 0.6 s after the first refusal: at most 3 in that second, allowing for slack;
	// without the back-off there would be one per datagram sent.
	if n := len(a.bind.ofType(wire.TypeAuthProof)) - proofs; n > 3 {
		t.Fatalf("%d handshakes in about a second of refusals; the back-off did not hold", n)
	}
	pb.mu.Lock()
	n, until := pb.refused.count, pb.refused.until
	pb.mu.Unlock()
	if n < 2 {
		t.Fatalf("%d refusals in a second with a 200 ms back-off: it never tried again", n)
	}
	td := timers.withDefaults()
	if got, want := td.refusalBackoff(n), 200*time.Millisecond<<(n-1); got != want || until.IsZero() {
		t.Fatalf("back-off after %d refusals %v, want %v", n, got, want)
	}
}

// TestRefusalClearsWhenAccepted: once the responder's operator adds the peer, the next
// handshake after the back-off succeeds, the refusal is gone and one line says so.
func TestRefusalClearsWhenAccepted(t *testing.T) {
	logs := &lockedBuffer{}
	timers := Limits{HandshakeRetry: 100 * time.Millisecond, Tick: 10 * time.Millisecond}
	a, b := refusedPair(t, false, timers, logs)
	pb := a.Peer("b")
	sendOne(t, pb, 0, []byte("x"))
	waitFor(t, 5*time.Second, "the refusal", func() bool { _, ok := pb.Refusal(); return ok })
	if _, err := b.AddPeer(PeerConfig{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "a session once accepted", func() bool {
		sendOne(t, pb, 0, []byte("z"))
		return pb.HasSession()
	})
	if _, refused := pb.Refusal(); refused {
		t.Fatal("the refusal is still shown with a confirmed session")
	}
	if !bytes.Contains(logs.bytes(), []byte("peer accepts our handshake again")) {
		t.Fatalf("no line says the refusal ended:\n%s", logs.bytes())
	}
}

// TestUnverifiedAuthProofGetsNoRefusal: only an AUTH_PROOF that verifies earns a
// refusal. One altered after its mac1 was made (a sender with the seed but not the
// handshake's keys) is dropped with no answer at all.
func TestUnverifiedAuthProofGetsNoRefusal(t *testing.T) {
	seed := randKey(t)
	b := startNode(t, nodeOpts{seed: seed, name: "b"}) // no peers: it would refuse anyone
	ini, err := handshake.New(handshake.Config{Seed: seed, Static: randKey(t), Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	to := netip.MustParseAddrPort(loopback(b.Node))
	in, hello, err := ini.Initiate(7, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.WriteToUDPAddrPort(hello, to)
	buf := make([]byte, 2048)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.ReadChallenge(buf[:n]); err != nil {
		t.Fatal(err)
	}
	auth, _, err := in.WriteAuthProof(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Flip a bit of the encrypted name and make mac1 right again: it passes mac1 and
	// fails Noise.
	auth[wire.AuthMAC1Off-1] ^= 1
	keys := handshake.DeriveSeedKeys(seed)
	h, _ := blake2s.New128(keys.MAC1[:])
	h.Write(auth[:wire.AuthMAC1Off])
	copy(auth[wire.AuthMAC1Off:], h.Sum(nil))
	_, _ = c.WriteToUDPAddrPort(auth, to)
	waitFor(t, 5*time.Second, "the altered AUTH_PROOF dropped", func() bool { return b.Stats().Drops[DropHandshake] == 1 })
	if b.Stats().Drops[DropUnknownPeer] != 0 || len(b.bind.ofType(wire.TypeData)) != 0 {
		t.Fatal("an AUTH_PROOF that did not verify was answered")
	}
	_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, _, err := c.ReadFromUDPAddrPort(buf); err == nil {
		t.Fatalf("got %d bytes back for an AUTH_PROOF that did not verify", n)
	}
}

func (l *lockedBuffer) bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]byte(nil), l.b...)
}
