//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/internal/nslab"
	"github.com/stt-tun/stt-tun/stt/handshake"
)

// TestRecordedHellosFromPeersAddress: mac1 does not name the responder, so the HELLOs
// alpha sends to any node of the network are valid at beta, and someone on alpha's
// path can replay them to beta from alpha's address without the seed. (The test makes
// them with the seed, which gives the same bytes.) 16 such HELLOs every 2 s — 8 a
// second, far below the load threshold — while alpha restarts: each gets a CHALLENGE
// and a half-open slot of alpha's address, and alpha must still get a session within
// its first retransmission.
//
// Before the fix, a source with 16 half-open handshakes was refused, so alpha's own
// HELLOs were dropped as long as the replays kept coming.
func TestRecordedHellosFromPeersAddress(t *testing.T) {
	t.Parallel()
	r := newRelayed(t, relayedOpts{})
	seed, err := config.LoadSeed(r.seed)
	if err != nil {
		t.Fatal(err)
	}
	e := engine(t, seed)
	x := r.lab.NS("x")
	_, bDev := r.lab.Link(x, []string{attackerAddr + "/24", relayB + "/32"}, r.b.ns, []string{betaForX + "/24"})
	r.b.ns.MustRun(t, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf."+bDev+".rp_filter=0")
	dst := &net.UDPAddr{IP: net.ParseIP(betaForX), Port: port}
	pc, err := x.ListenPacket("udp4", fmt.Sprintf("%s:%d", relayB, relayPort))
	if err != nil {
		t.Fatal(err)
	}
	c := pc.(*net.UDPConn)
	t.Cleanup(func() { c.Close() })

	startEcho(t, r.b.ns)
	p := startProber(t, r.a.ns, tunnelB, 100*time.Millisecond)
	p.waitRecovered(t, time.Now(), reachTimeout)

	// 30 s of replays, made before they start (fresh for the 90 s they are used in).
	batches := make([][][]byte, 15)
	for i := range batches {
		batches[i], _ = hellos(t, e, handshake.MaxHalfOpenPerSource, nil)
	}
	b0 := r.b.counters()
	var stop atomic.Bool
	var sent atomic.Uint64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for _, msgs := range batches {
			if stop.Load() {
				return
			}
			for _, m := range msgs {
				if _, err := c.WriteToUDP(m, dst); err != nil {
					return
				}
				sent.Add(1)
			}
			for i := 0; i < 20 && !stop.Load(); i++ {
				time.Sleep(100 * time.Millisecond) // the attack's pace, not synchronisation
			}
		}
	}()
	stopReplay := func() { stop.Store(true); wg.Wait() }
	defer stopReplay()
	ctx0, cancel0 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel0()
	if err := nslab.WaitFor(ctx0, func() bool {
		return delta(b0, r.b.counters())["handshake_dh_ops"] >= 3*handshake.MaxHalfOpenPerSource
	}); err != nil {
		t.Fatalf("the replays got no CHALLENGEs from beta: %v", delta(b0, r.b.counters()))
	}

	r.restartAlpha(t)
	up := time.Now()
	rec, err := p.waitAnswerSentAfter(up, 20*time.Second)
	stopReplay()
	t.Logf("alpha restarted under %d replayed HELLOs from its address; probes answered again after %v (err %v); beta %v",
		sent.Load(), rec.Round(time.Millisecond), err, delta(b0, r.b.counters()))
	figure(t, "attack-recorded-hellos-peer-address", map[string]any{
		"replayed": sent.Load(), "recovery_seconds": rec.Seconds(), "recovered": err == nil,
	})
	if err != nil {
		t.Fatalf("the restarted alpha got no session within 20 s under the replays (%d probes answered)", p.answered())
	}
	if rec > 3*time.Second {
		t.Errorf("the restarted alpha needed %v to get a session under the replays, want at most 3 s", rec.Round(time.Millisecond))
	}
}
