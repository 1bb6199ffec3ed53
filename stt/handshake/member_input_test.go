package handshake

import (
	"encoding/binary"
	"errors"
	"slices"
	"testing"

	"github.com/stt-tun/stt-tun/stt/wire"
)

// TestMemberSetHeaderFieldsRefusedBeforeDH: a seed holder (who can compute mac1) that
// sets the reserved bytes or sends a zero index gets the message refused as
// malformed, before any public-key work and without disturbing the handshake.
func TestMemberSetHeaderFieldsRefusedBeforeDH(t *testing.T) {
	ini, resp := newPair(t, defaultOpts())
	_, hello, err := ini.Initiate(21, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(m []byte){
		"reserved byte 2": func(m []byte) { m[2] = 1 },
		"reserved byte 3": func(m []byte) { m[3] = 0x80 },
		"zero sender":     func(m []byte) { binary.LittleEndian.PutUint32(m[wire.HelloSenderOff:], 0) },
	} {
		m := slices.Clone(hello)
		mod(m)
		fixMAC1(resp, m)
		dh := resp.DHCount()
		if reply, err := resp.HandleHello(m, srcAlice, nil); !errors.Is(err, ErrMalformed) || reply != nil {
			t.Errorf("HELLO with %s: %v, %d bytes of reply; want ErrMalformed and none", name, err, len(reply))
		}
		if resp.DHCount() != dh {
			t.Errorf("HELLO with %s cost %d DH operations", name, resp.DHCount()-dh)
		}
	}

	in, hello, _ := ini.Initiate(22, nil, nil)
	chal, err := resp.HandleHello(hello, srcAlice, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(m []byte){
		"reserved byte 2": func(m []byte) { m[2] = 1 },
		"zero sender":     func(m []byte) { binary.LittleEndian.PutUint32(m[wire.ChallengeSenderOff:], 0) },
	} {
		m := slices.Clone(chal)
		mod(m)
		fixMAC1(resp, m)
		if info, err := in.ReadChallenge(m); !errors.Is(err, ErrMalformed) {
			t.Errorf("CHALLENGE with %s: %v (responder index %#x); want ErrMalformed", name, err, info.RemoteIndex)
		}
	}
	if _, err := in.ReadChallenge(chal); err != nil {
		t.Fatalf("genuine CHALLENGE refused after the malformed ones: %v", err)
	}
	auth, _, err := in.WriteAuthProof(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(m []byte){
		"reserved byte 3": func(m []byte) { m[3] = 1 },
		"zero sender":     func(m []byte) { binary.LittleEndian.PutUint32(m[wire.AuthSenderOff:], 0) },
		"zero receiver":   func(m []byte) { binary.LittleEndian.PutUint32(m[wire.AuthReceiverOff:], 0) },
	} {
		m := slices.Clone(auth)
		mod(m)
		fixMAC1(resp, m)
		dh := resp.DHCount()
		if res, reply, err := resp.HandleAuthProof(m, srcAlice, nil); !errors.Is(err, ErrMalformed) || reply != nil || res.LocalIndex != 0 {
			t.Errorf("AUTH_PROOF with %s: %v; want ErrMalformed", name, err)
		}
		if resp.DHCount() != dh {
			t.Errorf("AUTH_PROOF with %s cost %d DH operations", name, resp.DHCount()-dh)
		}
	}
	if _, _, err := resp.HandleAuthProof(auth, srcAlice, nil); err != nil {
		t.Fatalf("genuine AUTH_PROOF refused after the malformed ones: %v", err)
	}
}

// TestLongerHandshakeMessagesRefused: a handshake message with bytes after its fixed
// length is malformed, even though mac1 (at its fixed offset) still verifies.
func TestLongerHandshakeMessagesRefused(t *testing.T) {
	o := defaultOpts()
	ini, resp := newPair(t, o)
	in, hello, _ := ini.Initiate(23, nil, nil)
	if _, err := resp.HandleHello(append(slices.Clone(hello), 0), srcAlice, nil); !errors.Is(err, ErrMalformed) {
		t.Errorf("HELLO one byte long: %v, want ErrMalformed", err)
	}
	chal, err := resp.HandleHello(hello, srcAlice, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.ReadChallenge(append(slices.Clone(chal), 0)); !errors.Is(err, ErrMalformed) {
		t.Errorf("CHALLENGE one byte long: %v, want ErrMalformed", err)
	}
	if _, err := in.ReadChallenge(chal); err != nil {
		t.Fatal(err)
	}
	auth, _, _ := in.WriteAuthProof(nil, nil)
	if _, _, err := resp.HandleAuthProof(append(slices.Clone(auth), 0), srcAlice, nil); !errors.Is(err, ErrMalformed) {
		t.Errorf("AUTH_PROOF one byte long: %v, want ErrMalformed", err)
	}

	o2 := defaultOpts()
	o2.respThreshold = -1
	ini2, loaded := newPair(t, o2)
	in2, hello2, _ := ini2.Initiate(24, nil, nil)
	cr, err := loaded.HandleHello(hello2, srcAlice, nil)
	if err != nil || cr[0] != wire.TypeCookieReply {
		t.Fatalf("no COOKIE_REPLY under load: %v", err)
	}
	if _, err := in2.ReadCookieReply(append(slices.Clone(cr), 0)); !errors.Is(err, ErrMalformed) {
		t.Errorf("COOKIE_REPLY one byte long: %v, want ErrMalformed", err)
	}
}

// TestAuthProofCookieRepliesRateLimitedPerSource: under load, AUTH_PROOFs without a
// valid mac2 draw on the same per-source bucket as HELLOs: a source gets at most
// CookieBurst cookie replies at once, then none.
func TestAuthProofCookieRepliesRateLimitedPerSource(t *testing.T) {
	ini, resp := newPair(t, defaultOpts())
	var auths [][]byte
	for i := range CookieBurst + 1 {
		in, hello, _ := ini.Initiate(uint32(100+i), nil, nil)
		chal, err := resp.HandleHello(hello, srcAlice, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := in.ReadChallenge(chal); err != nil {
			t.Fatal(err)
		}
		auth, _, err := in.WriteAuthProof(nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		auths = append(auths, auth)
	}
	resp.mu.Lock()
	resp.threshold = -1 // load begins: every AUTH_PROOF now needs mac2
	resp.mu.Unlock()
	for i, auth := range auths {
		_, reply, err := resp.HandleAuthProof(auth, srcAlice, nil)
		if i < CookieBurst {
			if err != nil || reply == nil || reply[0] != wire.TypeCookieReply {
				t.Fatalf("AUTH_PROOF %d: %v, %d bytes; want a COOKIE_REPLY", i, err, len(reply))
			}
			continue
		}
		if !errors.Is(err, ErrRateLimited) || reply != nil {
			t.Fatalf("AUTH_PROOF %d, beyond the burst of %d: %v, %d bytes of reply; want ErrRateLimited", i, CookieBurst, err, len(reply))
		}
	}
}

// TestFailedInitiationTakesNoCookie: once a CHALLENGE has failed authentication the
// initiation is dead, and a COOKIE_REPLY for it is refused.
func TestFailedInitiationTakesNoCookie(t *testing.T) {
	o := defaultOpts()
	ini, resp := newPair(t, o)
	o2 := o
	o2.respThreshold = -1
	_, loaded := newPair(t, o2) // same seed, under load
	in, hello, _ := ini.Initiate(25, nil, nil)
	cr, err := loaded.HandleHello(hello, srcAlice, nil)
	if err != nil || cr[0] != wire.TypeCookieReply {
		t.Fatalf("no COOKIE_REPLY under load: %v", err)
	}
	chal, err := resp.HandleHello(hello, srcAlice, nil)
	if err != nil {
		t.Fatal(err)
	}
	chal[wire.ChallengeNoiseOff+40] ^= 0x80
	fixMAC1(resp, chal)
	if _, err := in.ReadChallenge(chal); err == nil {
		t.Fatal("tampered CHALLENGE accepted")
	}
	if c, err := in.ReadCookieReply(cr); !errors.Is(err, ErrState) {
		t.Fatalf("COOKIE_REPLY after a failed CHALLENGE: cookie %x, %v; want ErrState", c, err)
	}
}
