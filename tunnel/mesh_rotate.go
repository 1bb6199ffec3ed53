package tunnel

// mesh_rotate.go is the in-band seed rotation (docs/protocol.md 10.9, docs/operations.md
// "Someone left: revoke and rotate"): an admin's ROTATE statement names the next seed,
// and SEED_OFFER hands that seed, sealed, to each member the statement does not exclude.
// The node where `stt-tun seed rotate` ran offers it to every member it knows; a node
// that accepts an offer passes it on over the sessions it has, and every node holding it
// offers it to a member whose session comes up fresh while the transition lasts, so that
// a member that was away learns it from whoever it meets first. Only keys a node had
// seen before the admin signed are offered it. A valid offer stages the seed
// (StageSeed): the seed file then says when the network moves to it and until when the
// current one is still accepted.

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/internal/promtext"
	"github.com/stt-tun/stt-tun/internal/status"
	"github.com/stt-tun/stt-tun/stt/mesh"
)

// offerEvery bounds the offers a node sends one member: at most one a minute, however
// often its session comes up. Offers are reliable, so one is enough; another is sent
// only when a new session shows that the member may have been away.
const offerEvery = time.Minute

// rotateQueue bounds the offers received and the offers to send that wait for the
// rotation worker; past it they are dropped and counted (a member sends each offer
// reliably, and the next fresh session brings another).
const rotateQueue = 64

// rotateEvent is one job of the rotation worker: an offer received from a member, or
// an offer to send to one.
type rotateEvent struct {
	key  [32]byte
	body []byte // the SEED_OFFER body received; nil: send an offer to key
}

// rotateState is the rotation this node holds: the ROTATE statement and its next seed,
// once a valid offer (or `seed rotate`) staged it.
type rotateState struct {
	priv [32]byte // this node's X25519 private key: offers are sealed to it
	jobs chan rotateEvent
	// stage replaces StageSeed in tests that look at the offers alone; nil in use.
	stage atomic.Pointer[func(next [32]byte, from, until time.Time) error]

	mu    sync.Mutex
	raw   []byte          // the ROTATE statement; nil when none is held
	st    *mesh.Statement // raw, parsed
	next  [32]byte
	from  time.Time
	until time.Time
	sent  map[[32]byte]time.Time // when an offer last went to each member
	has   map[[32]byte]bool      // members that offered this rotation to this node: they hold it
	// seen is when this node first learned of each member key, kept when the member is
	// forgotten (it left, its record expired): a rotation's seed goes only to keys seen
	// before the admin signed it. At most maxSeen keys.
	seen map[[32]byte]time.Time
	// takenID and takenAt: the next seed id of the last ROTATE this node's store took,
	// and when, on this node's clock. A key seen after that is not offered that
	// rotation's seed even when seen before its issued time: the admin's clock may be
	// ahead of this one.
	takenID [16]byte
	takenAt time.Time
	// superseded is the ROTATE statement a reload of a seed file written by hand
	// superseded on this node (rotationAfterSeedReload): its seed is neither offered nor
	// staged from offers. supersededID is its next seed id, supersededUntil the end of
	// its overlap (status shows it until then).
	superseded      []byte
	supersededID    [16]byte
	supersededUntil time.Time
	// since is when this run started: a rotation taken in an earlier one (restored) was
	// taken before every key seen in this one.
	since time.Time
	// persist is what the rotation keys file holds (mesh_rotation_keys.go),
	// persistDirty that it changed since written; persistErr and persistAt the last
	// failure to write it, and when.
	persist      rotationPersisted
	persistDirty bool
	persistErr   string
	persistAt    time.Time

	recv    [len(mesh.SeedOfferReasons)]atomic.Uint64 // offers received, by reason
	sentN   atomic.Uint64                             // offers sent
	dropped atomic.Uint64                             // jobs the worker's queue had no room for
}

func newRotateState(priv [32]byte) *rotateState {
	return &rotateState{priv: priv, jobs: make(chan rotateEvent, rotateQueue), sent: make(map[[32]byte]time.Time),
		has: make(map[[32]byte]bool), seen: make(map[[32]byte]time.Time), since: time.Now()}
}

func (r *rotateState) count(reason string) {
	for i, s := range mesh.SeedOfferReasons {
		if s == reason {
			r.recv[i].Add(1)
			return
		}
	}
}

// held returns the rotation held while its transition lasts (now < until).
func (r *rotateState) held(now time.Time) (raw []byte, st *mesh.Statement, next [32]byte, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.raw == nil || !now.Before(r.until) {
		return nil, nil, next, false
	}
	return r.raw, r.st, r.next, true
}

func (r *rotateState) enqueue(ev rotateEvent) {
	select {
	case r.jobs <- ev:
	default:
		r.dropped.Add(1)
	}
}

// rotateLoop is the rotation worker: offers are opened and sealed here, off the receive
// goroutines (each costs X25519 and a signature check, staging writes the seed file).
func (t *Tunnel) rotateLoop() {
	m := t.mesh
	t.restoreRotation(time.Now())
	for {
		select {
		case <-m.stop:
			return
		case ev := <-m.rot.jobs:
			if ev.body != nil {
				t.receiveSeedOffer(ev.key, ev.body)
			} else {
				t.sendSeedOffer(ev.key, time.Now())
			}
		}
	}
}

// restoreRotation takes up, after a restart, the rotation the node held: the newest
// ROTATE of the statements file, when the seed file stages the seed it names and its
// overlap has not ended. The node then offers it on, to the keys the rotation keys
// file says it had seen before the statement was signed, and to [[peer]]s pinned to a
// key; every key it meets now is new to it, and is not offered that rotation's seed.
// A rotation a seed file written by hand superseded stays superseded.
func (t *Tunnel) restoreRotation(now time.Time) {
	st, raw := t.heldRotation()
	if st == nil {
		return
	}
	var p rotationPersisted
	if m := t.mesh; m.stmtPath != "" {
		path := rotationPath(m.stmtPath)
		var bad int
		var err error
		p, bad, err = loadRotationFile(path)
		switch {
		case err != nil:
			t.log.Warn("mesh: cannot read the rotation keys file; the rotation's seed goes to [[peer]]s only", "file", path, "err", err)
		case bad > 0:
			t.log.Warn("mesh: rotation keys file holds lines not read; keeping the others", "file", path, "unreadable", bad)
		}
	}
	r := t.mesh.rot
	t.seed.mu.Lock()
	sf := t.seed.file
	t.seed.mu.Unlock()
	final := sf.Seed
	if sf.Next != nil {
		final = *sf.Next
	}
	r.mu.Lock()
	r.restoreOfferableLocked(p, st, raw)
	if r.superseded != nil && mesh.SeedID(final) == st.Rotate.NextSeedID {
		// The seed file ends on the rotation's seed now (copied in while the node was
		// down): as a reload of it would, that lifts the mark.
		r.superseded = nil
		r.persist.superseded, r.persistDirty = [32]byte{}, true
	}
	superseded := r.superseded != nil
	r.mu.Unlock()
	if _, until := rotationTimes(st); superseded && now.Before(until) {
		t.log.Info("mesh: the in-band rotation stays superseded on this node by the seed file written by hand",
			"next_seed_id", shortSeedID(st.Rotate.NextSeedID), "until", until.UTC().Format(time.RFC3339))
	}
	next, _, _, ok := t.StagedSeed()
	from, until := rotationTimes(st)
	if superseded || !ok || mesh.SeedID(next) != st.Rotate.NextSeedID || !now.Before(until) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.raw == nil {
		r.raw, r.st, r.next, r.from, r.until = bytes.Clone(raw), st, next, from, until
	}
}

// seedOfferMessage is the extension hook's share: the body is copied (the receive
// buffer is reused) and left to the worker.
func (t *Tunnel) seedOfferMessage(key [32]byte, body []byte) {
	if len(body) > mesh.MaxSeedOfferBody {
		t.mesh.rot.count(mesh.OfferMalformed)
		return
	}
	t.mesh.rot.enqueue(rotateEvent{key: key, body: bytes.Clone(body)})
}

// rotateSessionUp: a member's session came up fresh; while a transition lasts it is
// offered the next seed (the worker checks whether it may have it, and how recently it
// was sent one).
func (t *Tunnel) rotateSessionUp(key [32]byte) {
	if _, _, _, ok := t.mesh.rot.held(time.Now()); ok {
		t.mesh.rot.enqueue(rotateEvent{key: key})
	}
}

// offerable says whether key may be given the next seed of st: a member the statement
// does not exclude and no admin revoked, not this node, and one this node knew before
// the admin signed the statement and before this node took it (its clock may be behind
// the admin's), or a [[peer]] it is configured with. A key that
// appears only after that is not given the seed: it might be a revoked member back
// under a fresh key, holding the current seed, which is all it takes to join until the
// rotation completes. Such a member gets the new seed file by hand.
func (t *Tunnel) offerable(st *mesh.Statement, key [32]byte, p *peer) bool {
	if key == t.mesh.self || t.statementRevoked(key) {
		return false
	}
	for _, k := range st.Rotate.Excluded {
		if k == key {
			return false
		}
	}
	r := t.mesh.rot
	r.mu.Lock()
	seen, ok := r.seen[key]
	before := ok && seen.Before(time.Unix(0, int64(st.Issued))) &&
		(r.takenID != st.Rotate.NextSeedID || seen.Before(r.takenAt))
	r.mu.Unlock()
	if before {
		return true
	}
	// A [[peer]] pinned to the key: the operator named it (t.mu guards t.peers and
	// their cfg, which a reload replaces).
	t.mu.RLock()
	defer t.mu.RUnlock()
	for _, cp := range t.peers {
		if cp == p && cp.cfg.PublicKey != nil && *cp.cfg.PublicKey == key {
			return true
		}
	}
	return false
}

// maxSeen bounds the keys a node remembers having seen: twice the member table.
const maxSeen = 2 * mesh.DefaultMaxMembers

// noteSeen records that key was first seen at when, unless it was seen before.
func (r *rotateState) noteSeen(key [32]byte, when time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.seen[key]; !ok && len(r.seen) < maxSeen {
		r.seen[key] = when
	}
}

// sendSeedOffer seals the next seed to the member key and sends it reliably, unless the
// transition is over, key may not have it, or it was sent one less than offerEvery ago.
func (t *Tunnel) sendSeedOffer(key [32]byte, now time.Time) bool {
	r := t.mesh.rot
	raw, st, next, ok := r.held(now)
	if !ok {
		return false
	}
	if _, newest := t.heldRotation(); !bytes.Equal(newest, raw) {
		return false // a newer rotation was signed since: its seed is the one to hand on
	}
	v, ok := t.mesh.byKey.Load(key)
	if !ok || !t.offerable(st, key, v.(*peer)) {
		return false
	}
	r.mu.Lock()
	if last, ok := r.sent[key]; r.has[key] || (ok && now.Sub(last) < offerEvery) {
		r.mu.Unlock()
		return false
	}
	r.sent[key] = now
	r.mu.Unlock()
	o, err := mesh.SealSeed(rand.Reader, raw, next, key)
	if err != nil {
		t.log.Warn("mesh: seal the next seed", "member", config.EncodeKey(key), "err", err)
		return false
	}
	body, err := mesh.AppendSeedOffer(nil, o)
	if err != nil {
		return false
	}
	if err := v.(*peer).sp.SendReliable(mesh.MsgSeedOffer, body); err != nil {
		t.log.Debug("mesh: send seed offer", "member", config.EncodeKey(key), "err", err)
		r.mu.Lock()
		delete(r.sent, key) // the next fresh session tries again
		r.mu.Unlock()
		return false
	}
	r.sentN.Add(1)
	return true
}

// receiveSeedOffer checks an offer from the member from and stages its seed: every
// check of mesh.OpenSeedOffer, with the statement going through the statement store
// (which verifies, keeps and spreads it) and having to be the newest rotation it holds.
func (t *Tunnel) receiveSeedOffer(from [32]byte, body []byte) {
	r := t.mesh.rot
	if len(t.statementAdmins()) == 0 {
		r.count(mesh.OfferNoAdmins)
		return
	}
	o, err := mesh.ParseSeedOffer(body)
	if err != nil {
		r.count(mesh.OfferMalformed)
		return
	}
	r.mu.Lock()
	if r.superseded != nil && bytes.Equal(r.superseded, o.Statement) {
		r.mu.Unlock()
		r.count(mesh.OfferSuperseded) // the operator's seed file wins on this node
		return
	}
	dup := r.raw != nil && bytes.Equal(r.raw, o.Statement)
	if dup {
		r.has[from] = true
	}
	r.mu.Unlock()
	if dup {
		// Every member holding the seed offers it at each fresh session: the ones after
		// the first cost nothing.
		r.count(mesh.OfferDuplicated)
		return
	}
	reason := t.offerStatement(o.Statement)
	st, raw := t.heldRotation()
	if raw == nil || !bytes.Equal(raw, o.Statement) {
		if reason == mesh.ReasonAccepted || reason == mesh.ReasonStale {
			r.count(mesh.OfferStale) // genuine, but a newer rotation is held
		} else {
			r.count(mesh.OfferStatement)
		}
		return
	}
	if _, until := rotationTimes(st); !time.Now().Before(until.Add(mesh.MaxClockSkew)) {
		// Over: honest members stop offering a rotation at its end (on their clocks,
		// which may be behind this one: hence the skew), so this is a replay. Staged, it
		// would make its seed the only one held from now on, and a member whose seed has
		// moved on since would leave the network for it.
		r.count(mesh.OfferStale)
		return
	}
	next, err := o.Open(st, r.priv, t.mesh.self)
	if err != nil {
		r.count(mesh.SeedOfferReason(err))
		// Counted; logged at debug only, so that a member cannot fill the log with them.
		t.log.Debug("mesh: refused a seed offer", "from", config.EncodeKey(from), "err", err)
		return
	}
	if err := t.stageRotation(raw, st, next); err != nil {
		if errors.Is(err, errSuperseded) {
			r.count(mesh.OfferSuperseded) // a reload superseded it meanwhile
			return
		}
		r.count(mesh.OfferRefused)
		t.log.Warn("mesh: could not stage the next seed of a rotation", "from", config.EncodeKey(from), "err", err)
		return
	}
	r.mu.Lock()
	r.has[from] = true
	r.mu.Unlock()
	r.count(mesh.OfferAccepted)
	// On to the members this node has a session with now: a member the rotating node
	// cannot reach directly (behind NAT, relayed) learns it from its neighbours without
	// waiting for a session of its own to come up fresh. Duplicates cost the receiver a
	// comparison.
	now := time.Now()
	t.mesh.byKey.Range(func(k, v any) bool {
		if key := k.([32]byte); key != from && v.(*peer).sp.HasSession() {
			t.sendSeedOffer(key, now)
		}
		return true
	})
}

// rotationTimes are the switch time and the end of the overlap of a rotation.
func rotationTimes(st *mesh.Statement) (from, until time.Time) {
	from = time.Unix(int64(st.Rotate.SwitchAt), 0)
	return from, from.Add(time.Duration(st.Rotate.Overlap) * time.Second)
}

// stageRotation stages the next seed of the ROTATE st (bytes raw) and holds the rotation
// for offering it on.
func (t *Tunnel) stageRotation(raw []byte, st *mesh.Statement, next [32]byte) error {
	from, until := rotationTimes(st)
	r := t.mesh.rot
	notSuperseded := func() error {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.superseded != nil && bytes.Equal(r.superseded, raw) {
			return errSuperseded
		}
		return nil
	}
	if err := notSuperseded(); err != nil {
		return err
	}
	// Checked again under the seed lock, which a reload holds while it supersedes a
	// rotation: one that comes between the two checks is refused all the same.
	stage := func(next [32]byte, from, until time.Time) error { return t.stageSeed(next, from, until, notSuperseded) }
	if f := r.stage.Load(); f != nil {
		stage = *f
	}
	if err := stage(next, from, until); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.superseded != nil && bytes.Equal(r.superseded, raw) {
		// A reload came between the staging and here (the seed lock is released): its
		// file replaced the seed just staged, and the node must not offer it on.
		return errSuperseded
	}
	if r.raw != nil && !bytes.Equal(r.raw, raw) {
		clear(r.sent) // a new rotation: everyone may be offered it
		clear(r.has)
	}
	r.raw, r.st, r.next, r.from, r.until = bytes.Clone(raw), st, next, from, until
	t.log.Info("mesh: next seed staged", "seed_id", shortSeedID(st.Rotate.NextSeedID),
		"from", from.UTC().Format(time.RFC3339), "until", until.UTC().Format(time.RFC3339))
	return nil
}

// errSuperseded refuses to stage the seed of a rotation that a reload of a seed file
// written by hand superseded on this node.
var errSuperseded = errors.New("the seed file written by hand supersedes this rotation on this node (reload)")

// rotationAfterSeedReload is called, with the seed lock held, when a reload has changed
// the seeds to sf. The operator replaced the seed by hand: an in-band rotation in
// progress whose next seed sf does not end on is superseded on this node. The node
// stops offering its seed (it no longer plans to use it, and a member given it would
// move to a seed this node leaves), and refuses to stage it from later offers, which
// would undo the operator's file. A newer rotation is obeyed as usual. It returns the
// reload's line saying so, "" when nothing was superseded. A file that ends on the
// rotation's seed (the operator copied it by hand) lifts the mark, and the node hands
// that seed on again.
func (t *Tunnel) rotationAfterSeedReload(sf config.SeedFile, now time.Time) string {
	if t.mesh == nil {
		return ""
	}
	final := sf.Seed
	if sf.Next != nil {
		final = *sf.Next
	}
	finalID := mesh.SeedID(final)
	st, raw := t.heldRotation()
	r := t.mesh.rot
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.st != nil && r.st.Rotate.NextSeedID != finalID {
		if st == nil {
			st, raw = r.st, r.raw
		}
		r.raw, r.st, r.next, r.from, r.until = nil, nil, [32]byte{}, time.Time{}, time.Time{}
		clear(r.sent)
		clear(r.has)
	}
	if st == nil || slices.Contains(st.Rotate.Excluded, t.mesh.self) {
		return ""
	}
	if _, until := rotationTimes(st); !now.Before(until) {
		return ""
	}
	if st.Rotate.NextSeedID == finalID {
		if bytes.Equal(r.superseded, raw) {
			r.superseded = nil
			r.persist.superseded, r.persistDirty = [32]byte{}, true
		}
		if r.raw == nil {
			// The file holds the rotation's seed (its id is the statement's): the node
			// hands it on, as restoreRotation does after a restart on this file.
			from, until := rotationTimes(st)
			r.raw, r.st, r.next, r.from, r.until = bytes.Clone(raw), st, final, from, until
		}
		return ""
	}
	if bytes.Equal(r.superseded, raw) {
		return ""
	}
	_, until := rotationTimes(st)
	r.superseded, r.supersededID, r.supersededUntil = bytes.Clone(raw), st.Rotate.NextSeedID, until
	r.persist.superseded, r.persistDirty = sha256.Sum256(raw), true // kept across a restart
	return fmt.Sprintf("seed rotation: the in-band rotation to %s (signed %s) is superseded on this node by the seed file: its seed is no longer offered to members nor taken from their offers",
		shortSeedID(st.Rotate.NextSeedID), time.Unix(0, int64(st.Issued)).UTC().Format(time.RFC3339))
}

// ErrNoAdmins is Rotate's error on a node without [membership] admins.
var ErrNoAdmins = errors.New("this interface has no [membership] admins: nothing can be commanded in band; rotate by hand (stt-tun genseed --next-of)")

// Rotate is the control socket's rotate: statement is a ROTATE signed by an admin (by
// `stt-tun seed rotate`) and next the seed it names. The statement goes to the statement
// store (and from there to every member), the seed is staged here, and it is offered to
// every member this node knows that the statement does not exclude and no admin
// revoked; members whose sessions come up later are offered it then. It returns how many
// members the offer went to now.
func (t *Tunnel) Rotate(statement []byte, next [32]byte) (int, error) {
	if t.mesh == nil {
		return 0, ErrNoMesh
	}
	if len(t.statementAdmins()) == 0 {
		return 0, ErrNoAdmins
	}
	// Everything is checked before the statement goes to the store: taken there, it
	// spreads to every member as the newest rotation, and one that cannot be carried
	// out would make the members refuse the offers of the rotation before it.
	parsed, err := mesh.ParseStatement(statement, t.mesh.netID, t.statementAdmins())
	if err != nil {
		return 0, fmt.Errorf("statement refused: %s", mesh.StatementReason(err))
	}
	if parsed.Kind != mesh.StatementRotate {
		return 0, errors.New("statement refused: not a rotation")
	}
	if mesh.SeedID(next) != parsed.Rotate.NextSeedID {
		return 0, errors.New("the seed is not the one the statement names")
	}
	if n := len(parsed.Rotate.Excluded); n > mesh.MaxExcludedSent {
		return 0, fmt.Errorf("the statement excludes %d keys: at most %d fit in one packet", n, mesh.MaxExcludedSent)
	}
	if slices.Contains(parsed.Rotate.Excluded, t.mesh.self) {
		return 0, errors.New("the statement excludes this node itself")
	}
	from, until := rotationTimes(parsed)
	if !time.Now().Before(until) {
		return 0, errors.New("the rotation's overlap is already over")
	}
	if staged, sFrom, sUntil, ok := t.StagedSeed(); ok && staged != next && (!from.After(sFrom) || !until.After(sUntil)) {
		// One rotation at a time from here: one that would switch or end before the one
		// in progress is most likely a mistake. (Should two be signed anyway, two admins
		// at once, every member ends on the newer one's seed: StageSeed.)
		return 0, fmt.Errorf("a rotation to %s is in progress (from %s until %s): a new one must start and end after it",
			shortSeed(staged), sFrom.UTC().Format(time.RFC3339), sUntil.UTC().Format(time.RFC3339))
	}
	if err := t.seedFileWritable(); err != nil {
		// Checked before the statement spreads, like the rest: staging writes the file.
		return 0, fmt.Errorf("stage the next seed: %w", err)
	}
	reason := t.offerStatement(statement)
	st, raw := t.heldRotation()
	if raw == nil || !bytes.Equal(raw, statement) {
		if reason == mesh.ReasonAccepted || reason == mesh.ReasonStale {
			return 0, errors.New("statement refused: a newer rotation is held")
		}
		return 0, fmt.Errorf("statement refused: %s", reason)
	}
	if err := t.stageRotation(raw, st, next); err != nil {
		return 0, fmt.Errorf("stage the next seed: %w", err)
	}
	now := time.Now()
	var keys [][32]byte
	t.mesh.byKey.Range(func(k, _ any) bool {
		keys = append(keys, k.([32]byte))
		return true
	})
	n := 0
	for _, k := range keys {
		if t.sendSeedOffer(k, now) {
			n++
		}
	}
	return n, nil
}

// seedFileWritable checks that a file can be made beside the seed file, as
// config.WriteSeedFile does when a seed is staged (a read-only file system, or a
// directory gone, would fail it).
func (t *Tunnel) seedFileWritable() error {
	t.mu.RLock()
	path := t.cfg.Interface.SeedFile
	t.mu.RUnlock()
	f, err := os.CreateTemp(filepath.Dir(path), ".stt-tun-seed-*")
	if err != nil {
		return fmt.Errorf("cannot write beside the seed file %s: %w", path, err)
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

// rotationStatus is the rotation this node holds, or nil.
func (t *Tunnel) rotationStatus() *status.Rotation {
	if t.mesh == nil {
		return nil
	}
	r := t.mesh.rot
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.st == nil {
		return nil
	}
	return &status.Rotation{
		Admin:    base64.StdEncoding.EncodeToString(r.st.Admin),
		Issued:   time.Unix(0, int64(r.st.Issued)).UTC(),
		Excluded: len(r.st.Rotate.Excluded),
		Offered:  len(r.sent),
	}
}

// addRotationStatus adds the rotation held to the seed object when its next seed is the
// one staged (the seed's own fields say when it switches), and the rotation a seed file
// written by hand superseded while its overlap lasts and no newer one is held.
func (t *Tunnel) addRotationStatus(sd *status.Seed) {
	if sd == nil || t.mesh == nil {
		return
	}
	_, newest := t.heldRotation()
	r := t.mesh.rot
	r.mu.Lock()
	// Only while it is the newest rotation: a newer one replaces it everywhere, and is
	// obeyed here as usual.
	if r.superseded != nil && bytes.Equal(r.superseded, newest) && time.Now().Before(r.supersededUntil) {
		sd.Superseded = shortSeedID(r.supersededID)
	}
	same := sd.NextID != "" && r.st != nil && shortSeedID(r.st.Rotate.NextSeedID) == sd.NextID
	r.mu.Unlock()
	if same {
		sd.Rotation = t.rotationStatus()
	}
}

// rotateCounters adds the offers received, by reason ("mesh_seed_offer_<reason>"), the
// offers sent and the ones dropped for a full queue.
func (t *Tunnel) rotateCounters(m map[string]uint64) {
	r := t.mesh.rot
	for i, s := range mesh.SeedOfferReasons {
		m["mesh_seed_offer_"+s] = r.recv[i].Load()
	}
	m["mesh_seed_offers_sent"] = r.sentN.Load()
	m["mesh_seed_offer_queue_full"] = r.dropped.Load()
}

// writeRotateMetrics writes stt_mesh_seed_offers_total.
func (t *Tunnel) writeRotateMetrics(w *promtext.Writer) {
	r := t.mesh.rot
	w.Family(famMeshOffers.name, famMeshOffers.typ, famMeshOffers.help)
	w.Uint(famMeshOffers.name, r.sentN.Load(), "result", "sent")
	for i, reason := range mesh.SeedOfferReasons {
		w.Uint(famMeshOffers.name, r.recv[i].Load(), "result", reason)
	}
	w.Uint(famMeshOffers.name, r.dropped.Load(), "result", "queue_full")
}
