package tunnel

// seeds.go applies the seed file to the node: which seeds it accepts and which one it
// initiates with at each moment of a rotation (docs/configuration.md, "Replacing the
// seed"). The file and the clock decide (config.SeedFile.SeedsAt); one timer per node
// applies the next boundary of a planned rotation.

import (
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/internal/promtext"
	"github.com/stt-tun/stt-tun/internal/status"
	"github.com/stt-tun/stt-tun/stt"
	"github.com/stt-tun/stt-tun/stt/handshake"
	"github.com/stt-tun/stt-tun/stt/mesh"
)

// bareGrace is how long the old seed is still accepted after a reload finds the seed
// file replaced by a bare new seed (no next line): long enough to copy the file to
// every node and reload each.
const bareGrace = 10 * time.Minute

// seedState is the seed file as the node applies it.
type seedState struct {
	mu sync.Mutex
	// network is the network's identity, fixed while the node runs.
	network mesh.Network
	// file is what is applied; transient says its next seed is not in the seed file
	// but came from a bare replacement (bareGrace), in memory only.
	file      config.SeedFile
	transient bool
	held      [][32]byte  // the seeds the node was last given
	gen       uint64      // counts applications: a reload planned on an older one plans again
	timer     *time.Timer // the next boundary of a rotation, nil without one
	stopped   bool
	// clock is the wall clock the file is read against (time.Now; tests step it), and
	// recheck how long the timer waits at most (seedRecheck; tests shorten it).
	clock   func() time.Time
	recheck time.Duration
}

// seedRecheck bounds the wait for the next boundary: the boundary is a wall-clock
// time, but a timer runs on the monotonic clock, which does not follow a step of the
// wall clock. A node that booted with its clock far behind (no real-time clock, before
// NTP) would otherwise keep accepting the seed a rotation retired for as long as its
// clock was wrong, years, after NTP set it right.
const seedRecheck = time.Minute

// applySeeds makes the node hold what sf says for now, and arms the timer for the
// next boundary.
func (t *Tunnel) applySeeds(sf config.SeedFile, transient bool) error {
	t.seed.mu.Lock()
	defer t.seed.mu.Unlock()
	return t.applySeedsLocked(sf, transient)
}

func (t *Tunnel) applySeedsLocked(sf config.SeedFile, transient bool) error {
	s := &t.seed
	if s.stopped {
		return errors.New("the tunnel is stopping")
	}
	now := time.Now()
	if s.clock != nil {
		now = s.clock()
	}
	held := sf.SeedsAt(now)
	if !slices.Equal(held, s.held) {
		// Only a change: each SetSeeds starts another spread of seed rekeys.
		if err := t.node.SetSeeds(held); err != nil {
			return err
		}
		if s.held != nil {
			t.log.Info("seeds changed", "initiating", shortSeed(held[0]), "accepting", len(held))
		}
		s.held = held
	}
	s.file, s.transient = sf, transient
	s.gen++
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	if at, ok := sf.NextBoundary(now); ok {
		wait, most := at.Sub(now), s.recheck
		if most <= 0 {
			most = seedRecheck
		}
		s.timer = time.AfterFunc(min(wait, most), t.seedBoundary)
	}
	return nil
}

// seedBoundary runs at a boundary of the rotation: from (initiate with the next seed)
// or until (the old one is no longer accepted).
func (t *Tunnel) seedBoundary() {
	t.seed.mu.Lock()
	defer t.seed.mu.Unlock()
	if t.seed.stopped {
		return
	}
	gen := t.seed.gen
	if err := t.applySeedsLocked(t.seed.file, t.seed.transient); err != nil {
		t.log.Error("seed rotation: cannot apply the seeds", "err", err)
	}
	t.seed.gen = gen // the same file: a reload planned on it need not plan again
}

// stopSeeds disarms the boundary timer for good.
func (t *Tunnel) stopSeeds() {
	t.seed.mu.Lock()
	defer t.seed.mu.Unlock()
	t.seed.stopped = true
	if t.seed.timer != nil {
		t.seed.timer.Stop()
		t.seed.timer = nil
	}
}

// StageSeed makes next the network's next seed, used to initiate from from on and the
// only one accepted from until on: it rewrites interface.seed_file (the current seed,
// the network line and next, atomically, mode 0600) and applies it. Staging the same
// next seed again changes nothing. A different next seed replaces the staged one,
// whatever its times: the caller stages only the seed of the newest ROTATE it holds,
// which every member ends up holding, in whatever order the statements came (refusing
// it would leave the members that staged an older one first on their own seed when
// the overlap ends). If the staged one is in use already (from has passed), it
// becomes the current seed of the new rotation.
func (t *Tunnel) StageSeed(next [32]byte, from, until time.Time) error {
	return t.stageSeed(next, from, until, nil)
}

// stageSeed is StageSeed, refused with the error of ok (when not nil), which is called
// with the seed lock held.
func (t *Tunnel) stageSeed(next [32]byte, from, until time.Time, ok func() error) error {
	if !until.After(from) {
		return errors.New("stage seed: until is not after from")
	}
	t.mu.RLock()
	path := t.cfg.Interface.SeedFile
	t.mu.RUnlock()
	t.seed.mu.Lock()
	defer t.seed.mu.Unlock()
	if ok != nil {
		if err := ok(); err != nil {
			return err
		}
	}
	now := time.Now()
	base := t.seed.file
	if base.Next != nil && !now.Before(base.Until) {
		base = config.SeedFile{Seed: *base.Next} // that rotation is over
	}
	if base.Next != nil && !t.seed.transient {
		switch {
		case *base.Next == next:
			return nil
		case !now.Before(base.From):
			base = config.SeedFile{Seed: *base.Next}
		}
	}
	if t.seed.transient {
		// A bare replacement's grace gives way to a planned rotation from the seed in use.
		base = config.SeedFile{Seed: base.SeedsAt(now)[0]}
	}
	if next == base.Seed {
		return errors.New("stage seed: the next seed is the current seed")
	}
	sf := config.SeedFile{Seed: base.Seed, Network: t.seed.network, NetworkExplicit: true, Next: &next, From: from, Until: until}
	if err := config.WriteSeedFile(path, sf); err != nil {
		return fmt.Errorf("stage seed: %w", err)
	}
	t.log.Info("next seed staged", "next", shortSeed(next), "from", from, "until", until)
	return t.applySeedsLocked(sf, false)
}

// StagedSeed is the next seed of a planned rotation still in progress (until not
// passed), and its times; ok is false without one, or when the next seed came from a
// bare replacement of the seed file rather than a plan.
func (t *Tunnel) StagedSeed() (next [32]byte, from, until time.Time, ok bool) {
	t.seed.mu.Lock()
	sf, transient := t.seed.file, t.seed.transient
	t.seed.mu.Unlock()
	if sf.Next == nil || transient || !time.Now().Before(sf.Until) {
		return next, from, until, false
	}
	return *sf.Next, sf.From, sf.Until, true
}

// seedReload is what a reload does with the seed file: apply file (transient as in
// seedState), rewrite the seed file on disk as write says (nil: leave it), and report
// changes.
type seedReload struct {
	file      config.SeedFile
	transient bool
	write     *config.SeedFile
	path      string
	changes   []string
	gen       uint64 // seedState.gen it was planned on
}

// planSeedReload reads the seed file at path for a reload. A file naming another
// network is refused (restart needed). A planned rotation is taken as it is; a bare
// seed other than the one in use starts a rotation to it at once, the old seed
// accepted for bareGrace more (in memory only). A file without a network line whose
// seed would derive another network gets the line written in, so that a restart keeps
// the network's addresses.
func (t *Tunnel) planSeedReload(path string) (*seedReload, error) {
	sf, err := config.LoadSeedFile(path)
	if err != nil {
		return nil, fmt.Errorf("reload: %w", err)
	}
	t.seed.mu.Lock()
	applied, transient, network, gen := t.seed.file, t.seed.transient, t.seed.network, t.seed.gen
	t.seed.mu.Unlock()
	if sf.NetworkExplicit && sf.Network != network {
		return nil, fmt.Errorf("%w: the seed file %s names another network (%s; running in %s)",
			ErrRestartNeeded, path, sf.Network.Prefix, network.Prefix)
	}
	r := &seedReload{path: path, gen: gen}
	if !sf.NetworkExplicit && sf.Network != network {
		w := sf
		w.Network, w.NetworkExplicit = network, true
		r.write = &w
		r.changes = append(r.changes, "seed file: network line added, so that a restart keeps the network's identity and addresses")
	}
	sf.Network, sf.NetworkExplicit = network, true
	now := time.Now()
	inUse := applied.SeedsAt(now)[0]
	switch {
	case sf.Next != nil:
		r.file = sf
	case transient && applied.Next != nil && sf.Seed == *applied.Next:
		r.file, r.transient = applied, true // the same replacement again
	case sf.Seed == inUse:
		r.file = sf
	default:
		next := sf.Seed
		r.file = config.SeedFile{Seed: inUse, Network: network, NetworkExplicit: true, Next: &next, From: now, Until: now.Add(bareGrace)}
		r.transient = true
	}
	if !sameSeeds(r.file, applied) || r.transient != transient {
		r.changes = append(r.changes, "seed file: "+describeSeeds(r.file, r.transient, now))
	}
	return r, nil
}

// applySeedReload carries out a planned seed reload; it cannot fail the reload: a seed
// file that cannot be rewritten is a warning. If the seeds changed since the plan (a
// next seed staged meanwhile, StageSeed), it plans again on what is there now. Besides
// warnings, it returns the line saying that the new seeds supersede an in-band rotation
// on this node (rotationAfterSeedReload).
func (t *Tunnel) applySeedReload(r *seedReload) []string {
	var warn []string
	for range 3 {
		t.seed.mu.Lock()
		if t.seed.gen != r.gen {
			t.seed.mu.Unlock()
			nr, err := t.planSeedReload(r.path)
			if err != nil {
				return append(warn, "warning: seed file not applied: "+err.Error())
			}
			r = nr
			continue
		}
		if r.write != nil {
			if err := config.WriteSeedFile(r.path, *r.write); err != nil {
				warn = append(warn, "warning: "+err.Error()+"; add the network line by hand before the next restart")
			}
		}
		before, wasTransient := t.seed.file, t.seed.transient
		if err := t.applySeedsLocked(r.file, r.transient); err != nil {
			warn = append(warn, "warning: seeds not applied: "+err.Error())
		} else if !sameSeeds(r.file, before) || r.transient != wasTransient {
			// Under the seed lock: an offer staging the superseded seed waits for it.
			if line := t.rotationAfterSeedReload(r.file, time.Now()); line != "" {
				warn = append(warn, line)
			}
		}
		t.seed.mu.Unlock()
		return warn
	}
	return append(warn, "warning: seed file not applied: it keeps changing; reload again")
}

func sameSeeds(a, b config.SeedFile) bool {
	if a.Seed != b.Seed || (a.Next == nil) != (b.Next == nil) {
		return false
	}
	return a.Next == nil || *a.Next == *b.Next && a.From.Equal(b.From) && a.Until.Equal(b.Until)
}

// describeSeeds says what sf means from now on, for the reload's report.
func describeSeeds(sf config.SeedFile, transient bool, now time.Time) string {
	clock := func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05 UTC") }
	switch {
	case sf.Next == nil || !now.Before(sf.Until):
		id := sf.Seed
		if sf.Next != nil {
			id = *sf.Next
		}
		return "seed " + shortSeed(id) + ", no rotation"
	case transient:
		return fmt.Sprintf("new seed %s in use now; the old seed %s is still accepted until %s (not after a restart)",
			shortSeed(*sf.Next), shortSeed(sf.Seed), clock(sf.Until))
	default:
		return fmt.Sprintf("next seed %s from %s; seed %s accepted until %s",
			shortSeed(*sf.Next), clock(sf.From), shortSeed(sf.Seed), clock(sf.Until))
	}
}

// shortSeed names a seed in logs and status: the first 8 hex digits of its SeedID.
func shortSeed(seed [32]byte) string { return shortSeedID(handshake.SeedID(seed)) }

func shortSeedID(id [16]byte) string { return hex.EncodeToString(id[:4]) }

// sessionSeed is the short id of the seed of the peer's current session, "" without a
// usable one.
func sessionSeed(sp *stt.Peer) string {
	if id, ok := sp.SessionSeed(); ok && sp.HasSession() {
		return shortSeedID(id)
	}
	return ""
}

// seedStatus is the status's seed object: the seed in use and the rotation, if one is
// in progress.
func (t *Tunnel) seedStatus() *status.Seed {
	t.seed.mu.Lock()
	sf, transient, held := t.seed.file, t.seed.transient, t.seed.held
	t.seed.mu.Unlock()
	if len(held) == 1 {
		// What the node holds, not what the clock says it should by now: until the
		// boundary is applied, the current seed is still accepted, and status says so.
		return &status.Seed{ID: shortSeed(held[0])}
	}
	if sf.Next != nil && len(held) == 0 && !time.Now().Before(sf.Until) {
		return &status.Seed{ID: shortSeed(*sf.Next)}
	}
	st := &status.Seed{ID: shortSeed(sf.Seed)}
	if sf.Next != nil {
		st.NextID, st.From, st.Until, st.Transient = shortSeed(*sf.Next), sf.From.UTC(), sf.Until.UTC(), transient
	}
	return st
}

var (
	famSeedSessions = gauge("stt_seed_sessions", "Peers whose current session was made under the current seed, or under the next one during a rotation, by seed: current or next.")
	famSeedRekeys   = counter("stt_seed_rekeys_total", "Sessions rekeyed to move them to the seed new handshakes use, during a seed rotation.")
	famSeedClosed   = counter("stt_seed_sessions_closed_total", "Sessions closed because the seed they were made under is no longer accepted (a rotation ended).")
)

// writeSeedMetrics writes the seed families: the peers' sessions by seed and what the
// rotations did.
func (t *Tunnel) writeSeedMetrics(w *promtext.Writer, peers []peerSample) {
	t.seed.mu.Lock()
	sf := t.seed.file
	t.seed.mu.Unlock()
	if sf.Next != nil && !time.Now().Before(sf.Until) {
		sf = config.SeedFile{Seed: *sf.Next} // the rotation is over
	}
	cur := handshake.SeedID(sf.Seed)
	var next [16]byte
	if sf.Next != nil {
		next = handshake.SeedID(*sf.Next)
	}
	var onCur, onNext uint64
	for _, p := range peers {
		id, ok := p.sp.SessionSeed()
		switch {
		case !ok || !p.sp.HasSession():
		case id == cur:
			onCur++
		case sf.Next != nil && id == next:
			onNext++
		}
	}
	w.Family(famSeedSessions.name, famSeedSessions.typ, famSeedSessions.help)
	w.Uint(famSeedSessions.name, onCur, "seed", "current")
	w.Uint(famSeedSessions.name, onNext, "seed", "next")
	ss := t.node.SeedStats()
	w.Family(famSeedRekeys.name, famSeedRekeys.typ, famSeedRekeys.help)
	w.Uint(famSeedRekeys.name, ss.Rekeys)
	w.Family(famSeedClosed.name, famSeedClosed.typ, famSeedClosed.help)
	w.Uint(famSeedClosed.name, ss.Closed)
}
