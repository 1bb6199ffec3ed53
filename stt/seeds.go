// Seeds: a node holds one network seed, or two during a rotation (docs/protocol.md
// section 3). Handshakes it starts use the first; it answers under any. Each session
// remembers its seed: one that was up when the list changed, under a seed no longer
// first, moves to the first by a rekey, at a random moment within
// Limits.SeedRekeySpread of the change (so that a network does not rekey all at once);
// one under a seed no longer held is closed. A session made after the change under a
// seed not first is left alone: the peer chose that seed (it has not moved yet, or has
// moved ahead of this node), and pulling it to ours would only be undone. The packet
// path never looks at seeds.

package stt

import (
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"time"
)

// seedSet is what the timers know of the seeds held: their ids in order, and when the
// list was set (gen numbers the lists).
type seedSet struct {
	ids [][16]byte
	gen uint64
	at  time.Time
}

// seedRekeyState is a peer's seed rekey for one seedSet generation. Guarded by Peer.mu.
type seedRekeyState struct {
	gen  uint64
	at   time.Time // when the rekey is due
	done bool      // started (at most one per generation: a peer that only answers under the old seed is not asked again and again)
}

type seedCounters struct {
	rekeys atomic.Uint64 // rekeys started to move a session to the first seed
	closed atomic.Uint64 // sessions closed because their seed is no longer held
}

// SeedStats are the node's seed figures: the seeds held and what moving between them
// did.
type SeedStats struct {
	// IDs are the ids of the seeds held (handshake.SeedID), the first the one new
	// handshakes use.
	IDs [][16]byte
	// Rekeys counts sessions rekeyed to move them to the first seed; Closed, sessions
	// closed because their seed was no longer held.
	Rekeys, Closed uint64
}

// SetSeeds replaces the seeds the node holds (at least one, at most
// handshake.MaxSeeds, no repeats): seeds[0] is used for the handshakes it starts (the
// others on retries), every one is accepted. Sessions under the others move to seeds[0]
// within Limits.SeedRekeySpread, without interruption; sessions under a seed not listed
// any more are closed at once.
func (n *Node) SetSeeds(seeds [][32]byte) error {
	n.seedMu.Lock()
	if err := n.hs.SetSeeds(seeds); err != nil {
		n.seedMu.Unlock()
		return err
	}
	old := n.seeds.Load()
	n.seeds.Store(&seedSet{ids: n.hs.SeedIDs(), gen: old.gen + 1, at: time.Now()})
	n.seedMu.Unlock()
	n.kick()
	return nil
}

// SeedStats returns the node's seed figures.
func (n *Node) SeedStats() SeedStats {
	return SeedStats{IDs: slices.Clone(n.seeds.Load().ids), Rekeys: n.seedCtr.rekeys.Load(), Closed: n.seedCtr.closed.Load()}
}

// SessionSeed is the id of the seed the peer's current session was made under, and
// whether there is one.
func (p *Peer) SessionSeed() ([16]byte, bool) {
	if s := p.keys.current.Load(); s != nil {
		return s.seed, true
	}
	return [16]byte{}, false
}

// expiredSeedLocked applies the seeds held to the peer's sessions: those under a seed
// no longer held go (the current one with a CLOSE, and a new handshake is wanted), and
// a current session that predates the seeds held, under a seed that is not the first,
// asks for a rekey once its moment has come. It returns the current session left and whether a handshake is wanted.
// Called with p.mu held.
func (p *Peer) expiredSeedLocked(now time.Time, cur *session) (*session, bool) {
	n := p.node
	ss := n.seeds.Load()
	held := func(s *session) bool { return slices.Contains(ss.ids, s.seed) }
	if prev := p.keys.previous; prev != nil && !held(prev) {
		n.index.remove(prev)
		p.keys.previous = nil
	}
	if old := p.keys.older; old != nil && !held(old) {
		n.index.remove(old)
		p.keys.older = nil
	}
	if sb := p.keys.standby.Load(); sb != nil && !held(sb) && p.keys.standby.CompareAndSwap(sb, nil) {
		n.index.remove(sb)
	}
	if cur == nil {
		return nil, false
	}
	if !held(cur) {
		n.seedCtr.closed.Add(1)
		n.log.Info("session closed: its seed is no longer held", "peer", p.cfg.Name)
		p.dropSessionsLocked()
		return nil, p.handshake.want
	}
	if cur.seed == ss.ids[0] || !cur.created.Before(ss.at) {
		return cur, false
	}
	if p.seed.gen != ss.gen {
		spread := n.limits.SeedRekeySpread
		p.seed = seedRekeyState{gen: ss.gen, at: ss.at.Add(time.Duration(rand.Int64N(int64(spread) + 1)))}
	}
	if p.seed.done || now.Before(p.seed.at) || p.handshake.init != nil || p.cfg.AnyName {
		return cur, false
	}
	p.seed.done = true
	n.seedCtr.rekeys.Add(1)
	n.log.Debug("rekeying to move the session to the first seed", "peer", p.cfg.Name)
	return cur, true
}
