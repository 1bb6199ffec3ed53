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
	s.Expire(testNow.Add(MaxLifetime+MaxClockSkew+time.Hour), nil)
	if len(s.gone) != 0 {
		t.Fatalf("%d tombstones outlived every record they stood for", len(s.gone))
	}
}
