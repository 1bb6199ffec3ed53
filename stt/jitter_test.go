package stt

import (
	"fmt"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/stt/wire"
)

// jitterNode is a node (not started) with n peers named p0..p<n-1>, each with the
// given persistent keepalive.
func jitterNode(t *testing.T, n int, keepalive time.Duration) (*Node, []*Peer) {
	t.Helper()
	nd, err := New(Config{Seed: randKey(t), PrivateKey: randKey(t), Name: "self", Handler: newCollector()})
	if err != nil {
		t.Fatal(err)
	}
	ps := make([]*Peer, n)
	for i := range ps {
		if ps[i], err = nd.AddPeer(PeerConfig{Name: fmt.Sprintf("p%d", i), PersistentKeepalive: keepalive}); err != nil {
			t.Fatal(err)
		}
	}
	return nd, ps
}

// mostInOneBucket is the largest number of ds that fall into one bucket of width w.
func mostInOneBucket(ds []time.Duration, w time.Duration) int {
	count := map[time.Duration]int{}
	most := 0
	for _, d := range ds {
		count[d/w]++
		most = max(most, count[d/w])
	}
	return most
}

// TestRekeysOfSessionsMadeTogetherSpread: 200 sessions made at the same instant (a
// restart) are due for rekeying at ages spread over an eighth of RekeyAfterTime (the
// initiator's) — no second holds more than a few — never later than RekeyAfterTime;
// a responder's are all later than any initiator's, and all are well before
// RejectAfterTime. The timer rekeys a session at exactly that age.
func TestRekeysOfSessionsMadeTogetherSpread(t *testing.T) {
	nd, ps := jitterNode(t, 200, 0)
	lim := &nd.limits
	now := time.Now()
	var key [32]byte
	var ini, resp []time.Duration
	latestIni := time.Duration(0)
	for _, p := range ps {
		for _, initiator := range []bool{true, false} {
			s, err := newSession(p, 1, 2, initiator, wire.CipherChaCha20Poly1305, &key, &key, now)
			if err != nil {
				t.Fatal(err)
			}
			d := s.rekeyAfter(lim)
			if initiator {
				if d < lim.RekeyAfterTime-lim.RekeyAfterTime/jitterDiv || d > lim.RekeyAfterTime {
					t.Fatalf("initiator's rekey at %v, outside [%v, %v]", d, lim.RekeyAfterTime-lim.RekeyAfterTime/jitterDiv, lim.RekeyAfterTime)
				}
				ini = append(ini, d)
				latestIni = max(latestIni, d)
			} else {
				resp = append(resp, d)
			}
			if d >= lim.RejectAfterTime-lim.HandshakeGiveUp/4 {
				t.Fatalf("rekey at %v leaves too little before RejectAfterTime %v", d, lim.RejectAfterTime)
			}
		}
	}
	for _, d := range resp {
		if d <= latestIni {
			t.Fatalf("a responder's rekey at %v is not later than every initiator's (latest %v)", d, latestIni)
		}
	}
	// 200 over 15 s: about 13 a second; all in one second is the storm.
	if most := mostInOneBucket(ini, time.Second); most > 40 {
		t.Fatalf("%d of 200 initiators' rekeys fall in one second", most)
	}
	if most := mostInOneBucket(resp, time.Second); most > 60 {
		t.Fatalf("%d of 200 responders' rekeys fall in one second", most)
	}

	// The timer uses that age: not due a nanosecond before, due at it.
	p := ps[0]
	s, err := newSession(p, 1, 2, true, wire.CipherChaCha20Poly1305, &key, &key, now)
	if err != nil {
		t.Fatal(err)
	}
	due := now.Add(s.rekeyAfter(lim))
	p.mu.Lock()
	defer p.mu.Unlock()
	p.times.lastSent.Store(p.mono(due)) // traffic: an idle session is not rekeyed
	if p.expiredRekeyLocked(due.Add(-time.Nanosecond), s) {
		t.Fatal("rekey due before the session's jittered age")
	}
	if !p.expiredRekeyLocked(due, s) {
		t.Fatal("rekey not due at the session's jittered age")
	}
}

// TestKeepalivesOfPeersConfiguredAlikeSpread: 200 peers with the same persistent
// keepalive (25 s) send it at intervals spread over an eighth of it, never longer than
// configured (it keeps a NAT mapping open); the keepalive answering unanswered data
// likewise spreads below KeepaliveTimeout. The timer sends at exactly that interval.
func TestKeepalivesOfPeersConfiguredAlikeSpread(t *testing.T) {
	const ka = 25 * time.Second
	nd, ps := jitterNode(t, 200, ka)
	var persistent, passive []time.Duration
	for _, p := range ps {
		d := p.keepaliveInterval()
		if d > ka || d < ka-ka/jitterDiv {
			t.Fatalf("keepalive interval %v outside [%v, %v]", d, ka-ka/jitterDiv, ka)
		}
		persistent = append(persistent, d)
		d = p.passiveKeepalive()
		if d > nd.limits.KeepaliveTimeout || d < nd.limits.KeepaliveTimeout-nd.limits.KeepaliveTimeout/jitterDiv {
			t.Fatalf("passive keepalive %v outside its window", d)
		}
		passive = append(passive, d)
	}
	// 200 over 3.1 s: about 16 per 250 ms.
	if most := mostInOneBucket(persistent, 250*time.Millisecond); most > 48 {
		t.Fatalf("%d of 200 persistent keepalives fall in one 250 ms", most)
	}
	if most := mostInOneBucket(passive, 100*time.Millisecond); most > 48 {
		t.Fatalf("%d of 200 passive keepalives fall in one 100 ms", most)
	}

	// The timer uses that interval: with a session and nothing sent for a nanosecond
	// less, no keepalive; at it, one.
	p := ps[0]
	var key [32]byte
	now := time.Now()
	s, err := newSession(p, 1, 2, true, wire.CipherChaCha20Poly1305, &key, &key, now)
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	// A persistent keepalive is an echo request: sending it starts the clock of
	// firstUnanswered (the node is not started, so nothing goes out).
	sent := func(at time.Time) bool {
		p.times.lastSent.Store(p.mono(now))
		p.times.firstUnanswered.Store(0)
		p.expiredSendKeepaliveLocked(at, s)
		return p.times.firstUnanswered.Load() != 0
	}
	if sent(now.Add(p.keepaliveInterval() - time.Nanosecond)) {
		t.Fatal("keepalive sent before the peer's jittered interval")
	}
	if !sent(now.Add(p.keepaliveInterval())) {
		t.Fatal("no keepalive at the peer's jittered interval")
	}
}
