package mesh

import (
	"testing"
	"time"
)

// The node's loop ticks the engine every second and on every change, more often than
// Interval: the anti-entropy rounds (a SUMMARY to Fanout members, each of which may
// answer with a digest of the whole store) must still come once per Interval, or the
// background traffic of a mesh at rest is Interval/1s times the designed one, and every
// record change (which a member can cause at will) starts an extra round.
func TestGossipTickMoreOftenThanIntervalSendsOneRoundPerInterval(t *testing.T) {
	var summaries int
	e := New(Config{
		Identity: NewIdentity(edSeedN(1)), Seed: testSeed, Now: func() time.Time { return testNow },
		Send: func(to [32]byte, typ byte, body []byte) error {
			if typ == MsgSummary {
				summaries++
			}
			return nil
		},
	})
	var conn [][32]byte
	for i := 2; i < 2+Fanout; i++ {
		conn = append(conn, NewIdentity(edSeedN(i)).Public)
	}
	now := testNow
	for range 10 { // ten ticks within one Interval (10 s)
		e.Tick(now, conn)
		now = now.Add(DefaultInterval / 10)
	}
	if summaries != Fanout {
		t.Fatalf("%d SUMMARY messages in one Interval of ticks; want one round, %d", summaries, Fanout)
	}
	e.Tick(testNow.Add(DefaultInterval), conn)
	if summaries != 2*Fanout {
		t.Fatalf("%d SUMMARY messages after the next Interval; want %d", summaries, 2*Fanout)
	}
}
