package handshake

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/stt/wire"
)

// Admission under attack: replays, floods from many sources, and the half-open table.

func srcN(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 3, byte(i >> 8), byte(i)}), 1)
}

// A HELLO replayed after the replay cache forgot it draws at most the cookie replies of
// its address's bucket, costs no public-key work, and does not count toward the load: a
// fresh HELLO from the same address right after a long replay still gets a CHALLENGE.
func TestStaleHelloCostsAtMostACookieAndIsNoLoad(t *testing.T) {
	o := defaultOpts()
	o.respThreshold = 10
	ini, resp := newPair(t, o)
	_, old, _ := ini.Initiate(60, nil, nil)
	if r, err := resp.HandleHello(old, srcAlice, nil); err != nil || r[0] != wire.TypeChallenge {
		t.Fatalf("original HELLO: %v", err)
	}
	o.clock.Advance(ReplayWindow + time.Second)
	resp.Sweep()
	before := resp.DHCount()
	cookies := 0
	for i := range 100 {
		r, err := resp.HandleHello(old, srcAlice, nil)
		switch {
		case err == nil && r[0] == wire.TypeCookieReply:
			cookies++
		case errors.Is(err, ErrReplay):
		default:
			t.Fatalf("replay %d: %v, %v", i, r, err)
		}
	}
	if resp.DHCount() != before {
		t.Fatalf("the replays cost %d X25519 operations", resp.DHCount()-before)
	}
	// The first copy draws a cookie reply and is cached; the others are dropped unread.
	if cookies != 1 {
		t.Fatalf("%d cookie replies to 100 copies of one stale HELLO, want 1", cookies)
	}
	// Other stale HELLOs from the same address draw on its bucket of cookie replies.
	cookies = 0
	for i := range 2 * CookieBurst {
		_, h, _ := ini.Initiate(uint32(600+i), nil, nil)
		o.clock.Advance(ReplayWindow)
		r, err := resp.HandleHello(h, srcAlice, nil)
		o.clock.Advance(-ReplayWindow)
		if err == nil && r[0] == wire.TypeCookieReply {
			cookies++
		} else if !errors.Is(err, ErrRateLimited) {
			t.Fatalf("stale HELLO %d: %v", i, err)
		}
	}
	if cookies != CookieBurst {
		t.Fatalf("%d cookie replies to %d stale HELLOs at one instant, want a burst (%d)", cookies, 2*CookieBurst, CookieBurst)
	}
	_, hello, _ := ini.Initiate(61, nil, nil)
	if r, err := resp.HandleHello(hello, srcAlice, nil); err != nil || r[0] != wire.TypeChallenge {
		t.Fatalf("fresh HELLO after the replays: %v (the replays counted as load?)", err)
	}
}

// An initiator whose clock is off by more than half the window gets a cookie reply and,
// with the cookie, a CHALLENGE: a wrong clock costs a round trip, not the handshake.
func TestSkewedClockHelloCompletesWithCookie(t *testing.T) {
	o := defaultOpts()
	ini, resp := newPair(t, o)
	in, hello, _ := ini.Initiate(62, nil, nil)
	o.clock.Advance(ReplayWindow) // the responder's clock is ahead by a whole window
	r, err := resp.HandleHello(hello, srcAlice, nil)
	if err != nil || r[0] != wire.TypeCookieReply {
		t.Fatalf("skewed HELLO: %v", err)
	}
	cookie, err := in.ReadCookieReply(r)
	if err != nil {
		t.Fatal(err)
	}
	o.clock.Advance(-ReplayWindow) // the initiator's next HELLO carries the skewed clock
	_, hello, _ = ini.Initiate(63, cookie, nil)
	o.clock.Advance(ReplayWindow)
	if r, err := resp.HandleHello(hello, srcAlice, nil); err != nil || r[0] != wire.TypeChallenge {
		t.Fatalf("skewed HELLO with the cookie: %v", err)
	}
}

// AUTH_PROOFs that answer no handshake in flight (replays) do not count toward the load.
func TestReplayedAuthProofIsNoLoad(t *testing.T) {
	o := defaultOpts()
	o.respThreshold = 10
	ini, resp := newPair(t, o)
	in, hello, _ := ini.Initiate(64, nil, nil)
	chal, err := resp.HandleHello(hello, srcAlice, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.ReadChallenge(chal); err != nil {
		t.Fatal(err)
	}
	auth, _, _ := in.WriteAuthProof(nil, nil)
	if _, _, err := resp.HandleAuthProof(auth, srcAlice, nil); err != nil {
		t.Fatal(err)
	}
	o.clock.Advance(2 * time.Second) // a clean load meter
	for i := range 100 {
		if _, reply, err := resp.HandleAuthProof(auth, srcAlice, nil); !errors.Is(err, ErrUnknownIndex) || reply != nil {
			t.Fatalf("replay %d: %v", i, err)
		}
	}
	_, hello, _ = ini.Initiate(65, nil, nil)
	if r, err := resp.HandleHello(hello, srcAlice, nil); err != nil || r[0] != wire.TypeChallenge {
		t.Fatalf("fresh HELLO after the replays: %v (the replays counted as load?)", err)
	}
}

// The node-wide budget holds across any number of proven sources: at one instant, its
// burst of handshakes gets public-key work, and the next second its rate.
func TestGlobalHandshakeBudgetAcrossSources(t *testing.T) {
	o := defaultOpts()
	o.respThreshold = -1 // always under load: mac2 required; budget DefaultLoadThreshold
	ini, resp := newPair(t, o)
	general := DefaultLoadThreshold - DefaultLoadThreshold/PriorityShare
	round := func() (challenges int) {
		for i := range 400 {
			_, hello, _ := ini.Initiate(uint32(1000+i), cookieOf(t, resp, srcN(i)), nil)
			r, err := resp.HandleHello(hello, srcN(i), nil)
			switch {
			case err == nil && r[0] == wire.TypeChallenge:
				challenges++
			case errors.Is(err, ErrRateLimited):
			default:
				t.Fatalf("source %d: %v", i, err)
			}
		}
		return challenges
	}
	before := resp.DHCount()
	if n := round(); n != general {
		t.Fatalf("400 proven sources at once got %d CHALLENGEs, want the budget's burst %d", n, general)
	}
	if d := resp.DHCount() - before; d > uint64(3*general) {
		t.Fatalf("%d X25519 operations for %d CHALLENGEs", d, general)
	}
	o.clock.Advance(time.Second)
	if n := round(); n != general {
		t.Fatalf("a second later: %d CHALLENGEs, want %d", n, general)
	}
}

// A configured peer's address draws on the part of the budget kept for it when the
// rest is spent.
func TestConfiguredPeerKeepsAHandshakeBudget(t *testing.T) {
	o := defaultOpts()
	o.respThreshold = -1
	o.priority = func(a netip.Addr) bool { return a == srcAlice.Addr() }
	ini, resp := newPair(t, o)
	for i := range 300 {
		_, hello, _ := ini.Initiate(uint32(2000+i), cookieOf(t, resp, srcN(i)), nil)
		_, _ = resp.HandleHello(hello, srcN(i), nil)
	}
	_, hello, _ := ini.Initiate(2999, cookieOf(t, resp, srcN(999)), nil)
	if _, err := resp.HandleHello(hello, srcN(999), nil); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("the general budget is not spent: %v", err)
	}
	_, hello, _ = ini.Initiate(3000, cookieOf(t, resp, srcAlice), nil)
	if r, err := resp.HandleHello(hello, srcAlice, nil); err != nil || r[0] != wire.TypeChallenge {
		t.Fatalf("the configured peer's address got no handshake: %v", err)
	}
}

// One source holds at most MaxHalfOpenPerSource half-open handshakes: the one past the
// cap replaces that source's oldest (whose AUTH_PROOF then finds nothing), and leaves
// other sources' handshakes alone. All addresses of an IPv6 /64 are one source.
func TestHalfOpenCapPerSource(t *testing.T) {
	o := defaultOpts()
	ini, resp := newPair(t, o)
	perSrc := func(a netip.AddrPort) int {
		resp.mu.Lock()
		defer resp.mu.Unlock()
		return resp.half.perSrc[sourceKey(a.Addr())]
	}
	other, ohello, _ := ini.Initiate(69, nil, nil)
	ochal, err := resp.HandleHello(ohello, srcBob, nil)
	if err != nil {
		t.Fatal(err)
	}
	oldest, hello, _ := ini.Initiate(70, nil, nil)
	chal, err := resp.HandleHello(hello, srcAlice, nil)
	if err != nil || chal[0] != wire.TypeChallenge {
		t.Fatalf("HELLO 0: %v", err)
	}
	for i := 1; i < MaxHalfOpenPerSource; i++ {
		_, hello, _ := ini.Initiate(uint32(70+i), nil, nil)
		if r, err := resp.HandleHello(hello, srcAlice, nil); err != nil || r[0] != wire.TypeChallenge {
			t.Fatalf("HELLO %d: %v", i, err)
		}
	}
	_, hello, _ = ini.Initiate(99, nil, nil)
	if r, err := resp.HandleHello(hello, srcAlice, nil); err != nil || r[0] != wire.TypeChallenge {
		t.Fatalf("past the cap: %v", err)
	}
	if n := perSrc(srcAlice); n != MaxHalfOpenPerSource {
		t.Fatalf("the source holds %d half-open handshakes, cap %d", n, MaxHalfOpenPerSource)
	}
	if _, err := oldest.ReadChallenge(chal); err != nil {
		t.Fatal(err)
	}
	auth, _, _ := oldest.WriteAuthProof(nil, nil)
	if _, _, err := resp.HandleAuthProof(auth, srcAlice, nil); !errors.Is(err, ErrUnknownIndex) {
		t.Fatalf("the source's oldest handshake was not the one replaced: %v", err)
	}
	if _, err := other.ReadChallenge(ochal); err != nil {
		t.Fatal(err)
	}
	auth, _, _ = other.WriteAuthProof(nil, nil)
	if _, _, err := resp.HandleAuthProof(auth, srcBob, nil); err != nil {
		t.Fatalf("another source's handshake: %v", err)
	}
	// Another IPv6 address of the same /64 is the same source; another /64 is not.
	a := netip.MustParseAddrPort("[2001:db8:1:2::1]:1")
	for i := range MaxHalfOpenPerSource + 1 {
		_, hello, _ := ini.Initiate(uint32(200+i), nil, nil)
		if i == MaxHalfOpenPerSource {
			a = netip.MustParseAddrPort("[2001:db8:1:2:ffff::9]:1")
		}
		if _, err := resp.HandleHello(hello, a, nil); err != nil {
			t.Fatal(err)
		}
	}
	if n := perSrc(a); n != MaxHalfOpenPerSource {
		t.Fatalf("a /64 holds %d half-open handshakes, cap %d", n, MaxHalfOpenPerSource)
	}
	_, hello, _ = ini.Initiate(301, nil, nil)
	b := netip.MustParseAddrPort("[2001:db8:1:3::1]:1")
	if _, err := resp.HandleHello(hello, b, nil); err != nil || perSrc(b) != 1 {
		t.Fatalf("another /64: %v", err)
	}
}

// A full table evicts its oldest handshake that is not a configured peer's: the peer's
// handshake, though older than all the flood's, still completes.
func TestFullTableSparesConfiguredPeers(t *testing.T) {
	if testing.Short() {
		t.Skip("1024 handshakes")
	}
	o := defaultOpts()
	o.respThreshold = 8 * MaxHalfOpen
	o.priority = func(a netip.Addr) bool { return a == srcAlice.Addr() }
	ini, resp := newPair(t, o)
	in, hello, _ := ini.Initiate(7, cookieOf(t, resp, srcAlice), nil)
	chal, err := resp.HandleHello(hello, srcAlice, nil)
	if err != nil || chal[0] != wire.TypeChallenge {
		t.Fatal(err)
	}
	for i := range MaxHalfOpen + 100 {
		_, hello, _ := ini.Initiate(uint32(4000+i), cookieOf(t, resp, srcN(i)), nil)
		if r, err := resp.HandleHello(hello, srcN(i), nil); err != nil || r[0] != wire.TypeChallenge {
			t.Fatalf("flood HELLO %d: %v", i, err)
		}
	}
	if resp.HalfOpen() != MaxHalfOpen {
		t.Fatalf("half-open %d", resp.HalfOpen())
	}
	if _, err := in.ReadChallenge(chal); err != nil {
		t.Fatal(err)
	}
	auth, _, _ := in.WriteAuthProof(cookieOf(t, resp, srcAlice), nil)
	if _, reply, err := resp.HandleAuthProof(auth, srcAlice, nil); err != nil || reply != nil {
		t.Fatalf("the configured peer's handshake was evicted: %v", err)
	}
}

// A HELLO that carried a cookie, replayed after the cache forgot it, is not let through
// by the cookie: outside the window only a cookie of the current secret proves the
// address, and the replay's is from an older one.
func TestStaleHelloWithOldCookieCostsAtMostACookie(t *testing.T) {
	o := defaultOpts()
	ini, resp := newPair(t, o)
	_, old, _ := ini.Initiate(66, cookieOf(t, resp, srcAlice), nil)
	if r, err := resp.HandleHello(old, srcAlice, nil); err != nil || r[0] != wire.TypeChallenge {
		t.Fatalf("original HELLO: %v", err)
	}
	o.clock.Advance(ReplayWindow + time.Second) // the secret has rotated once since
	before := resp.DHCount()
	if r, err := resp.HandleHello(old, srcAlice, nil); err != nil || r[0] != wire.TypeCookieReply {
		t.Fatalf("replay with a cookie of the previous secret: %v", err)
	}
	if resp.DHCount() != before {
		t.Fatal("the replay cost X25519 work")
	}
}

// HELLOs a peer sent to other nodes (mac1 does not name the responder) and replayed
// here from the peer's own address, without the seed, take that source's half-open
// slots; the peer's own HELLO must still get a CHALLENGE and complete, rather than
// find its source full for HalfOpenTimeout.
func TestReplayedHellosFromPeersAddressDoNotLockItOut(t *testing.T) {
	for _, prio := range []bool{false, true} {
		o := defaultOpts()
		if prio {
			o.priority = func(a netip.Addr) bool { return a == srcAlice.Addr() }
		}
		ini, resp := newPair(t, o)
		for i := range 2 * MaxHalfOpenPerSource {
			_, captured, _ := ini.Initiate(uint32(5000+i), nil, nil)
			if _, err := resp.HandleHello(captured, srcAlice, nil); err != nil {
				t.Fatalf("priority %v: replayed HELLO %d: %v", prio, i, err)
			}
		}
		resp.mu.Lock()
		n := resp.half.perSrc[sourceKey(srcAlice.Addr())]
		resp.mu.Unlock()
		if n > MaxHalfOpenPerSource {
			t.Fatalf("priority %v: one source holds %d half-open handshakes, cap %d", prio, n, MaxHalfOpenPerSource)
		}
		in, hello, _ := ini.Initiate(6000, nil, nil)
		chal, err := resp.HandleHello(hello, srcAlice, nil)
		if err != nil || chal[0] != wire.TypeChallenge {
			t.Fatalf("priority %v: the peer's own HELLO after %d replays from its address: %v", prio, 2*MaxHalfOpenPerSource, err)
		}
		if _, err := in.ReadChallenge(chal); err != nil {
			t.Fatal(err)
		}
		auth, _, _ := in.WriteAuthProof(nil, nil)
		if _, reply, err := resp.HandleAuthProof(auth, srcAlice, nil); err != nil || reply != nil {
			t.Fatalf("priority %v: the peer's AUTH_PROOF: %v", prio, err)
		}
	}
}

// With a replay window shorter than the cookie secret's lifetime, a HELLO that carried
// a cookie and is replayed once the cache has forgotten it (stale) must not pass as
// proven: it costs at most a cookie reply, no public-key work.
func TestStaleHelloWithCookieUnderShortWindowCostsNoDH(t *testing.T) {
	o := defaultOpts()
	o.window = 10 * time.Second
	ini, resp := newPair(t, o)
	_, old, _ := ini.Initiate(66, cookieOf(t, resp, srcAlice), nil)
	if r, err := resp.HandleHello(old, srcAlice, nil); err != nil || r[0] != wire.TypeChallenge {
		t.Fatalf("original HELLO: %v", err)
	}
	o.clock.Advance(o.window + time.Second)
	resp.Sweep()
	before := resp.DHCount()
	r, err := resp.HandleHello(old, srcAlice, nil)
	if resp.DHCount() != before {
		t.Fatalf("the replay %.1fs later cost %d X25519 operations (answer %v, %v)",
			(o.window + time.Second).Seconds(), resp.DHCount()-before, r != nil && r[0] == wire.TypeChallenge, err)
	}
	if err != nil || r[0] != wire.TypeCookieReply {
		t.Fatalf("replay: %v", err)
	}
}

// With a short replay window, an initiator whose clock is off still completes with a
// cookie: the stricter rule for stale HELLOs costs it a round trip, not the handshake.
func TestSkewedClockHelloCompletesUnderShortWindow(t *testing.T) {
	o := defaultOpts()
	o.window = 10 * time.Second
	ini, resp := newPair(t, o)
	// Whatever the cookie secret's age, the retry within a second goes through.
	for step := range 3 {
		o.clock.Advance(time.Duration(step) * 4 * time.Second)
		in, hello, _ := ini.Initiate(uint32(70+step), nil, nil)
		o.clock.Advance(o.window)
		r, err := resp.HandleHello(hello, srcAlice, nil)
		if err != nil || r[0] != wire.TypeCookieReply {
			t.Fatalf("step %d: skewed HELLO: %v", step, err)
		}
		cookie, err := in.ReadCookieReply(r)
		if err != nil {
			t.Fatal(err)
		}
		o.clock.Advance(-o.window + 500*time.Millisecond)
		_, hello, _ = ini.Initiate(uint32(80+step), cookie, nil)
		o.clock.Advance(o.window)
		if r, err := resp.HandleHello(hello, srcAlice, nil); err != nil || r[0] != wire.TypeChallenge {
			t.Fatalf("step %d: skewed HELLO with the cookie: %v", step, err)
		}
		o.clock.Advance(-o.window)
	}
}

// staleHellos returns n HELLOs that are stale once the clock has advanced by a window:
// the caller advances it.
func staleHellos(t *testing.T, ini *Engine, n int, first uint32) [][]byte {
	t.Helper()
	out := make([][]byte, n)
	for i := range out {
		_, h, err := ini.Initiate(first+uint32(i), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = h
	}
	return out
}

// Many distinct stale HELLOs at once (replays of HELLOs the cache has forgotten) do not
// put the node under load: a fresh HELLO right after them gets a CHALLENGE, not a
// demand for a cookie.
func TestManyStaleHellosAreNoLoad(t *testing.T) {
	o := defaultOpts()
	o.respThreshold = 10
	ini, resp := newPair(t, o)
	old := staleHellos(t, ini, 5*o.respThreshold, 7000)
	o.clock.Advance(ReplayWindow)
	for i, h := range old {
		if _, err := resp.HandleHello(h, srcN(i), nil); err != nil && !errors.Is(err, ErrRateLimited) {
			t.Fatalf("stale HELLO %d: %v", i, err)
		}
	}
	_, hello, _ := ini.Initiate(7999, nil, nil)
	if r, err := resp.HandleHello(hello, srcAlice, nil); err != nil || r[0] != wire.TypeChallenge {
		t.Fatalf("fresh HELLO after %d stale ones: %v (they counted as load?)", len(old), err)
	}
}

// Stale HELLOs spoofed from an address spend a bucket of their own: under load, the
// address's real owner still gets its cookie reply.
func TestStaleHellosSpendNoFreshCookieBudget(t *testing.T) {
	o := defaultOpts()
	o.respThreshold = -1 // always under load
	ini, resp := newPair(t, o)
	old := staleHellos(t, ini, 4*CookieBurst, 7100)
	o.clock.Advance(ReplayWindow)
	for i, h := range old {
		if _, err := resp.HandleHello(h, srcAlice, nil); err != nil && !errors.Is(err, ErrRateLimited) {
			t.Fatalf("stale HELLO %d: %v", i, err)
		}
	}
	_, hello, _ := ini.Initiate(7199, nil, nil)
	if r, err := resp.HandleHello(hello, srcAlice, nil); err != nil || r[0] != wire.TypeCookieReply {
		t.Fatalf("fresh HELLO under load after stale ones from its address: %v, want a cookie reply", err)
	}
}

// Cookie replies to stale HELLOs are bounded node-wide, however many sources the
// replays come from: at one instant, at most the node-wide bucket's burst.
func TestStaleCookieRepliesBoundedNodeWide(t *testing.T) {
	o := defaultOpts()
	o.respThreshold = DefaultLoadThreshold // the node-wide bucket's rate and burst
	ini, resp := newPair(t, o)
	n := DefaultLoadThreshold + 100
	old := staleHellos(t, ini, n, 8000)
	o.clock.Advance(ReplayWindow)
	cookies := 0
	for i, h := range old {
		r, err := resp.HandleHello(h, srcN(i), nil)
		switch {
		case err == nil && r[0] == wire.TypeCookieReply:
			cookies++
		case errors.Is(err, ErrRateLimited):
		default:
			t.Fatalf("stale HELLO %d: %v", i, err)
		}
	}
	if cookies > DefaultLoadThreshold {
		t.Fatalf("%d cookie replies to %d stale HELLOs from as many sources at one instant, node-wide bound %d",
			cookies, n, DefaultLoadThreshold)
	}
}

// The edges of the window: a HELLO whose clock is just under half a window from the
// responder's is fresh; the cache drops its copies until a window after it was first
// seen; from then on its copies are stale, whichever way its clock was off.
func TestHelloAtTheWindowEdgesIsCachedThenStale(t *testing.T) {
	half := ReplayWindow / 2
	for _, ahead := range []bool{false, true} {
		o := defaultOpts()
		ini, resp := newPair(t, o)
		_, hello, _ := ini.Initiate(90, nil, nil)
		if ahead {
			o.clock.Advance(-half + time.Millisecond) // the HELLO's clock is ahead
		} else {
			o.clock.Advance(half - time.Millisecond) // behind
		}
		if r, err := resp.HandleHello(hello, srcAlice, nil); err != nil || r[0] != wire.TypeChallenge {
			t.Fatalf("ahead %v: a HELLO just inside half the window: %v", ahead, err)
		}
		o.clock.Advance(ReplayWindow - time.Millisecond)
		if _, err := resp.HandleHello(hello, srcAlice, nil); !errors.Is(err, ErrReplay) {
			t.Fatalf("ahead %v: a copy just inside the window: %v, want a replay drop", ahead, err)
		}
		o.clock.Advance(time.Millisecond)
		before := resp.DHCount()
		if r, err := resp.HandleHello(hello, srcAlice, nil); err != nil || r[0] != wire.TypeCookieReply || resp.DHCount() != before {
			t.Fatalf("ahead %v: a copy a window after first sight: %v, want only a cookie reply", ahead, err)
		}
	}
}

// A HELLO whose clock is more than half a window ahead is stale as much as one behind:
// otherwise a HELLO from the future, recorded once, would stay fresh for its copies
// long after the cache forgot it.
func TestHelloFromTheFutureIsStale(t *testing.T) {
	o := defaultOpts()
	ini, resp := newPair(t, o)
	_, hello, _ := ini.Initiate(91, nil, nil)
	o.clock.Advance(-ReplayWindow/2 - time.Millisecond)
	before := resp.DHCount()
	if r, err := resp.HandleHello(hello, srcAlice, nil); err != nil || r[0] != wire.TypeCookieReply || resp.DHCount() != before {
		t.Fatalf("a HELLO more than half a window ahead: %v, want only a cookie reply", err)
	}
}
