package mesh

import (
	"net/netip"
	"testing"
	"time"
)

// The node's loop ticks the engine every second and on every change, more often than
// Interval: the anti-entropy rounds (a SUMMARY to Fanout members, each of which may
// answer with a digest of the whole store) must still come once per Interval, or the
// background traffic of a mesh at rest is Interval/1s times the designed one, and every
// record change (which a member can cause at will) starts an extra round.
func TestGossipTickMoreOftenThanIntervalSendsOneRoundPerInterval(t *testing.T) {
	var summaries int
	e := New(Config{
		Identity: NewIdentity(edSeedN(1)), Network: NetworkOf(testSeed), Now: func() time.Time { return testNow },
		Send: func(to [32]byte, typ byte, body []byte) error {
			if typ == MsgSummary {
				summaries++
			}
			return nil
		},
	})
	var conn [][32]byte
	for i := 2; i < 2+Fanout; i++ {
		conn = append(conn, NewIdentity(edSeedN(i)).Public)
	}
	now := testNow
	for range 10 { // ten ticks within one Interval (10 s)
		e.Tick(now, conn)
		now = now.Add(DefaultInterval / 10)
	}
	if summaries != Fanout {
		t.Fatalf("%d SUMMARY messages in one Interval of ticks; want one round, %d", summaries, Fanout)
	}
	e.Tick(testNow.Add(DefaultInterval), conn)
	if summaries != 2*Fanout {
		t.Fatalf("%d SUMMARY messages after the next Interval; want %d", summaries, 2*Fanout)
	}
}

// A SUMMARY costs its sender 19 bytes and its receiver a DIGEST of the whole store
// (40 bytes a member) when the hashes differ, which a member can make them at will: a
// node answers one SUMMARY per member per second, however many arrive.
func TestGossipSummaryFloodAnsweredOncePerSecond(t *testing.T) {
	now := testNow
	var digests int
	e := New(Config{
		Identity: NewIdentity(edSeedN(1)), Network: NetworkOf(testSeed), Now: func() time.Time { return now },
		Send: func(to [32]byte, typ byte, body []byte) error {
			if typ == MsgDigest {
				digests++
			}
			return nil
		},
	})
	if err := e.SetSelf(Record{Name: "self"}); err != nil {
		t.Fatal(err)
	}
	from := NewIdentity(edSeedN(2)).Public
	bogus := AppendSummary(nil, Summary{Count: 7})
	for range 100 {
		e.Handle(from, netip.MustParseAddrPort("192.0.2.1:9"), false, MsgSummary, bogus)
	}
	if digests != 1 {
		t.Fatalf("%d DIGESTs for 100 SUMMARYs within one second; want 1", digests)
	}
	now = now.Add(time.Second)
	e.Handle(from, netip.MustParseAddrPort("192.0.2.1:9"), false, MsgSummary, bogus)
	if digests != 2 {
		t.Fatalf("a SUMMARY a second later got no DIGEST (%d)", digests)
	}
	// Another member is answered at once.
	e.Handle(NewIdentity(edSeedN(3)).Public, netip.MustParseAddrPort("192.0.2.1:9"), false, MsgSummary, bogus)
	if digests != 3 {
		t.Fatalf("another member's SUMMARY got no DIGEST (%d)", digests)
	}
}

// FINDING (not fixed): the rate bound on new versions is per key, and keys are free
// for any holder of the seed: one member with K keys makes every node accept and flood
// 4 versions per key at once and one per 5 s per key after that (K=4096: ~820 records
// of up to 1 KB a second, over every session of the mesh). A node-wide bound on
// updates would stop that, but as a plain token bucket it lets the same member starve
// the others' refreshes until their records expire, which is worse; it needs a
// fair share per sender (the session a record came from), which is a design change.
func TestGossipFloodRateBoundedNodeWide(t *testing.T) {
	t.Skip("FINDING: a member with many keys floods the mesh at 4 versions per key at once, 0.2/s per key after")
	now := testNow
	var pushed int
	e := New(Config{
		Identity: NewIdentity(edSeedN(1)), Network: NetworkOf(testSeed), Now: func() time.Time { return now },
		Send: func(to [32]byte, typ byte, body []byte) error {
			if typ == MsgRecords {
				pushed++
			}
			return nil
		},
	})
	neighbour := NewIdentity(edSeedN(2)).Public
	e.SessionUp(neighbour)
	attacker := NewIdentity(edSeedN(3)).Public
	netID := NetworkID(testSeed)
	for k := range 200 {
		id := NewIdentity(edSeedN(1000 + k))
		for v := range 4 {
			r := Record{Name: "x", Version: uint64(now.UnixNano()) + uint64(v), Expires: now.Add(10 * time.Minute)}
			body, _ := AppendRecords(nil, mustMarshal(t, r, id, netID))
			e.Handle(attacker, netip.MustParseAddrPort("192.0.2.1:9"), false, MsgRecords, body)
		}
	}
	if pushed > 256 {
		t.Fatalf("one member made this node flood %d records to a neighbour within a second", pushed)
	}
}
