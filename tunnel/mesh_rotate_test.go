package tunnel

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/stt/mesh"
	"github.com/stt-tun/stt-tun/tun/tuntest"
)

// rotateStatement signs a ROTATE for n's network with a fresh admin key, issued at
// issued, excluding the keys given.
func rotateStatement(t *testing.T, n *rvNode, issued time.Time, next [32]byte, excluded ...[32]byte) (*mesh.Statement, []byte, ed25519.PrivateKey) {
	t.Helper()
	_, admin, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	st := mesh.Statement{Kind: mesh.StatementRotate, Issued: uint64(issued.UnixNano()), Rotate: &mesh.Rotation{
		NextSeedID: mesh.SeedID(next), SwitchAt: uint64(time.Now().Add(time.Minute).Unix()), Overlap: 60, Excluded: excluded}}
	raw, err := st.Marshal(admin, mesh.NetworkOf(n.seed).ID)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := mesh.ParseStatement(raw, mesh.NetworkOf(n.seed).ID, []ed25519.PublicKey{admin.Public().(ed25519.PublicKey)})
	if err != nil {
		t.Fatal(err)
	}
	return parsed, raw, admin
}

// A rotation's seed goes to the members a node knew before the admin signed it, and
// to none that appeared after: a revoked member back under a fresh key before the
// switch must not be handed the next seed. Excluded keys and the node itself get
// nothing either.
func TestRotationSeedOfferedOnlyToMembersKnownBeforeItWasSigned(t *testing.T) {
	n := startMeshNode(t, "alpha", "10.77.0.1/24", "")
	before, excluded := newForged(t), newForged(t)
	before.offer(t, n, mesh.Record{Name: "before"})
	excluded.offer(t, n, mesh.Record{Name: "excluded"})
	n.memberOf(t, before)
	n.memberOf(t, excluded)
	issued := time.Now()
	after := newForged(t)
	after.offer(t, n, mesh.Record{Name: "after"})
	n.memberOf(t, after)

	var next [32]byte
	next[0] = 1
	st, _, _ := rotateStatement(t, n, issued, next, excluded.id.Public)
	for _, c := range []struct {
		name string
		key  [32]byte
		want bool
	}{
		{"a member known before", before.id.Public, true},
		{"an excluded member", excluded.id.Public, false},
		{"a member that appeared after", after.id.Public, false},
	} {
		p := n.t.mesh.memberPeer(c.key)
		if p == nil {
			t.Fatalf("%s has no peer", c.name)
		}
		if got := n.t.offerable(st, c.key, p); got != c.want {
			t.Errorf("%s: offerable %v, want %v", c.name, got, c.want)
		}
	}
	if n.t.offerable(st, n.t.mesh.self, n.t.mesh.memberPeer(before.id.Public)) {
		t.Error("the node would offer the seed to itself")
	}
}

// staged records what StageSeed was asked on a node: the test looks at the offers
// alone, not at the seed file.
type staged struct {
	mu    sync.Mutex
	calls []stagedSeed
}

type stagedSeed struct {
	next        [32]byte
	from, until time.Time
}

func (s *staged) hook(n *rvNode) *staged {
	f := func(next [32]byte, from, until time.Time) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.calls = append(s.calls, stagedSeed{next, from, until})
		return nil
	}
	n.t.mesh.rot.stage.Store(&f)
	return s
}

func (s *staged) get() []stagedSeed {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

func offerCount(n *rvNode, reason string) uint64 {
	c := map[string]uint64{}
	n.t.rotateCounters(c)
	return c["mesh_seed_offer_"+reason]
}

// rotTrio starts alpha and, through it, beta, gamma and the member to exclude, all
// obeying admin, and waits until alpha has a session with each.
func rotTrio(t *testing.T, admin ed25519.PrivateKey) (alpha, beta, gamma, excl *rvNode) {
	t.Helper()
	seed, _ := config.GenerateSeed()
	adm := adminSection(admin)
	alpha = startMeshNodeIn(t, seed, "alpha", "10.77.0.1/24", "", adm)
	boot := fmt.Sprintf("bootstrap = [%q]", endpointOf(alpha.memNode))
	beta = startMeshNodeIn(t, seed, "beta", "10.77.0.2/24", boot, adm)
	gamma = startMeshNodeIn(t, seed, "gamma", "10.77.0.3/24", boot, adm)
	excl = startMeshNodeIn(t, seed, "mallory", "10.77.0.4/24", boot, adm)
	for _, n := range []*rvNode{beta, gamma, excl} {
		key := n.t.Node().PublicKey()
		waitUntil(t, "alpha has a session with "+n.cfg.Interface.NodeName, func() bool {
			p := alpha.t.mesh.memberPeer(key)
			return p != nil && p.sp.HasSession()
		})
	}
	return alpha, beta, gamma, excl
}

// adminSection is the [membership] section of a configuration listing the public keys
// of admins.
func adminSection(admins ...ed25519.PrivateKey) string {
	keys := make([]string, len(admins))
	for i, a := range admins {
		keys[i] = strconv.Quote(base64.StdEncoding.EncodeToString(a.Public().(ed25519.PublicKey)))
	}
	return "[membership]\nadmins = [" + strings.Join(keys, ", ") + "]\n"
}

func signRotate(t *testing.T, admin ed25519.PrivateKey, n *rvNode, next [32]byte, switchAt time.Time, overlap uint32, excluded ...[32]byte) []byte {
	t.Helper()
	st := mesh.Statement{Kind: mesh.StatementRotate, Issued: uint64(time.Now().UnixNano()), Rotate: &mesh.Rotation{
		NextSeedID: mesh.SeedID(next), SwitchAt: uint64(switchAt.Unix()), Overlap: overlap, Excluded: excluded}}
	raw, err := st.Marshal(admin, mesh.NetworkOf(n.seed).ID)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// `seed rotate` on alpha: every member but the excluded one stages the next seed, with
// the statement's switch time and overlap, from an offer sealed to it; the excluded one
// is offered nothing and stages nothing.
func TestSeedOfferStagesTheNextSeedOnEveryMemberButTheExcluded(t *testing.T) {
	_, admin, _ := ed25519.GenerateKey(nil)
	alpha, beta, gamma, excl := rotTrio(t, admin)
	hooks := map[*rvNode]*staged{}
	for _, n := range []*rvNode{alpha, beta, gamma, excl} {
		hooks[n] = new(staged).hook(n)
	}
	next, _ := config.GenerateSeed()
	switchAt := time.Now().Add(time.Minute).Truncate(time.Second)
	raw := signRotate(t, admin, alpha, next, switchAt, 90, excl.t.Node().PublicKey())
	offered, err := alpha.t.Rotate(raw, next)
	if err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	if offered != 2 {
		t.Errorf("alpha offered the seed to %d members at once, want 2 (beta, gamma)", offered)
	}
	want := stagedSeed{next, switchAt, switchAt.Add(90 * time.Second)}
	for _, n := range []*rvNode{alpha, beta, gamma} {
		waitUntil(t, n.cfg.Interface.NodeName+" stages the next seed", func() bool { return len(hooks[n].get()) > 0 })
		if got := hooks[n].get()[0]; got.next != want.next || !got.from.Equal(want.from) || !got.until.Equal(want.until) {
			t.Errorf("%s staged %x from %v until %v, want %x from %v until %v", n.cfg.Interface.NodeName,
				got.next[:4], got.from, got.until, want.next[:4], want.from, want.until)
		}
	}
	for _, n := range []*rvNode{beta, gamma} {
		if offerCount(n, "accepted") != 1 {
			t.Errorf("%s: %d offers accepted, want 1", n.cfg.Interface.NodeName, offerCount(n, "accepted"))
		}
	}
	// The statement itself reaches the excluded member by gossip (statements are not
	// secret); the seed does not.
	waitUntil(t, "the excluded member holds the statement", func() bool {
		_, r := excl.t.mesh.eng.RotationStatement()
		return bytes.Equal(r, raw)
	})
	for _, r := range mesh.SeedOfferReasons {
		if n := offerCount(excl, r); n != 0 {
			t.Errorf("the excluded member counted %d offers %s", n, r)
		}
	}
	if calls := hooks[excl].get(); len(calls) != 0 {
		t.Errorf("the excluded member staged %d seeds", len(calls))
	}
	// The status shows the rotation held.
	if rs := beta.t.rotationStatus(); rs == nil || rs.Excluded != 1 {
		t.Errorf("beta's rotation status %+v", rs)
	}
}

// sealTo builds a SEED_OFFER body of raw and next sealed to n.
func sealTo(t *testing.T, raw []byte, next [32]byte, n *rvNode) []byte {
	t.Helper()
	o, err := mesh.SealSeed(rand.Reader, raw, next, n.t.Node().PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	b, err := mesh.AppendSeedOffer(nil, o)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A node drops and counts every offer that does not hold: not a SEED_OFFER, a
// statement of a key that is no admin, a rotation older than the one it holds, a seal
// for another member; a node without admins drops every one. Only the genuine offer of
// the newest rotation stages a seed; its copies count as duplicates.
func TestSeedOfferRefusalsCounted(t *testing.T) {
	_, admin, _ := ed25519.GenerateKey(nil)
	_, outsider, _ := ed25519.GenerateKey(nil)
	alpha, beta, _, _ := rotTrio(t, admin)
	hook := new(staged).hook(beta)
	from := alpha.t.Node().PublicKey()
	next, _ := config.GenerateSeed()
	older, _ := config.GenerateSeed()
	switchAt := time.Now().Add(time.Minute)
	oldRaw := signRotate(t, admin, beta, older, switchAt, 60)
	raw := signRotate(t, admin, beta, next, switchAt, 60)
	forged := signRotate(t, outsider, beta, next, switchAt, 60)

	beta.t.receiveSeedOffer(from, []byte{1, 2, 3})
	beta.t.receiveSeedOffer(from, sealTo(t, forged, next, beta))
	beta.t.receiveSeedOffer(from, sealTo(t, raw, next, alpha)) // sealed to alpha, not beta
	beta.t.receiveSeedOffer(from, sealTo(t, raw, older, beta)) // not the seed raw names
	if got := hook.get(); len(got) != 0 {
		t.Fatalf("beta staged %d seeds from offers that do not hold", len(got))
	}
	beta.t.receiveSeedOffer(from, sealTo(t, raw, next, beta))
	beta.t.receiveSeedOffer(from, sealTo(t, raw, next, beta))
	beta.t.receiveSeedOffer(from, sealTo(t, oldRaw, older, beta)) // older than the one held
	for reason, want := range map[string]uint64{
		mesh.OfferMalformed: 1, mesh.OfferStatement: 1, mesh.OfferBadSeal: 1, mesh.OfferWrongSeed: 1,
		mesh.OfferAccepted: 1, mesh.OfferDuplicated: 1, mesh.OfferStale: 1,
	} {
		if got := offerCount(beta, reason); got != want {
			t.Errorf("beta counted %d offers %s, want %d", got, reason, want)
		}
	}
	if got := hook.get(); len(got) != 1 || got[0].next != next {
		t.Errorf("beta staged %v, want the next seed once", got)
	}

	// A node without admins obeys nothing.
	seed, _ := config.GenerateSeed()
	lone := startMeshNodeIn(t, seed, "lone", "10.78.0.1/24", "")
	lone.t.receiveSeedOffer(from, sealTo(t, signRotate(t, admin, lone, next, switchAt, 60), next, lone))
	if got := offerCount(lone, mesh.OfferNoAdmins); got != 1 {
		t.Errorf("a node without admins counted %d offers no_admins, want 1", got)
	}
	if _, err := lone.t.Rotate(raw, next); !errors.Is(err, ErrNoAdmins) {
		t.Errorf("Rotate without admins: %v, want ErrNoAdmins", err)
	}
}

// Rotate refuses a statement its store does not take, a seed other than the one named,
// and a rotation that excludes the node itself; it stages nothing then.
func TestRotateRefusesWhatItCannotHandOn(t *testing.T) {
	_, admin, _ := ed25519.GenerateKey(nil)
	_, outsider, _ := ed25519.GenerateKey(nil)
	alpha, _, _, _ := rotTrio(t, admin)
	hook := new(staged).hook(alpha)
	next, _ := config.GenerateSeed()
	other, _ := config.GenerateSeed()
	switchAt := time.Now().Add(time.Minute)
	for name, c := range map[string]struct {
		raw  []byte
		seed [32]byte
	}{
		"signed by a key that is no admin": {signRotate(t, outsider, alpha, next, switchAt, 60), next},
		"another seed than the one named":  {signRotate(t, admin, alpha, next, switchAt, 60), other},
		"excluding the node itself":        {signRotate(t, admin, alpha, next, switchAt, 60, alpha.t.Node().PublicKey()), next},
		"already over":                     {signRotate(t, admin, alpha, next, time.Now().Add(-time.Hour), 60), next},
	} {
		if _, err := alpha.t.Rotate(c.raw, c.seed); err == nil {
			t.Errorf("%s: Rotate took it", name)
		}
		// Nor does the statement go to the store (and from there to every member, as
		// the newest rotation, which would make them refuse an earlier one's offers).
		if _, held := alpha.t.mesh.eng.RotationStatement(); bytes.Equal(held, c.raw) {
			t.Errorf("%s: the refused statement is held and spread", name)
		}
	}
	if got := hook.get(); len(got) != 0 {
		t.Errorf("alpha staged %d seeds from refused rotations", len(got))
	}
}

// While a rotation is in progress, a new one that would not start and end after it is
// refused before it spreads: members that staged the first would refuse its seed while
// the others took it, splitting the network. One that starts and end later is taken.
func TestRotateRefusesToOverlapARotationInProgress(t *testing.T) {
	_, admin, _ := ed25519.GenerateKey(nil)
	alpha, _, _, _ := rotTrio(t, admin)
	first, _ := config.GenerateSeed()
	second, _ := config.GenerateSeed()
	switchAt := time.Now().Add(time.Minute)
	if _, err := alpha.t.Rotate(signRotate(t, admin, alpha, first, switchAt, 120), first); err != nil {
		t.Fatal(err)
	}
	early := signRotate(t, admin, alpha, second, switchAt.Add(-10*time.Second), 300)
	if _, err := alpha.t.Rotate(early, second); err == nil || !strings.Contains(err.Error(), "in progress") {
		t.Errorf("a rotation starting before the one in progress: %v", err)
	}
	if _, held := alpha.t.mesh.eng.RotationStatement(); bytes.Equal(held, early) {
		t.Error("the refused rotation is held and spread")
	}
	later := signRotate(t, admin, alpha, second, switchAt.Add(time.Minute), 120)
	if _, err := alpha.t.Rotate(later, second); err != nil {
		t.Errorf("a rotation after the one in progress: %v", err)
	}
}

// A member that was down while the seed was rotated learns the next seed from any
// member it meets while the rotation lasts: here delta, down during `seed rotate` on
// alpha, comes back (same key) after alpha itself went down, through gamma alone, and
// stages the seed from gamma's offer — written to its seed file and shown in status.
func TestSeedOfferReachesAMemberThatWasAwayFromAnyMember(t *testing.T) {
	_, admin, _ := ed25519.GenerateKey(nil)
	seed, _ := config.GenerateSeed()
	adm := adminSection(admin)
	alpha := startMeshNodeIn(t, seed, "alpha", "10.77.0.1/24", "", adm)
	boot := fmt.Sprintf("bootstrap = [%q]", endpointOf(alpha.memNode))
	gamma := startMeshNodeIn(t, seed, "gamma", "10.77.0.3/24", boot, adm)
	delta := startMeshNodeIn(t, seed, "delta", "10.77.0.4/24", fmt.Sprintf("bootstrap = [%q]", endpointOf(gamma.memNode)), adm)
	deltaKey := delta.t.Node().PublicKey()
	waitUntil(t, "alpha and gamma know delta", func() bool {
		return alpha.t.mesh.memberPeer(deltaKey) != nil && gamma.t.mesh.memberPeer(deltaKey) != nil
	})
	_ = delta.t.Close()

	next, _ := config.GenerateSeed()
	switchAt := time.Now().Add(time.Minute).Truncate(time.Second)
	raw := signRotate(t, admin, alpha, next, switchAt, 120)
	if _, err := alpha.t.Rotate(raw, next); err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	id := shortSeedID(mesh.SeedID(next))
	waitUntil(t, "gamma stages the next seed", func() bool { return gamma.t.Status().Seed.NextID == id })
	_ = alpha.t.Close()

	back := &rvNode{memNode: startCfg(t, delta.cfg), seed: seed, key: delta.key, cfg: delta.cfg}
	waitUntil(t, "delta, back, stages the next seed from gamma", func() bool {
		sd := back.t.Status().Seed
		return sd != nil && sd.NextID == id && sd.Rotation != nil
	})
	sf, err := config.LoadSeedFile(delta.cfg.Interface.SeedFile)
	if err != nil || sf.Next == nil || *sf.Next != next || !sf.From.Equal(switchAt) || !sf.Until.Equal(switchAt.Add(2*time.Minute)) {
		t.Fatalf("delta's seed file after the offer: %+v, %v", sf, err)
	}
	if offerCount(back, mesh.OfferAccepted) != 1 {
		t.Errorf("delta accepted %d offers, want 1", offerCount(back, mesh.OfferAccepted))
	}
}

// startWithState starts a tunnel of cfg on an in-memory device with a state directory
// (where the statements file is kept).
func startWithState(t *testing.T, cfg *config.Config, stateDir string) *memNode {
	t.Helper()
	dev := tuntest.NewMem(cfg.Interface.Name, 1420, 16)
	tu, err := Start(context.Background(), cfg, Options{Device: dev, StateDir: stateDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tu.Close() })
	return &memNode{t: tu, dev: dev}
}

// A member restarted during a rotation takes it up again (the statement from its
// statements file, the seed from its seed file) and goes on offering it, rather than
// waiting to be offered it again.
func TestRotationHeldAcrossARestart(t *testing.T) {
	_, admin, _ := ed25519.GenerateKey(nil)
	seed, _ := config.GenerateSeed()
	adm := adminSection(admin)
	alpha := startMeshNodeIn(t, seed, "alpha", "10.77.0.1/24", "", adm)
	boot := fmt.Sprintf("bootstrap = [%q]", endpointOf(alpha.memNode))
	gamma := startMeshNodeIn(t, seed, "gamma", "10.77.0.3/24", boot, adm)
	_ = gamma.t.Close()
	state := t.TempDir()
	g1 := startWithState(t, gamma.cfg, state)
	waitUntil(t, "alpha has a session with gamma", func() bool {
		p := alpha.t.mesh.memberPeer(g1.t.Node().PublicKey())
		return p != nil && p.sp.HasSession()
	})
	next, _ := config.GenerateSeed()
	raw := signRotate(t, admin, alpha, next, time.Now().Add(time.Minute), 120)
	if _, err := alpha.t.Rotate(raw, next); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "gamma stages the next seed", func() bool { return g1.t.rotationStatus() != nil })
	_ = g1.t.Close()
	g2 := startWithState(t, gamma.cfg, state)
	waitUntil(t, "gamma, restarted, holds the rotation again", func() bool {
		r := g2.t.mesh.rot
		r.mu.Lock()
		defer r.mu.Unlock()
		return bytes.Equal(r.raw, raw) && r.next == next
	})
}

// A member holding the seed keeps the offers it was given; replaying one whose overlap
// is over to a member that does not hold that rotation yet (one that joined since, its
// statements store empty) must not make it stage that seed: staged, the file would say
// "the next seed alone from now on", and the member would leave the network for an
// old seed, even across restarts. Honest members offer a rotation only while it lasts.
func TestSeedOfferOfARotationAlreadyOverIsRefused(t *testing.T) {
	_, admin, _ := ed25519.GenerateKey(nil)
	alpha, beta, _, _ := rotTrio(t, admin)
	old, _ := config.GenerateSeed()
	over := signRotate(t, admin, beta, old, time.Now().Add(-time.Hour), 600)
	beta.t.receiveSeedOffer(alpha.t.Node().PublicKey(), sealTo(t, over, old, beta))
	if got := offerCount(beta, mesh.OfferStale); got != 1 {
		t.Errorf("beta counted %d offers stale, want 1", got)
	}
	if got := offerCount(beta, mesh.OfferAccepted); got != 0 {
		t.Errorf("beta accepted %d offers of a rotation already over", got)
	}
	want := []string{shortSeed(beta.seed)}
	var got []string
	for _, id := range beta.t.Node().SeedStats().IDs {
		got = append(got, shortSeedID(id))
	}
	if !slices.Equal(got, want) {
		t.Errorf("beta holds the seeds %v after the replayed offer, want %v", got, want)
	}
	if sf, err := config.LoadSeedFile(beta.cfg.Interface.SeedFile); err != nil || sf.Next != nil {
		t.Errorf("beta's seed file after the replayed offer: next %v, err %v", sf.Next != nil, err)
	}
}

// Two admins rotate at once (or one member replays the older rotation's offer first):
// the newer statement is the rotation every member holds and offers, whatever order it
// arrived in, so a member that staged the older one's seed must take the newer one's
// seed in its place, even when it does not switch later — else the members that staged
// the older seed first keep it while the others move to the newer one, and the network
// splits when the overlap ends.
func TestSeedOfferOfANewerRotationReplacesTheStagedOneWhateverItsTimes(t *testing.T) {
	_, adminA, _ := ed25519.GenerateKey(nil)
	_, adminB, _ := ed25519.GenerateKey(nil)
	seed, _ := config.GenerateSeed()
	adm := adminSection(adminA, adminB)
	alpha := startMeshNodeIn(t, seed, "alpha", "10.77.0.1/24", "", adm)
	beta := startMeshNodeIn(t, seed, "beta", "10.77.0.2/24", "", adm)
	from := alpha.t.Node().PublicKey()
	switchAt := time.Now().Add(time.Minute).Truncate(time.Second)
	seedA, _ := config.GenerateSeed()
	seedB, _ := config.GenerateSeed()
	rawA := signRotate(t, adminA, beta, seedA, switchAt, 120)
	rawB := signRotate(t, adminB, beta, seedB, switchAt, 120) // signed after rawA: newer
	beta.t.receiveSeedOffer(from, sealTo(t, rawA, seedA, beta))
	if next, _, _, ok := beta.t.StagedSeed(); !ok || next != seedA {
		t.Fatalf("beta did not stage the first rotation's seed")
	}
	beta.t.receiveSeedOffer(from, sealTo(t, rawB, seedB, beta))
	if _, held := beta.t.heldRotation(); !bytes.Equal(held, rawB) {
		t.Fatal("beta does not hold the newer rotation as the newest")
	}
	if next, _, _, ok := beta.t.StagedSeed(); !ok || next != seedB {
		t.Errorf("beta kept the older rotation's seed staged (refused %d), while members that got the newer one first stage its seed",
			offerCount(beta, mesh.OfferRefused))
	}
}

// A key that appears after this node took a rotation is not given its seed, even when
// this node's clock is behind the admin's (within the skew statements allow): a
// revoked member back under a fresh key right after `seed rotate` must not be handed
// the next seed by whichever member has a slow clock.
func TestRotationSeedNotOfferedToAKeySeenAfterTheRotationWasTakenOnASlowClock(t *testing.T) {
	_, admin, _ := ed25519.GenerateKey(nil)
	alpha, beta, _, _ := rotTrio(t, admin)
	next, _ := config.GenerateSeed()
	// The admin's clock is 3 minutes ahead of alpha's.
	st := mesh.Statement{Kind: mesh.StatementRotate, Issued: uint64(time.Now().Add(3 * time.Minute).UnixNano()),
		Rotate: &mesh.Rotation{NextSeedID: mesh.SeedID(next), SwitchAt: uint64(time.Now().Add(5 * time.Minute).Unix()), Overlap: 600}}
	raw, err := st.Marshal(admin, mesh.NetworkOf(alpha.seed).ID)
	if err != nil {
		t.Fatal(err)
	}
	if reason := alpha.t.offerStatement(raw); reason != mesh.ReasonAccepted {
		t.Fatalf("alpha refused the rotation: %s", reason)
	}
	parsed, _ := alpha.t.heldRotation()
	after := newForged(t)
	after.offer(t, alpha, mesh.Record{Name: "after"})
	alpha.memberOf(t, after)
	if alpha.t.offerable(parsed, after.id.Public, alpha.t.mesh.memberPeer(after.id.Public)) {
		t.Error("a key first seen after alpha took the rotation would be given its seed")
	}
	betaKey := beta.t.Node().PublicKey()
	if !alpha.t.offerable(parsed, betaKey, alpha.t.mesh.memberPeer(betaKey)) {
		t.Error("beta, known before, would not be given the seed")
	}
}

// A rotation's SEED_OFFER must fit one packet of a 1280-byte path: stt sends with Don't
// Fragment and never fragments, and control messages are reliable and in order, so an
// offer that cannot go out is retransmitted in vain and stalls every later gossip
// message to that member. Rotate refuses a statement excluding more keys than fit,
// before it spreads; one excluding as many as fit goes through.
func TestRotateRefusesARotationWhoseOfferWouldNotFitOnePacket(t *testing.T) {
	_, admin, _ := ed25519.GenerateKey(nil)
	alpha, beta, _, _ := rotTrio(t, admin)
	keys := func(n int) [][32]byte {
		var ks [][32]byte
		for i := range n {
			ks = append(ks, [32]byte{0xEE, byte(i + 1)})
		}
		return ks
	}
	next, _ := config.GenerateSeed()
	switchAt := time.Now().Add(time.Minute)
	tooMany := signRotate(t, admin, alpha, next, switchAt, 120, keys(mesh.MaxExcludedSent+1)...)
	if _, err := alpha.t.Rotate(tooMany, next); err == nil || !strings.Contains(err.Error(), "fit") {
		t.Errorf("a rotation excluding %d keys: %v", mesh.MaxExcludedSent+1, err)
	}
	if _, held := alpha.t.heldRotation(); bytes.Equal(held, tooMany) {
		t.Error("the refused rotation is held and spread")
	}
	most := signRotate(t, admin, alpha, next, switchAt, 120, keys(mesh.MaxExcludedSent)...)
	const framing = 3 + 4 + 3 // CtlReliable, sequence number, the message's control header
	const ipv6UDP = 40 + 8
	if size := len(sealTo(t, most, next, beta)) + framing + 32 + ipv6UDP; size > 1280 {
		t.Errorf("an offer excluding %d keys is a %d-byte datagram, more than a 1280-byte path carries", mesh.MaxExcludedSent, size)
	}
	if _, err := alpha.t.Rotate(most, next); err != nil {
		t.Errorf("a rotation excluding %d keys: %v", mesh.MaxExcludedSent, err)
	}
}

// `seed rotate` on a node that cannot write its seed file (a read-only file system, a
// directory gone) fails before the statement spreads: held by every member as the
// newest rotation, a rotation whose seed nobody got would only make them refuse the
// offers of the one before it, and the admin, told it failed, would not know that.
func TestRotateOnANodeThatCannotWriteItsSeedFileSpreadsNothing(t *testing.T) {
	_, admin, _ := ed25519.GenerateKey(nil)
	alpha, _, _, _ := rotTrio(t, admin)
	if err := os.RemoveAll(filepath.Dir(alpha.cfg.Interface.SeedFile)); err != nil {
		t.Fatal(err)
	}
	next, _ := config.GenerateSeed()
	raw := signRotate(t, admin, alpha, next, time.Now().Add(time.Minute), 120)
	if _, err := alpha.t.Rotate(raw, next); err == nil {
		t.Fatal("Rotate took a rotation it cannot stage")
	}
	if _, held := alpha.t.heldRotation(); bytes.Equal(held, raw) {
		t.Error("the rotation the node could not stage is held and spread")
	}
}

// The operator replaces the seed file by hand (a bare new seed) and reloads a member
// during an in-band rotation: the reload drops the rotation's staged next seed, so the
// member must stop handing that seed to others (it no longer plans to use it), say so
// in one line, and not stage it again from a later offer of the same rotation (the
// seed written by hand wins on this node).
func TestReloadOfAHandWrittenSeedSupersedesTheInBandRotation(t *testing.T) {
	_, admin, _ := ed25519.GenerateKey(nil)
	seed, _ := config.GenerateSeed()
	adm := adminSection(admin)
	alpha := startMeshNodeIn(t, seed, "alpha", "10.77.0.1/24", "", adm)
	boot := fmt.Sprintf("bootstrap = [%q]", endpointOf(alpha.memNode))
	beta := startMeshNodeIn(t, seed, "beta", "10.77.0.2/24", boot, adm)
	delta := startMeshNodeIn(t, seed, "delta", "10.77.0.4/24", fmt.Sprintf("bootstrap = [%q]", endpointOf(beta.memNode)), adm)
	deltaKey := delta.t.Node().PublicKey()
	waitUntil(t, "beta has a session with delta", func() bool {
		p := beta.t.mesh.memberPeer(deltaKey)
		return p != nil && p.sp.HasSession()
	})
	// alpha offers the seed only to keys it knew before the admin signed: beta must be
	// one (under load its handshake with alpha could still be on its way).
	waitUntil(t, "alpha has a session with beta", func() bool {
		p := alpha.t.mesh.memberPeer(beta.t.Node().PublicKey())
		return p != nil && p.sp.HasSession()
	})
	_ = delta.t.Close() // away during the rotation: beta would offer it the seed later

	next, _ := config.GenerateSeed()
	raw := signRotate(t, admin, alpha, next, time.Now().Add(5*time.Minute), 600)
	if _, err := alpha.t.Rotate(raw, next); err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	waitUntil(t, "beta stages the next seed", func() bool { return beta.t.rotationStatus() != nil })
	st, _ := beta.t.heldRotation()
	if !beta.t.offerable(st, deltaKey, beta.t.mesh.memberPeer(deltaKey)) {
		t.Fatal("delta, known before the rotation, is not offerable: the test shows nothing")
	}

	hand, _ := config.GenerateSeed()
	writeSecret(t, filepath.Dir(beta.cfg.Interface.SeedFile), filepath.Base(beta.cfg.Interface.SeedFile), hand)
	changes, err := beta.t.ReloadChanges(beta.cfg)
	if err != nil {
		t.Fatal(err)
	}
	id := shortSeedID(mesh.SeedID(next))
	var said []string
	for _, c := range changes {
		if strings.Contains(c, "superseded") && strings.Contains(c, id) {
			said = append(said, c)
		}
	}
	if len(said) != 1 {
		t.Errorf("the reload's answer %q does not say in one line that the rotation to %s is superseded", changes, id)
	}
	sent := beta.t.mesh.rot.sentN.Load()
	if beta.t.sendSeedOffer(deltaKey, time.Now()) || beta.t.mesh.rot.sentN.Load() != sent {
		t.Error("after the reload beta still hands out the seed it dropped")
	}
	if sd := beta.t.Status().Seed; sd == nil || sd.Rotation != nil || sd.Superseded != id || sd.NextID != shortSeed(hand) {
		t.Errorf("beta's seed status after the reload: %+v, want the hand-written seed next and the rotation superseded", sd)
	}

	// The opposite order: an offer of that rotation arriving after the reload.
	beta.t.receiveSeedOffer(alpha.t.Node().PublicKey(), sealTo(t, raw, next, beta))
	if got := offerCount(beta, mesh.OfferSuperseded); got != 1 {
		t.Errorf("beta counted %d offers superseded, want 1", got)
	}
	if sd := beta.t.Status().Seed; sd == nil || sd.NextID != shortSeed(hand) || !sd.Transient {
		t.Errorf("beta's seed status after the offer: %+v, want the hand-written seed still next", sd)
	}
	if sf, err := config.LoadSeedFile(beta.cfg.Interface.SeedFile); err != nil || sf.Seed != hand || sf.Next != nil {
		t.Errorf("beta's seed file after the offer: %+v, %v; want the hand-written seed alone", sf, err)
	}
	if beta.t.sendSeedOffer(deltaKey, time.Now().Add(2*offerEvery)) {
		t.Error("the offer after the reload made beta hand out the superseded seed again")
	}

	// Across a restart too: the seed file holds the hand-written seed alone, and an
	// offer of the rotation must not stage its seed over it.
	_ = beta.t.Close()
	back := &rvNode{memNode: startCfg(t, beta.cfg), seed: seed, key: beta.key, cfg: beta.cfg}
	waitUntil(t, "beta, restarted, takes up its state", func() bool {
		r := back.t.mesh.rot
		r.mu.Lock()
		defer r.mu.Unlock()
		return !r.takenAt.IsZero()
	})
	back.t.receiveSeedOffer(alpha.t.Node().PublicKey(), sealTo(t, raw, next, back))
	if got := offerCount(back, mesh.OfferSuperseded); got != 1 {
		t.Errorf("beta, restarted, counted %d offers superseded, want 1 (accepted %d)", got, offerCount(back, mesh.OfferAccepted))
	}
	if sf, err := config.LoadSeedFile(beta.cfg.Interface.SeedFile); err != nil || sf.Seed != hand || sf.Next != nil {
		t.Errorf("beta's seed file after a restart and the offer: %+v, %v; want the hand-written seed alone", sf, err)
	}
}

// A member restarted during a rotation goes on handing its seed to the members it knew
// before the admin signed it (kept in <link>.rotation beside the statements file,
// mode 0600), so that one that was away still gets it; never to a key first seen after
// the signature, before or after the restart (a revoked member back under a fresh
// key), nor to an excluded one.
func TestRotationSeedOfferedAfterARestartToMembersKnownBeforeItWasSigned(t *testing.T) {
	_, admin, _ := ed25519.GenerateKey(nil)
	seed, _ := config.GenerateSeed()
	adm := adminSection(admin)
	alpha := startMeshNodeIn(t, seed, "alpha", "10.77.0.1/24", "", adm)
	gamma := startMeshNodeIn(t, seed, "gamma", "10.77.0.3/24", fmt.Sprintf("bootstrap = [%q]", endpointOf(alpha.memNode)), adm)
	before, excluded, revoked := newForged(t), newForged(t), newForged(t)
	before.offer(t, gamma, mesh.Record{Name: "before"})
	excluded.offer(t, gamma, mesh.Record{Name: "excluded"})
	revoked.offer(t, gamma, mesh.Record{Name: "revoked"})
	gamma.memberOf(t, before)
	gamma.memberOf(t, excluded)
	gamma.memberOf(t, revoked)
	waitUntil(t, "alpha has a session with gamma", func() bool {
		p := alpha.t.mesh.memberPeer(gamma.t.Node().PublicKey())
		return p != nil && p.sp.HasSession()
	})

	next, _ := config.GenerateSeed()
	raw := signRotate(t, admin, alpha, next, time.Now().Add(time.Minute), 600, excluded.id.Public)
	if _, err := alpha.t.Rotate(raw, next); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "gamma stages the next seed", func() bool { return gamma.t.rotationStatus() != nil })
	late := newForged(t) // first seen after the signature
	late.offer(t, gamma, mesh.Record{Name: "late"})
	gamma.memberOf(t, late)
	st, _ := gamma.t.heldRotation()
	if !gamma.t.offerable(st, before.id.Public, nil) || gamma.t.offerable(st, late.id.Public, nil) {
		t.Fatal("before the restart, gamma does not offer the seed as it should: the test shows nothing")
	}
	_ = gamma.t.Close()
	path := rotationPath(statementsPath(gamma.cfg.Interface.SeedFile, gamma.cfg.Interface.Name))
	if fi, err := os.Lstat(path); err != nil || fi.Mode() != 0o600 {
		t.Fatalf("the rotation keys file: %v, %v; want a regular file of mode 0600", fi, err)
	}

	back := &rvNode{memNode: startCfg(t, gamma.cfg), seed: seed, key: gamma.key, cfg: gamma.cfg}
	waitUntil(t, "gamma, restarted, holds the rotation again", func() bool {
		r := back.t.mesh.rot
		r.mu.Lock()
		defer r.mu.Unlock()
		return bytes.Equal(r.raw, raw)
	})
	fresh := newForged(t) // first seen after the restart
	fresh.offer(t, back, mesh.Record{Name: "fresh"})
	back.memberOf(t, fresh)
	st, _ = back.t.heldRotation()
	if !back.t.offerable(st, revoked.id.Public, nil) {
		t.Error("after the restart, a member known before the signature and not revoked yet is not offerable")
	}
	rv := mesh.Statement{Kind: mesh.StatementRevoke, Issued: uint64(time.Now().UnixNano()), Revoke: &mesh.Revocation{Target: revoked.id.Public}}
	rvRaw, err := rv.Marshal(admin, mesh.NetworkOf(seed).ID)
	if err != nil {
		t.Fatal(err)
	}
	if ok, reason, err := back.t.OfferStatement(rvRaw); !ok || err != nil {
		t.Fatalf("revocation refused: %s %v", reason, err)
	}
	for _, c := range []struct {
		name string
		key  [32]byte
		want bool
	}{
		{"a member known before the signature", before.id.Public, true},
		{"an excluded member", excluded.id.Public, false},
		{"a member first seen after the signature", late.id.Public, false},
		{"a member first seen after the restart", fresh.id.Public, false},
		{"a member known before, revoked since", revoked.id.Public, false},
	} {
		if got := back.t.offerable(st, c.key, nil); got != c.want {
			t.Errorf("after the restart, %s: offerable %v, want %v", c.name, got, c.want)
		}
	}
}

// The rotation keys file decides who is handed the seed: it is read only as a regular
// file of one name (a link planted in its place, pointing at a list of the planter's
// keys, is refused), and written by replacing it, mode 0600, never through a link.
func TestRotationKeysFileNotReadNorWrittenThroughALink(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "stt0"+RotationSuffix)
	planted := filepath.Join(dir, "planted")
	p := rotationPersisted{rotation: [32]byte{1}, keys: [][32]byte{{2}, {3}}}
	writeFileT(t, planted, p.encode())
	if err := os.Symlink(planted, path); err != nil {
		t.Fatal(err)
	}
	if got, _, err := loadRotationFile(path); err == nil || len(got.keys) != 0 {
		t.Errorf("read through a link: %d keys, err %v", len(got.keys), err)
	}
	if err := writeStateFile(path, rotationPersisted{}.encode()); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode() != 0o600 {
		t.Errorf("after a save: %v, %v; want a regular file of mode 0600", fi, err)
	}
	if b, _ := os.ReadFile(planted); string(b) != p.encode() {
		t.Error("the save wrote through the link")
	}
	got, bad, err := loadRotationFile(path)
	if err != nil || bad != 0 || len(got.keys) != 0 {
		t.Errorf("read back: %+v, %d bad, %v", got, bad, err)
	}
	// A round trip keeps the keys and both statements.
	p.superseded = [32]byte{9}
	if err := writeStateFile(path, p.encode()); err != nil {
		t.Fatal(err)
	}
	if got, bad, err := loadRotationFile(path); err != nil || bad != 0 || got.rotation != p.rotation || got.superseded != p.superseded || !slices.Equal(got.keys, p.keys) {
		t.Errorf("round trip: %+v, %d bad, %v", got, bad, err)
	}
}
