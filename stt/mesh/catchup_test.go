package mesh

import (
	"fmt"
	"net/netip"
	"testing"
)

// catchUp runs a member that comes back with an empty store (after an hour away its
// records have all expired) to neighbours that hold the records of members others, and
// reports how many it held after the exchange when the sessions came up and after each
// round until it held them all, the bytes its neighbours sent it meanwhile, all and
// DIGEST only, and the bytes of the records themselves.
func catchUp(t *testing.T, members, neighbours int) (held []int, bytesIn, digestIn, recordBytes uint64) {
	s := newSim(t, 0, DefaultLifetime)
	var nbs []*simNode
	for i := range neighbours {
		nbs = append(nbs, s.add(NewIdentity(edSeedN(60000+i))))
	}
	back := s.add(NewIdentity(edSeedN(60010)))
	s.setSelves()
	netID := NetworkID(s.seed)
	var keys [][32]byte
	for i := range members {
		id := NewIdentity(edSeedN(1 + i))
		r := testRecord()
		r.Name = fmt.Sprintf("m%d", i)
		r.Addresses = []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 99, byte(i >> 8), byte(i)}), 32)}
		r.Prefixes = nil
		raw := mustMarshal(t, r, id, netID)
		recordBytes += uint64(len(raw))
		body, err := AppendRecords(nil, raw)
		if err != nil {
			t.Fatal(err)
		}
		for _, nb := range nbs {
			nb.eng.Handle(back.id.Public, netip.AddrPort{}, false, MsgRecords, body)
		}
		keys = append(keys, id.Public)
	}
	s.queue = nil
	for i, a := range nbs {
		for _, b := range nbs[i+1:] {
			s.link(a, b)
		}
		s.link(a, back)
	}
	for _, nd := range s.nodes {
		nd.sent = 0
		nd.byType = [6]uint64{}
	}
	holds := func() int {
		n := 0
		for _, k := range keys {
			if back.eng.Member(k) != nil {
				n++
			}
		}
		return n
	}
	// The sessions come up: each end sends its SUMMARY.
	for _, nb := range nbs {
		back.eng.SessionUp(nb.id.Public)
		nb.eng.SessionUp(back.id.Public)
	}
	s.pump()
	held = append(held, holds())
	for held[len(held)-1] < members {
		if len(held) > 1000 {
			t.Fatalf("after %d rounds the member holds %d of %d records", len(held), held[len(held)-1], members)
		}
		s.tick()
		held = append(held, holds())
	}
	for _, nb := range nbs {
		bytesIn += nb.sent // the neighbours agree with each other: what they send goes to back
		digestIn += nb.byType[MsgDigest-MsgSummary]
	}
	return held, bytesIn, digestIn, recordBytes
}

// TestCatchUpAfterAnHourIsBounded: a member back after an hour (every record it held
// has expired) with 1000 members, asking three neighbours, holds every record after two
// rounds at most, and what the neighbours sent it meanwhile weighs no more than three
// copies of the records and four whole DIGESTs from each neighbour. Before wants were
// spread over the neighbours and raised to 256 an exchange: 31 rounds, 5.3 MB (4.1 MB
// of DIGEST) for 186 KB of records.
func TestCatchUpAfterAnHourIsBounded(t *testing.T) {
	for _, n := range []int{100, 1000} {
		held, in, digest, rec := catchUp(t, n, 3)
		rounds := len(held) - 1
		t.Logf("%d members: caught up after %d rounds, %d bytes in (%d of DIGEST), records %d bytes", n, rounds, in, digest, rec)
		wholeDigest := uint64(3 + n*digestEntryLen)
		if bound := 3 * (rec + 4*wholeDigest); in > bound {
			t.Errorf("%d members: %d bytes to catch up, more than %d (3 × (records + 4 DIGESTs))", n, in, bound)
		}
		if most := n/(3*MaxWantPerExchange) + 1; rounds > most {
			t.Errorf("%d members: %d rounds to catch up, want at most %d", n, rounds, most)
		}
	}
}

// TestCatchUpWantsAreBoundedPerExchange: a member catching up from one neighbour that
// holds 600 records gets, from the exchange when their session comes up, the records it
// wanted (MaxWantPerExchange) and those the neighbour pushed (at most MaxPerExchange),
// no more; the rest in the rounds that follow, one exchange's worth each.
func TestCatchUpWantsAreBoundedPerExchange(t *testing.T) {
	held, _, _, _ := catchUp(t, 600, 1)
	if held[0] < MaxWantPerExchange || held[0] > MaxWantPerExchange+MaxPerExchange {
		t.Errorf("after the first exchange the member holds %d records; want %d to %d", held[0], MaxWantPerExchange, MaxWantPerExchange+MaxPerExchange)
	}
	for r := 1; r < len(held); r++ {
		if got := held[r] - held[r-1]; got > MaxWantPerExchange+MaxPerExchange {
			t.Errorf("round %d brought %d records, more than one exchange's %d", r, got, MaxWantPerExchange+MaxPerExchange)
		}
	}
	t.Logf("records held after each exchange: %v", held)
}
