package stt

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// slowDialProxy forwards TCP connections to target, each only after delay: a WebSocket
// server whose connection takes that long to come up (a far proxy, a slow TLS peer).
func slowDialProxy(t *testing.T, target string, delay time.Duration) string {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		_ = l.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			time.Sleep(delay) // the slowness under test, not synchronisation
			u, err := net.Dial("tcp4", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, u)
			mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); _, _ = io.Copy(u, c); _ = u.Close() }()
			go func() { defer wg.Done(); _, _ = io.Copy(c, u); _ = c.Close() }()
		}
	}()
	return l.Addr().String()
}

// TestFallbackLosesNothingUncounted: UDP stops answering while datagrams flow. Every
// datagram sent is then either delivered or counted under DropFallback: those that went
// over UDP after its last answer are counted when the node gives UDP up, and those sent
// while the WebSocket is still being dialed wait in the queue and are delivered once it
// carries, not thrown into the dead path.
func TestFallbackLosesNothingUncounted(t *testing.T) {
	timers := Limits{FallbackAfter: 300 * time.Millisecond, ProbeInterval: time.Hour, Tick: 10 * time.Millisecond}
	seed := randKey(t)
	b := startNode(t, nodeOpts{seed: seed, name: "b", ws: true, timers: timers})
	a := startNode(t, nodeOpts{seed: seed, name: "a", timers: timers})
	_, _ = b.AddPeer(PeerConfig{Name: "a"})
	proxy := slowDialProxy(t, b.WSAddr(), 300*time.Millisecond)
	pa, _ := a.AddPeer(PeerConfig{Name: "b", Endpoint: loopback(b.Node), WSURL: "ws://" + proxy + "/stt"})
	established(t, a, b)
	pb := b.Peer("a")
	// Quiet first: the RTT probes of the new session answered both ways (the next are
	// RTTProbeInterval, 5 s, away). A frame of b's that answers something of a's (a
	// PONG) sent just before UDP dies but read after a's first datagram into it is
	// taken as an answer to that datagram too, which no count can tell apart: the
	// exact accounting below holds once nothing of b's but probes is in flight.
	waitFor(t, 5*time.Second, "the RTT probes answered", func() bool { return pa.RTT() > 0 && pb.RTT() > 0 })

	a.bind.blocked.Store(true)
	b.bind.blocked.Store(true)
	start := b.h.count.Load()
	sent, sentBeforeHold := 0, -1
	deadline := time.Now().Add(15 * time.Second)
	for after := 0; after < 20; {
		if time.Now().After(deadline) {
			t.Fatalf("not on WebSocket: paths %s/%s", pa.Path(), pb.Path())
		}
		if sentBeforeHold < 0 && pa.path.holding.Load() {
			sentBeforeHold = sent
		}
		sendOne(t, pa, 1, []byte("tick"))
		sent++
		if pa.Path() == PathWS && pb.Path() == PathWS {
			after++
		}
		time.Sleep(5 * time.Millisecond) // pacing of the traffic
	}
	if sentBeforeHold < 0 {
		t.Fatal("the node never held datagrams while it dialed the WebSocket")
	}
	fallback := func() int64 { return int64(a.Stats().Drops[DropFallback]) }
	// The deadline bounds a failure on a loaded machine; it measures nothing. On a
	// timeout the check below says what is missing.
	for end := time.Now().Add(20 * time.Second); b.h.count.Load()-start+fallback() < int64(sent) && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond) // polling counters the node updates
	}
	delivered := b.h.count.Load() - start
	if delivered+fallback() != int64(sent) {
		t.Fatalf("%d sent, %d delivered, %d counted under fallback (%d sent before the hold; drops at a %v, at b %v; paths %s/%s)",
			sent, delivered, fallback(), sentBeforeHold, a.Stats().Drops, b.Stats().Drops, pa.Path(), pb.Path())
	}
	if fallback() > int64(sentBeforeHold) {
		t.Fatalf("%d counted lost, but only %d were sent before the hold began: held ones were lost", fallback(), sentBeforeHold)
	}
	if fallback() == 0 {
		t.Fatal("nothing counted, yet datagrams went into UDP after it stopped answering")
	}
	if got := pa.Stats().Drops; got != uint64(fallback()) {
		t.Fatalf("peer drops %d, node fallback drops %d", got, fallback())
	}
	t.Logf("%d sent: %d delivered, %d counted under fallback (%d sent before the hold)", sent, delivered, fallback(), sentBeforeHold)
}

// TestFallbackHeldCountedWhenDialFails: datagrams held while the WebSocket was being
// dialed are counted under DropFallback when the dial fails, not kept or sent into
// the path that stopped answering; the hold ends.
func TestFallbackHeldCountedWhenDialFails(t *testing.T) {
	timers := Limits{FallbackAfter: 300 * time.Millisecond, ProbeInterval: time.Hour, Tick: 10 * time.Millisecond}
	seed := randKey(t)
	b := startNode(t, nodeOpts{seed: seed, name: "b", timers: timers})
	a := startNode(t, nodeOpts{seed: seed, name: "a", timers: timers})
	_, _ = b.AddPeer(PeerConfig{Name: "a"})
	// A server that takes 300 ms, then hangs up: the dial fails after datagrams waited.
	dead, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	_ = dead.Close()
	proxy := slowDialProxy(t, deadAddr, 300*time.Millisecond)
	pa, _ := a.AddPeer(PeerConfig{Name: "b", Endpoint: loopback(b.Node), WSURL: "ws://" + proxy + "/stt"})
	established(t, a, b)

	a.bind.blocked.Store(true)
	b.bind.blocked.Store(true)
	held := false
	deadline := time.Now().Add(10 * time.Second)
	for !(held && !pa.path.holding.Load()) {
		if time.Now().After(deadline) {
			t.Fatalf("held %v, holding %v: no failed dial with datagrams waiting", held, pa.path.holding.Load())
		}
		held = held || pa.path.holding.Load()
		sendOne(t, pa, 1, []byte("tick"))
		time.Sleep(5 * time.Millisecond) // pacing of the traffic
	}
	waitFor(t, 5*time.Second, "the held datagrams counted", func() bool { return a.Stats().Drops[DropFallback] > 0 })
	pa.mu.Lock()
	queued := len(pa.queue)
	pa.mu.Unlock()
	if queued != 0 {
		t.Fatalf("%d datagrams still queued after the dial failed", queued)
	}
}

// TestProbeFromPeerLeavesUnansweredCount: a PING the peer sent is its own request, not
// an answer to the datagrams sent over UDP since: read after they went into a dead
// path, it leaves their count, which a fallback then counts as lost. (The peer's
// RTT probe, sent just before UDP died, cleared it, and datagrams went uncounted.)
func TestProbeFromPeerLeavesUnansweredCount(t *testing.T) {
	timers := Limits{FallbackAfter: time.Hour, ProbeInterval: time.Hour, Tick: 10 * time.Millisecond}
	seed := randKey(t)
	b := startNode(t, nodeOpts{seed: seed, name: "b", timers: timers})
	a := startNode(t, nodeOpts{seed: seed, name: "a", timers: timers})
	_, _ = b.AddPeer(PeerConfig{Name: "a"})
	// A URL makes a the chooser, which counts what UDP leaves unanswered; it is never
	// dialed here (UDP is not given up).
	pa, _ := a.AddPeer(PeerConfig{Name: "b", Endpoint: loopback(b.Node), WSURL: "ws://127.0.0.1:1/stt"})
	established(t, a, b)
	// Quiet first: both RTT probes of the new session answered (the next are 5 s away),
	// so that no frame of b's is in flight when a's UDP dies but the PING below.
	pb := b.Peer("a")
	waitFor(t, 5*time.Second, "both RTT probes answered and a's datagrams answered", func() bool {
		return pa.RTT() > 0 && pb.RTT() > 0 && pa.path.sentUnanswered.Load() == 0
	})

	a.bind.blocked.Store(true) // a's datagrams are lost from here on; b's still arrive
	for range 3 {
		sendOne(t, pa, 1, []byte("lost"))
	}
	if got := pa.path.sentUnanswered.Load(); got != 3 {
		t.Fatalf("%d datagrams counted unanswered, want 3", got)
	}
	heard := pa.times.lastRecv.Load()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, _ = pb.Ping(ctx) // its PONG cannot come back
	waitFor(t, 5*time.Second, "b's PING at a", func() bool { return pa.times.lastRecv.Load() != heard })
	if got := pa.path.sentUnanswered.Load(); got != 3 {
		t.Fatalf("after the peer's PING, %d datagrams counted unanswered, want 3", got)
	}
}
