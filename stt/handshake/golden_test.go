package handshake

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/hex"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/stt/wire"
)

const goldenPath = "testdata/handshake.json"

func seq(start byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = start + byte(i)
	}
	return b
}

func arr32(b []byte) (a [32]byte) { copy(a[:], b); return a }

// The inputs of the golden transcript. Every random byte the Engines draw comes from
// these, in this order, so the transcript is reproducible.
var (
	gSeed         = seq(0x00, 32)
	gInitStatic   = seq(0x20, 32)
	gRespStatic   = seq(0x40, 32)
	gInitEph      = seq(0x60, 32)
	gRespEph      = seq(0x80, 32)
	gCookieSecret = seq(0xa0, 32)
	gCookieNonce  = seq(0xc0, 24)
	gTime         = time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC)
	gCookieSrc    = netip.MustParseAddrPort("192.0.2.1:51820")
)

const (
	gInitIndex = 0x11223344
	gRespIndex = 0x55667788
	gInitName  = "alice"
	gRespName  = "bob"
	gCaps      = wire.CapHardwareAES
)

type hexBytes []byte

func (h hexBytes) MarshalJSON() ([]byte, error) { return json.Marshal(hex.EncodeToString(h)) }

func (h *hexBytes) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := hex.DecodeString(s)
	*h = v
	return err
}

// goldenVector is this package's part of testdata/handshake.json. Other keys in the file
// (the FINAL frame belongs to the session code) are preserved on rewrite.
type goldenVector struct {
	Description        string   `json:"description"`
	Seed               hexBytes `json:"seed"`
	InitiatorStatic    hexBytes `json:"initiator_static"`
	ResponderStatic    hexBytes `json:"responder_static"`
	InitiatorPublic    hexBytes `json:"initiator_public"`
	ResponderPublic    hexBytes `json:"responder_public"`
	InitiatorEphemeral hexBytes `json:"initiator_ephemeral"`
	ResponderEphemeral hexBytes `json:"responder_ephemeral"`
	InitiatorIndex     uint32   `json:"initiator_index"`
	ResponderIndex     uint32   `json:"responder_index"`
	InitiatorName      string   `json:"initiator_name"`
	ResponderName      string   `json:"responder_name"`
	InitiatorCaps      uint32   `json:"initiator_caps"`
	ResponderCaps      uint32   `json:"responder_caps"`
	Time               string   `json:"time"`
	Timestamp          hexBytes `json:"timestamp_tai64n"`
	Hello              hexBytes `json:"hello"`
	Challenge          hexBytes `json:"challenge"`
	AuthProof          hexBytes `json:"auth_proof"`
	Cipher             uint8    `json:"cipher"`
	K1                 hexBytes `json:"k1"`
	K2                 hexBytes `json:"k2"`
	CookieSecret       hexBytes `json:"cookie_secret"`
	CookieNonce        hexBytes `json:"cookie_nonce"`
	CookieSource       string   `json:"cookie_source"`
	Cookie             hexBytes `json:"cookie"`
	CookieReply        hexBytes `json:"cookie_reply"`
	RefusalNotPeer     hexBytes `json:"refusal_not_peer"`
	RefusalPinMismatch hexBytes `json:"refusal_pin_mismatch"`
}

// goldenInitiator and goldenResponder build the Engines of the transcript. rand is the
// exact byte stream each may draw; drawing more fails the handshake.
func goldenInitiator(t testing.TB) *Engine {
	t.Helper()
	e, err := New(Config{Seed: arr32(gSeed), Static: arr32(gInitStatic), Name: gInitName, Caps: gCaps,
		Rand: bytes.NewReader(gInitEph), Now: func() time.Time { return gTime }, LoadThreshold: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func goldenResponder(t testing.TB, rand []byte, threshold int) *Engine {
	t.Helper()
	e, err := New(Config{Seed: arr32(gSeed), Static: arr32(gRespStatic), Name: gRespName, Caps: gCaps,
		Rand: bytes.NewReader(rand), Now: func() time.Time { return gTime }, LoadThreshold: threshold,
		AllocIndex: func() uint32 { return gRespIndex }})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func buildGolden(t testing.TB) goldenVector {
	t.Helper()
	ini := goldenInitiator(t)
	resp := goldenResponder(t, gRespEph, 1<<30)
	in, hello, err := ini.Initiate(gInitIndex, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The COOKIE_REPLY a loaded responder (fresh, so its cookie secret is the next 32
	// random bytes and the nonce the 24 after) sends for the same HELLO.
	cresp := goldenResponder(t, append(append([]byte(nil), gCookieSecret...), gCookieNonce...), -1)
	cr, err := cresp.HandleHello(hello, gCookieSrc, nil)
	if err != nil {
		t.Fatal(err)
	}
	cookie := cookieFor((*[32]byte)(gCookieSecret), gCookieSrc)
	got, err := in.ReadCookieReply(cr)
	if err != nil || !bytes.Equal(got, cookie[:]) {
		t.Fatalf("golden cookie reply does not open: %v", err)
	}
	chal, err := resp.HandleHello(hello, gCookieSrc, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.ReadChallenge(chal); err != nil {
		t.Fatal(err)
	}
	auth, ri, err := in.WriteAuthProof(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	rr, _, err := resp.HandleAuthProof(auth, gCookieSrc, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rr.RecvKey != ri.SendKey || rr.SendKey != ri.RecvKey {
		t.Fatal("golden transcript: sides disagree")
	}

	// The refusals the responder would send instead of FINAL (section 4.8).
	refNotPeer, err := SealRefusal(nil, rr, wire.CodeNotPeer)
	if err != nil {
		t.Fatal(err)
	}
	refPin, err := SealRefusal(nil, rr, wire.CodePinMismatch)
	if err != nil {
		t.Fatal(err)
	}

	ip, rp := ini.PublicKey(), resp.PublicKey()
	ts := ri.Timestamp
	return goldenVector{
		Description: "STT v1 handshake transcript (docs/protocol.md section 4). Inputs: seed, statics, " +
			"the random bytes each side draws (ephemeral private keys; cookie secret then nonce), " +
			"indices, names, caps, time. k1 seals frames from initiator to responder, k2 the other way. " +
			"cookie_reply answers hello from cookie_source on a responder under load. " +
			"refusal_not_peer and refusal_pin_mismatch are the DATA frames (stream 0, counter 0, k2) " +
			"a responder sends instead of FINAL when it refuses the verified initiator (section 4.8).",
		Seed: gSeed, InitiatorStatic: gInitStatic, ResponderStatic: gRespStatic,
		InitiatorPublic: ip[:], ResponderPublic: rp[:],
		InitiatorEphemeral: gInitEph, ResponderEphemeral: gRespEph,
		InitiatorIndex: gInitIndex, ResponderIndex: gRespIndex,
		InitiatorName: gInitName, ResponderName: gRespName,
		InitiatorCaps: gCaps, ResponderCaps: gCaps,
		Time:      gTime.Format(time.RFC3339Nano),
		Timestamp: ts[:],
		Hello:     hello, Challenge: chal, AuthProof: auth,
		Cipher: uint8(ri.Cipher),
		K1:     ri.SendKey[:], K2: ri.RecvKey[:],
		CookieSecret: gCookieSecret, CookieNonce: gCookieNonce,
		CookieSource: gCookieSrc.String(), Cookie: cookie[:], CookieReply: cr,
		RefusalNotPeer: refNotPeer, RefusalPinMismatch: refPin,
	}
}

func TestGoldenVectors(t *testing.T) {
	gv := buildGolden(t)
	if os.Getenv("STT_UPDATE_GOLDEN") == "1" {
		writeGolden(t, gv)
		return
	}
	raw, err := os.ReadFile(goldenPath)
	if err != nil {
		t.Fatalf("%v (run with STT_UPDATE_GOLDEN=1 to create it)", err)
	}
	var want goldenVector
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	gvv, wv := reflect.ValueOf(gv), reflect.ValueOf(want)
	for i := range gvv.NumField() {
		name := gvv.Type().Field(i).Tag.Get("json")
		if name == "description" {
			continue
		}
		if !reflect.DeepEqual(gvv.Field(i).Interface(), wv.Field(i).Interface()) {
			t.Errorf("%s: built %v\n  file %v", name, gvv.Field(i).Interface(), wv.Field(i).Interface())
		}
	}
	// Layout spot checks against docs/protocol.md, independent of the file.
	if len(gv.Hello) != wire.HelloLen || len(gv.Challenge) != wire.ChallengeLen ||
		len(gv.AuthProof) != wire.AuthProofLen || len(gv.CookieReply) != wire.CookieReplyLen {
		t.Fatal("message lengths")
	}
	// The refusal opens under k2 (AES-256-GCM here: both sides have the cap), nonce
	// counter 0, the 16-byte header as AD, and holds exactly CLOSE(code).
	for code, frame := range map[uint16][]byte{wire.CodeNotPeer: gv.RefusalNotPeer, wire.CodePinMismatch: gv.RefusalPinMismatch} {
		blk, _ := aes.NewCipher(gv.K2)
		aead, _ := cipher.NewGCM(blk)
		var nonce [12]byte
		pt, err := aead.Open(nil, nonce[:], frame[wire.HeaderLen:], frame[:wire.HeaderLen])
		if err != nil {
			t.Fatalf("refusal %d does not open under k2: %v", code, err)
		}
		if got, ok := wire.RefusalCode(pt); !ok || got != code || len(frame) != wire.HeaderLen+5+wire.TagLen {
			t.Fatalf("refusal %d: payload %x", code, pt)
		}
		h, _ := wire.ParseHeader(frame)
		if h.Stream != wire.ControlStream || h.Counter != 0 || h.Receiver != gInitIndex {
			t.Fatalf("refusal %d: header %+v", code, h)
		}
	}
	if _, err := SealRefusal(nil, Result{RemoteIndex: 1, Cipher: wire.CipherChaCha20Poly1305}, wire.CodeShutdown); err == nil {
		t.Fatal("SealRefusal sealed a code that is no refusal")
	}
	pub := PublicKey(arr32(gInitEph))
	if !bytes.Equal(gv.Hello[wire.HelloNoiseOff:wire.HelloNoiseOff+32], pub[:]) {
		t.Fatal("HELLO does not carry the ephemeral public key at offset 8")
	}
}

// writeGolden merges this package's fields into the file, keeping keys owned by others.
func writeGolden(t *testing.T, gv goldenVector) {
	merged := map[string]json.RawMessage{}
	if raw, err := os.ReadFile(goldenPath); err == nil {
		if err := json.Unmarshal(raw, &merged); err != nil {
			t.Fatal(err)
		}
	}
	mine, err := json.Marshal(gv)
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(mine, &fields); err != nil {
		t.Fatal(err)
	}
	for k, v := range fields {
		merged[k] = v
	}
	out, err := json.MarshalIndent(merged, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(goldenPath), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(goldenPath, append(out, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("rewrote %s", goldenPath)
}
