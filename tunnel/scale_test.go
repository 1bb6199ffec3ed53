package tunnel

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/stt"
	"github.com/stt-tun/stt-tun/stt/mesh"
	"github.com/stt-tun/stt-tun/stt/wire"
	"github.com/stt-tun/stt-tun/tun/tuntest"
)

// discardHandler drops what a spoke node receives.
type discardHandler struct{}

func (discardHandler) Deliver(*stt.Inbound) {}

// goroutinesOf counts the goroutines labelled inst (pprof labels, which every
// goroutine a labelled one starts inherits): an instance's own, whatever else the
// process runs. Counting the whole process failed under load: a goroutine of an
// earlier test still ending when the baseline was taken made the baseline one short.
func goroutinesOf(inst string) int {
	var buf bytes.Buffer
	_ = pprof.Lookup("goroutine").WriteTo(&buf, 1)
	label := fmt.Sprintf("%q:%q", goroutineLabel, inst)
	n := 0
	for _, block := range strings.Split(buf.String(), "\n\n") {
		var k int
		if _, err := fmt.Sscanf(block, "%d @", &k); err == nil && strings.Contains(block, label) {
			n += k
		}
	}
	return n
}

// goroutineLabel is the pprof label key goroutinesOf counts by.
const goroutineLabel = "stt-test-instance"

// labelled runs f with its goroutine labelled inst.
func labelled(inst string, f func()) {
	pprof.Do(context.Background(), pprof.Labels(goroutineLabel, inst), func(context.Context) { f() })
}

// settles polls, for up to 10 s, until ok holds (goroutines of what just happened end
// on their own), and reports whether it did.
func settles(ok func() bool) bool {
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// TestGoroutinesDoNotGrowWithIdlePeers: an engine (tunnel and stt node) has the same
// goroutines with 200 configured peers as with one, and establishing sessions with 32
// of them, all idle afterwards, leaves it none more: a peer, with or without a session,
// has no goroutine of its own (issue 16: 0 goroutines per idle peer). Each engine's
// goroutines are counted by a pprof label set where it starts.
func TestGoroutinesDoNotGrowWithIdlePeers(t *testing.T) {
	seed, _ := config.GenerateSeed()
	seedFile := writeSecret(t, t.TempDir(), "seed", seed)
	peers := func(n int) []config.Peer {
		ps := make([]config.Peer, n)
		for i := range ps {
			ps[i] = config.Peer{
				Name:            fmt.Sprintf("spoke%d", i),
				AllowedPrefixes: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 81, byte(1 + i/250), byte(1 + i%250)}), 32)},
			}
		}
		return ps
	}

	// Record only: one peer against 200, both running.
	labelled("one", func() { startMem(t, seedFile, "one", "10.81.0.1/16", peers(1)) })
	var hub *memNode
	labelled("hub", func() {
		hubDev := tuntest.NewMem("mem-hub", 1420, 16)
		hubT, err := Start(context.Background(), memConfig(t, seedFile, "hub", "10.81.0.1/16", peers(200)), Options{Device: hubDev})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = hubT.Close() })
		hub = &memNode{t: hubT, dev: hubDev}
	})
	if goroutinesOf("one") == 0 {
		t.Fatal("no goroutine carries the label: the count would prove nothing")
	}
	if !settles(func() bool { return goroutinesOf("hub") <= goroutinesOf("one") }) {
		t.Fatalf("a tunnel with 200 peers has %d goroutines, with one %d: peers known by record have goroutines", goroutinesOf("hub"), goroutinesOf("one"))
	}

	// Sessions with 32 of them, idle afterwards.
	const m = 32
	spokes := make([]*stt.Peer, m)
	for i := range m {
		key, _ := config.GenerateKey()
		nd, err := stt.New(stt.Config{Seed: seed, PrivateKey: key, Name: fmt.Sprintf("spoke%d", i), Handler: discardHandler{}})
		if err != nil {
			t.Fatal(err)
		}
		if err := nd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = nd.Close() })
		if spokes[i], err = nd.AddPeer(stt.PeerConfig{Name: "hub", Endpoint: endpointOf(hub)}); err != nil {
			t.Fatal(err)
		}
	}
	before := goroutinesOf("hub")
	for i, p := range spokes {
		pkt := ipv4UDP(fmt.Sprintf("10.81.%d.%d", 1+i/250, 1+i%250), "10.81.0.1", 1000, 9, []byte("hi"))
		buf := make([]byte, wire.HeaderLen+len(pkt), wire.HeaderLen+len(pkt)+wire.TagLen)
		copy(buf[wire.HeaderLen:], pkt)
		if err := p.Send([][]byte{buf}, nil); err != nil {
			t.Fatal(err)
		}
	}
	// All from 127.0.0.1: the hub keeps 16 half-open handshakes per source address, and
	// the spokes whose handshake it let go try again.
	waitUntil(t, "every spoke has a session confirmed by the hub", func() bool {
		for _, p := range spokes {
			if p.LastHandshake().IsZero() {
				return false
			}
		}
		return sessions(hub.t) == m
	})
	if !settles(func() bool { return goroutinesOf("hub") <= before }) {
		t.Fatalf("%d goroutines with %d idle sessions, %d before them: sessions have goroutines", goroutinesOf("hub"), m, before)
	}
}

// sessions is how many of t's peers have a session.
func sessions(t *Tunnel) int {
	k := 0
	for _, p := range t.Node().Peers() {
		if p.HasSession() {
			k++
		}
	}
	return k
}

// TestManyKnownMembersGetNoHandshakeTrafficDoesNotNeed: a mesh node that learns 300
// members at once (a restart: they come back by gossip) makes each a lazy peer and
// dials only for its few gossip neighbours, one at a time: over three passes of the
// mesh loop, no more handshakes are in flight than it keeps neighbours. The members'
// addresses are a loopback socket that never answers, so a dial stays in flight.
// (The absence of a storm is watched over a window: no event marks it.)
func TestManyKnownMembersGetNoHandshakeTrafficDoesNotNeed(t *testing.T) {
	sink, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	seed, _ := config.GenerateSeed()
	const n = 300
	bodies := memberRecords(t, seed, n, sink.LocalAddr().(*net.UDPAddr).AddrPort())
	nd := startMeshMem(t, seed)
	from := [32]byte{1} // a member that is not one of them: records are relayed
	for _, body := range bodies {
		nd.t.mesh.eng.Handle(from, netip.AddrPort{}, false, mesh.MsgRecords, body)
	}
	waitUntil(t, "the node knows every member", func() bool {
		k, _ := meshMembers(nd.t)
		return k == n
	})
	most := 0
	for end := time.Now().Add(3 * meshTick); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		most = max(most, nd.t.Node().Stats().PendingHandshakes)
	}
	if most > meshNeighbours {
		t.Fatalf("%d handshakes in flight at once with %d members known and none answering; want at most %d (the neighbours)", most, n, meshNeighbours)
	}
	if _, s := meshMembers(nd.t); s != 0 {
		t.Fatalf("%d members have a session; none answers", s)
	}
	t.Logf("at most %d handshakes in flight", most)
}
