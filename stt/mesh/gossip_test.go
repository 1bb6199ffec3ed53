package mesh

import (
	"crypto/ed25519"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Without any push (records set before the sessions are known, no SessionUp), Ticks
// alone bring every record to every engine.
func TestGossipConvergesByAntiEntropy(t *testing.T) {
	for _, n := range []int{6, 20, 50} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			s := newSim(t, n, 0)
			s.sparse(rand.New(rand.NewPCG(uint64(n), 1)))
			s.setSelves() // no links known to the engines yet: nothing flooded
			if len(s.queue) != 0 {
				t.Fatalf("%d messages before any session", len(s.queue))
			}
			const K = 6
			rounds := 0
			for ; rounds < K && s.missing() > 0; rounds++ {
				s.tick()
			}
			if m := s.missing(); m > 0 {
				t.Fatalf("after %d rounds %d (node, member) pairs still missing", K, m)
			}
			t.Logf("%d members converged in %d rounds", n, rounds)
		})
	}
}

// A node that joins late, when the others already agree, gets everything by pulling
// (fewer records than one exchange wants: in one round; the bound per exchange is
// TestCatchUpWantsAreBoundedPerExchange's); its own record reaches everyone.
func TestGossipLateJoinerPullsInBoundedExchanges(t *testing.T) {
	const n = 50
	s := newSim(t, n, 0)
	s.sparse(rand.New(rand.NewPCG(7, 7)))
	s.setSelves()
	s.sessionsUp()
	s.pump()
	if m := s.missing(); m != 0 {
		t.Fatalf("%d missing before the join", m)
	}
	late := s.add(NewIdentity(edSeedN(1000)))
	if err := late.eng.SetSelf(Record{Name: "late"}); err != nil {
		t.Fatal(err)
	}
	s.link(late, s.nodes[0]) // one link: only node 0 can serve it
	s.tick()
	got := late.eng.Stats().Members
	if got != n {
		t.Fatalf("after one round the joiner holds %d records; want all %d", got, n)
	}
	for r := 0; r < 10 && s.missing() > 0; r++ {
		s.tick()
	}
	if m := s.missing(); m != 0 {
		t.Fatalf("%d missing 10 rounds after the join", m)
	}
}

// A record pushed by one node reaches every node by flooding, with no Tick; a new
// version replaces the old one everywhere and is reported as a change.
func TestGossipFloodsNewVersionsWithoutTicks(t *testing.T) {
	s := newSim(t, 30, 0)
	s.sparse(rand.New(rand.NewPCG(3, 3)))
	s.setSelves()
	s.sessionsUp()
	s.pump()
	if m := s.missing(); m != 0 {
		t.Fatalf("%d missing after the sessions came up", m)
	}
	src := s.nodes[4]
	oldV := src.eng.Self().Version
	for _, nd := range s.nodes {
		nd.changes = nil
	}
	s.now = s.now.Add(time.Second)
	want := netip.MustParsePrefix("10.44.0.0/16")
	if err := src.eng.SetSelf(Record{Name: "node4", Prefixes: []netip.Prefix{want}}); err != nil {
		t.Fatal(err)
	}
	s.pump()
	for _, nd := range s.nodes {
		if nd == src {
			continue
		}
		r := nd.eng.Member(src.id.Public)
		if r == nil || r.Version <= oldV || len(r.Prefixes) != 1 || r.Prefixes[0] != want {
			t.Fatalf("node %d holds %+v, want the new version", nd.i, r)
		}
		if len(nd.changes) != 1 || nd.changes[0].old == nil || nd.changes[0].old.Version != oldV || nd.changes[0].cur != r {
			t.Fatalf("node %d changes %+v", nd.i, nd.changes)
		}
	}
	// Setting the same content again changes nothing and sends nothing.
	if err := src.eng.SetSelf(Record{Name: "node4", Prefixes: []netip.Prefix{want}}); err != nil {
		t.Fatal(err)
	}
	if len(s.queue) != 0 {
		t.Fatalf("unchanged SetSelf sent %d messages", len(s.queue))
	}
}

// A member that stops refreshing disappears from every store once its record expires;
// the others, refreshing, stay.
func TestGossipExpiredRecordDisappears(t *testing.T) {
	const lifetime = 3 * time.Minute
	s := newSim(t, 8, lifetime)
	s.sparse(rand.New(rand.NewPCG(5, 5)))
	s.setSelves()
	s.sessionsUp()
	s.pump()
	gone := s.nodes[2]
	gone.down = true
	for _, nd := range s.nodes {
		nd.changes = nil
	}
	for i := 0; i < int(lifetime/s.interval)+2; i++ {
		s.tick()
	}
	for _, nd := range s.nodes {
		if nd.down {
			continue
		}
		if r := nd.eng.Member(gone.id.Public); r != nil {
			t.Fatalf("node %d still holds the record of the stopped node: %+v", nd.i, r)
		}
		var removed bool
		for _, c := range nd.changes {
			if c.cur == nil && c.old != nil && c.old.Key == gone.id.Public {
				removed = true
			}
		}
		if !removed {
			t.Fatalf("node %d: no OnChange(old, nil) for the stopped node", nd.i)
		}
		if got := len(nd.eng.Members()); got != len(s.nodes)-2 {
			t.Fatalf("node %d holds %d members, want %d", nd.i, got, len(s.nodes)-2)
		}
	}
	if s.missing() != 0 {
		t.Fatal("live members lost records")
	}
}

func TestGossipObserveAnsweredWithSeenAddress(t *testing.T) {
	s := newSim(t, 2, 0)
	a, b := s.nodes[0], s.nodes[1]
	s.link(a, b)
	s.setSelves()
	seen := netip.MustParseAddrPort("203.0.113.9:4242")
	// b receives OBSERVE from a, seen at `seen` over WebSocket; its answer goes to a.
	b.eng.Handle(a.id.Public, seen, true, MsgObserve, nil)
	if len(s.queue) != 1 || s.queue[0].typ != MsgObserved || s.queue[0].to != a.id.Public {
		t.Fatalf("answer %+v", s.queue)
	}
	s.pump()
	obs := a.eng.Observed()
	if len(obs) != 1 || obs[0].By != b.id.Public || obs[0].Addr != seen || !obs[0].ViaWS || !obs[0].At.Equal(s.now) {
		t.Fatalf("observed %+v", obs)
	}
	// SessionUp sends OBSERVE, answered over UDP with the address the sim sees a at;
	// kept beside the WebSocket one (one observation per member and transport), with
	// the address b's answer came from.
	a.eng.SessionUp(b.id.Public)
	s.pump()
	obs = a.eng.Observed()
	if len(obs) != 2 || obs[1].By != b.id.Public || obs[1].Addr != a.addr() || obs[1].ViaWS || obs[1].From != b.addr() ||
		obs[0].Addr != seen || !obs[0].ViaWS {
		t.Fatalf("after SessionUp, observed %+v; want b's WebSocket entry and a UDP entry with %v from %v", obs, a.addr(), b.addr())
	}
	// Bounded: many observers keep at most MaxObservations.
	for i := range 20 {
		var by [32]byte
		by[0] = byte(i + 1)
		body, _ := AppendObserved(nil, Observed{Transport: TransportUDP, Addr: seen})
		a.eng.Handle(by, seen, false, MsgObserved, body)
	}
	if got := len(a.eng.Observed()); got != MaxObservations {
		t.Fatalf("%d observations kept, want %d", got, MaxObservations)
	}
}

// snapshot is every node's view: member key → version.
func (s *sim) snapshot() []map[[32]byte]uint64 {
	var out []map[[32]byte]uint64
	for _, nd := range s.nodes {
		m := make(map[[32]byte]uint64)
		for _, r := range nd.eng.Members() {
			m[r.Key] = r.Version
		}
		out = append(out, m)
	}
	return out
}

// A member that sends forged records (another's key, another network, altered bytes) or
// garbage changes no store and no record, and every attempt is counted.
func TestGossipMaliciousMemberChangesNothing(t *testing.T) {
	s := newSim(t, 6, 0)
	s.sparse(rand.New(rand.NewPCG(9, 9)))
	s.setSelves()
	s.sessionsUp()
	s.pump()
	before := s.snapshot()
	for _, nd := range s.nodes {
		nd.changes = nil
	}
	evil := NewIdentity(edSeedN(666))
	victim := s.nodes[3]
	target := s.nodes[0]
	netID := NetworkID(s.seed)
	send := func(typ byte, body []byte) {
		target.eng.Handle(evil.Public, netip.MustParseAddrPort("198.51.100.66:1"), false, typ, body)
		s.pump()
	}
	records := func(raw ...[]byte) []byte {
		b, err := AppendRecords(nil, raw...)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// 1. The victim's signing key in a record signed by the attacker, newer version.
	forged := mustMarshal(t, Record{Version: victim.eng.Self().Version + 1, Expires: s.now.Add(time.Hour), Name: "node3",
		Prefixes: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}}, evil, netID)
	copy(forged[24:56], victim.id.Signing.Public().(ed25519.PublicKey))
	forged = resign(forged, evil, netID)
	send(MsgRecords, records(forged))
	// 2. The victim's own record with a byte changed.
	_, vraw := target.eng.store.Get(victim.id.Public)
	altered := append([]byte(nil), vraw...)
	altered[8]++ // version
	send(MsgRecords, records(altered))
	// 3. A record the attacker signed for another network.
	var other [32]byte
	other[0] = 0xee
	send(MsgRecords, records(mustMarshal(t, Record{Version: 1, Expires: s.now.Add(time.Hour), Name: "evil"}, evil, NetworkID(other))))
	// 4. Garbage of every type, and unknown types. The NAT messages (0x86–0x8B) are
	// the node's to route, not the engine's: it drops them uncounted.
	rng := rand.New(rand.NewPCG(1, 2))
	for typ := 0x80; typ <= 0x90; typ++ {
		for range 5 {
			g := make([]byte, 1+rng.IntN(300))
			for i := range g {
				g[i] = byte(rng.Uint32())
			}
			send(byte(typ), g)
		}
	}
	// 5. A digest claiming newer versions of everyone: wants at most MaxPerExchange keys, stores nothing.
	var entries []DigestEntry
	for _, nd := range s.nodes {
		entries = append(entries, DigestEntry{Key: nd.id.Public, Version: ^uint64(0)})
	}
	d, _ := AppendDigest(nil, true, entries)
	send(MsgDigest, d)

	after := s.snapshot()
	for i := range before {
		if fmt.Sprint(before[i]) != fmt.Sprint(after[i]) {
			t.Fatalf("node %d's view changed:\nbefore %v\nafter  %v", i, before[i], after[i])
		}
		if len(s.nodes[i].changes) != 0 {
			t.Fatalf("node %d reported changes %+v", i, s.nodes[i].changes)
		}
	}
	st := target.eng.Stats()
	if st.BadSignature < 3 {
		t.Errorf("bad signatures counted %d, want ≥ 3", st.BadSignature)
	}
	if st.BadMessages+st.UnknownTypes+st.Malformed < 5*11 {
		t.Errorf("garbage counted %d bad + %d unknown + %d malformed records, want ≥ %d", st.BadMessages, st.UnknownTypes, st.Malformed, 5*11)
	}
	if st.Accepted != uint64(len(s.nodes)-1) {
		t.Errorf("accepted %d, want only the %d honest records", st.Accepted, len(s.nodes)-1)
	}
}

// A node restarted with a clock behind its previous run's record re-signs above the
// version the others hold, so its new content wins.
func TestGossipRestartedNodeOutranksItsOldRecord(t *testing.T) {
	s := newSim(t, 6, 0)
	s.sparse(rand.New(rand.NewPCG(4, 4)))
	s.setSelves()
	s.sessionsUp()
	s.pump()
	old := s.nodes[1]
	oldV := old.eng.Self().Version
	// Same identity, new engine, clock an hour behind.
	old.down = true
	s.now = s.now.Add(-time.Hour)
	nd := s.add(old.id) // replaces byKey entry
	for k := range old.links {
		s.link(nd, s.byKey[k])
	}
	if err := nd.eng.SetSelf(Record{Name: "node1", WSURL: "wss://new.example/"}); err != nil {
		t.Fatal(err)
	}
	if nd.eng.Self().Version >= oldV {
		t.Fatal("test setup: the new run's version is not behind")
	}
	for k := range nd.links {
		nd.eng.SessionUp(k)
	}
	s.pump()
	for _, x := range s.nodes {
		if x.down || x == nd {
			continue
		}
		r := x.eng.Member(nd.id.Public)
		if r == nil || r.WSURL != "wss://new.example/" || r.Version <= oldV {
			t.Fatalf("node %d holds %+v, want the restarted node's new content above version %d", x.i, r, oldV)
		}
	}
	if nd.eng.Stats().SelfBumps == 0 {
		t.Fatal("no self bump counted")
	}
}

// Refreshing: a node re-signs its record every Lifetime/3 and the others follow.
func TestGossipRefreshesOwnRecord(t *testing.T) {
	const lifetime = 3 * time.Minute
	s := newSim(t, 4, lifetime)
	s.sparse(rand.New(rand.NewPCG(6, 6)))
	s.setSelves()
	s.sessionsUp()
	s.pump()
	v := s.nodes[0].eng.Self().Version
	for i := 0; i < int(lifetime/3/s.interval); i++ {
		s.tick()
	}
	if s.nodes[0].eng.Self().Version == v {
		t.Fatal("own record not refreshed after Lifetime/3")
	}
	for i := 0; i < int(2*lifetime/s.interval); i++ {
		s.tick()
	}
	if m := s.missing(); m != 0 {
		t.Fatalf("%d missing after two lifetimes of refreshes", m)
	}
}

// Members that start together (the fifty-node lab; a fleet rebooted at once) do not
// refresh together: each refreshes within the last eighth before Lifetime/3, never
// later, and the refreshes spread over that eighth — in the lab all 49 members re-signed
// within one round, and each re-signed record cost an introducer ~48 stale copies.
func TestGossipRefreshesOfMembersStartedTogetherSpread(t *testing.T) {
	const n = 64
	third := DefaultLifetime / 3
	engs := make([]*Engine, n)
	for i := range engs {
		engs[i] = New(Config{Identity: NewIdentity(edSeedN(i + 1)), Network: NetworkOf(testSeed), Now: func() time.Time { return testNow }})
		if err := engs[i].SetSelf(Record{Name: fmt.Sprint("node", i)}); err != nil {
			t.Fatal(err)
		}
	}
	// Tick each every second from a little before the earliest refresh to Lifetime/3,
	// and note when its version changes.
	const step = time.Second
	at := make([]time.Duration, n)
	for d := third - third/refreshJitterDiv - 5*step; d <= third; d += step {
		for i, e := range engs {
			if at[i] != 0 {
				continue
			}
			v := e.Self().Version
			e.Tick(testNow.Add(d), nil)
			if e.Self().Version != v {
				at[i] = d
			}
		}
	}
	// A bucket holds a tenth of the spread (7.5 s at the default lifetime); evenly
	// spread, n members put n/10 in each.
	bucket := third / refreshJitterDiv / 10
	count := map[time.Duration]int{}
	most := 0
	for i, d := range at {
		if d == 0 {
			t.Fatalf("member %d did not refresh by Lifetime/3 (%v)", i, third)
		}
		if d < third-third/refreshJitterDiv {
			t.Fatalf("member %d refreshed %v after signing, more than an eighth before Lifetime/3 (%v)", i, d, third)
		}
		count[d/bucket]++
		most = max(most, count[d/bucket])
	}
	t.Logf("%d members refreshed in %d buckets of %v, at most %d in one", n, len(count), bucket, most)
	if len(count) < 8 || most > n/3 {
		t.Fatalf("refreshes of %d members started together fall into %d buckets of %v, %d in one: not spread", n, len(count), bucket, most)
	}
}

// The side that gets a DIGEST sends the records the digest does not name: one SUMMARY
// from a, answered by b's DIGEST, brings b everything a holds.
func TestGossipDigestExchangePushesWhatThePeerLacks(t *testing.T) {
	s := newSim(t, 5, 0)
	a, b := s.nodes[0], s.nodes[1]
	s.link(a, b)
	s.setSelves()
	// a learns the others' records directly (no link to them needed).
	for _, nd := range s.nodes[2:] {
		_, raw := nd.eng.store.Get(nd.id.Public)
		body, _ := AppendRecords(nil, raw)
		a.eng.Handle(nd.id.Public, nd.addr(), false, MsgRecords, body)
	}
	s.queue = nil
	// Only a ticks; b never asks.
	a.eng.Tick(s.now, [][32]byte{b.id.Public})
	s.pump()
	for _, nd := range s.nodes {
		if nd != b && b.eng.Member(nd.id.Public) == nil {
			t.Fatalf("b lacks node %d's record after a's exchange", nd.i)
		}
	}
	if a.eng.Member(b.id.Public) == nil {
		t.Fatal("a did not fetch b's record")
	}
}

// OnChange may call back into the engine (here SetSelf, which floods) without deadlock,
// and every change is reported.
func TestGossipOnChangeMayCallEngine(t *testing.T) {
	s := newSim(t, 3, 0)
	a, b := s.nodes[0], s.nodes[1]
	s.link(a, b)
	s.setSelves()
	calls := 0
	a.eng.cfg.OnChange = func(old, cur *Record) {
		calls++
		if cur != nil {
			a.eng.SetSelf(Record{Name: "node0", WSURL: "wss://seen/" + cur.Name})
		}
	}
	a.eng.SessionUp(b.id.Public)
	b.eng.SessionUp(a.id.Public)
	s.pump()
	if calls != 1 || a.eng.Self().WSURL != "wss://seen/node1" {
		t.Fatalf("%d calls, own record %+v", calls, a.eng.Self())
	}
}

// The engine is called from the receive and timer goroutines at once; -race checks it.
func TestEngineConcurrentUse(t *testing.T) {
	netID := NetworkID(testSeed)
	var raws [][]byte
	var keys [][32]byte
	for i := 1; i <= 8; i++ {
		id := NewIdentity(edSeedN(i))
		r := Record{Version: uint64(i), Expires: testNow.Add(time.Hour), Name: fmt.Sprint("m", i)}
		raw, err := r.Marshal(id, netID)
		if err != nil {
			t.Fatal(err)
		}
		raws, keys = append(raws, raw), append(keys, id.Public)
	}
	var mu sync.Mutex
	sent := 0
	var changes atomic.Int64
	e := New(Config{
		Identity: NewIdentity(testEdSeed), Network: NetworkOf(testSeed),
		Send:     func([32]byte, byte, []byte) error { mu.Lock(); sent++; mu.Unlock(); return nil },
		OnChange: func(old, cur *Record) { changes.Add(1) },
		Now:      func() time.Time { return testNow },
	})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				k := keys[(g+i)%len(keys)]
				body, _ := AppendRecords(nil, raws[(g*3+i)%len(raws)])
				e.Handle(k, netip.MustParseAddrPort("192.0.2.1:9"), false, MsgRecords, body)
				e.Handle(k, netip.MustParseAddrPort("192.0.2.1:9"), false, MsgObserve, nil)
				switch i % 4 {
				case 0:
					e.Tick(testNow, keys[:3])
				case 1:
					_ = e.Members()
				case 2:
					_ = e.SetSelf(Record{Name: fmt.Sprint("self", i%3)})
				case 3:
					_ = e.Stats()
				}
			}
		}()
	}
	wg.Wait()
	if len(e.Members()) != len(keys) || changes.Load() != int64(len(keys)) {
		t.Fatalf("%d members, %d changes; want %d each", len(e.Members()), changes.Load(), len(keys))
	}
}

// The engine's bounds show in its counters: records beyond MaxMembers and versions
// beyond the rate are refused and counted, and the held ones stay.
func TestEngineCountsFullAndRate(t *testing.T) {
	netID := NetworkID(testSeed)
	e := New(Config{Identity: NewIdentity(testEdSeed), Network: NetworkOf(testSeed), MaxMembers: 3,
		Now: func() time.Time { return testNow }})
	if err := e.SetSelf(Record{Name: "self"}); err != nil {
		t.Fatal(err)
	}
	from := netip.MustParseAddrPort("192.0.2.1:9")
	offer := func(id Identity, v uint64) {
		r := Record{Version: v, Expires: testNow.Add(time.Hour), Name: "m"}
		raw, err := r.Marshal(id, netID)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := AppendRecords(nil, raw)
		e.Handle(id.Public, from, false, MsgRecords, body)
	}
	for i := 1; i <= 5; i++ {
		offer(NewIdentity(edSeedN(i)), 1)
	}
	st := e.Stats()
	if st.Members != 2 || st.Full != 3 || st.Accepted != 2 {
		t.Fatalf("members %d full %d accepted %d; want 2, 3, 2 (own record counts toward MaxMembers 3)", st.Members, st.Full, st.Accepted)
	}
	m := NewIdentity(edSeedN(1))
	for v := uint64(2); v <= 2+RateBurst; v++ {
		offer(m, v)
	}
	if st := e.Stats(); st.RateLimited != 2 || e.Member(m.Public).Version != RateBurst {
		t.Fatalf("rate limited %d, held version %d; want 2, %d", st.RateLimited, e.Member(m.Public).Version, RateBurst)
	}
}

// TestGossipLeaveForgottenSoon: a node that leaves floods its record with a short
// expiry, and every other node forgets it once that passes, long before its lifetime.
func TestGossipLeaveForgottenSoon(t *testing.T) {
	const lifetime = 30 * time.Minute
	s := newSim(t, 8, lifetime)
	s.sparse(rand.New(rand.NewPCG(7, 7)))
	s.setSelves()
	s.sessionsUp()
	s.pump()
	gone := s.nodes[3]
	if err := gone.eng.Leave(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	s.pump()
	gone.down = true
	for i := 0; i < 3; i++ { // 30 s of ticks: well inside the lifetime
		s.tick()
	}
	for _, nd := range s.nodes {
		if nd.down {
			continue
		}
		if r := nd.eng.Member(gone.id.Public); r != nil {
			t.Fatalf("node %d still holds the record of the node that left: expires %v", nd.i, r.Expires)
		}
	}
	if s.missing() != 0 {
		t.Fatal("live members lost records")
	}
}

// TestRecordsMessagesFitTheSmallestPath: an answer of many records is packed within
// PackBudget, so that its frame fits a 1280-byte IPv6 packet through a relay (a node
// never fragments, and a reliable message too large to send stops all later ones).
func TestRecordsMessagesFitTheSmallestPath(t *testing.T) {
	netID := NetworkID(testSeed)
	var bodies [][]byte
	e := New(Config{Identity: NewIdentity(testEdSeed), Network: NetworkOf(testSeed), Now: func() time.Time { return testNow },
		Send: func(_ [32]byte, typ byte, body []byte) error {
			if typ == MsgRecords {
				bodies = append(bodies, body)
			}
			return nil
		}})
	if err := e.SetSelf(Record{Name: "self"}); err != nil {
		t.Fatal(err)
	}
	from := netip.MustParseAddrPort("192.0.2.1:9")
	var keys [][32]byte
	for i := 1; i <= 30; i++ {
		id := NewIdentity(edSeedN(i))
		r := testRecord()
		r.Name = fmt.Sprintf("member-%02d", i)
		// Records of 228 bytes: five make a 1151-byte body, within the parsers' 1200 but
		// not within PackBudget.
		raw := mustMarshal(t, r, id, netID)
		r.WSURL += strings.Repeat("x", 228-len(raw))
		raw = mustMarshal(t, r, id, netID)
		if len(raw) != 228 {
			t.Fatalf("record of %d bytes", len(raw))
		}
		body, _ := AppendRecords(nil, raw)
		e.Handle(id.Public, from, false, MsgRecords, body)
		keys = append(keys, id.Public)
	}
	bodies = nil
	asker := NewIdentity(edSeedN(99)).Public
	for len(keys) > 0 {
		n := min(len(keys), MaxWantKeys)
		want, err := AppendWant(nil, keys[:n])
		if err != nil {
			t.Fatal(err)
		}
		e.Handle(asker, from, false, MsgWant, want)
		keys = keys[n:]
	}
	got := 0
	for _, b := range bodies {
		if len(b) > PackBudget {
			t.Fatalf("RECORDS of %d bytes, more than the %d that fit the smallest path", len(b), PackBudget)
		}
		recs, err := ParseRecords(b, nil)
		if err != nil {
			t.Fatal(err)
		}
		got += len(recs)
	}
	if got != 30 {
		t.Fatalf("%d records sent for 30 wanted", got)
	}
}
