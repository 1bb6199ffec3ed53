package mesh

import (
	"crypto/ed25519"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

// withAdmins makes every node of s obey admins, and counts the statements each takes.
func (s *sim) withAdmins(admins ...ed25519.PublicKey) map[*simNode]int {
	taken := make(map[*simNode]int)
	for _, nd := range s.nodes {
		nd.eng.SetAdmins(admins)
		nd.eng.cfg.OnStatement = func(*Statement) { taken[nd]++ }
	}
	return taken
}

// A revocation offered at one node of a sparse mesh reaches every node at once by
// pushes alone (no anti-entropy round), and every node forgets the revoked member's
// record and refuses it from then on.
func TestStatementPushReachesEveryMemberAndForgetsTheRecord(t *testing.T) {
	s := newSim(t, 24, 0)
	s.sparse(rand.New(rand.NewPCG(1, 2)))
	s.setSelves()
	taken := s.withAdmins(adminPub(testAdmin()))
	s.sessionsUp()
	s.pump()
	for range 3 {
		s.tick()
	}
	if n := s.missing(); n != 0 {
		t.Fatalf("%d records missing before the revocation", n)
	}
	victim := s.nodes[5]
	raw := mustSign(t, testRevoke(uint64(s.now.UnixNano()), victim.id.Public), testAdmin(), NetworkID(s.seed))
	if ok, reason := s.nodes[17].eng.OfferStatement(raw); !ok {
		t.Fatalf("offer: %s", reason)
	}
	s.pump()
	for _, nd := range s.nodes {
		if nd == victim {
			continue
		}
		if !nd.eng.Revoked(victim.id.Public) {
			t.Fatalf("node %d did not get the revocation by push", nd.i)
		}
		if nd.eng.Member(victim.id.Public) != nil {
			t.Fatalf("node %d still holds the revoked member's record", nd.i)
		}
		if taken[nd] != 1 {
			t.Fatalf("node %d reported %d statements, want 1", nd.i, taken[nd])
		}
	}
	// The victim's next record, and its flood, are refused everywhere.
	if err := victim.eng.SetSelf(Record{Name: "node5", WSURL: "ws://a.example/x"}); err != nil {
		t.Fatal(err)
	}
	s.pump()
	for range 3 {
		s.tick()
	}
	for _, nd := range s.nodes {
		if nd != victim && nd.eng.Member(victim.id.Public) != nil {
			t.Fatalf("node %d took the revoked member's record again", nd.i)
		}
	}
}

// A member that was away (no session when the statement was pushed) gets it from the
// summaries of the next round; and a member holding a statement the others lack (its
// neighbours were away) gives it back to them through the same exchange.
func TestStatementSummaryExchangeCatchesUpBothWays(t *testing.T) {
	s := newSim(t, 6, 0)
	for i := range s.nodes {
		s.link(s.nodes[i], s.nodes[(i+1)%len(s.nodes)])
	}
	s.setSelves()
	s.withAdmins(adminPub(testAdmin()), adminPub(adminN(2)))
	s.sessionsUp()
	s.pump()
	away := s.nodes[3]
	away.down = true
	netID := NetworkID(s.seed)
	r1 := mustSign(t, testRevoke(uint64(s.now.UnixNano()), [32]byte{0xee, 1}), testAdmin(), netID)
	if ok, reason := s.nodes[0].eng.OfferStatement(r1); !ok {
		t.Fatal(reason)
	}
	s.pump()
	if away.eng.Revoked([32]byte{0xee, 1}) {
		t.Fatal("a node that was down got the push")
	}
	// While away, it is given another admin's revocation (its own admin ran revoke).
	r2 := mustSign(t, testRevoke(uint64(s.now.UnixNano()), [32]byte{0xee, 2}), adminN(2), netID)
	if ok, reason := away.eng.OfferStatement(r2); !ok {
		t.Fatal(reason)
	}
	away.down = false
	s.queue = nil // what it pushed while down is lost
	for range 6 {
		s.tick()
	}
	for _, nd := range s.nodes {
		if !nd.eng.Revoked([32]byte{0xee, 1}) || !nd.eng.Revoked([32]byte{0xee, 2}) {
			t.Fatalf("node %d: revoked 1 %v, 2 %v after the rounds", nd.i, nd.eng.Revoked([32]byte{0xee, 1}), nd.eng.Revoked([32]byte{0xee, 2}))
		}
	}
	// In step: a round sends summaries and nothing more.
	before := len(s.queue)
	s.now = s.now.Add(s.interval)
	s.nodes[0].eng.Tick(s.now, [][32]byte{s.nodes[1].id.Public})
	n := s.pump()
	if n-before > 3 {
		t.Fatalf("a round in step sent %d messages", n-before)
	}
}

// A statement signed by a key that is not an admin, a replay and an older one are
// dropped, counted by reason, and not passed on.
func TestStatementGossipDropsForgedReplayedAndOlder(t *testing.T) {
	s := newSim(t, 3, 0)
	s.link(s.nodes[0], s.nodes[1])
	s.link(s.nodes[1], s.nodes[2])
	s.setSelves()
	taken := s.withAdmins(adminPub(testAdmin()))
	s.sessionsUp()
	s.pump()
	netID := NetworkID(s.seed)
	target := [32]byte{0xee, 7}
	send := func(raw []byte) {
		body, err := AppendStatementList(nil, 0, raw)
		if err != nil {
			t.Fatal(err)
		}
		s.nodes[1].eng.Handle(s.nodes[0].id.Public, s.nodes[0].addr(), false, MsgStatements, body)
		s.pump()
	}
	forged := mustSign(t, testRevoke(uint64(s.now.UnixNano()), target), adminN(9), netID)
	send(forged)
	newer := mustSign(t, testRevoke(uint64(s.now.UnixNano()), target), testAdmin(), netID)
	send(newer)
	send(newer) // replay
	older := mustSign(t, testRevoke(uint64(s.now.Add(-time.Hour).UnixNano()), target), testAdmin(), netID)
	send(older)
	st := s.nodes[1].eng.StatementStats()
	if st.Offers[ReasonUnknownAdmin] != 1 || st.Offers[ReasonStale] < 2 || st.Offers[ReasonAccepted] != 1 || st.Held != 1 {
		t.Fatalf("counts %v, held %d", st.Offers, st.Held)
	}
	if taken[s.nodes[2]] != 1 || s.nodes[2].eng.StatementStats().Offers[ReasonUnknownAdmin] != 0 {
		t.Fatalf("node 2 took %d statements and saw %v: only the valid one must travel", taken[s.nodes[2]], s.nodes[2].eng.StatementStats().Offers)
	}
}

// Removing an admin key drops its statements and lifts its revocations; loading saved
// statements restores them without counting them as offers.
func TestStatementSetAdminsAndLoad(t *testing.T) {
	e := New(Config{Identity: NewIdentity(testEdSeed), Network: NetworkOf(testSeed), Now: func() time.Time { return testNow },
		Admins: []ed25519.PublicKey{adminPub(testAdmin()), adminPub(adminN(2))}})
	netID := NetworkID(testSeed)
	a := mustSign(t, testRevoke(issuedAt(0), [32]byte{1}), testAdmin(), netID)
	b := mustSign(t, testRevoke(issuedAt(0), [32]byte{2}), adminN(2), netID)
	if taken, refused := e.LoadStatements([][]byte{a, b, []byte("junk")}); taken != 2 || refused != 1 {
		t.Fatalf("load: %d taken, %d refused", taken, refused)
	}
	if st := e.StatementStats(); st.Offers[ReasonAccepted] != 0 || st.Offers[ReasonMalformed] != 0 {
		t.Fatalf("loading counted offers: %v", st.Offers)
	}
	if dropped := e.SetAdmins([]ed25519.PublicKey{adminPub(testAdmin())}); dropped != 1 {
		t.Fatalf("SetAdmins dropped %d", dropped)
	}
	if !e.Revoked([32]byte{1}) || e.Revoked([32]byte{2}) {
		t.Fatalf("after removing admin 2: revoked 1 %v, 2 %v", e.Revoked([32]byte{1}), e.Revoked([32]byte{2}))
	}
	if got := len(e.Statements()); got != 1 {
		t.Fatalf("%d statements held", got)
	}
}

// An answer is bounded: a store holding more than MaxStatementsAnswer statements sends
// that many and does not flag the answer complete, and every list fits its limit.
func TestStatementAnswerIsBounded(t *testing.T) {
	var out [][]byte
	e := New(Config{Identity: NewIdentity(testEdSeed), Network: NetworkOf(testSeed), Now: func() time.Time { return testNow },
		Admins: []ed25519.PublicKey{adminPub(testAdmin())},
		Send:   func(_ [32]byte, typ byte, body []byte) error { out = append(out, body); return nil }})
	netID := NetworkID(testSeed)
	var raws [][]byte
	for i := range MaxStatementsAnswer + 10 {
		raws = append(raws, mustSign(t, testRevoke(issuedAt(0), [32]byte{1, byte(i), byte(i >> 8)}), testAdmin(), netID))
	}
	e.LoadStatements(raws)
	peer := [32]byte{9}
	e.Handle(peer, netip.AddrPort{}, false, MsgStatements, AppendStatementsSummary(nil, Summary{}))
	n, last := 0, byte(0)
	for _, body := range out {
		op, _, list, err := ParseStatementsMessage(body, nil)
		if err != nil || op != StatementsList {
			t.Fatalf("answer part: op %d, %v", op, err)
		}
		if len(body) > PackBudget {
			t.Fatalf("list of %d bytes", len(body))
		}
		n += len(list.Statements)
		last = list.Flags
	}
	if n != MaxStatementsAnswer || last&ListLast == 0 || last&ListComplete != 0 {
		t.Fatalf("answer of %d statements, last flags %#x", n, last)
	}
}

// An answer this node did not ask for (no SUMMARY sent to that member) makes it send
// nothing back: three bytes from a member must not buy 64 statements.
func TestStatementUnaskedAnswerGetsNoPushBack(t *testing.T) {
	var sent int
	e := New(Config{Identity: NewIdentity(testEdSeed), Network: NetworkOf(testSeed), Now: func() time.Time { return testNow },
		Admins: []ed25519.PublicKey{adminPub(testAdmin())},
		Send:   func([32]byte, byte, []byte) error { sent++; return nil }})
	e.LoadStatements([][]byte{goldenBytes(nil, goldenRevoke), goldenBytes(nil, goldenRotate)})
	empty := goldenBytes(nil, goldenStatementsEmpty)
	peer := [32]byte{5}
	e.Handle(peer, netip.AddrPort{}, false, MsgStatements, empty)
	if sent != 0 {
		t.Fatalf("an unasked empty answer made the engine send %d messages", sent)
	}
	// Asked (its session came up: SUMMARY), the answer gets what it lacked, once.
	e.SessionUp(peer)
	sent = 0
	e.Handle(peer, netip.AddrPort{}, false, MsgStatements, empty)
	e.Handle(peer, netip.AddrPort{}, false, MsgStatements, empty)
	if sent != 1 {
		t.Fatalf("answers to one SUMMARY got %d messages back, want 1", sent)
	}
}

// A revoked member's observations of this node are forgotten with its record: they
// would otherwise go on feeding this node's announced endpoints, its NAT
// classification and the "seen from" of its status.
func TestRevocationForgetsWhatTheRevokedMemberObserved(t *testing.T) {
	s := newSim(t, 3, 0)
	a, b, c := s.nodes[0], s.nodes[1], s.nodes[2]
	s.link(a, b)
	s.link(a, c)
	s.setSelves()
	s.withAdmins(adminPub(testAdmin()))
	s.sessionsUp()
	s.pump()
	by := func() map[[32]byte]bool {
		m := map[[32]byte]bool{}
		for _, o := range a.eng.Observed() {
			m[o.By] = true
		}
		return m
	}
	if got := by(); !got[b.id.Public] || !got[c.id.Public] {
		t.Fatalf("before the revocation, a has observations by %d members, want b and c", len(got))
	}
	raw := mustSign(t, testRevoke(uint64(s.now.UnixNano()), b.id.Public), testAdmin(), NetworkID(s.seed))
	if ok, reason := a.eng.OfferStatement(raw); !ok {
		t.Fatalf("offer: %s", reason)
	}
	s.pump()
	if got := by(); got[b.id.Public] || !got[c.id.Public] {
		t.Fatalf("after revoking b, a keeps observations by b: %v, by c: %v; want only c's", got[b.id.Public], got[c.id.Public])
	}
}

// Statements already held are not checked against the clock again: a node that boots
// with its clock far behind (no real-time clock, before NTP) restores its saved
// revocation, and a reload of the admin keys after the clock stepped back keeps it.
// Refused as "future", the revocation was lifted until NTP caught up, and the daemon
// rewrote its statements file without it.
func TestStatementsHeldAreNotRefusedAsFutureAfterTheClockGoesBack(t *testing.T) {
	now := testNow
	e := New(Config{Identity: NewIdentity(testEdSeed), Network: NetworkOf(testSeed), Now: func() time.Time { return now },
		Admins: []ed25519.PublicKey{adminPub(testAdmin())}})
	netID := NetworkID(testSeed)
	rev := mustSign(t, testRevoke(uint64(testNow.UnixNano()), [32]byte{1}), testAdmin(), netID)
	now = time.Unix(0, 0) // booted in 1970
	if taken, refused := e.LoadStatements([][]byte{rev}); taken != 1 || refused != 0 {
		t.Fatalf("load with the clock behind: %d taken, %d refused", taken, refused)
	}
	if !e.Revoked([32]byte{1}) {
		t.Fatal("the saved revocation is not in force after a boot with the clock behind")
	}
	if dropped := e.SetAdmins([]ed25519.PublicKey{adminPub(testAdmin()), adminPub(adminN(2))}); dropped != 0 || !e.Revoked([32]byte{1}) {
		t.Fatalf("adding an admin with the clock behind dropped %d statements; revoked %v", dropped, e.Revoked([32]byte{1}))
	}
	// A statement offered afresh is still checked against the clock.
	fresh := mustSign(t, testRevoke(uint64(testNow.UnixNano()), [32]byte{2}), testAdmin(), netID)
	if ok, reason := e.OfferStatement(fresh); ok || reason != ReasonFuture {
		t.Fatalf("a fresh statement from the future: %v %s", ok, reason)
	}
}

// A member that holds no statement and is nobody's neighbour (neighbours are chosen,
// not mutual: it chose a, a did not choose it) gets a revocation from the SUMMARY of
// its own round: empty, it asks a for what a holds. Without it the member was never
// sent the revocation (a pushes only to its own neighbours).
func TestStatementReachesAMemberThatIsNobodysNeighbour(t *testing.T) {
	s := newSim(t, 3, 0)
	a, b, lone := s.nodes[0], s.nodes[1], s.nodes[2]
	s.setSelves()
	s.withAdmins(adminPub(testAdmin()))
	// Sessions a–b and a–lone carry what is sent either way (sim.pump would drop a's
	// answers to lone: it takes a link for a neighbour); each node's round goes to its
	// own neighbours only.
	deliver := func() {
		for len(s.queue) > 0 {
			m := s.queue[0]
			s.queue = s.queue[1:]
			s.byKey[m.to].eng.Handle(m.from, s.byKey[m.from].addr(), false, m.typ, m.body)
		}
	}
	round := func() {
		s.now = s.now.Add(s.interval)
		a.eng.Tick(s.now, [][32]byte{b.id.Public})
		b.eng.Tick(s.now, [][32]byte{a.id.Public})
		lone.eng.Tick(s.now, [][32]byte{a.id.Public})
		deliver()
	}
	round()
	raw := mustSign(t, testRevoke(uint64(s.now.UnixNano()), [32]byte{0xee, 3}), testAdmin(), NetworkID(s.seed))
	if ok, reason := b.eng.OfferStatement(raw); !ok {
		t.Fatal(reason)
	}
	deliver()
	if !a.eng.Revoked([32]byte{0xee, 3}) || lone.eng.Revoked([32]byte{0xee, 3}) {
		t.Fatal("the push should reach a, and only a")
	}
	for range 3 {
		round()
	}
	if !lone.eng.Revoked([32]byte{0xee, 3}) {
		t.Fatal("a member that is nobody's neighbour never got the revocation")
	}
}
