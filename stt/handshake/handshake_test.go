package handshake

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/stt/wire"
)

func TestFullHandshakeBothSidesAgree(t *testing.T) {
	o := defaultOpts()
	ini, resp := newPair(t, o)
	ri, rr := handshake(t, ini, resp, 77)
	if ri.SendKey != rr.RecvKey || ri.RecvKey != rr.SendKey {
		t.Fatal("keys differ between the sides")
	}
	if ri.SendKey == ri.RecvKey {
		t.Fatal("both directions use the same key")
	}
	if ri.LocalIndex != 77 || rr.RemoteIndex != 77 || ri.RemoteIndex != rr.LocalIndex || rr.LocalIndex == 0 {
		t.Fatalf("indices: initiator %d/%d responder %d/%d", ri.LocalIndex, ri.RemoteIndex, rr.LocalIndex, rr.RemoteIndex)
	}
	if ri.PeerStatic != resp.PublicKey() || rr.PeerStatic != ini.PublicKey() {
		t.Fatal("static keys not learnt")
	}
	if ri.PeerName != "bob" || rr.PeerName != "alice" {
		t.Fatalf("names %q %q", ri.PeerName, rr.PeerName)
	}
	if !ri.Initiator || rr.Initiator {
		t.Fatal("roles")
	}
	if ri.Timestamp != rr.Timestamp || ri.Timestamp == ([12]byte{}) {
		t.Fatal("responder did not get the initiator's timestamp")
	}
	if ri.Cipher != wire.CipherChaCha20Poly1305 || rr.Cipher != ri.Cipher {
		t.Fatalf("cipher %v/%v", ri.Cipher, rr.Cipher)
	}
	if resp.HalfOpen() != 0 {
		t.Fatal("completed handshake left in the half-open table")
	}
	if got := o.alloc.releasedList(); len(got) != 0 {
		t.Fatalf("session index released: %v", got)
	}
}

func TestWrongSeedCostsNoDH(t *testing.T) {
	o := defaultOpts()
	o.initSeed = seedB
	ini, resp := newPair(t, o)
	_, hello, err := ini.Initiate(1, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	before := resp.DHCount()
	reply, err := resp.HandleHello(hello, srcAlice, nil)
	if !errors.Is(err, ErrBadMAC1) || reply != nil {
		t.Fatalf("got %v, %d bytes", err, len(reply))
	}
	// An AUTH_PROOF-shaped message from a non-member is refused the same way.
	auth := make([]byte, wire.AuthProofLen)
	auth[0], auth[1] = wire.TypeAuthProof, wire.Version
	if _, _, err := resp.HandleAuthProof(auth, srcAlice, nil); !errors.Is(err, ErrBadMAC1) {
		t.Fatalf("AUTH_PROOF: %v", err)
	}
	if resp.DHCount() != before {
		t.Fatalf("non-member cost %d X25519 operations", resp.DHCount()-before)
	}
	if resp.HalfOpen() != 0 {
		t.Fatal("non-member got a half-open entry")
	}
}

func TestWrongSeedResponderRejectedByInitiator(t *testing.T) {
	o := defaultOpts()
	_, good := newPair(t, o)
	o.respSeed = seedB
	ini, bad := newPair(t, o)
	in, hello, _ := ini.Initiate(5, nil, nil)
	// The bad responder cannot even accept the HELLO; fabricate its answer by having a
	// member answer and re-MACing with the wrong seed's key.
	chal, err := good.HandleHello(hello, srcAlice, nil)
	if err != nil {
		t.Fatal(err)
	}
	fixMAC1(bad, chal)
	if _, err := in.ReadChallenge(chal); !errors.Is(err, ErrBadMAC1) {
		t.Fatalf("got %v", err)
	}
}

func TestReplayedHelloRefusedWithoutDH(t *testing.T) {
	ini, resp := newPair(t, defaultOpts())
	_, hello, _ := ini.Initiate(9, nil, nil)
	if _, err := resp.HandleHello(hello, srcAlice, nil); err != nil {
		t.Fatal(err)
	}
	before := resp.DHCount()
	for _, src := range []netip.AddrPort{srcAlice, srcBob} {
		reply, err := resp.HandleHello(hello, src, nil)
		if !errors.Is(err, ErrReplay) || reply != nil {
			t.Fatalf("replay from %v: %v", src, err)
		}
	}
	if resp.DHCount() != before {
		t.Fatal("replayed HELLO cost X25519 work")
	}
	if resp.HalfOpen() != 1 {
		t.Fatalf("half-open %d", resp.HalfOpen())
	}
}

func TestReplayCacheBounded(t *testing.T) {
	c := replayCache{window: ReplayWindow}
	c.init()
	now := time.Unix(1000, 0)
	var k [32]byte
	for i := range ReplayCacheSize + 10 {
		binary.LittleEndian.PutUint32(k[:], uint32(i))
		if !c.insert(k, now) {
			t.Fatal("fresh key reported as seen")
		}
	}
	if len(c.seen) != ReplayCacheSize || c.order.Len() != ReplayCacheSize {
		t.Fatalf("cache holds %d/%d", len(c.seen), c.order.Len())
	}
	binary.LittleEndian.PutUint32(k[:], 0)
	if c.contains(k, now) {
		t.Fatal("oldest entry not evicted")
	}
	binary.LittleEndian.PutUint32(k[:], ReplayCacheSize+9)
	if !c.contains(k, now) || c.insert(k, now) {
		t.Fatal("newest entry missing")
	}
	if !c.contains(k, now.Add(ReplayWindow-time.Second)) {
		t.Fatal("entry forgotten inside the window")
	}
	if c.contains(k, now.Add(ReplayWindow)) || len(c.seen) != 0 {
		t.Fatal("entries outlive the window")
	}
}

func TestTwoHandshakesHaveUnrelatedKeys(t *testing.T) {
	ini, resp := newPair(t, defaultOpts())
	a, ar := handshake(t, ini, resp, 1)
	b, br := handshake(t, ini, resp, 2)
	keys := [][32]byte{a.SendKey, a.RecvKey, b.SendKey, b.RecvKey}
	for i := range keys {
		for j := i + 1; j < len(keys); j++ {
			if keys[i] == keys[j] {
				t.Fatalf("key %d equals key %d", i, j)
			}
		}
	}
	if ar.LocalIndex == br.LocalIndex {
		t.Fatal("responder reused an index")
	}
	if CompareTimestamp(b.Timestamp, a.Timestamp) <= 0 {
		t.Fatal("second HELLO's timestamp is not greater")
	}
}

func TestCipherNegotiation(t *testing.T) {
	const aes = wire.CapHardwareAES
	for _, c := range []struct {
		ic, rc uint32
		want   wire.CipherID
	}{
		{0, 0, wire.CipherChaCha20Poly1305},
		{aes, 0, wire.CipherChaCha20Poly1305},
		{0, aes, wire.CipherChaCha20Poly1305},
		{aes, aes, wire.CipherAES256GCM},
		{aes | 0x80, aes | 0x100, wire.CipherAES256GCM}, // unknown bits are ignored
	} {
		o := defaultOpts()
		o.initCaps, o.respCaps = c.ic, c.rc
		ini, resp := newPair(t, o)
		ri, rr := handshake(t, ini, resp, 3)
		if ri.Cipher != c.want || rr.Cipher != c.want {
			t.Errorf("caps %#x/%#x: got %v/%v want %v", c.ic, c.rc, ri.Cipher, rr.Cipher, c.want)
		}
	}
}

// forgeChallenge answers hello as a responder holding the seed but choosing its own
// payload (caps, cipher, name), to test the initiator's checks on an authentic message.
func forgeChallenge(t *testing.T, resp *Engine, hello []byte, caps uint32, cipher wire.CipherID, name string) []byte {
	t.Helper()
	hs, err := resp.noiseState(false, resp.seedFor(0))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := hs.ReadMessage(nil, hello[wire.HelloNoiseOff:wire.HelloMAC1Off]); err != nil {
		t.Fatal(err)
	}
	var pl [challengePlainLen]byte
	binary.LittleEndian.PutUint32(pl[:], caps)
	pl[4] = byte(cipher)
	copy(pl[8:], name)
	out := appendHeader(nil, wire.TypeChallenge, 0xabcd, binary.LittleEndian.Uint32(hello[wire.HelloSenderOff:]))
	out, _, _, err = hs.WriteMessage(out, pl[:])
	if err != nil {
		t.Fatal(err)
	}
	return finishMACs(resp.seedFor(0), out, 0, nil)
}

func TestInitiatorRejectsCipherChoiceItDidNotOffer(t *testing.T) {
	const aes = wire.CapHardwareAES
	for _, c := range []struct {
		name           string
		ic, rc         uint32
		chosen         wire.CipherID
		wantDowngrade  bool
		wantMalformed  bool
		wantAcceptedAs wire.CipherID
	}{
		{"upgrade to AES not offered", 0, aes, wire.CipherAES256GCM, true, false, 0},
		{"AES claimed without responder cap", aes, 0, wire.CipherAES256GCM, true, false, 0},
		{"downgrade to ChaCha", aes, aes, wire.CipherChaCha20Poly1305, true, false, 0},
		{"unknown cipher", aes, aes, 7, true, false, 0},
		{"honest AES", aes, aes, wire.CipherAES256GCM, false, false, wire.CipherAES256GCM},
		{"honest ChaCha", 0, aes, wire.CipherChaCha20Poly1305, false, false, wire.CipherChaCha20Poly1305},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := defaultOpts()
			o.initCaps = c.ic
			ini, resp := newPair(t, o)
			in, hello, _ := ini.Initiate(4, nil, nil)
			chal := forgeChallenge(t, resp, hello, c.rc, c.chosen, "bob")
			info, err := in.ReadChallenge(chal)
			if c.wantDowngrade {
				if !errors.Is(err, ErrCipherDowngrade) {
					t.Fatalf("got %v", err)
				}
				if _, _, err := in.WriteAuthProof(nil, nil); !errors.Is(err, ErrState) {
					t.Fatalf("initiation continued after refusal: %v", err)
				}
				return
			}
			if err != nil || info.Cipher != c.wantAcceptedAs {
				t.Fatalf("got %v, %v", info.Cipher, err)
			}
		})
	}
}

func TestInitiatorRejectsBadPeerName(t *testing.T) {
	for _, name := range []string{"", "a\x00b", "\xff\xfe"} {
		ini, resp := newPair(t, defaultOpts())
		in, hello, _ := ini.Initiate(4, nil, nil)
		chal := forgeChallenge(t, resp, hello, 0, wire.CipherChaCha20Poly1305, name)
		if _, err := in.ReadChallenge(chal); !errors.Is(err, ErrMalformed) {
			t.Fatalf("name %q: %v", name, err)
		}
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	for _, c := range []Config{
		{Static: key(1), Name: ""},
		{Static: key(1), Name: "this-name-is-longer-than-32-bytes!"},
		{Static: key(1), Name: "nul\x00"},
		{Static: key(1), Name: "\xff"},
		{Name: "zero-static"},
	} {
		if _, err := New(c); !errors.Is(err, ErrConfig) {
			t.Errorf("%q: %v", c.Name, err)
		}
	}
}

// Every byte of every message is protected: a non-member's change fails mac1, and a seed
// holder who recomputes mac1 still fails Noise authentication on the encrypted parts.
func TestTamperedHelloRejected(t *testing.T) {
	ini, resp := newPair(t, defaultOpts())
	_, hello, _ := ini.Initiate(11, nil, nil)
	for i := range wire.HelloMAC2Off { // mac2 is only checked under load: see the cookie test
		m := slices.Clone(hello)
		m[i] ^= 0x01
		if reply, err := resp.HandleHello(m, srcAlice, nil); err == nil || reply != nil {
			t.Fatalf("byte %d: accepted", i)
		}
	}
	for i := wire.HelloNoiseOff; i < wire.HelloMAC1Off; i++ {
		_, r := newPair(t, defaultOpts())
		m := slices.Clone(hello)
		m[i] ^= 0x80
		fixMAC1(r, m)
		if _, err := r.HandleHello(m, srcAlice, nil); !errors.Is(err, ErrDecrypt) {
			t.Fatalf("member-tampered byte %d: %v", i, err)
		}
	}
	if _, err := resp.HandleHello(hello, srcAlice, nil); err != nil {
		t.Fatalf("original refused after tampered copies: %v", err)
	}
}

func TestTamperedChallengeRejected(t *testing.T) {
	ini, resp := newPair(t, defaultOpts())
	in, hello, _ := ini.Initiate(12, nil, nil)
	chal, err := resp.HandleHello(hello, srcAlice, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range chal {
		m := slices.Clone(chal)
		m[i] ^= 0x01
		if _, err := in.ReadChallenge(m); err == nil {
			t.Fatalf("byte %d: accepted", i)
		}
	}
	if _, err := in.ReadChallenge(chal); err != nil {
		t.Fatalf("original refused after tampered copies: %v", err)
	}
	// A seed holder re-MACing a changed Noise byte still fails authentication.
	for i := wire.ChallengeNoiseOff; i < wire.ChallengeMAC1Off; i++ {
		in2, hello2, _ := ini.Initiate(13, nil, nil)
		// One source each: a source may hold only MaxHalfOpenPerSource handshakes.
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)}), 1)
		chal2, err := resp.HandleHello(hello2, src, nil)
		if err != nil {
			t.Fatal(err)
		}
		chal2[i] ^= 0x80
		fixMAC1(resp, chal2)
		if _, err := in2.ReadChallenge(chal2); !errors.Is(err, ErrDecrypt) && !errors.Is(err, ErrBadKey) {
			t.Fatalf("member-tampered byte %d: %v", i, err)
		}
	}
}

func TestTamperedAuthProofRejected(t *testing.T) {
	ini, resp := newPair(t, defaultOpts())
	for i := range wire.AuthMAC2Off {
		for _, member := range []bool{false, true} {
			if member && (i < wire.AuthNoiseOff || i >= wire.AuthMAC1Off) {
				continue
			}
			in, hello, _ := ini.Initiate(14, nil, nil)
			chal, err := resp.HandleHello(hello, srcAlice, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := in.ReadChallenge(chal); err != nil {
				t.Fatal(err)
			}
			auth, _, _ := in.WriteAuthProof(nil, nil)
			m := slices.Clone(auth)
			m[i] ^= 0x01
			if member {
				fixMAC1(resp, m)
			}
			res, reply, err := resp.HandleAuthProof(m, srcAlice, nil)
			if err == nil || reply != nil || res.LocalIndex != 0 {
				t.Fatalf("byte %d (member %v): accepted", i, member)
			}
			if member && !errors.Is(err, ErrDecrypt) {
				t.Fatalf("byte %d: %v", i, err)
			}
			if !member {
				// The genuine message still works: a non-member cannot kill the handshake.
				if _, _, err := resp.HandleAuthProof(auth, srcAlice, nil); err != nil {
					t.Fatalf("byte %d: genuine AUTH_PROOF refused after tampered copy: %v", i, err)
				}
			}
		}
	}
}

func TestTamperedCookieReplyRejected(t *testing.T) {
	o := defaultOpts()
	o.respThreshold = -1
	ini, resp := newPair(t, o)
	in, hello, _ := ini.Initiate(15, nil, nil)
	cr, err := resp.HandleHello(hello, srcAlice, nil)
	if err != nil || cr[0] != wire.TypeCookieReply {
		t.Fatalf("%v", err)
	}
	for i := range cr {
		m := slices.Clone(cr)
		m[i] ^= 0x01
		if c, err := in.ReadCookieReply(m); err == nil {
			t.Fatalf("byte %d: accepted cookie %x", i, c)
		}
	}
	if _, err := in.ReadCookieReply(cr); err != nil {
		t.Fatal(err)
	}
	// A reply bound to another message's mac1 is refused.
	in2, _, _ := ini.Initiate(15, nil, nil)
	if _, err := in2.ReadCookieReply(cr); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("reply for another HELLO accepted: %v", err)
	}
}

func TestVersionMismatchDroppedUnanswered(t *testing.T) {
	ini, resp := newPair(t, defaultOpts())
	in, hello, _ := ini.Initiate(16, nil, nil)
	m := slices.Clone(hello)
	m[1] = 2
	reply, err := resp.HandleHello(m, srcAlice, nil)
	var ve *VersionError
	if reply != nil || !errors.Is(err, ErrVersion) || !errors.As(err, &ve) || ve.Version != 2 {
		t.Fatalf("got %v", err)
	}
	// A future version may change the length; the version check must still come first.
	if _, err := resp.HandleHello(m[:60], srcAlice, nil); !errors.Is(err, ErrVersion) {
		t.Fatalf("short: %v", err)
	}
	chal, _ := resp.HandleHello(hello, srcAlice, nil)
	chal[1] = 3
	if _, err := in.ReadChallenge(chal); !errors.Is(err, ErrVersion) {
		t.Fatalf("challenge: %v", err)
	}
}

func TestUnknownIndexCostsNoDH(t *testing.T) {
	ini, resp := newPair(t, defaultOpts())
	in, hello, _ := ini.Initiate(17, nil, nil)
	chal, _ := resp.HandleHello(hello, srcAlice, nil)
	in.ReadChallenge(chal)
	auth, _, _ := in.WriteAuthProof(nil, nil)
	for _, off := range []int{wire.AuthSenderOff, wire.AuthReceiverOff} {
		m := slices.Clone(auth)
		m[off] ^= 0x40
		fixMAC1(resp, m)
		before := resp.DHCount()
		if _, _, err := resp.HandleAuthProof(m, srcAlice, nil); !errors.Is(err, ErrUnknownIndex) {
			t.Fatalf("offset %d: %v", off, err)
		}
		if resp.DHCount() != before {
			t.Fatal("unknown index cost X25519 work")
		}
	}
	// Wrong receiver index on the initiator side.
	in2, hello2, _ := ini.Initiate(18, nil, nil)
	chal2, _ := resp.HandleHello(hello2, srcAlice, nil)
	binary.LittleEndian.PutUint32(chal2[wire.ChallengeReceiverOff:], 19)
	fixMAC1(resp, chal2)
	if _, err := in2.ReadChallenge(chal2); !errors.Is(err, ErrUnknownIndex) {
		t.Fatalf("challenge: %v", err)
	}
}

func TestCookiePathUnderLoad(t *testing.T) {
	o := defaultOpts()
	o.respThreshold = 1 // more than one valid-mac1 message per second is load
	ini, resp := newPair(t, o)

	// First HELLO of the second: not under load.
	_, hello, _ := ini.Initiate(20, nil, nil)
	r, err := resp.HandleHello(hello, srcAlice, nil)
	if err != nil || r[0] != wire.TypeChallenge {
		t.Fatalf("first: %v", err)
	}

	// Second: under load and no mac2, so a COOKIE_REPLY and no public-key work.
	in, hello, _ := ini.Initiate(21, nil, nil)
	before := resp.DHCount()
	r, err = resp.HandleHello(hello, srcAlice, nil)
	if err != nil || r[0] != wire.TypeCookieReply || len(r) != wire.CookieReplyLen {
		t.Fatalf("second: %v, %d bytes", err, len(r))
	}
	if resp.DHCount() != before || resp.HalfOpen() != 1 {
		t.Fatal("cookie reply cost state or X25519 work")
	}
	if len(r) >= len(hello) {
		t.Fatal("cookie reply not smaller than HELLO")
	}
	cookie, err := in.ReadCookieReply(r)
	if err != nil || len(cookie) != wire.MACLen {
		t.Fatal(err)
	}
	if !bytes.Equal(cookie, cookieOf(t, resp, srcAlice)) {
		t.Fatal("cookie does not match the source address")
	}

	// A wrong mac2 is treated like none.
	_, hello, _ = ini.Initiate(22, cookie, nil)
	hello[wire.HelloMAC2Off] ^= 1
	if r, err = resp.HandleHello(hello, srcAlice, nil); err != nil || r[0] != wire.TypeCookieReply {
		t.Fatalf("bad mac2: %v", err)
	}
	// The cookie is bound to the address: from another one it is no good.
	_, hello, _ = ini.Initiate(23, cookie, nil)
	if r, err = resp.HandleHello(hello, srcBob, nil); err != nil || r[0] != wire.TypeCookieReply {
		t.Fatalf("other source: %v", err)
	}

	// The retry with the cookie gets a CHALLENGE and completes.
	in, hello, _ = ini.Initiate(24, cookie, nil)
	r, err = resp.HandleHello(hello, srcAlice, nil)
	if err != nil || r[0] != wire.TypeChallenge {
		t.Fatalf("retry: %v", err)
	}
	if _, err := in.ReadChallenge(r); err != nil {
		t.Fatal(err)
	}
	auth, ri, _ := in.WriteAuthProof(cookie, nil)
	rr, reply, err := resp.HandleAuthProof(auth, srcAlice, nil)
	if err != nil || reply != nil || rr.RecvKey != ri.SendKey {
		t.Fatalf("auth: %v", err)
	}
}

func TestCookieRepliesRateLimitedPerSource(t *testing.T) {
	o := defaultOpts()
	o.respThreshold = -1
	ini, resp := newPair(t, o)
	send := func(src netip.AddrPort) error {
		_, hello, _ := ini.Initiate(30, nil, nil)
		_, err := resp.HandleHello(hello, src, nil)
		return err
	}
	for i := range CookieBurst {
		if err := send(srcAlice); err != nil {
			t.Fatalf("reply %d: %v", i, err)
		}
	}
	if err := send(srcAlice); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("burst exceeded: %v", err)
	}
	if err := send(srcBob); err != nil {
		t.Fatalf("other source limited: %v", err)
	}
	o.clock.Advance(time.Second / CookieRate)
	if err := send(srcAlice); err != nil {
		t.Fatalf("bucket did not refill: %v", err)
	}
	if err := send(srcAlice); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("refilled more than one token: %v", err)
	}
	// A source that proves its address with mac2 draws on a bucket of its own, which
	// the cookie replies (perhaps to HELLOs spoofed from its address) did not spend.
	for i := range CookieBurst {
		_, hello, _ := ini.Initiate(31, cookieOf(t, resp, srcAlice), nil)
		if r, err := resp.HandleHello(hello, srcAlice, nil); err != nil || r[0] != wire.TypeChallenge {
			t.Fatalf("valid mac2 %d after the cookie bucket was spent: %v", i, err)
		}
	}
	_, hello, _ := ini.Initiate(31, cookieOf(t, resp, srcAlice), nil)
	if _, err := resp.HandleHello(hello, srcAlice, nil); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("valid mac2 not limited: %v", err)
	}
}

func TestAuthProofCookiePath(t *testing.T) {
	o := defaultOpts()
	ini, resp := newPair(t, o)
	in, hello, _ := ini.Initiate(40, nil, nil)
	chal, err := resp.HandleHello(hello, srcAlice, nil)
	if err != nil {
		t.Fatal(err)
	}
	in.ReadChallenge(chal)
	auth, ri, _ := in.WriteAuthProof(nil, nil)

	resp.mu.Lock()
	resp.threshold = -1 // load begins between HELLO and AUTH_PROOF
	resp.mu.Unlock()
	before := resp.DHCount()
	res, reply, err := resp.HandleAuthProof(auth, srcAlice, nil)
	if err != nil || reply == nil || reply[0] != wire.TypeCookieReply || res.LocalIndex != 0 {
		t.Fatalf("got %v, %d bytes", err, len(reply))
	}
	if len(reply) >= len(auth) || resp.DHCount() != before || resp.HalfOpen() != 1 {
		t.Fatal("cookie reply to AUTH_PROOF too big, or did work, or dropped the handshake")
	}
	cookie, err := in.ReadCookieReply(reply)
	if err != nil {
		t.Fatal(err)
	}
	again, err := in.ResendAuthProof(cookie, nil)
	if err != nil || !bytes.Equal(again[:wire.AuthMAC1Off], auth[:wire.AuthMAC1Off]) {
		t.Fatalf("resend: %v", err)
	}
	rr, reply, err := resp.HandleAuthProof(again, srcAlice, nil)
	if err != nil || reply != nil || rr.RecvKey != ri.SendKey || rr.SendKey != ri.RecvKey {
		t.Fatalf("after cookie: %v", err)
	}
}

func TestHalfFullTableMeansLoad(t *testing.T) {
	o := defaultOpts()
	ini, resp := newPair(t, o)
	for i := range MaxHalfOpen/2 + 1 {
		_, hello, _ := ini.Initiate(uint32(100+i), nil, nil)
		// Spread the sources so that the buckets do not interfere.
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 1)
		r, err := resp.HandleHello(hello, src, nil)
		if err != nil || r[0] != wire.TypeChallenge {
			t.Fatalf("HELLO %d: %v", i, err)
		}
	}
	_, hello, _ := ini.Initiate(99, nil, nil)
	r, err := resp.HandleHello(hello, srcAlice, nil)
	if err != nil || r[0] != wire.TypeCookieReply {
		t.Fatalf("more than half full but no cookie demanded: %v", err)
	}
}

func TestHalfOpenTableBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("1024 handshakes")
	}
	o := defaultOpts()
	o.respThreshold = 8 * MaxHalfOpen // a node-wide budget that lets the table fill at once
	ini, resp := newPair(t, o)
	src := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 1)
	}
	for i := range MaxHalfOpen {
		_, hello, _ := ini.Initiate(uint32(1+i), cookieOf(t, resp, src(i)), nil)
		if r, err := resp.HandleHello(hello, src(i), nil); err != nil || r[0] != wire.TypeChallenge {
			t.Fatalf("HELLO %d: %v", i, err)
		}
	}
	// A full table makes room by evicting its oldest handshake (index 0x1001, the
	// allocator's first): a flood cannot hold it.
	_, hello, _ := ini.Initiate(5000, cookieOf(t, resp, src(5000)), nil)
	if r, err := resp.HandleHello(hello, src(5000), nil); err != nil || r[0] != wire.TypeChallenge {
		t.Fatalf("full table refused a new handshake: %v", err)
	}
	if resp.HalfOpen() != MaxHalfOpen {
		t.Fatalf("half-open %d", resp.HalfOpen())
	}
	if rel := o.alloc.releasedList(); len(rel) != 1 || rel[0] != 0x1001 {
		t.Fatalf("evicted %x, want the oldest (1001)", rel)
	}
}

func TestHalfOpenExpires(t *testing.T) {
	o := defaultOpts()
	ini, resp := newPair(t, o)
	in, hello, _ := ini.Initiate(50, nil, nil)
	chal, _ := resp.HandleHello(hello, srcAlice, nil)
	info, err := in.ReadChallenge(chal)
	if err != nil {
		t.Fatal(err)
	}
	auth, _, _ := in.WriteAuthProof(nil, nil)
	o.clock.Advance(HalfOpenTimeout - time.Millisecond)
	resp.Sweep()
	if resp.HalfOpen() != 1 {
		t.Fatal("expired early")
	}
	o.clock.Advance(time.Millisecond)
	before := resp.DHCount()
	if _, _, err := resp.HandleAuthProof(auth, srcAlice, nil); !errors.Is(err, ErrExpired) {
		t.Fatalf("late AUTH_PROOF: %v", err)
	}
	if resp.DHCount() != before || resp.HalfOpen() != 0 {
		t.Fatal("expired handshake did work or stayed")
	}
	if got := o.alloc.releasedList(); !slices.Equal(got, []uint32{info.RemoteIndex}) {
		t.Fatalf("released %v, want [%d]", got, info.RemoteIndex)
	}
	if _, _, err := resp.HandleAuthProof(auth, srcAlice, nil); !errors.Is(err, ErrUnknownIndex) {
		t.Fatalf("second try: %v", err)
	}

	// Sweep releases without any traffic.
	_, hello, _ = ini.Initiate(51, nil, nil)
	chal, _ = resp.HandleHello(hello, srcAlice, nil)
	o.clock.Advance(HalfOpenTimeout)
	resp.Sweep()
	idx := binary.LittleEndian.Uint32(chal[wire.ChallengeSenderOff:])
	if got := o.alloc.releasedList(); resp.HalfOpen() != 0 || got[len(got)-1] != idx {
		t.Fatalf("sweep: %v", got)
	}
}

func TestFailedAuthProofReleasesIndex(t *testing.T) {
	o := defaultOpts()
	ini, resp := newPair(t, o)
	in, hello, _ := ini.Initiate(52, nil, nil)
	chal, _ := resp.HandleHello(hello, srcAlice, nil)
	info, _ := in.ReadChallenge(chal)
	auth, _, _ := in.WriteAuthProof(nil, nil)
	auth[wire.AuthNoiseOff+50] ^= 1
	fixMAC1(resp, auth)
	if _, _, err := resp.HandleAuthProof(auth, srcAlice, nil); !errors.Is(err, ErrDecrypt) {
		t.Fatal(err)
	}
	if got := o.alloc.releasedList(); !slices.Equal(got, []uint32{info.RemoteIndex}) {
		t.Fatalf("released %v", got)
	}
}

func TestCookieSecretRotates(t *testing.T) {
	o := defaultOpts()
	o.respThreshold = -1
	ini, resp := newPair(t, o)
	first := cookieOf(t, resp, srcAlice)
	try := func(cookie []byte) byte {
		t.Helper()
		o.clock.Advance(time.Second) // keep the bucket full
		_, hello, _ := ini.Initiate(60, cookie, nil)
		r, err := resp.HandleHello(hello, srcAlice, nil)
		if err != nil {
			t.Fatal(err)
		}
		return r[0]
	}
	if try(first) != wire.TypeChallenge {
		t.Fatal("fresh cookie refused")
	}
	o.clock.Advance(CookieSecretLifetime)
	second := cookieOf(t, resp, srcAlice)
	if bytes.Equal(first, second) {
		t.Fatal("secret did not rotate")
	}
	if try(first) != wire.TypeChallenge || try(second) != wire.TypeChallenge {
		t.Fatal("cookie from the previous secret refused within its lifetime")
	}
	o.clock.Advance(2 * CookieSecretLifetime)
	if try(first) != wire.TypeCookieReply || try(second) != wire.TypeCookieReply {
		t.Fatal("stale cookie accepted")
	}
}

func TestRepliesNeverLargerThanRequest(t *testing.T) {
	if wire.ChallengeLen > wire.HelloLen || wire.CookieReplyLen >= wire.HelloLen || wire.CookieReplyLen >= wire.AuthProofLen {
		t.Fatal("layout constants break the amplification rule")
	}
	ini, resp := newPair(t, defaultOpts())
	_, hello, _ := ini.Initiate(70, nil, nil)
	chal, _ := resp.HandleHello(hello, srcAlice, nil)
	if len(chal) > len(hello) {
		t.Fatal("CHALLENGE larger than HELLO")
	}
	resp.threshold = -1
	_, hello, _ = ini.Initiate(71, nil, nil)
	cr, _ := resp.HandleHello(hello, srcAlice, nil)
	if len(cr) != wire.CookieReplyLen || len(cr) >= len(hello) {
		t.Fatalf("COOKIE_REPLY %d bytes", len(cr))
	}
}

func TestReplyMayReuseRequestBuffer(t *testing.T) {
	o := defaultOpts()
	ini, resp := newPair(t, o)
	in, hello, _ := ini.Initiate(72, nil, nil)
	chal, err := resp.HandleHello(hello, srcAlice, hello[:0])
	if err != nil || &chal[0] != &hello[0] {
		t.Fatalf("%v", err)
	}
	if _, err := in.ReadChallenge(chal); err != nil {
		t.Fatal(err)
	}
	resp.threshold = -1
	in, hello, _ = ini.Initiate(73, nil, nil)
	cr, err := resp.HandleHello(hello, srcAlice, hello[:0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.ReadCookieReply(cr); err != nil {
		t.Fatalf("in-place cookie reply: %v", err)
	}
}

func TestTimestampsTAI64NAndIncreasing(t *testing.T) {
	o := defaultOpts()
	ini, _ := newPair(t, o)
	now := o.clock.Now()
	a, _, _ := ini.Initiate(1, nil, nil)
	b, _, _ := ini.Initiate(2, nil, nil) // same clock reading
	want := make([]byte, 12)
	binary.BigEndian.PutUint64(want, 1<<62+uint64(now.Unix()))
	binary.BigEndian.PutUint32(want[8:], uint32(now.Nanosecond()))
	ta, tb := a.Timestamp(), b.Timestamp()
	if !bytes.Equal(ta[:], want) {
		t.Fatalf("timestamp %x want %x", ta, want)
	}
	if CompareTimestamp(tb, ta) != 1 || CompareTimestamp(ta, tb) != -1 || CompareTimestamp(ta, ta) != 0 {
		t.Fatal("timestamps do not strictly increase")
	}
}

func TestInitiationOrderEnforced(t *testing.T) {
	ini, resp := newPair(t, defaultOpts())
	in, hello, _ := ini.Initiate(80, nil, nil)
	if _, _, err := in.WriteAuthProof(nil, nil); !errors.Is(err, ErrState) {
		t.Fatalf("AUTH_PROOF before CHALLENGE: %v", err)
	}
	if _, err := in.ResendAuthProof(nil, nil); !errors.Is(err, ErrState) {
		t.Fatal(err)
	}
	chal, _ := resp.HandleHello(hello, srcAlice, nil)
	if _, err := in.ReadChallenge(chal); err != nil {
		t.Fatal(err)
	}
	if _, err := in.ReadChallenge(chal); !errors.Is(err, ErrState) {
		t.Fatalf("second CHALLENGE: %v", err)
	}
	if _, _, err := ini.Initiate(0, nil, nil); !errors.Is(err, ErrBadArgument) {
		t.Fatal(err)
	}
	if _, _, err := ini.Initiate(1, []byte{1, 2, 3}, nil); !errors.Is(err, ErrBadArgument) {
		t.Fatal(err)
	}
}

func TestConcurrentHandshakes(t *testing.T) {
	o := defaultOpts()
	ini, resp := newPair(t, o)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 8 {
		wg.Go(func() {
			for k := range 8 {
				idx := uint32(g*100 + k + 1)
				in, hello, err := ini.Initiate(idx, nil, nil)
				if err != nil {
					errs <- err
					return
				}
				chal, err := resp.HandleHello(hello, srcAlice, nil)
				if err != nil {
					errs <- err
					return
				}
				if _, err := in.ReadChallenge(chal); err != nil {
					errs <- err
					return
				}
				auth, ri, _ := in.WriteAuthProof(nil, nil)
				rr, _, err := resp.HandleAuthProof(auth, srcAlice, nil)
				if err != nil || rr.RecvKey != ri.SendKey {
					errs <- fmt.Errorf("auth %d: %v", idx, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestDeriveSeedKeysSeparated(t *testing.T) {
	k := DeriveSeedKeys(seedA)
	if k.PSK == k.MAC1 || k.MAC1 == k.Cookie || k.PSK == k.Cookie || k.PSK == seedA {
		t.Fatal("derived keys not separated")
	}
	if DeriveSeedKeys(seedB).PSK == k.PSK {
		t.Fatal("seed ignored")
	}
}

func BenchmarkFullHandshake(b *testing.B) {
	ini, err := New(Config{Seed: seedA, Static: key(1), Name: "alice", LoadThreshold: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	resp, err := New(Config{Seed: seedA, Static: key(2), Name: "bob", LoadThreshold: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	out := make([]byte, 0, 256)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		in, hello, err := ini.Initiate(uint32(i+1), nil, out[:0])
		if err != nil {
			b.Fatal(err)
		}
		chal, err := resp.HandleHello(hello, srcAlice, out[:0])
		if err != nil {
			b.Fatal(err)
		}
		if _, err := in.ReadChallenge(chal); err != nil {
			b.Fatal(err)
		}
		auth, _, err := in.WriteAuthProof(nil, out[:0])
		if err != nil {
			b.Fatal(err)
		}
		if _, _, err := resp.HandleAuthProof(auth, srcAlice, out[:0]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
}
