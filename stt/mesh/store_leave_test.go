package mesh

import (
	"testing"
	"time"
)

// TestStoreLeaveRecordNotUndoneByOlderVersion: a leaving member's last record (a newer
// version that expires soon) is not undone once it expired here by a member that still
// holds the older, longer-lived version and offers it in anti-entropy: that version was
// replaced, and must not bring the member back for the rest of its lifetime.
func TestStoreLeaveRecordNotUndoneByOlderVersion(t *testing.T) {
	self := NewIdentity(edSeedN(0))
	s := NewStore(NetworkID(testSeed), self.Public, 0)
	m := NewIdentity(edSeedN(1))
	old := recordV(t, m, "m", 10, testNow.Add(30*time.Minute))
	if _, _, out := s.Put(old, testNow); out != Accepted {
		t.Fatalf("old: %v", out)
	}
	if _, _, out := s.Put(recordV(t, m, "m", 11, testNow.Add(15*time.Second)), testNow.Add(time.Second)); out != Accepted {
		t.Fatalf("leave: %v", out)
	}
	later := testNow.Add(20 * time.Second)
	if gone := s.Expire(later, nil); len(gone) != 1 {
		t.Fatalf("expired %d records, want the leave record", len(gone))
	}
	if _, _, out := s.Put(old, later); out != Stale {
		t.Fatalf("the replaced version offered again after the leave record expired: %v, want stale", out)
	}
	if r, _ := s.Get(m.Public); r != nil {
		t.Fatal("the member is back")
	}
	// A new version (the member came back) is taken.
	if _, _, out := s.Put(recordV(t, m, "m", 12, later.Add(time.Hour)), later); out != Accepted {
		t.Fatalf("new version after leaving: %v", out)
	}
}

// TestStoreTombstonesBounded: the versions of expired members remembered to refuse them
// are bounded like the records, and forgotten once no record of theirs can be valid.
func TestStoreTombstonesBounded(t *testing.T) {
	self := NewIdentity(edSeedN(0))
	s := NewStore(NetworkID(testSeed), self.Public, 4)
	for i := 1; i <= 10; i++ {
		id := NewIdentity(edSeedN(i))
		now := testNow.Add(time.Duration(i) * time.Minute)
		if _, _, out := s.Put(recordV(t, id, "m", 1, now.Add(time.Second)), now); out != Accepted {
			t.Fatalf("member %d: %v", i, out)
		}
		s.Expire(now.Add(time.Second), nil)
		if len(s.gone) > 4 {
			t.Fatalf("%d tombstones held, bound 4", len(s.gone))
		}
	}
	s.Expire(testNow.Add(DefaultLifetime+time.Hour), nil)
	if len(s.gone) != 0 {
		t.Fatalf("%d tombstones outlived every record they stood for", len(s.gone))
	}
}

// TestGossipNoRefreshAfterLeave: once a node has sent its leave record, a change of its
// own record (the node's loop still running while it closes) or a refresh does not sign
// a full-lifetime record over it, which would bring the node back for a whole lifetime.
func TestGossipNoRefreshAfterLeave(t *testing.T) {
	s := newSim(t, 1, 30*time.Minute)
	e := s.nodes[0].eng
	if err := e.SetSelf(Record{Name: "node0"}); err != nil {
		t.Fatal(err)
	}
	if err := e.Leave(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := e.SetSelf(Record{Name: "node0", WSURL: "wss://node0.example/stt"}); err != nil {
		t.Fatal(err)
	}
	s.now = s.now.Add(11 * time.Minute)
	e.Tick(s.now, nil)
	own, _ := e.store.Get(s.nodes[0].id.Public)
	if limit := testNow.Add(15 * time.Second); own.Expires.After(limit) {
		t.Fatalf("after leaving, own record expires %v, after the leave record's %v", own.Expires, limit)
	}
}

// TestLeaveReachesANeighbourTakenBetweenRounds: a node whose round ran before it took
// its first neighbour (the round emptied the set SessionUp had filled) is told the
// neighbour by SetConnected, and the leave record it sends before the next round
// reaches that neighbour. Without it the node went down telling no one.
func TestLeaveReachesANeighbourTakenBetweenRounds(t *testing.T) {
	s := newSim(t, 2, 30*time.Minute)
	s.link(s.nodes[0], s.nodes[1])
	s.setSelves()
	s.sessionsUp()
	s.pump()
	gone, other := s.nodes[0], s.nodes[1]
	if other.eng.Member(gone.id.Public) == nil {
		t.Fatal("the records were not exchanged")
	}
	gone.eng.Tick(s.now, nil) // the round, before the neighbour was taken
	gone.eng.AddConnected([][32]byte{other.id.Public})
	if err := gone.eng.Leave(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	s.pump()
	r := other.eng.Member(gone.id.Public)
	if r == nil || r.Expires.After(s.now.Add(15*time.Second)) {
		t.Fatalf("the neighbour holds %+v, not the leave record", r)
	}
}
