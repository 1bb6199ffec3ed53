package mesh

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"
)

// atRest runs n engines on a sparse graph for 15 simulated minutes, each setting its
// record at a different moment of the first Lifetime/3 (so that in steady state their
// refreshes are spread out), Ticking every Interval, and returns the bytes (control
// type + length + body) each node sent per second over the last 5 minutes, on average.
func atRest(tb testing.TB, n int) float64 {
	s := newSim(tb, n, DefaultLifetime)
	s.sparse(rand.New(rand.NewPCG(uint64(n), 42)))
	s.sessionsUp()
	s.pump()
	refresh := int(DefaultLifetime / 3 / s.interval)
	total := int(15 * time.Minute / s.interval)
	measureFrom := int(10 * time.Minute / s.interval)
	var base uint64
	var baseT, endT [6]uint64
	for r := range total {
		for i, nd := range s.nodes {
			if i*refresh/n == r {
				if err := nd.eng.SetSelf(Record{Name: fmt.Sprint("node", i)}); err != nil {
					tb.Fatal(err)
				}
			}
		}
		s.pump()
		if r == measureFrom {
			for _, nd := range s.nodes {
				base += nd.sent
				for t := range baseT {
					baseT[t] += nd.byType[t]
				}
			}
		}
		s.tick()
	}
	if m := s.missing(); m != 0 {
		tb.Fatalf("%d missing at the end", m)
	}
	var sent uint64
	for _, nd := range s.nodes {
		sent += nd.sent
		for t := range endT {
			endT[t] += nd.byType[t]
		}
	}
	secs := float64(total-measureFrom) * s.interval.Seconds()
	for t := range endT {
		tb.Logf("%d members: type %#x: %.1f B/s/node", n, MsgSummary+byte(t), float64(endT[t]-baseT[t])/secs/float64(n))
	}
	return float64(sent-base) / secs / float64(n)
}

// BenchmarkGossipAtRest reports bytes per second per node of a converged mesh
// (run with -benchtime=1x: one iteration simulates 15 minutes).
func BenchmarkGossipAtRest(b *testing.B) {
	for _, n := range []int{6, 100} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			var bps float64
			for range b.N {
				bps = atRest(b, n)
			}
			b.ReportMetric(bps, "B/s/node")
		})
	}
}

// BenchmarkStoreMemoryPerRecord reports the heap a store holds per record, over 1000
// records of the typical size (the golden record's content), and the allocations of a
// Put.
func BenchmarkStoreMemoryPerRecord(b *testing.B) {
	const n = 1000
	netID := NetworkID(testSeed)
	raws := make([][]byte, n)
	for i := range raws {
		r := testRecord()
		var err error
		if raws[i], err = r.Marshal(NewIdentity(edSeedN(i+1)), netID); err != nil {
			b.Fatal(err)
		}
	}
	self := NewIdentity(testEdSeed)
	var perRecord float64
	for range b.N {
		var m0, m1 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m0)
		s := NewStore(netID, self.Public, 0)
		for _, raw := range raws {
			if _, _, out := s.Put(raw, testNow); out != Accepted {
				b.Fatal(out)
			}
		}
		s.Entries()
		runtime.GC()
		runtime.ReadMemStats(&m1)
		perRecord = float64(m1.HeapAlloc-m0.HeapAlloc) / n
		runtime.KeepAlive(s)
	}
	b.ReportMetric(perRecord, "B/record")
	s := NewStore(netID, self.Public, 0)
	s.Put(raws[0], testNow)
	b.ReportMetric(testing.AllocsPerRun(100, func() { s.Put(raws[0], testNow) }), "allocs/stale-put")
	b.ReportMetric(float64(len(raws[0])), "B/wire-record")
}
