package handshake

import (
	"testing"
	"time"
)

// What a HELLO costs the responder before admission, by the checks it passes: a wrong
// mac1 (no seed), and a mac1-valid HELLO outside the window whose timestamp is read
// (symmetric Noise work, no DH) before it is answered with at most a cookie reply.
func BenchmarkHelloBadMAC1(b *testing.B) {
	o := defaultOpts()
	ini, resp := newPair(b, o)
	_, h, _ := ini.Initiate(1, nil, nil)
	h[len(h)-20] ^= 1 // inside mac1
	b.ReportAllocs()
	for b.Loop() {
		_, _ = resp.HandleHello(h, srcAlice, nil)
	}
}

func BenchmarkHelloStaleRead(b *testing.B) {
	o := defaultOpts()
	o.respThreshold = DefaultLoadThreshold
	ini, resp := newPair(b, o)
	msgs := make([][]byte, 2*ReplayCacheSize)
	for i := range msgs {
		_, msgs[i], _ = ini.Initiate(uint32(i+1), nil, nil)
	}
	o.clock.Advance(ReplayWindow)
	dh := resp.DHCount()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		_, _ = resp.HandleHello(msgs[i%len(msgs)], srcN(i), nil)
		if (i+1)%len(msgs) == 0 {
			o.clock.Advance(time.Millisecond) // keeps the replay cache trimming by size
		}
	}
	b.StopTimer()
	if resp.DHCount() != dh {
		b.Fatalf("stale HELLOs cost %d X25519 operations", resp.DHCount()-dh)
	}
}
