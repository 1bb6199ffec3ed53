package tunnel

import (
	"net/netip"
	"testing"

	"github.com/gaissmai/bart"
)

// BenchmarkClassify measures the outbound per-packet work of the pump: destination,
// prefix lookup and flow hash. It must not allocate.
func BenchmarkClassify(b *testing.B) {
	table := new(bart.Table[*peer])
	p := &peer{}
	for i := 0; i < 64; i++ {
		table.Insert(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16), p)
	}
	pkt := ipv4UDP("10.9.0.1", "10.33.4.5", 1000, 2000, make([]byte, 1400))
	b.SetBytes(int64(len(pkt)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		dst, ok := dstAddr(pkt)
		if !ok {
			b.Fatal("no destination")
		}
		if _, ok := table.Lookup(dst); !ok {
			b.Fatal("no route")
		}
		_ = flowHash(pkt)
	}
}
