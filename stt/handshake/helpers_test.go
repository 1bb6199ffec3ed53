package handshake

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/stt/wire"
)

// fakeClock is the injectable clock: tests move time explicitly, never sleep.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Unix(1_700_000_000, 123_456_789)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func key(b byte) (k [32]byte) {
	for i := range k {
		k[i] = b + byte(i)
	}
	return k
}

var (
	seedA    = key(0x10)
	seedB    = key(0x90)
	srcAlice = netip.MustParseAddrPort("192.0.2.1:40000")
	srcBob   = netip.MustParseAddrPort("[2001:db8::2]:51820")
)

// indexAlloc is a test AllocIndex/ReleaseIndex pair that records releases.
type indexAlloc struct {
	mu       sync.Mutex
	next     uint32
	released []uint32
}

func (a *indexAlloc) alloc() uint32 {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.next++
	return 0x1000 + a.next
}

func (a *indexAlloc) release(i uint32) {
	a.mu.Lock()
	a.released = append(a.released, i)
	a.mu.Unlock()
}

func (a *indexAlloc) releasedList() []uint32 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]uint32(nil), a.released...)
}

type pairOpts struct {
	initSeed, respSeed   [32]byte
	initCaps, respCaps   uint32
	respThreshold        int
	clock                *fakeClock
	alloc                *indexAlloc
	initName, respName   string
	initStatic, respStat [32]byte
	priority             func(netip.Addr) bool
	window               time.Duration // the responder's ReplayWindow (0: default)
}

func defaultOpts() pairOpts {
	return pairOpts{
		initSeed: seedA, respSeed: seedA,
		respThreshold: 1 << 30,
		clock:         newClock(),
		alloc:         &indexAlloc{},
		initName:      "alice", respName: "bob",
		initStatic: key(0x31), respStat: key(0x52),
	}
}

func newPair(t testing.TB, o pairOpts) (ini, resp *Engine) {
	t.Helper()
	var err error
	ini, err = New(Config{Seed: o.initSeed, Static: o.initStatic, Name: o.initName, Caps: o.initCaps,
		Now: o.clock.Now, LoadThreshold: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	resp, err = New(Config{Seed: o.respSeed, Static: o.respStat, Name: o.respName, Caps: o.respCaps,
		Now: o.clock.Now, LoadThreshold: o.respThreshold, AllocIndex: o.alloc.alloc, ReleaseIndex: o.alloc.release,
		Priority: o.priority, ReplayWindow: o.window})
	if err != nil {
		t.Fatal(err)
	}
	return ini, resp
}

// handshake runs all three messages and fails the test on any error.
func handshake(t testing.TB, ini, resp *Engine, idx uint32) (ri, rr Result) {
	t.Helper()
	in, hello, err := ini.Initiate(idx, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	chal, err := resp.HandleHello(hello, srcAlice, nil)
	if err != nil {
		t.Fatalf("HandleHello: %v", err)
	}
	if chal[0] != wire.TypeChallenge {
		t.Fatalf("HandleHello answered type %d", chal[0])
	}
	if _, err := in.ReadChallenge(chal); err != nil {
		t.Fatalf("ReadChallenge: %v", err)
	}
	auth, ri, err := in.WriteAuthProof(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	rr, reply, err := resp.HandleAuthProof(auth, srcAlice, nil)
	if err != nil || reply != nil {
		t.Fatalf("HandleAuthProof: %v (reply %d bytes)", err, len(reply))
	}
	return ri, rr
}

// fixMAC1 recomputes mac1 as a seed holder could, so that a test reaches the checks
// behind it.
func fixMAC1(e *Engine, msg []byte) {
	var off, n int
	if len(msg) == 0 {
		return
	}
	switch msg[0] {
	case wire.TypeHello:
		off, n = wire.HelloMAC1Off, wire.HelloLen
	case wire.TypeChallenge:
		off, n = wire.ChallengeMAC1Off, wire.ChallengeLen
	case wire.TypeAuthProof:
		off, n = wire.AuthMAC1Off, wire.AuthProofLen
	}
	if n == 0 || len(msg) != n {
		return
	}
	m := mac((*e.seeds.Load())[0].keys.MAC1[:], msg[:off])
	copy(msg[off:], m[:])
}

// cookieOf returns the cookie resp would issue to src now, as the initiator would learn
// it from a COOKIE_REPLY.
func cookieOf(t testing.TB, resp *Engine, src netip.AddrPort) []byte {
	t.Helper()
	resp.mu.Lock()
	defer resp.mu.Unlock()
	s, err := resp.secrets.current(resp.now(), resp.rand)
	if err != nil {
		t.Fatal(err)
	}
	c := cookieFor(s, src)
	return c[:]
}
