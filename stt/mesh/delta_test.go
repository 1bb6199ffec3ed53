package mesh

import (
	"crypto/ed25519"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// A SUMMARY from a member that lags one record behind is answered with that record
// alone: one RECORDS message, no DIGEST naming every member (issue 16: an introducer
// answered each such SUMMARY with 40 bytes per member held).
func TestGossipSummaryBehindByOneRecordGetsThatRecordNotADigest(t *testing.T) {
	const n = 40
	s := newSim(t, n, 0)
	a, b := s.nodes[0], s.nodes[1]
	s.link(a, b)
	s.setSelves()
	// a and b hold every record.
	for _, nd := range s.nodes[2:] {
		_, raw := nd.eng.store.Get(nd.id.Public)
		body, _ := AppendRecords(nil, raw)
		a.eng.Handle(nd.id.Public, nd.addr(), false, MsgRecords, body)
		b.eng.Handle(nd.id.Public, nd.addr(), false, MsgRecords, body)
	}
	a.eng.SessionUp(b.id.Public)
	b.eng.SessionUp(a.id.Public)
	s.pump()
	if a.eng.store.Summary() != b.eng.store.Summary() {
		t.Fatal("a and b differ before the test")
	}
	b.eng.store.Summary() // b's summary of the state it is about to lag in
	// One member re-signs; a hears of it, b does not.
	c := s.nodes[5]
	if err := c.eng.SetSelf(Record{Name: "renamed"}); err != nil {
		t.Fatal(err)
	}
	s.queue = nil
	_, raw := c.eng.store.Get(c.id.Public)
	body, _ := AppendRecords(nil, raw)
	a.eng.Handle(c.id.Public, c.addr(), false, MsgRecords, body)
	a.eng.store.Summary() // a computes summaries as it sends and compares them
	s.queue = nil

	var got []simMsg
	s.now = s.now.Add(s.interval) // past the one answer a second to b
	b.eng.Tick(s.now, [][32]byte{a.id.Public})
	for _, m := range s.queue {
		if m.from == b.id.Public && m.typ == MsgSummary {
			a.eng.Handle(b.id.Public, b.addr(), false, m.typ, m.body)
		}
	}
	for _, m := range s.queue {
		if m.from == a.id.Public {
			got = append(got, m)
		}
	}
	s.pump()
	if len(got) != 1 || got[0].typ != MsgRecords {
		var types []string
		for _, m := range got {
			types = append(types, fmt.Sprintf("%#x (%d bytes)", m.typ, len(m.body)))
		}
		t.Fatalf("a answered b's SUMMARY with %v, want one RECORDS", types)
	}
	if r := b.eng.Member(c.id.Public); r == nil || r.Name != "renamed" {
		t.Fatal("b did not get the re-signed record")
	}
	if a.eng.store.Summary() != b.eng.store.Summary() {
		t.Fatal("a and b still differ")
	}
	if d := a.eng.Stats().DeltaAnswers; d != 1 {
		t.Fatalf("DeltaAnswers = %d, want 1", d)
	}
}

// A SUMMARY of a state the receiver never was in (the sender holds something it lacks)
// is still answered with the DIGEST, and the exchange brings both sides level.
func TestGossipSummaryAheadStillGetsDigest(t *testing.T) {
	s := newSim(t, 6, 0)
	a, b := s.nodes[0], s.nodes[1]
	s.link(a, b)
	s.setSelves()
	for _, nd := range s.nodes[2:] {
		_, raw := nd.eng.store.Get(nd.id.Public)
		body, _ := AppendRecords(nil, raw)
		b.eng.Handle(nd.id.Public, nd.addr(), false, MsgRecords, body) // only b
	}
	s.queue = nil
	b.eng.Tick(s.now, [][32]byte{a.id.Public})
	digests := 0
	for len(s.queue) > 0 {
		m := s.queue[0]
		s.queue = s.queue[1:]
		if m.from == a.id.Public && m.typ == MsgDigest {
			digests++
		}
		s.byKey[m.to].eng.Handle(m.from, s.byKey[m.from].addr(), false, m.typ, m.body)
	}
	if digests == 0 {
		t.Fatal("a answered a SUMMARY of records it lacks without a DIGEST")
	}
	if a.eng.store.Summary() != b.eng.store.Summary() {
		t.Fatal("a and b differ after the exchange")
	}
}

// In the fifty-node lab's shape — two hubs every member keeps as neighbours, which
// answer every member's SUMMARY but flood only to a few — a record re-signed at rest
// costs a hub bytes in proportion to the members, not to the members squared: no DIGEST
// of the whole store per member that lags. Measured per member and re-sign at two
// sizes, it must not grow with the size of the mesh.
func TestGossipHubCostPerResignDoesNotGrowWithMembers(t *testing.T) {
	perMember := func(members int) float64 {
		s, hubs, rest, tick := newHubSim(t, members)
		sent0 := hubs[0].sent + hubs[1].sent
		const resigns = 5
		resignAtRest(t, s, rest, resigns, tick)
		// The hubs' own rounds (three SUMMARYs each per tick) are the same at any size.
		return float64(hubs[0].sent+hubs[1].sent-sent0) / resigns / float64(members)
	}
	small, large := perMember(16), perMember(64)
	t.Logf("hub bytes per re-sign per member: %.1f at 16 members, %.1f at 64", small, large)
	if large > 1.5*small {
		t.Fatalf("a hub's cost per member of a re-sign grows with the mesh: %.1f bytes at 16 members, %.1f at 64", small, large)
	}
}

// newHubSim builds the fifty-node lab's shape with members members: two hubs every member
// keeps as neighbours, which answer every member's SUMMARY but flood only to three
// members; each member's third neighbour is one it picked at random (flooding from one
// member reaches few others through them, the rest learn from the hubs). It returns the
// sim at rest, every record everywhere, and the tick that advances it one interval with
// those neighbours.
func newHubSim(t *testing.T, members int) (s *sim, hubs, rest []*simNode, tick func()) {
	s = newSim(t, members+2, 0)
	hubs, rest = s.nodes[:2], s.nodes[2:]
	conn := map[*simNode][][32]byte{}
	rng := rand.New(rand.NewPCG(uint64(members), 16))
	for i, m := range rest {
		for _, h := range hubs {
			s.link(m, h)
			conn[m] = append(conn[m], h.id.Public)
		}
		o := rest[(i+1+rng.IntN(len(rest)-1))%len(rest)]
		s.link(m, o)
		conn[m] = append(conn[m], o.id.Public)
	}
	for _, h := range hubs {
		for _, m := range rest[:3] { // a hub's neighbours: three members
			conn[h] = append(conn[h], m.id.Public)
		}
	}
	s.setSelves()
	s.sessionsUp()
	s.pump()
	tick = func() {
		s.now = s.now.Add(s.interval)
		for _, nd := range s.nodes {
			nd.eng.Tick(s.now, conn[nd])
		}
		s.pump()
	}
	for range 10 {
		tick()
	}
	if m := s.missing(); m != 0 {
		t.Fatalf("%d members: %d records missing before the re-signs", members, m)
	}
	return s, hubs, rest, tick
}

// resignAtRest has resigns members of rest re-sign their record one after the other,
// three rounds apart, and checks that every node holds every record after.
func resignAtRest(t *testing.T, s *sim, rest []*simNode, resigns int, tick func()) {
	for i := range resigns {
		nd := rest[(i*7)%len(rest)]
		if err := nd.eng.SetSelf(Record{Name: fmt.Sprint("renamed", i)}); err != nil {
			t.Fatal(err)
		}
		s.pump()
		for range 3 {
			tick()
		}
	}
	if m := s.missing(); m != 0 {
		t.Fatalf("%d members: %d records missing after the re-signs", len(rest), m)
	}
}

// A record re-signed at rest reaches every member, and each member floods it on to its
// neighbours — in the lab's shape mostly the two hubs, which thus get a copy from nearly
// every member. Those pushes go bare: the RECORDS a hub receives reliably (each costs
// it an ACK) per re-sign must not grow with the members, as they did when every push was
// acknowledged (issue 16: an introducer's ACKs of stale copies, 228 B/s of 1108 at rest).
func TestGossipHubAcksPerResignDoNotGrowWithMembers(t *testing.T) {
	perResign := func(members int) float64 {
		s, hubs, rest, tick := newHubSim(t, members)
		in := func() uint64 {
			return hubs[0].reliableIn[MsgRecords-MsgSummary] + hubs[1].reliableIn[MsgRecords-MsgSummary]
		}
		in0 := in()
		const resigns = 5
		resignAtRest(t, s, rest, resigns, tick)
		return float64(in()-in0) / resigns
	}
	small, large := perResign(16), perResign(64)
	t.Logf("RECORDS received reliably by the hubs per re-sign: %.1f at 16 members, %.1f at 64", small, large)
	if large > 1.5*small+2 {
		t.Fatalf("the hubs acknowledge %.1f RECORDS per re-sign at 16 members, %.1f at 64: the pushes are acknowledged", small, large)
	}
}

// Pushes of records, signed here (content changed, refreshed) or taken from a member, go
// by SendOnce; the leave record (the node waits for its ACKs before the sessions close)
// and the answers to a WANT go by Send.
func TestGossipPushesGoBareLeaveAndAnswersReliably(t *testing.T) {
	var reliable, once []simMsg
	a, c := NewIdentity(edSeedN(9)).Public, NewIdentity(edSeedN(11)).Public
	now := testNow
	e := New(Config{Identity: NewIdentity(testEdSeed), Network: NetworkOf(testSeed), Now: func() time.Time { return now },
		Send: func(to [32]byte, typ byte, body []byte) error {
			reliable = append(reliable, simMsg{to: to, typ: typ, body: body})
			return nil
		},
		SendOnce: func(to [32]byte, typ byte, body []byte) error {
			once = append(once, simMsg{to: to, typ: typ, body: body})
			return nil
		},
	})
	records := func(ms []simMsg) (n int) {
		for _, m := range ms {
			if m.typ == MsgRecords {
				n++
			}
		}
		return n
	}
	reset := func() { reliable, once = nil, nil }
	e.AddConnected([][32]byte{a, c})
	if err := e.SetSelf(Record{Name: "self"}); err != nil {
		t.Fatal(err)
	}
	if records(once) != 2 || records(reliable) != 0 {
		t.Fatalf("own record signed: %d pushes bare, %d reliably; want 2 bare", records(once), records(reliable))
	}
	// A member's record, taken from a: pushed bare to c alone.
	reset()
	other := NewIdentity(edSeedN(12))
	r := testRecord()
	r.Name = "other"
	body, err := AppendRecords(nil, mustMarshal(t, r, other, NetworkID(testSeed)))
	if err != nil {
		t.Fatal(err)
	}
	e.Handle(a, netip.AddrPort{}, false, MsgRecords, body)
	if records(once) != 1 || once[0].to != c || records(reliable) != 0 {
		t.Fatalf("member's record taken: %d pushes bare, %d reliably; want 1 bare, to the other neighbour", records(once), records(reliable))
	}
	// Refreshed: bare.
	reset()
	now = now.Add(DefaultLifetime / 3)
	e.Tick(now, [][32]byte{a, c})
	if records(once) != 2 || records(reliable) != 0 {
		t.Fatalf("own record refreshed: %d pushes bare, %d reliably; want 2 bare", records(once), records(reliable))
	}
	// The answer to a WANT: reliable.
	reset()
	want, _ := AppendWant(nil, [][32]byte{other.Public})
	e.Handle(c, netip.AddrPort{}, false, MsgWant, want)
	if records(reliable) != 1 || records(once) != 0 {
		t.Fatalf("WANT answered: %d RECORDS reliably, %d bare; want 1 reliably", records(reliable), records(once))
	}
	// The leave record: reliable.
	reset()
	if err := e.Leave(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	if records(reliable) != 2 || records(once) != 0 {
		t.Fatalf("leave record: %d pushes reliably, %d bare; want 2 reliably", records(reliable), records(once))
	}
}

// The SUMMARYs of the anti-entropy rounds, records' and statements', go by SendOnce
// (nothing acknowledges them: a member's every round would otherwise cost each of its
// neighbours an ACK, and an introducer is everyone's neighbour); those that start a new
// session's exchange, and every other message, by Send.
func TestGossipRoundSummariesSentOnceSessionUpSummaryReliably(t *testing.T) {
	var reliable, once []byte
	peer := NewIdentity(edSeedN(9)).Public
	now := testNow
	e := New(Config{Identity: NewIdentity(testEdSeed), Network: NetworkOf(testSeed), Now: func() time.Time { return now },
		Send:     func(_ [32]byte, typ byte, _ []byte) error { reliable = append(reliable, typ); return nil },
		SendOnce: func(_ [32]byte, typ byte, _ []byte) error { once = append(once, typ); return nil },
	})
	if err := e.SetSelf(Record{Name: "self"}); err != nil {
		t.Fatal(err)
	}
	// A statement held: its SUMMARY goes with the records' SUMMARY.
	e.SetAdmins([]ed25519.PublicKey{adminPub(testAdmin())})
	victim := NewIdentity(edSeedN(10)).Public
	if ok, reason := e.OfferStatement(mustSign(t, testRevoke(uint64(now.UnixNano()), victim), testAdmin(), NetworkID(testSeed))); !ok {
		t.Fatalf("statement refused: %s", reason)
	}
	reliable = nil
	e.SessionUp(peer)
	if !slices.Contains(reliable, MsgSummary) || !slices.Contains(reliable, MsgStatements) || len(once) != 0 {
		t.Fatalf("session up: reliably %x, once %x; want both SUMMARYs reliably", reliable, once)
	}
	reliable = nil
	for range 3 {
		now = now.Add(DefaultInterval)
		e.Tick(now, [][32]byte{peer})
	}
	if len(once) != 6 || slices.Contains(reliable, MsgSummary) || slices.Contains(reliable, MsgStatements) {
		t.Fatalf("three rounds: once %x, reliably %x; want three SUMMARYs of each kind once", once, reliable)
	}
}

// Store.Since names the records stored after a recent state (exactly those), and
// nothing for the current state, a state it never was in, or one older than the
// history it keeps.
func TestStoreSinceNamesWhatChangedAfterARecentState(t *testing.T) {
	net := NetworkOf(testSeed)
	self := NewIdentity(testEdSeed)
	st := NewStore(net.ID, self.Public, 0)
	var sums []Summary
	var keys [][32]byte
	for i := range summaryHistory + 8 {
		id := NewIdentity(edSeedN(i + 1))
		r := testRecord()
		r.Name = fmt.Sprint("m", i)
		if _, _, out := st.Put(mustMarshal(t, r, id, net.ID), testNow); out != Accepted {
			t.Fatalf("record %d: %v", i, out)
		}
		sums = append(sums, st.Summary())
		keys = append(keys, id.Public)
	}
	if _, ok := st.Since(sums[len(sums)-1], nil); ok {
		t.Fatal("Since took the current summary")
	}
	if _, ok := st.Since(Summary{Count: 3}, nil); ok {
		t.Fatal("Since took a summary the store never had")
	}
	if _, ok := st.Since(sums[len(sums)-1-summaryHistory], nil); ok {
		t.Fatal("Since took a summary older than its history")
	}
	back := 5
	got, ok := st.Since(sums[len(sums)-1-back], nil)
	if !ok {
		t.Fatalf("Since did not find the state %d changes back", back)
	}
	want := slices.Clone(keys[len(keys)-back:])
	slices.SortFunc(want, func(a, b [32]byte) int { return compareKeys(&a, &b) })
	if !slices.Equal(got, want) {
		t.Fatalf("Since named %d keys, want the %d stored after that state", len(got), len(want))
	}
}
