// Package handshake implements the STT handshake of docs/protocol.md sections 3 and 4:
// Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s keyed by the network seed, wrapped in fixed-size
// HELLO, CHALLENGE and AUTH_PROOF messages with mac1/mac2, plus the COOKIE_REPLY retry
// path a responder uses under load.
//
// The package owns everything a responder must do before it commits memory or public-key
// work to a sender (mac1, HELLO replay cache, load detection, cookies, per-source rate
// limits, the bounded table of half-open handshakes). It does not own sessions, peers,
// pinning or DATA frames: it hands the caller a Result and the caller decides.
package handshake

import (
	"bytes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/flynn/noise"
	"github.com/stt-tun/stt-tun/stt/wire"
	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/curve25519"
)

// Drop reasons. Every error returned for a received message wraps exactly one of these,
// so that the caller can count drops per reason with errors.Is.
var (
	// ErrMalformed: wrong type or length, a nonzero reserved field, a zero index, a bad
	// node name or payload field. Nothing about the sender is learnt.
	ErrMalformed = errors.New("handshake: malformed message")
	// ErrVersion: byte 1 is not wire.Version. The message is dropped unanswered; the
	// caller logs it (rate-limited). Returned errors are *VersionError.
	ErrVersion = errors.New("handshake: incompatible protocol version")
	// ErrBadMAC1: the sender does not hold the network seed (or the message was altered).
	// No public-key work was done.
	ErrBadMAC1 = errors.New("handshake: bad mac1")
	// ErrReplay: a HELLO whose ephemeral key was seen before (section 4.5). No public-key
	// work done, no answer, and it does not count toward the load.
	ErrReplay = errors.New("handshake: replayed HELLO")
	// ErrRateLimited: under load and the source address has used its token bucket, or
	// the node-wide handshake budget is spent.
	ErrRateLimited = errors.New("handshake: source rate limited")
	// ErrUnderLoad: the half-open table is full (or the index allocator gave up); the
	// initiator's retransmission will try again.
	ErrUnderLoad = errors.New("handshake: too many half-open handshakes")
	// ErrDecrypt: a Noise AEAD or the cookie AEAD failed: altered message, wrong seed at
	// the psk step, or a transcript mismatch.
	ErrDecrypt = errors.New("handshake: decryption failed")
	// ErrBadKey: a peer's ephemeral or static key is a low-order point (X25519 gave zero).
	ErrBadKey = errors.New("handshake: invalid public key")
	// ErrUnknownIndex: the receiver index names no handshake in flight here (or the sender
	// index does not match the one it was started with).
	ErrUnknownIndex = errors.New("handshake: unknown index")
	// ErrExpired: the half-open handshake the AUTH_PROOF answers is older than
	// HalfOpenTimeout; its index has been released.
	ErrExpired = errors.New("handshake: half-open handshake expired")
	// ErrCipherDowngrade: the responder's cipher choice breaks the negotiation rule of
	// section 4.2 (AES-GCM iff both sides have hardware AES).
	ErrCipherDowngrade = errors.New("handshake: cipher choice breaks negotiation rule")
	// ErrState: an Initiation method was called out of order, or after a failure.
	ErrState = errors.New("handshake: initiation in wrong state")
	// ErrBadArgument: a caller passed an invalid argument (zero index, cookie of the
	// wrong size).
	ErrBadArgument = errors.New("handshake: invalid argument")
	// ErrConfig: New was given an unusable Config.
	ErrConfig = errors.New("handshake: invalid config")
)

// VersionError carries the version a peer spoke, so that the log line can name it. It
// matches ErrVersion under errors.Is.
type VersionError struct{ Version byte }

// Error names the version, as the log line of section 4.2 wants.
func (v *VersionError) Error() string {
	return fmt.Sprintf("incompatible protocol version %d", v.Version)
}

// Is makes errors.Is(err, ErrVersion) true for a *VersionError.
func (v *VersionError) Is(target error) bool { return target == ErrVersion }

// Limits from docs/protocol.md sections 4 and 7. Exported so that the caller's metrics and
// tests can refer to the same numbers.
const (
	// HalfOpenTimeout is how long a responder keeps a handshake waiting for AUTH_PROOF.
	HalfOpenTimeout = 10 * time.Second
	// MaxHalfOpen bounds the responder's table of half-open handshakes.
	MaxHalfOpen = 1024
	// ReplayCacheSize and ReplayWindow bound the cache of answered HELLO ephemerals.
	ReplayCacheSize = 4096
	ReplayWindow    = 180 * time.Second
	// CookieSecretLifetime is how often the cookie secret is replaced; it is also how
	// long an initiator may use a cookie.
	CookieSecretLifetime = 120 * time.Second
	// DefaultLoadThreshold is LOAD_THRESHOLD: valid-mac1 handshake messages per second.
	DefaultLoadThreshold = 200
	// CookieBurst and CookieRate are the per-source token bucket used under load.
	CookieBurst = 5
	CookieRate  = 20 // per second
	// MaxRateLimitSources bounds each per-source bucket table.
	MaxRateLimitSources = 4096
	// MaxHalfOpenPerSource bounds the half-open handshakes of one source (an IPv4
	// address or an IPv6 /64).
	MaxHalfOpenPerSource = 16
	// PriorityShare is the part of the node-wide handshake budget (LOAD_THRESHOLD
	// handshakes a second) kept for the addresses of configured peers: 1/PriorityShare.
	PriorityShare = 4
)

// Payload layout of the Noise messages (the plaintexts; the wire fields in package wire
// include the 16-byte AEAD tag).
const (
	helloPlainLen     = wire.HelloPayloadLen - wire.TagLen // 92: timestamp 12, caps 4, zero 76
	challengePlainLen = wire.ChallengePayloadLen           // 40: caps 4, cipher 1, reserved 3, name 32
	authPlainLen      = wire.AuthPayloadLen                // 32: name
	timestampLen      = 12
	cookieNonceLen    = chacha20poly1305.NonceSizeX
)

var prologue = []byte("stt-tun v1")

// SeedKeys are the three keys derived from the network seed (section 3). The seed itself
// is never used as a key, so each use is separated by its label.
type SeedKeys struct{ PSK, MAC1, Cookie [32]byte }

// DeriveSeedKeys computes the keys of section 3 from the network seed.
func DeriveSeedKeys(seed [32]byte) SeedKeys {
	var k SeedKeys
	kdf := func(dst *[32]byte, label string) {
		h, _ := blake2s.New256(seed[:]) // cannot fail: 32-byte key
		h.Write([]byte(label))
		h.Sum(dst[:0])
	}
	kdf(&k.PSK, "stt v1 psk")
	kdf(&k.MAC1, "stt v1 mac1")
	kdf(&k.Cookie, "stt v1 cookie")
	return k
}

// seedIDLabel is the label of a seed's id; the same id as the mesh's SeedID.
const seedIDLabel = "stt-tun seed id v1"

// SeedID names a seed without revealing it: SHA-256("stt-tun seed id v1" || seed)[0:16],
// as statements and status name seeds.
func SeedID(seed [32]byte) [16]byte {
	h := sha256.New()
	h.Write([]byte(seedIDLabel))
	h.Write(seed[:])
	var out [32]byte
	h.Sum(out[:0])
	return [16]byte(out[:16])
}

// MaxSeeds is how many seeds an Engine holds at once: during a rotation two, the
// current and the next; a little room beyond.
const MaxSeeds = 4

// seedKeys is one seed an Engine holds: its id and what is derived from it.
type seedKeys struct {
	id     [16]byte
	keys   SeedKeys
	cookie cipher.AEAD // XChaCha20-Poly1305 under COOKIE_KEY; stateless
}

func newSeedKeys(seed [32]byte) (*seedKeys, error) {
	sk := &seedKeys{id: SeedID(seed), keys: DeriveSeedKeys(seed)}
	aead, err := chacha20poly1305.NewX(sk.keys.Cookie[:])
	if err != nil {
		return nil, err
	}
	sk.cookie = aead
	return sk, nil
}

// checkMAC1 verifies mac1 under this seed in constant time.
func (sk *seedKeys) checkMAC1(msg []byte, off int) bool {
	want := mac(sk.keys.MAC1[:], msg[:off])
	return subtle.ConstantTimeCompare(want[:], msg[off:off+wire.MACLen]) == 1
}

// PublicKey returns the X25519 public key of priv, so that a node can show and pin its
// identity without starting an Engine.
func PublicKey(priv [32]byte) [32]byte {
	var pub [32]byte
	p, err := curve25519.X25519(priv[:], curve25519.Basepoint)
	if err == nil {
		copy(pub[:], p)
	}
	return pub
}

// Config configures an Engine. The zero values of the optional fields pick production
// behaviour; tests and golden vectors override Rand, Now and AllocIndex.
type Config struct {
	Seed   [32]byte
	Static [32]byte // X25519 private key
	// Name is this node's name, 1..32 bytes of UTF-8 without NUL, sent (encrypted) in
	// CHALLENGE and AUTH_PROOF so the peer can find its configuration for us.
	Name string
	// Caps are the capability bits this node advertises (wire.CapHardwareAES).
	Caps uint32
	// Rand is the randomness for ephemeral keys, cookie secrets and nonces. nil means
	// crypto/rand. A non-nil reader need not be safe for concurrent use.
	Rand io.Reader
	// Now is the wall clock (TAI64N timestamps, expiry, load). nil means time.Now.
	Now func() time.Time
	// LoadThreshold is LOAD_THRESHOLD in handshake messages per second: 0 means
	// DefaultLoadThreshold, a negative value means "always under load" (cookies always
	// required).
	LoadThreshold int
	// ReplayWindow is how long HELLOs are remembered (section 4.5); 0 means ReplayWindow.
	// A HELLO whose timestamp is more than half of it away from Now is answered only with
	// a cookie reply unless its mac2 proves the source address.
	ReplayWindow time.Duration
	// Priority reports whether a (proven) source address is a configured peer's, to draw
	// on the part of the handshake budget kept for them and to keep its half-open
	// handshake from eviction. Called with the Engine's lock held: it must be cheap and
	// must not call back into the Engine. nil: no address has priority.
	Priority func(netip.Addr) bool
	// AllocIndex returns a fresh nonzero receiver index, unique in the node, for a
	// responder's half-open handshake; 0 means none is available. The Engine calls it
	// without holding its locks. nil: the Engine draws random indices unique only among
	// its own half-open handshakes (enough for tests, not for a node with sessions).
	AllocIndex func() uint32
	// ReleaseIndex gives back an index from AllocIndex whose half-open handshake expired
	// or failed. It is not called for an index that became a session (Result.LocalIndex).
	// Called without the Engine's locks held. nil: ignored.
	ReleaseIndex func(uint32)
}

// Engine runs both sides of the handshake for one node. It is safe for concurrent use;
// public-key work runs outside its locks.
type Engine struct {
	// seeds are the seeds this node holds, the first the one it initiates with
	// (SetSeeds); replaced whole, read without a lock.
	seeds     atomic.Pointer[[]*seedKeys]
	static    noise.DHKey
	pub       [32]byte
	name      [wire.NameLen]byte
	nameStr   string
	caps      uint32
	suite     noise.CipherSuite
	rand      io.Reader
	now       func() time.Time
	threshold int
	window    time.Duration // replay window (section 4.5)
	alloc     func() uint32
	release   func(uint32)
	priority  func(netip.Addr) bool

	dhCount atomic.Uint64

	tsMu   sync.Mutex
	tsLast [timestampLen]byte

	mu      sync.Mutex // guards everything below
	half    halfOpenTable
	replay  replayCache
	load    loadMeter
	buckets bucketTable // handshakes of proven sources under load
	cookies bucketTable // cookie replies to fresh HELLOs and to AUTH_PROOFs
	stale   bucketTable // cookie replies to HELLOs outside the replay window
	// Node-wide budgets: handshakes that get public-key work (general, and the part
	// kept for configured peers), and cookie replies to HELLOs outside the window.
	general, reserved, staleAll tokenBucket
	secrets                     cookieSecrets
}

// New checks cfg and returns an Engine for it.
func New(cfg Config) (*Engine, error) {
	if len(cfg.Name) == 0 || len(cfg.Name) > wire.NameLen || !utf8.ValidString(cfg.Name) ||
		bytes.IndexByte([]byte(cfg.Name), 0) >= 0 {
		return nil, fmt.Errorf("%w: node name must be 1..%d bytes of UTF-8 without NUL", ErrConfig, wire.NameLen)
	}
	if cfg.Static == ([32]byte{}) {
		return nil, fmt.Errorf("%w: static key is zero", ErrConfig)
	}
	e := &Engine{
		pub:       PublicKey(cfg.Static),
		nameStr:   cfg.Name,
		caps:      cfg.Caps & wire.CapHardwareAES,
		rand:      cfg.Rand,
		now:       cfg.Now,
		threshold: cfg.LoadThreshold,
		window:    cfg.ReplayWindow,
		alloc:     cfg.AllocIndex,
		release:   cfg.ReleaseIndex,
		priority:  cfg.Priority,
	}
	copy(e.name[:], cfg.Name)
	if e.rand == nil {
		e.rand = rand.Reader
	} else {
		e.rand = &lockedReader{r: e.rand}
	}
	if e.now == nil {
		e.now = time.Now
	}
	if e.window <= 0 {
		e.window = ReplayWindow
	}
	if e.threshold == 0 {
		e.threshold = DefaultLoadThreshold
	}
	e.static = noise.DHKey{Private: append([]byte(nil), cfg.Static[:]...), Public: append([]byte(nil), e.pub[:]...)}
	e.suite = noise.NewCipherSuite(countingDH{&e.dhCount}, noise.CipherChaChaPoly, noise.HashBLAKE2s)
	if err := e.SetSeeds([][32]byte{cfg.Seed}); err != nil {
		return nil, err
	}
	e.half.init()
	e.replay.init()
	e.replay.window = e.window
	e.secrets.life = e.window
	e.buckets.init()
	e.cookies.init()
	e.stale.init()
	budget := float64(e.threshold)
	if budget <= 0 {
		budget = DefaultLoadThreshold
	}
	// Each budget refills over a second and holds at least a source's burst, so that a
	// tiny LOAD_THRESHOLD (tests) still lets handshakes through.
	share := budget / PriorityShare
	e.general = newTokenBucket(budget-share, max(budget-share, CookieBurst))
	e.reserved = newTokenBucket(share, max(share, CookieBurst))
	e.staleAll = newTokenBucket(budget, max(budget, CookieBurst))
	return e, nil
}

// PublicKey returns this node's static public key (its identity).
func (e *Engine) PublicKey() [32]byte { return e.pub }

// SetSeeds replaces the seeds the Engine holds: handshakes it starts use seeds[0] (and
// the others on retries, InitiateSeed); it answers a handshake under any of them. A
// handshake in flight under a seed no longer held fails at its next message. At least
// one seed, at most MaxSeeds, no repeats.
func (e *Engine) SetSeeds(seeds [][32]byte) error {
	if len(seeds) == 0 || len(seeds) > MaxSeeds {
		return fmt.Errorf("%w: %d seeds, want 1 to %d", ErrConfig, len(seeds), MaxSeeds)
	}
	list := make([]*seedKeys, 0, len(seeds))
	for i, s := range seeds {
		if slices.Contains(seeds[:i], s) {
			return fmt.Errorf("%w: a seed given twice", ErrConfig)
		}
		sk, err := newSeedKeys(s)
		if err != nil {
			return err
		}
		list = append(list, sk)
	}
	e.seeds.Store(&list)
	return nil
}

// SeedIDs are the ids of the seeds held, in SetSeeds order.
func (e *Engine) SeedIDs() [][16]byte {
	list := *e.seeds.Load()
	ids := make([][16]byte, len(list))
	for i, sk := range list {
		ids[i] = sk.id
	}
	return ids
}

// seedFor is the seed the n-th attempt of an initiation uses: they take turns, the
// first seed first.
func (e *Engine) seedFor(n int) *seedKeys {
	list := *e.seeds.Load()
	return list[max(n, 0)%len(list)]
}

// matchMAC1 is the seed under which msg's mac1 (at off) verifies, or nil: the first
// cryptographic work done on any handshake message, one keyed BLAKE2s per seed held.
func (e *Engine) matchMAC1(msg []byte, off int) *seedKeys {
	for _, sk := range *e.seeds.Load() {
		if sk.checkMAC1(msg, off) {
			return sk
		}
	}
	return nil
}

// DHCount returns the number of X25519 operations (key generation and DH) done so far,
// so that tests and metrics can show that unauthenticated input costs no public-key work.
func (e *Engine) DHCount() uint64 { return e.dhCount.Load() }

// HalfOpen returns the number of responder handshakes waiting for AUTH_PROOF.
func (e *Engine) HalfOpen() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.half.len()
}

// Sweep forgets half-open handshakes older than HalfOpenTimeout and releases their
// indices. The Engine sweeps on every message it handles; a node calls Sweep from a timer
// so that indices come back even when no handshake traffic arrives.
func (e *Engine) Sweep() {
	now := e.now()
	e.mu.Lock()
	rel := e.half.expire(now, nil)
	e.mu.Unlock()
	e.releaseAll(rel)
}

func (e *Engine) releaseAll(idx []uint32) {
	if e.release == nil {
		return
	}
	for _, i := range idx {
		e.release(i)
	}
}

// noiseState starts a Noise handshake with this node's static key and the seed's PSK.
func (e *Engine) noiseState(initiator bool, sk *seedKeys) (*noise.HandshakeState, error) {
	return noise.NewHandshakeState(noise.Config{
		CipherSuite:           e.suite,
		Random:                e.rand,
		Pattern:               noise.HandshakeXX,
		Initiator:             initiator,
		Prologue:              prologue,
		PresharedKey:          sk.keys.PSK[:],
		PresharedKeyPlacement: 3,
		StaticKeypair:         e.static,
	})
}

// timestamp returns TAI64N of the clock, strictly greater than any earlier one from this
// Engine, so that two initiations in the same clock tick still order for the responder.
func (e *Engine) timestamp() [timestampLen]byte {
	t := e.now()
	var ts [timestampLen]byte
	binary.BigEndian.PutUint64(ts[:8], uint64(1)<<62+uint64(t.Unix()))
	binary.BigEndian.PutUint32(ts[8:], uint32(t.Nanosecond()))
	e.tsMu.Lock()
	defer e.tsMu.Unlock()
	if CompareTimestamp(ts, e.tsLast) <= 0 {
		ts = e.tsLast
		sec := binary.BigEndian.Uint64(ts[:8])
		ns := binary.BigEndian.Uint32(ts[8:]) + 1
		if ns >= 1e9 {
			ns = 0
			sec++
		}
		binary.BigEndian.PutUint64(ts[:8], sec)
		binary.BigEndian.PutUint32(ts[8:], ns)
	}
	e.tsLast = ts
	return ts
}

// CompareTimestamp orders two TAI64N timestamps (-1, 0, +1), for the responder's caller
// enforcing that each peer's HELLO timestamps strictly increase (section 4.5).
func CompareTimestamp(a, b [12]byte) int { return bytes.Compare(a[:], b[:]) }

// Result is a completed handshake: everything the caller needs to create a session.
type Result struct {
	// LocalIndex is our receiver index for the session (the initiator's own index, or
	// the responder's AllocIndex value); RemoteIndex is the peer's.
	LocalIndex, RemoteIndex uint32
	// SendKey seals our frames, RecvKey opens the peer's (k1/k2 of section 4.6 by role).
	SendKey, RecvKey [32]byte
	// Cipher is the negotiated AEAD for the session's DATA frames.
	Cipher wire.CipherID
	// PeerStatic and PeerName identify the peer; the caller enforces pinning with them.
	PeerStatic [32]byte
	PeerName   string
	// Initiator tells which side we were: it fixes stream-id parity and rekey timers.
	Initiator bool
	// Timestamp is the initiator's TAI64N from HELLO; the responder's caller refuses the
	// session unless it is greater than the last one accepted from PeerStatic.
	Timestamp [12]byte
	// SeedID names the seed the handshake was made under (SeedID).
	SeedID [16]byte
}

// ChallengeInfo is what the initiator learns from CHALLENGE, before it commits to the
// handshake: the caller checks name and pinned key before WriteAuthProof.
type ChallengeInfo struct {
	RemoteIndex uint32        // the responder's receiver index
	PeerName    string        // the responder's configured name
	PeerStatic  [32]byte      // the responder's static key, already authenticated by Noise
	Cipher      wire.CipherID // the responder's (already validated) cipher choice
}

// chooseCipher is the negotiation rule of section 4.2.
func chooseCipher(a, b uint32) wire.CipherID {
	if a&b&wire.CapHardwareAES != 0 {
		return wire.CipherAES256GCM
	}
	return wire.CipherChaCha20Poly1305
}

// mac computes a BLAKE2s-128 keyed MAC (mac1 with MAC1_KEY, mac2 with a cookie, cookies
// with the cookie secret).
func mac(key []byte, parts ...[]byte) (m [wire.MACLen]byte) {
	h, err := blake2s.New128(key)
	if err != nil {
		return m // only for an empty or oversized key, which no caller passes
	}
	for _, p := range parts {
		h.Write(p)
	}
	h.Sum(m[:0])
	return m
}

// checkHeader performs the free checks that precede mac1: type, version, length.
func checkHeader(msg []byte, typ byte, length int) error {
	if len(msg) < 2 || msg[0] != typ {
		return ErrMalformed
	}
	if msg[1] != wire.Version {
		return &VersionError{Version: msg[1]}
	}
	if len(msg) != length {
		return ErrMalformed
	}
	return nil
}

// finishMACs appends mac1 under the seed sk and mac2 (zero without a cookie) computed
// over out[base:], the message built so far.
func finishMACs(sk *seedKeys, out []byte, base int, cookie []byte) []byte {
	m1 := mac(sk.keys.MAC1[:], out[base:])
	out = append(out, m1[:]...)
	var m2 [wire.MACLen]byte
	if len(cookie) == wire.MACLen {
		m2 = mac(cookie, out[base:])
	}
	return append(out, m2[:]...)
}

func appendHeader(out []byte, typ byte, idx ...uint32) []byte {
	out = append(out, typ, wire.Version, 0, 0)
	for _, i := range idx {
		out = binary.LittleEndian.AppendUint32(out, i)
	}
	return out
}

func putName(dst []byte, name [wire.NameLen]byte) { copy(dst, name[:]) }

// parseName reads a zero-padded name field: 1..32 bytes of UTF-8 without NUL, then zeros.
func parseName(b []byte) (string, error) {
	n := bytes.IndexByte(b, 0)
	if n < 0 {
		n = len(b)
	}
	if n == 0 || !utf8.Valid(b[:n]) {
		return "", fmt.Errorf("%w: bad node name", ErrMalformed)
	}
	for _, c := range b[n:] {
		if c != 0 {
			return "", fmt.Errorf("%w: bad node name padding", ErrMalformed)
		}
	}
	return string(b[:n]), nil
}

// noiseErr maps a flynn/noise failure to a drop reason.
func noiseErr(err error) error {
	if errors.Is(err, errLowOrder) {
		return fmt.Errorf("%w: %v", ErrBadKey, err)
	}
	return fmt.Errorf("%w: %v", ErrDecrypt, err)
}

var errLowOrder = errors.New("x25519 low-order point")

// countingDH is X25519 as flynn/noise uses it, counting every scalar multiplication.
type countingDH struct{ n *atomic.Uint64 }

func (d countingDH) GenerateKeypair(r io.Reader) (noise.DHKey, error) {
	d.n.Add(1)
	return noise.DH25519.GenerateKeypair(r)
}

func (d countingDH) DH(priv, pub []byte) ([]byte, error) {
	d.n.Add(1)
	out, err := noise.DH25519.DH(priv, pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errLowOrder, err)
	}
	return out, nil
}

func (countingDH) DHLen() int     { return 32 }
func (countingDH) DHName() string { return "25519" }

// lockedReader serialises a caller-supplied reader, which need not be goroutine-safe.
type lockedReader struct {
	mu sync.Mutex
	r  io.Reader
}

func (l *lockedReader) Read(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return io.ReadFull(l.r, p)
}
