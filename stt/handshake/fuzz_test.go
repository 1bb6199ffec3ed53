package handshake

import (
	"crypto/rand"
	"slices"
	"testing"

	"github.com/stt-tun/stt-tun/stt/wire"
)

// mutations returns the seed corpus for one message: the valid one, each region flipped,
// truncated, extended, with another type and another version.
func mutations(valid []byte) [][]byte {
	out := [][]byte{slices.Clone(valid), {}, {valid[0]}, valid[:len(valid)-1], append(slices.Clone(valid), 0)}
	for _, i := range []int{0, 1, 2, 4, 8, 12, 40, 60, 100, len(valid) - 33, len(valid) - 17, len(valid) - 1} {
		if i < len(valid) {
			m := slices.Clone(valid)
			m[i] ^= 0x55
			out = append(out, m)
		}
	}
	v2 := slices.Clone(valid)
	v2[1] = 2
	out = append(out, v2, make([]byte, len(valid)))
	return out
}

// checkReply asserts the responder invariants for any input: a reply or an error, never
// both nor neither, and a reply no larger than the request.
func checkReply(t *testing.T, msg, reply []byte, err error) {
	if (reply == nil) == (err == nil) {
		t.Fatalf("reply %d bytes with error %v", len(reply), err)
	}
	if len(reply) > len(msg) {
		t.Fatalf("reply %d bytes to a %d-byte request", len(reply), len(msg))
	}
	if reply != nil && reply[0] != wire.TypeChallenge && reply[0] != wire.TypeCookieReply {
		t.Fatalf("reply type %d", reply[0])
	}
}

func FuzzHandleHello(f *testing.F) {
	gv := buildGolden(f)
	for _, m := range mutations(gv.Hello) {
		f.Add(m, false, false)
		f.Add(m, true, false)
		f.Add(m, true, true)
	}
	f.Fuzz(func(t *testing.T, msg []byte, fix, load bool) {
		thr := 1 << 30
		if load {
			thr = -1
		}
		resp, err := New(Config{Seed: arr32(gSeed), Static: arr32(gRespStatic), Name: gRespName, Caps: gCaps, LoadThreshold: thr})
		if err != nil {
			t.Fatal(err)
		}
		if fix && len(msg) == wire.HelloLen {
			fixMAC1(resp, msg)
		}
		reply, err := resp.HandleHello(msg, gCookieSrc, nil)
		checkReply(t, msg, reply, err)
	})
}

func FuzzHandleAuthProof(f *testing.F) {
	gv := buildGolden(f)
	for _, m := range mutations(gv.AuthProof) {
		f.Add(m, false, false)
		f.Add(m, true, false)
		f.Add(m, true, true)
	}
	f.Fuzz(func(t *testing.T, msg []byte, fix, load bool) {
		resp := goldenResponder(t, gRespEph, 1<<30)
		if _, err := resp.HandleHello(gv.Hello, gCookieSrc, nil); err != nil {
			t.Fatal(err)
		}
		if load {
			resp.mu.Lock()
			resp.threshold = -1
			resp.rand = rand.Reader // the golden reader is used up
			resp.mu.Unlock()
		}
		if fix && len(msg) == wire.AuthProofLen {
			fixMAC1(resp, msg)
		}
		res, reply, err := resp.HandleAuthProof(msg, gCookieSrc, nil)
		if err == nil && reply == nil {
			if res.LocalIndex != gRespIndex || res.PeerName == "" {
				t.Fatalf("accepted with result %+v", res)
			}
			return
		}
		checkReply(t, msg, reply, err)
		if reply != nil && reply[0] != wire.TypeCookieReply {
			t.Fatal("AUTH_PROOF answered with something other than COOKIE_REPLY")
		}
	})
}

func FuzzReadChallenge(f *testing.F) {
	gv := buildGolden(f)
	for _, m := range mutations(gv.Challenge) {
		f.Add(m, false)
		f.Add(m, true)
	}
	f.Fuzz(func(t *testing.T, msg []byte, fix bool) {
		ini := goldenInitiator(t)
		in, _, err := ini.Initiate(gInitIndex, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if fix && len(msg) == wire.ChallengeLen {
			fixMAC1(ini, msg)
		}
		info, err := in.ReadChallenge(msg)
		if err == nil && (info.RemoteIndex == 0 || info.PeerName == "" ||
			(info.Cipher != wire.CipherAES256GCM && info.Cipher != wire.CipherChaCha20Poly1305)) {
			t.Fatalf("accepted %+v", info)
		}
	})
}

func FuzzReadCookieReply(f *testing.F) {
	gv := buildGolden(f)
	for _, m := range mutations(gv.CookieReply) {
		f.Add(m)
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		ini := goldenInitiator(t)
		in, _, err := ini.Initiate(gInitIndex, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		c, err := in.ReadCookieReply(msg)
		if err == nil && len(c) != wire.MACLen {
			t.Fatalf("cookie of %d bytes", len(c))
		}
	})
}
