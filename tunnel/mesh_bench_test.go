package tunnel

import (
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/stt/mesh"
)

// startMeshMem starts a tunnel with [discovery] on an in-memory device, with a key file
// the tunnel creates (new format, so the mesh can sign).
func startMeshMem(tb testing.TB, seed [32]byte) *memNode {
	tb.Helper()
	dir := tb.TempDir()
	cfg := &config.Config{
		Interface: config.Interface{
			Name: "mem-bench", NodeName: "bench",
			Addresses: []netip.Prefix{netip.MustParsePrefix("10.78.0.1/16")},
			MTU:       1420, SeedFile: writeSecret(tb, dir, "seed", seed),
			KeyFile: dir + "/bench.key",
		},
		Discovery: config.Discovery{
			Enabled:        true,
			AcceptPrefixes: []netip.Prefix{netip.MustParsePrefix("10.78.0.0/16")},
			IdleTimeout:    5 * time.Minute,
			MeshIPv6:       true,
		},
	}
	return startCfg(tb, cfg)
}

// memberRecords signs n member records of the usual shape: one interface address in
// accept_prefixes, a local and an observed endpoint (both sink, a loopback socket that
// never answers, so that the handshakes the tunnel starts to its neighbours go
// nowhere), no prefixes, no WebSocket URL. Each comes in its own RECORDS body.
func memberRecords(tb testing.TB, seed [32]byte, n int, sink netip.AddrPort) [][]byte {
	tb.Helper()
	netID := mesh.NetworkID(seed)
	now := time.Now()
	bodies := make([][]byte, n)
	for i := range n {
		var edSeed [32]byte
		if _, err := rand.Read(edSeed[:]); err != nil {
			tb.Fatal(err)
		}
		r := mesh.Record{
			Version:   uint64(now.UnixNano()),
			Expires:   now.Add(mesh.DefaultLifetime),
			Name:      fmt.Sprintf("member%d", i),
			Addresses: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 78, byte(1 + i/250), byte(1 + i%250)}), 32)},
			Endpoints: []mesh.Endpoint{
				{Kind: mesh.EndpointLocal, Addr: sink},
				{Kind: mesh.EndpointObserved, Addr: netip.AddrPortFrom(sink.Addr(), sink.Port()+1)},
			},
		}
		raw, err := r.Marshal(mesh.NewIdentity(edSeed), netID)
		if err != nil {
			tb.Fatal(err)
		}
		if bodies[i], err = mesh.AppendRecords(nil, raw); err != nil {
			tb.Fatal(err)
		}
	}
	return bodies
}

// meshMembers is how many members the tunnel knows with a peer, and how many of those
// have a session.
func meshMembers(t *Tunnel) (known, sessions int) {
	t.mesh.mu.Lock()
	defer t.mesh.mu.Unlock()
	for _, mb := range t.mesh.members {
		if mb.p != nil && mb.rec != nil {
			known++
			if mb.p.sp.HasSession() {
				sessions++
			}
		}
	}
	return known, sessions
}

// settledHeap is HeapAlloc after two collections (the second frees what finalizers of
// the first released).
func settledHeap() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkMeshMemoryPerMember reports what a tunnel holds for each member it knows
// by record only (no session): heap bytes per member — the engine's store, the
// tunnel's member and its lazy stt peer, the prefix table entries — and the goroutines
// of the whole process once they are known, which must not grow with N. Run with
// -benchtime=1x; each iteration starts a fresh tunnel.
func BenchmarkMeshMemoryPerMember(b *testing.B) {
	sink, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	sinkAddr := sink.LocalAddr().(*net.UDPAddr).AddrPort()
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			var perMember float64
			var goroutines0, goroutines, wire int
			for range b.N {
				var seed [32]byte
				if _, err := rand.Read(seed[:]); err != nil {
					b.Fatal(err)
				}
				bodies := memberRecords(b, seed, n, sinkAddr)
				wire = len(bodies[n-1]) - 3 // RECORDS: count u8, length u16
				nd := startMeshMem(b, seed)
				from := [32]byte{1} // a member that is not one of them: records are relayed
				// Let the mesh loop sign the node's own record and settle.
				time.Sleep(1500 * time.Millisecond)
				goroutines0 = runtime.NumGoroutine()
				h0 := settledHeap()
				for _, body := range bodies {
					nd.t.mesh.eng.Handle(from, netip.AddrPort{}, false, mesh.MsgRecords, body)
				}
				deadline := time.Now().Add(60 * time.Second)
				for {
					if k, _ := meshMembers(nd.t); k == n {
						break
					}
					if time.Now().After(deadline) {
						k, _ := meshMembers(nd.t)
						b.Fatalf("the tunnel knows %d of %d members after 60 s", k, n)
					}
					time.Sleep(20 * time.Millisecond)
				}
				bodies = nil
				// Two mesh ticks: the neighbour dials are under way, the loop idle.
				time.Sleep(2 * meshTick)
				goroutines = runtime.NumGoroutine()
				h1 := settledHeap()
				perMember = (float64(h1) - float64(h0)) / float64(n)
				if _, s := meshMembers(nd.t); s != 0 {
					b.Fatalf("%d members have a session; the sink never answers", s)
				}
				runtime.KeepAlive(nd)
				_ = nd.t.Close()
			}
			b.ReportMetric(perMember, "B/member")
			b.ReportMetric(float64(goroutines0), "goroutines-before")
			b.ReportMetric(float64(goroutines), "goroutines-after")
			b.ReportMetric(float64(wire), "B/wire-record")
		})
	}
}

// TestMeshAntiEntropyEveryInterval: a member at rest sends its SUMMARY rounds once per
// anti-entropy interval, not at every pass of the mesh loop (once a second). Two
// members on loopback, one bootstrapping from the other; once they have a session and
// the join's exchange is over, a window of three mesh ticks may hold at most one round
// (one SUMMARY to the one connected member).
func TestMeshAntiEntropyEveryInterval(t *testing.T) {
	var seed [32]byte
	if _, err := rand.Read(seed[:]); err != nil {
		t.Fatal(err)
	}
	a := startMeshMem(t, seed)
	dir := t.TempDir()
	cfg := &config.Config{
		Interface: config.Interface{
			Name: "mem-b", NodeName: "b",
			Addresses: []netip.Prefix{netip.MustParsePrefix("10.78.0.2/16")},
			MTU:       1420, SeedFile: writeSecret(t, dir, "seed", seed),
			KeyFile: dir + "/b.key",
		},
		Discovery: config.Discovery{
			Enabled:   true,
			Bootstrap: []string{endpointOf(a)},
			MeshIPv6:  true,
		},
	}
	b := startCfg(t, cfg)
	waitUntil(t, "the two members know each other with a session", func() bool {
		ka, sa := meshMembers(a.t)
		kb, sb := meshMembers(b.t)
		return ka == 1 && kb == 1 && sa == 1 && sb == 1
	})
	// The join's exchange (SUMMARY, OBSERVE, DIGEST, WANT, RECORDS and the answers) is
	// over once neither side has sent anything for a tick and a half; a mesh that
	// never goes quiet is caught below.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		n0 := b.t.mesh.eng.Stats().MsgsOut + a.t.mesh.eng.Stats().MsgsOut
		time.Sleep(meshTick + meshTick/2)
		if b.t.mesh.eng.Stats().MsgsOut+a.t.mesh.eng.Stats().MsgsOut == n0 {
			break
		}
	}
	out0 := b.t.mesh.eng.Stats().MsgsOut
	time.Sleep(3 * meshTick)
	if sent := b.t.mesh.eng.Stats().MsgsOut - out0; sent > 1 {
		t.Fatalf("a member at rest sent %d gossip messages in 3 s to its one connected member; want at most 1 round per %v", sent, mesh.DefaultInterval)
	}
}
