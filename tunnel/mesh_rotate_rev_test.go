package tunnel

import (
	"bytes"
	"crypto/ed25519"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/stt/mesh"
)

// A reload of a seed file written by hand can come in the instant between an offer's
// seed being staged (the seed lock released) and the node taking the rotation up for
// offering on: the reload then supersedes a rotation the node does not hold yet. The
// node must not take it up after that: it would hand on the seed the operator's file
// just replaced, which the reload said it no longer does.
func TestReloadBetweenStagingAndHoldingAnOfferStillSupersedesIt(t *testing.T) {
	_, admin, _ := ed25519.GenerateKey(nil)
	seed, _ := config.GenerateSeed()
	adm := adminSection(admin)
	alpha := startMeshNodeIn(t, seed, "alpha", "10.77.0.1/24", "", adm)
	beta := startMeshNodeIn(t, seed, "beta", "10.77.0.2/24", fmt.Sprintf("bootstrap = [%q]", endpointOf(alpha.memNode)), adm)
	waitUntil(t, "beta has a session with alpha", func() bool {
		p := beta.t.mesh.memberPeer(alpha.t.Node().PublicKey())
		return p != nil && p.sp.HasSession()
	})

	next, _ := config.GenerateSeed()
	raw := signRotate(t, admin, alpha, next, time.Now().Add(5*time.Minute), 600)
	hand, _ := config.GenerateSeed()
	var reloaded []string
	// The real staging, then the operator's file and reload before stageRotation goes
	// on: the interleaving the seed lock does not cover.
	f := func(next [32]byte, from, until time.Time) error {
		if err := beta.t.stageSeed(next, from, until, nil); err != nil {
			return err
		}
		writeSecret(t, filepath.Dir(beta.cfg.Interface.SeedFile), filepath.Base(beta.cfg.Interface.SeedFile), hand)
		changes, err := beta.t.ReloadChanges(beta.cfg)
		if err != nil {
			t.Error(err)
		}
		reloaded = changes
		return nil
	}
	beta.t.mesh.rot.stage.Store(&f)
	beta.t.receiveSeedOffer(alpha.t.Node().PublicKey(), sealTo(t, raw, next, beta))

	id := shortSeedID(mesh.SeedID(next))
	said := false
	for _, c := range reloaded {
		said = said || bytes.Contains([]byte(c), []byte("superseded")) && bytes.Contains([]byte(c), []byte(id))
	}
	if !said {
		t.Fatalf("the reload did not say the rotation is superseded (%q): the test shows nothing", reloaded)
	}
	if _, _, _, ok := beta.t.mesh.rot.held(time.Now()); ok {
		t.Error("after a reload that superseded the rotation, beta holds it for offering on")
	}
	if got := offerCount(beta, mesh.OfferAccepted); got != 0 {
		t.Errorf("beta counted the offer accepted (%d), though its seed did not stay staged", got)
	}
}

// The mark a reload leaves is kept across a restart, but the doc promises that a seed
// file ending on the rotation's next seed (copied from a member that staged it) is
// not a replacement. An operator who changes their mind, copies such a file in and
// restarts (rather than reloads) must get the rotation back: held, offered on, and
// not reported superseded by a seed file that no longer supersedes anything.
func TestRestartWithTheRotationSeedFileCopiedInLiftsTheSupersededMark(t *testing.T) {
	sp := supersededPair(t)
	alpha, beta, raw, next, seed := sp.alpha, sp.beta, sp.raw, sp.next, sp.seed
	id := shortSeedID(mesh.SeedID(next))
	if sd := beta.t.Status().Seed; sd == nil || sd.Superseded != id {
		t.Fatalf("beta's status after the reload: %+v; want the rotation superseded: the test shows nothing", sd)
	}
	_ = beta.t.Close()

	// The operator follows the rotation after all: alpha's planned file, then a restart.
	planned, err := os.ReadFile(alpha.cfg.Interface.SeedFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(beta.cfg.Interface.SeedFile, planned, 0o600); err != nil {
		t.Fatal(err)
	}
	back := &rvNode{memNode: startCfg(t, beta.cfg), seed: seed, key: beta.key, cfg: beta.cfg}
	waitUntil(t, "beta, restarted, takes up its state", func() bool {
		r := back.t.mesh.rot
		r.mu.Lock()
		defer r.mu.Unlock()
		return !r.takenAt.IsZero()
	})
	if sd := back.t.Status().Seed; sd == nil || sd.Superseded != "" || sd.NextID != id {
		t.Errorf("beta, restarted on the rotation's planned file: seed status %+v; want %s next and nothing superseded", sd, id)
	}
	r := back.t.mesh.rot
	r.mu.Lock()
	holds := bytes.Equal(r.raw, raw)
	r.mu.Unlock()
	if !holds {
		t.Error("beta, restarted on the rotation's planned file, does not hold the rotation for offering on")
	}
	back.t.receiveSeedOffer(alpha.t.Node().PublicKey(), sealTo(t, raw, next, back))
	if got := offerCount(back, mesh.OfferSuperseded); got != 0 {
		t.Errorf("beta, restarted on the rotation's planned file, counted %d offers superseded", got)
	}
}

// A reload of a seed file ending on the rotation's next seed lifts the mark (the
// operator follows the rotation after all): the node must take the rotation up again
// for handing it on, as it does when it restarts on that file, not wait for another
// member to offer it a seed it already has.
func TestReloadThatLiftsTheSupersededMarkHoldsTheRotationAgain(t *testing.T) {
	sp := supersededPair(t)
	alpha, beta, raw := sp.alpha, sp.beta, sp.raw
	if _, _, _, ok := beta.t.mesh.rot.held(time.Now()); ok {
		t.Fatal("the reload of the hand-written seed left the rotation held: the test shows nothing")
	}
	planned, err := os.ReadFile(alpha.cfg.Interface.SeedFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(beta.cfg.Interface.SeedFile, planned, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := beta.t.ReloadChanges(beta.cfg); err != nil {
		t.Fatal(err)
	}
	if sd := beta.t.Status().Seed; sd == nil || sd.Superseded != "" || sd.Rotation == nil {
		t.Errorf("beta, reloaded on the rotation's planned file: seed status %+v; want the rotation shown and nothing superseded", sd)
	}
	if held, _, _, ok := beta.t.mesh.rot.held(time.Now()); !ok || !bytes.Equal(held, raw) {
		t.Error("beta, reloaded on the rotation's planned file, does not hold the rotation for handing it on")
	}
}

// A later `seed rotate` is obeyed on a node where a reload superseded the rotation
// before it; from then on the status must not go on saying that the rotation in
// progress is superseded there: the one it names is over (replaced everywhere), and
// the line reads as if the node were not following the rotation it is following.
func TestNewerRotationClearsTheSupersededLineFromStatus(t *testing.T) {
	sp := supersededPair(t)
	admin, alpha, beta := sp.admin, sp.alpha, sp.beta
	if sd := beta.t.Status().Seed; sd == nil || sd.Superseded == "" {
		t.Fatalf("beta's status after the reload: %+v; want the rotation superseded: the test shows nothing", sd)
	}

	next2, _ := config.GenerateSeed()
	raw2 := signRotate(t, admin, alpha, next2, time.Now().Add(20*time.Minute), 600)
	if _, err := alpha.t.Rotate(raw2, next2); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "beta stages the newer rotation's seed", func() bool {
		sd := beta.t.Status().Seed
		return sd != nil && sd.NextID == shortSeedID(mesh.SeedID(next2)) && sd.Rotation != nil
	})
	if sd := beta.t.Status().Seed; sd.Superseded != "" {
		t.Errorf("beta follows the newer rotation to %s, yet its status says the rotation to %s is superseded there",
			sd.NextID, sd.Superseded)
	}
}

// superseded is a rotation signed by an admin on alpha, staged by beta, then
// superseded on beta by a seed file written by hand and reloaded.
type superseded struct {
	admin       ed25519.PrivateKey // the admin that signed it
	alpha, beta *rvNode
	raw         []byte   // the ROTATE statement
	next, seed  [32]byte // its next seed; the network's seed before it
}

func supersededPair(t *testing.T) superseded {
	_, admin, _ := ed25519.GenerateKey(nil)
	seed, _ := config.GenerateSeed()
	adm := adminSection(admin)
	alpha := startMeshNodeIn(t, seed, "alpha", "10.77.0.1/24", "", adm)
	beta := startMeshNodeIn(t, seed, "beta", "10.77.0.2/24", fmt.Sprintf("bootstrap = [%q]", endpointOf(alpha.memNode)), adm)
	waitUntil(t, "alpha has a session with beta", func() bool {
		p := alpha.t.mesh.memberPeer(beta.t.Node().PublicKey())
		return p != nil && p.sp.HasSession()
	})
	next, _ := config.GenerateSeed()
	raw := signRotate(t, admin, alpha, next, time.Now().Add(5*time.Minute), 600)
	if _, err := alpha.t.Rotate(raw, next); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "beta stages the next seed", func() bool { return beta.t.rotationStatus() != nil })
	hand, _ := config.GenerateSeed()
	writeSecret(t, filepath.Dir(beta.cfg.Interface.SeedFile), filepath.Base(beta.cfg.Interface.SeedFile), hand)
	if _, err := beta.t.ReloadChanges(beta.cfg); err != nil {
		t.Fatal(err)
	}
	return superseded{admin: admin, alpha: alpha, beta: beta, raw: raw, next: next, seed: seed}
}
