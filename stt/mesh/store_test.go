package mesh

import (
	"fmt"
	"testing"
	"time"
)

func recordV(t testing.TB, id Identity, name string, version uint64, expires time.Time) []byte {
	r := Record{Version: version, Expires: expires, Name: name}
	return mustMarshal(t, r, id, NetworkID(testSeed))
}

func TestStoreRefusesStaleVersions(t *testing.T) {
	self := NewIdentity(edSeedN(0))
	s := NewStore(NetworkID(testSeed), self.Public, 0)
	m := NewIdentity(edSeedN(1))
	exp := testNow.Add(time.Hour)
	if _, old, out := s.Put(recordV(t, m, "m", 10, exp), testNow); out != Accepted || old != nil {
		t.Fatalf("first: %v", out)
	}
	for _, v := range []uint64{10, 9, 1} {
		if _, _, out := s.Put(recordV(t, m, "m", v, exp), testNow); out != Stale {
			t.Fatalf("version %d after 10: %v, want stale", v, out)
		}
	}
	rec, old, out := s.Put(recordV(t, m, "m2", 11, exp), testNow)
	if out != Accepted || old == nil || old.Version != 10 || rec.Name != "m2" {
		t.Fatalf("newer: %v old %+v", out, old)
	}
	if got, _ := s.Get(m.Public); got.Version != 11 {
		t.Fatalf("held version %d", got.Version)
	}
	if s.Count(Stale) != 3 || s.Count(Accepted) != 2 {
		t.Fatalf("counts stale %d accepted %d", s.Count(Stale), s.Count(Accepted))
	}
}

func TestStoreBoundsMembers(t *testing.T) {
	self := NewIdentity(edSeedN(0))
	s := NewStore(NetworkID(testSeed), self.Public, 3)
	exp := testNow.Add(time.Hour)
	for i := 1; i <= 3; i++ {
		if _, _, out := s.Put(recordV(t, NewIdentity(edSeedN(i)), fmt.Sprint("m", i), 1, exp), testNow); out != Accepted {
			t.Fatalf("member %d: %v", i, out)
		}
	}
	if _, _, out := s.Put(recordV(t, NewIdentity(edSeedN(4)), "m4", 1, exp), testNow); out != Full {
		t.Fatalf("4th member with max 3: %v, want full", out)
	}
	if s.Len() != 3 || s.Count(Full) != 1 {
		t.Fatalf("len %d full %d", s.Len(), s.Count(Full))
	}
	// A held member may still update.
	if _, _, out := s.Put(recordV(t, NewIdentity(edSeedN(2)), "m2", 2, exp), testNow); out != Accepted {
		t.Fatalf("update of a held member when full: %v", out)
	}
}

func TestStoreRateBoundsNewVersions(t *testing.T) {
	self := NewIdentity(edSeedN(0))
	s := NewStore(NetworkID(testSeed), self.Public, 0)
	m := NewIdentity(edSeedN(1))
	exp := testNow.Add(time.Hour)
	v := uint64(0)
	put := func(at time.Time) Outcome {
		v++
		_, _, out := s.Put(recordV(t, m, "m", v, exp), at)
		return out
	}
	for i := range RateBurst {
		if out := put(testNow); out != Accepted {
			t.Fatalf("version %d of the burst: %v", i+1, out)
		}
	}
	if out := put(testNow); out != RateLimited {
		t.Fatalf("version beyond the burst: %v, want rate", out)
	}
	if out := put(testNow.Add(RateInterval / 2)); out != RateLimited {
		t.Fatalf("half an interval later: %v, want rate", out)
	}
	if out := put(testNow.Add(RateInterval)); out != Accepted {
		t.Fatalf("an interval later: %v", out)
	}
	if out := put(testNow.Add(RateInterval)); out != RateLimited {
		t.Fatalf("again at once: %v, want rate", out)
	}
	if s.Count(RateLimited) != 3 {
		t.Fatalf("rate counted %d, want 3", s.Count(RateLimited))
	}
	if got, _ := s.Get(m.Public); got.Version != RateBurst+3 {
		t.Fatalf("held version %d, want %d", got.Version, RateBurst+3)
	}
}

func TestStoreExpiresRecords(t *testing.T) {
	self := NewIdentity(edSeedN(0))
	netID := NetworkID(testSeed)
	s := NewStore(netID, self.Public, 0)
	a, b := NewIdentity(edSeedN(1)), NewIdentity(edSeedN(2))
	s.Put(recordV(t, a, "a", 1, testNow.Add(time.Minute)), testNow)
	s.Put(recordV(t, b, "b", 1, testNow.Add(time.Hour)), testNow)
	own := &Record{Version: 1, Expires: testNow.Add(time.Second), Name: "self"}
	ownRaw, err := own.Marshal(self, netID)
	if err != nil {
		t.Fatal(err)
	}
	s.putOwn(own, ownRaw)
	gone := s.Expire(testNow.Add(time.Minute), nil)
	if len(gone) != 1 || gone[0].Key != a.Public {
		t.Fatalf("expired %v, want a only (own record is never swept)", gone)
	}
	if r, _ := s.Get(a.Public); r != nil {
		t.Fatal("a still held")
	}
	if r, _ := s.Get(b.Public); r == nil {
		t.Fatal("b gone")
	}
	if s.Len() != 2 || len(s.Entries()) != 2 {
		t.Fatalf("len %d entries %d", s.Len(), len(s.Entries()))
	}
	// And an expired record is not admitted in the first place.
	if _, _, out := s.Put(recordV(t, a, "a", 2, testNow.Add(time.Minute)), testNow.Add(time.Minute)); out != Expired {
		t.Fatalf("expired record offered: %v", out)
	}
}

func TestStoreNeverReplacesOwnRecord(t *testing.T) {
	self := NewIdentity(edSeedN(0))
	netID := NetworkID(testSeed)
	s := NewStore(netID, self.Public, 0)
	own := &Record{Version: 5, Expires: testNow.Add(time.Hour), Name: "self"}
	ownRaw, err := own.Marshal(self, netID)
	if err != nil {
		t.Fatal(err)
	}
	s.putOwn(own, ownRaw)
	// Even a newer, validly signed record of our own key (an earlier run) is not stored.
	rec, _, out := s.Put(recordV(t, self, "old-run", 99, testNow.Add(time.Hour)), testNow)
	if out != OwnKey || rec == nil || rec.Version != 99 {
		t.Fatalf("own key record: %v", out)
	}
	if got, _ := s.Get(self.Public); got != own {
		t.Fatalf("own record replaced by %+v", got)
	}
}

func TestStoreCountsEveryRefusal(t *testing.T) {
	self := NewIdentity(edSeedN(0))
	netID := NetworkID(testSeed)
	s := NewStore(netID, self.Public, 0)
	m := NewIdentity(edSeedN(1))
	good := recordV(t, m, "m", 1, testNow.Add(time.Hour))
	bad := append([]byte(nil), good...)
	bad[len(bad)-1] ^= 1
	cases := []struct {
		raw  []byte
		want Outcome
	}{
		{bad, BadSignature},
		{good[:10], Malformed},
		{make([]byte, MaxRecordLen+1), TooLarge},
		{recordV(t, m, "m", 1, testNow.Add(-time.Second)), Expired},
		{recordV(t, m, "m", 1, testNow.Add(MaxLifetime+time.Hour)), Future},
	}
	for _, c := range cases {
		if _, _, out := s.Put(c.raw, testNow); out != c.want {
			t.Errorf("got %v, want %v", out, c.want)
		}
		if s.Count(c.want) != 1 {
			t.Errorf("%v counted %d times", c.want, s.Count(c.want))
		}
	}
	if s.Len() != 0 {
		t.Fatalf("store holds %d after refusals", s.Len())
	}
}

// A clock that steps back must not drain the bucket (a negative refill) for good.
func TestStoreRateBucketSurvivesClockStepBack(t *testing.T) {
	self := NewIdentity(edSeedN(0))
	s := NewStore(NetworkID(testSeed), self.Public, 0)
	m := NewIdentity(edSeedN(1))
	exp := testNow.Add(3 * time.Hour)
	if _, _, out := s.Put(recordV(t, m, "m", 1, exp), testNow); out != Accepted {
		t.Fatal(out)
	}
	back := testNow.Add(-time.Hour)
	if _, _, out := s.Put(recordV(t, m, "m", 2, exp), back); out != Accepted {
		t.Fatalf("newer version after the clock stepped back an hour: %v", out)
	}
}
