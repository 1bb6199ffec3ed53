package mesh

import (
	"net/netip"
	"testing"
	"time"
)

// The messages a node gets most at rest, a SUMMARY equal to its own and a RECORDS
// duplicate of a flood, cost no allocation.
func TestHandleCommonMessagesDoNotAllocate(t *testing.T) {
	netID := NetworkID(testSeed)
	m := NewIdentity(edSeedN(1))
	r := Record{Version: 1, Expires: testNow.Add(time.Hour), Name: "m"}
	raw, err := r.Marshal(m, netID)
	if err != nil {
		t.Fatal(err)
	}
	e := New(Config{Identity: NewIdentity(testEdSeed), Network: NetworkOf(testSeed), Now: func() time.Time { return testNow }})
	if err := e.SetSelf(Record{Name: "self"}); err != nil {
		t.Fatal(err)
	}
	recs, _ := AppendRecords(nil, raw)
	from := netip.MustParseAddrPort("192.0.2.1:9")
	e.Handle(m.Public, from, false, MsgRecords, recs)
	if e.Member(m.Public) == nil {
		t.Fatal("record not accepted")
	}
	sum := AppendSummary(nil, e.store.Summary())
	for name, body := range map[byte][]byte{MsgRecords: recs, MsgSummary: sum} {
		if n := testing.AllocsPerRun(100, func() { e.Handle(m.Public, from, false, name, body) }); n != 0 {
			t.Errorf("type %#x: %v allocations per Handle", name, n)
		}
	}
}
