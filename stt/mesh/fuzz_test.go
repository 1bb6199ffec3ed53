package mesh

import (
	"bytes"
	"encoding/hex"
	"net/netip"
	"testing"
	"time"
)

func goldenBytes(f *testing.F, h string) []byte {
	b, err := hex.DecodeString(h)
	if err != nil {
		f.Fatal(err)
	}
	return b
}

func FuzzParseRecord(f *testing.F) {
	rec := goldenBytes(f, goldenRecord)
	f.Add(rec)
	f.Add(rec[:len(rec)-1])
	f.Add([]byte("STTR"))
	f.Add(make([]byte, MaxRecordLen+1))
	netID := NetworkID(testSeed)
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRecord(b, netID, testNow)
		if err == nil {
			// Only a correctly signed record parses; it must re-check clean.
			if err := r.check(); err != nil {
				t.Fatalf("parsed record fails its own checks: %v", err)
			}
			if len(b) > MaxRecordLen {
				t.Fatal("oversize record parsed")
			}
		}
	})
}

func FuzzParseSummary(f *testing.F) {
	f.Add(goldenBytes(f, goldenSummary))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseSummary(b)
		if err == nil && !bytes.Equal(AppendSummary(nil, s), b) {
			t.Fatal("summary does not round-trip")
		}
	})
}

func FuzzParseDigest(f *testing.F) {
	f.Add(goldenBytes(f, goldenDigest))
	f.Add([]byte{1, 0, 0})
	f.Add([]byte{2, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		last, entries, err := ParseDigest(b, nil)
		if err != nil {
			return
		}
		if len(entries) > MaxDigestEntries {
			t.Fatalf("%d entries", len(entries))
		}
		again, err := AppendDigest(nil, last, entries)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("digest does not round-trip: %v", err)
		}
	})
}

func FuzzParseWant(f *testing.F) {
	f.Add(goldenBytes(f, goldenWant))
	f.Add([]byte{0, 0})
	f.Add([]byte{0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		keys, err := ParseWant(b, nil)
		if err != nil {
			return
		}
		again, err := AppendWant(nil, keys)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("want does not round-trip: %v", err)
		}
	})
}

func FuzzParseRecords(f *testing.F) {
	f.Add(goldenBytes(f, goldenRecords))
	f.Add([]byte{0})
	f.Add([]byte{2, 1, 0, 9, 1, 0, 8})
	f.Fuzz(func(t *testing.T, b []byte) {
		recs, err := ParseRecords(b, nil)
		if err != nil {
			return
		}
		again, err := AppendRecords(nil, recs...)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("records do not round-trip: %v", err)
		}
	})
}

func FuzzParseObserve(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := ParseObserve(b); err == nil && len(b) != 0 {
			t.Fatal("non-empty OBSERVE accepted")
		}
	})
}

func FuzzParseObserved(f *testing.F) {
	f.Add(goldenBytes(f, goldenObserved))
	o6, _ := AppendObserved(nil, Observed{Transport: TransportWebSocket, Addr: netip.MustParseAddrPort("[2001:db8::7]:443")})
	f.Add(o6)
	f.Add([]byte{1, 4, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := ParseObserved(b)
		if err != nil {
			return
		}
		again, err := AppendObserved(nil, o)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("observed does not round-trip: %v", err)
		}
	})
}

func FuzzParseKey(f *testing.F) {
	f.Add(goldenBytes(f, goldenKeyBody))
	f.Add([]byte{})
	f.Add(make([]byte, 33))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := ParseKey(b)
		if err == nil && !bytes.Equal(AppendKey(nil, k), b) {
			t.Fatal("key body does not round-trip")
		}
	})
}

func FuzzParsePunch(f *testing.F) {
	f.Add(goldenBytes(f, goldenPunch))
	f.Add(goldenBytes(f, goldenKeyBody+"00"))
	f.Add(goldenBytes(f, goldenKeyBody+"0104000000000100"))
	f.Add(goldenBytes(f, goldenKeyBody+"09"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParsePunch(b)
		if err != nil {
			return
		}
		if len(p.Addrs) > MaxPunchAddrs || len(b) > MaxPunchBody {
			t.Fatalf("%d addresses in %d bytes", len(p.Addrs), len(b))
		}
		again, err := AppendPunch(nil, p)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("punch does not round-trip: %v", err)
		}
	})
}

func FuzzParseRelayGrant(f *testing.F) {
	f.Add(goldenBytes(f, goldenRelayGrant))
	f.Add(goldenBytes(f, goldenKeyBody+"0500000005000000"))
	f.Fuzz(func(t *testing.T, b []byte) {
		g, err := ParseRelayGrant(b)
		if err != nil {
			return
		}
		if g.SendID == 0 || g.RecvID == 0 || g.SendID == g.RecvID {
			t.Fatalf("grant with ids %d, %d", g.SendID, g.RecvID)
		}
		again, err := AppendRelayGrant(nil, g)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("relay grant does not round-trip: %v", err)
		}
	})
}

func FuzzParseRelayRefused(f *testing.F) {
	f.Add(goldenBytes(f, goldenRelayRefused))
	f.Add(goldenBytes(f, goldenKeyBody+"06"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRelayRefused(b)
		if err != nil {
			return
		}
		again, err := AppendRelayRefused(nil, r)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("relay refusal does not round-trip: %v", err)
		}
	})
}

// maxOutPerHandle bounds what one message may make the engine send: a WANT of
// MaxWantKeys keys answered with records of at most MaxRecordLen bytes each, plus
// the framing; a DIGEST answered with MaxPerExchange records and wants.
const maxOutPerHandle = (MaxWantKeys+MaxPerExchange)*(MaxRecordLen+2+3) + 4*MaxWantBody

// FuzzEngineHandle feeds an engine holding a few records arbitrary messages: no panic,
// no unbounded output, no change of the held records by unsigned input.
func FuzzEngineHandle(f *testing.F) {
	seeds := []struct {
		typ  byte
		body string
	}{
		{MsgSummary, goldenSummary}, {MsgDigest, goldenDigest}, {MsgWant, goldenWant},
		{MsgRecords, goldenRecords}, {MsgObserve, ""}, {MsgObserved, goldenObserved}, {0x86, "00"}, {0xff, ""},
		{TypePunch, goldenPunch}, {TypeRelayGrant, goldenRelayGrant},
	}
	for _, s := range seeds {
		f.Add(s.typ, goldenBytes(f, s.body))
	}
	// Engines are built once per process; each input gets a fresh one, but the
	// records are signed only once.
	netID := NetworkID(testSeed)
	var raws [][]byte
	var keys [][32]byte
	for i := 1; i <= 4; i++ {
		id := NewIdentity(edSeedN(i))
		r := Record{Version: uint64(i), Expires: testNow.Add(time.Hour), Name: "m"}
		b, err := r.Marshal(id, netID)
		if err != nil {
			f.Fatal(err)
		}
		raws, keys = append(raws, b), append(keys, id.Public)
	}
	self := NewIdentity(testEdSeed)
	f.Fuzz(func(t *testing.T, typ byte, body []byte) {
		var out int
		var changes int
		e := New(Config{
			Identity: self, Network: NetworkOf(testSeed),
			Send:     func(to [32]byte, typ byte, body []byte) error { out += 3 + len(body); return nil },
			OnChange: func(old, cur *Record) { changes++ },
			Now:      func() time.Time { return testNow },
		})
		if err := e.SetSelf(Record{Name: "self"}); err != nil {
			t.Fatal(err)
		}
		for _, r := range raws {
			e.store.Put(r, testNow)
		}
		e.Tick(testNow, keys)
		out = 0
		e.Handle(keys[0], netip.MustParseAddrPort("192.0.2.1:1"), false, typ, body)
		if out > maxOutPerHandle {
			t.Fatalf("one message of %d bytes made the engine send %d bytes", len(body), out)
		}
		if changes != 0 && typ != MsgRecords {
			t.Fatalf("a %#x message changed records", typ)
		}
		if n := e.Stats().Members; n > 4+1 {
			t.Fatalf("%d members after one RECORDS message", n)
		}
	})
}
