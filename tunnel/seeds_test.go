package tunnel

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/stt/handshake"
	"github.com/stt-tun/stt-tun/stt/mesh"
	"github.com/stt-tun/stt-tun/tun/tuntest"
)

// seedLab is alpha and beta, each with its own seed file holding seed, beta reaching
// alpha; seed rekeys spread over 200 ms instead of 30 s.
type seedLab struct {
	a, b   *memNode
	na, nb *cfgNode
}

func startSeedNode(t *testing.T, cfg *config.Config) *memNode {
	t.Helper()
	dev := tuntest.NewMem(cfg.Interface.Name, 1420, 16)
	tu, err := Start(context.Background(), cfg, Options{Device: dev, SeedRekeySpread: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tu.Close() })
	return &memNode{t: tu, dev: dev}
}

func newSeedLab(t *testing.T, seed [32]byte) *seedLab {
	t.Helper()
	l := &seedLab{
		na: newCfgNode(t, "", "alpha", "10.9.0.1/24"),
		nb: newCfgNode(t, "", "beta", "10.9.0.2/24"),
	}
	l.na.seedFile = writeSecret(t, l.na.dir, "seed", seed)
	l.nb.seedFile = writeSecret(t, l.nb.dir, "seed", seed)
	l.a = startSeedNode(t, l.alphaConfig(t))
	l.b = startSeedNode(t, l.betaConfig(t))
	return l
}

func (l *seedLab) alphaConfig(t *testing.T) *config.Config {
	return l.na.config(t, "", peerSection("beta", "", []string{"10.9.0.2/32"}))
}

func (l *seedLab) betaConfig(t *testing.T) *config.Config {
	return l.nb.config(t, "", peerSection("alpha", endpointOf(l.a), []string{"10.9.0.1/32"}, `persistent_keepalive = "1s"`))
}

// roundTrip sends a packet from beta to alpha and back.
func (l *seedLab) roundTrip(t *testing.T, msg string) {
	t.Helper()
	toA := ipv4UDP("10.9.0.2", "10.9.0.1", 1000, 2000, []byte(msg))
	l.b.dev.Inject(toA)
	expectPacket(t, l.a.dev, toA)
	toB := ipv4UDP("10.9.0.1", "10.9.0.2", 2000, 1000, []byte(msg))
	l.a.dev.Inject(toB)
	expectPacket(t, l.b.dev, toB)
}

func writeSeedFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func peerSeed(n *memNode, name string) string {
	for _, p := range n.t.Status().Peers {
		if p.Name == name {
			return p.Seed
		}
	}
	return ""
}

// A planned rotation (a seed file with a next line) applied by reload, no restart:
// from `from` on the sessions move to the next seed by a rekey, without a new fresh
// session and with traffic passing; from `until` on only the next seed is held, and a
// node with the old seed alone gets no session (its handshakes fail mac1). Reloading the
// same file again changes nothing.
func TestReloadAppliesAPlannedRotation(t *testing.T) {
	cur, next := [32]byte{1}, [32]byte{2}
	l := newSeedLab(t, cur)
	l.roundTrip(t, "before")
	waitConfirmed(t, l.b, "alpha")
	if st := l.a.t.Status().Seed; st == nil || st.ID != shortSeed(cur) || st.NextID != "" {
		t.Fatalf("seed status %+v, want %s alone", st, shortSeed(cur))
	}
	done := l.b.t.Node().Stats().HandshakesDone

	from := time.Now().Add(1500 * time.Millisecond)
	until := from.Add(3 * time.Second)
	plan := config.SeedFile{Seed: cur, Network: mesh.NetworkOf(cur), Next: &next, From: from, Until: until}
	for _, n := range []*cfgNode{l.na, l.nb} {
		if err := config.WriteSeedFile(n.seedFile, plan); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range []struct {
		n   *memNode
		cfg *config.Config
	}{{l.a, l.alphaConfig(t)}, {l.b, l.betaConfig(t)}} {
		changes, err := r.n.t.ReloadChanges(r.cfg)
		if err != nil {
			t.Fatal(err)
		}
		if len(changes) != 1 || !strings.HasPrefix(changes[0], "seed file: next seed "+shortSeed(next)+" from ") {
			t.Fatalf("changes %q", changes)
		}
	}
	if st := l.a.t.Status().Seed; st.NextID != shortSeed(next) || !st.From.Equal(from.UTC()) || st.Transient {
		t.Fatalf("seed status %+v", st)
	}
	l.roundTrip(t, "planned")
	waitUntil(t, "both sessions on the next seed", func() bool {
		return peerSeed(l.a, "beta") == shortSeed(next) && peerSeed(l.b, "alpha") == shortSeed(next)
	})
	if time.Now().Before(from) {
		t.Fatal("sessions moved before from")
	}
	l.roundTrip(t, "moved")
	rekeys := l.a.t.Node().SeedStats().Rekeys + l.b.t.Node().SeedStats().Rekeys
	if rekeys == 0 || l.b.t.Node().Stats().HandshakesDone == done {
		t.Fatalf("no seed rekey (%d) or handshake", rekeys)
	}
	waitUntil(t, "the end of the overlap", func() bool { return l.a.t.Status().Seed.NextID == "" })
	if st := l.a.t.Status().Seed; st.ID != shortSeed(next) {
		t.Fatalf("after until: %+v", st)
	}
	if ids := l.a.t.Node().SeedStats().IDs; !slices.Equal(ids, [][16]byte{handshake.SeedID(next)}) {
		t.Fatalf("alpha holds %x after until", ids)
	}
	if c := l.a.t.counterMap(); c["seed_sessions_closed"] != 0 {
		t.Fatalf("a session was closed: %v", c["seed_sessions_closed"])
	}
	l.roundTrip(t, "after")

	// Reloading the same file again: nothing.
	if changes, err := l.a.t.ReloadChanges(l.alphaConfig(t)); err != nil || len(changes) != 0 {
		t.Fatalf("second reload: %q, %v", changes, err)
	}

	// A node with the old seed alone: no session, its HELLOs counted as bad_mac1.
	nc := newCfgNode(t, "", "gamma", "10.9.0.3/24")
	nc.seedFile = writeSecret(t, nc.dir, "seed", cur)
	badBefore := badMAC1(l.a)
	c := startSeedNode(t, nc.config(t, "", peerSection("alpha", endpointOf(l.a), []string{"10.9.0.1/32"}, `persistent_keepalive = "1s"`)))
	waitUntil(t, "gamma's handshakes refused", func() bool { return badMAC1(l.a) >= badBefore+2 })
	if c.t.Node().Peer("alpha").HasSession() {
		t.Fatal("a node with the old seed alone has a session after until")
	}
}

func badMAC1(n *memNode) uint64 { return n.t.counterMap()["drop_bad_mac1"] }

func encodeRaw(raw [mesh.NetworkRawLen]byte) string { return base64.StdEncoding.EncodeToString(raw[:]) }

// A seed file replaced by a bare new seed: reload moves to it at once and accepts the
// old one for bareGrace (in memory: status says transient), and writes the network line
// into the file so that a restart keeps the network. The peer that has not reloaded yet
// is still reached (under the old seed), and once it has, both sessions move to the new
// seed.
func TestReloadBareNewSeedMovesWithGrace(t *testing.T) {
	cur, next := [32]byte{3}, [32]byte{4}
	l := newSeedLab(t, cur)
	l.roundTrip(t, "before")
	writeSecret(t, l.na.dir, "seed", next)
	changes, err := l.a.t.ReloadChanges(l.alphaConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"seed file: network line added, so that a restart keeps the network's identity and addresses",
		"seed file: new seed " + shortSeed(next) + " in use now; the old seed " + shortSeed(cur) + " is still accepted until ",
	}
	if len(changes) != 2 || changes[0] != want[0] || !strings.HasPrefix(changes[1], want[1]) {
		t.Fatalf("changes %q", changes)
	}
	st := l.a.t.Status().Seed
	if st.ID != shortSeed(cur) || st.NextID != shortSeed(next) || !st.Transient || time.Until(st.Until) < 9*time.Minute {
		t.Fatalf("seed status %+v", st)
	}
	sf, err := config.LoadSeedFile(l.na.seedFile)
	if err != nil || sf.Seed != next || !sf.NetworkExplicit || sf.Network != mesh.NetworkOf(cur) || sf.Next != nil {
		t.Fatalf("seed file after the reload: %+v, %v", sf, err)
	}
	l.roundTrip(t, "alpha moved, beta not")

	writeSecret(t, l.nb.dir, "seed", next)
	if _, err := l.b.t.ReloadChanges(l.betaConfig(t)); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "both sessions on the new seed", func() bool {
		return peerSeed(l.a, "beta") == shortSeed(next) && peerSeed(l.b, "alpha") == shortSeed(next)
	})
	l.roundTrip(t, "both moved")
	// The same file again keeps the grace.
	if changes, err := l.a.t.ReloadChanges(l.alphaConfig(t)); err != nil || len(changes) != 0 || !l.a.t.Status().Seed.Transient {
		t.Fatalf("second reload: %q, %v", changes, err)
	}
}

// A seed file that names another network is refused: restart needed, nothing changes.
func TestReloadRefusesAnotherNetwork(t *testing.T) {
	cur, other := [32]byte{5}, [32]byte{6}
	l := newSeedLab(t, cur)
	raw := mesh.NetworkOf(other).Raw()
	writeSeedFile(t, l.na.seedFile, config.EncodeKey(other)+"\nnetwork "+encodeRaw(raw)+"\n")
	_, err := l.a.t.ReloadChanges(l.alphaConfig(t))
	if err == nil || !strings.Contains(err.Error(), "restart needed: the seed file "+l.na.seedFile+" names another network") {
		t.Fatalf("reload: %v", err)
	}
	if ids := l.a.t.Node().SeedStats().IDs; !slices.Equal(ids, [][16]byte{handshake.SeedID(cur)}) {
		t.Fatalf("a refused reload changed the seeds: %x", ids)
	}
}

// StageSeed rewrites the seed file (current, network, next; mode 0600) and applies it;
// the same next seed again changes nothing; another one replaces it. A node started on the staged file resumes the rotation where the clock is.
func TestStageSeedRewritesTheFileAndIsIdempotent(t *testing.T) {
	cur, next, third := [32]byte{7}, [32]byte{8}, [32]byte{9}
	l := newSeedLab(t, cur)
	from := time.Now().Add(-time.Second).Truncate(time.Second)
	until := from.Add(time.Hour)
	if err := l.a.t.StageSeed(next, from, until); err != nil {
		t.Fatal(err)
	}
	sf, err := config.LoadSeedFile(l.na.seedFile)
	if err != nil || sf.Seed != cur || *sf.Next != next || !sf.From.Equal(from) || !sf.Until.Equal(until) || !sf.NetworkExplicit {
		t.Fatalf("seed file %+v, %v", sf, err)
	}
	if fi, _ := os.Stat(l.na.seedFile); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode())
	}
	if n, f, u, ok := l.a.t.StagedSeed(); !ok || n != next || !f.Equal(from) || !u.Equal(until) {
		t.Fatalf("StagedSeed = %x %v %v %v", n, f, u, ok)
	}
	want := [][16]byte{handshake.SeedID(next), handshake.SeedID(cur)}
	if ids := l.a.t.Node().SeedStats().IDs; !slices.Equal(ids, want) {
		t.Fatalf("alpha holds %x, want next then current", ids)
	}
	before, _ := os.ReadFile(l.na.seedFile)
	if err := l.a.t.StageSeed(next, from, until); err != nil {
		t.Fatalf("staging the same seed again: %v", err)
	}
	if after, _ := os.ReadFile(l.na.seedFile); string(after) != string(before) {
		t.Fatal("staging the same seed again rewrote the file")
	}
	// A newer rotation while the staged one is in use, even with the same times (the
	// caller stages the newest rotation only): the staged seed becomes current.
	if err := l.a.t.StageSeed(third, from, until); err != nil {
		t.Fatal(err)
	}
	if sf, err = config.LoadSeedFile(l.na.seedFile); err != nil || sf.Seed != next || *sf.Next != third {
		t.Fatalf("after a newer rotation %+v, %v", sf, err)
	}

	// A restart in the middle: a node started on the file holds [next, current] at once.
	nc := newCfgNode(t, "", "gamma", "10.9.0.3/24")
	nc.seedFile = filepath.Join(nc.dir, "seed")
	mid := config.SeedFile{Seed: cur, Network: mesh.NetworkOf(cur), Next: &next, From: from, Until: until}
	if err := config.WriteSeedFile(nc.seedFile, mid); err != nil {
		t.Fatal(err)
	}
	c := startSeedNode(t, nc.config(t, ""))
	if ids := c.t.Node().SeedStats().IDs; !slices.Equal(ids, want) {
		t.Fatalf("restarted node holds %x, want next then current", ids)
	}
}

// The network's identity outlives the seed: two mesh members move to a new seed (bare
// replacement, reload) and keep their mesh addresses, the network prefix and each
// other's records (signed over the network id, which did not change); a member started
// afterwards on the rewritten file (new seed, network line) is in the same network and
// joins.
func TestMeshKeepsAddressesAndRecordsAcrossASeedChange(t *testing.T) {
	s1, s2 := [32]byte{11}, [32]byte{12}
	type meshNode struct {
		*memNode
		dir string
		cfg func() *config.Config
	}
	start := func(name, addr, seedFile, disc string) *meshNode {
		dir := t.TempDir()
		key, err := config.GenerateNodeKey()
		if err != nil {
			t.Fatal(err)
		}
		keyFile := filepath.Join(dir, name+".key")
		writeFileT(t, keyFile, key.Encode()+"\n")
		// A short rekey_after: when a node's rekey under the new seed reaches the other
		// before its own reload, the retry under the old seed makes a session after both
		// changes, which is left for the next ordinary rekey to move (protocol.md 3).
		cfg := func() *config.Config {
			return meshConfig(t, seedFile, keyFile, name, addr, disc, "[advanced]\nrekey_after = \"2s\"")
		}
		return &meshNode{memNode: startSeedNode(t, cfg()), dir: dir, cfg: cfg}
	}
	fb := writeSecret(t, t.TempDir(), "seed", s1)
	fa := writeSecret(t, t.TempDir(), "seed", s1)
	b := start("beta", "10.78.0.2/24", fb, "")
	boot := fmt.Sprintf("bootstrap = [%q]", endpointOf(b.memNode))
	a := start("alpha", "10.78.0.1/24", fa, boot)
	peerOf := func(n *memNode, name string) (addr, seed string) {
		for _, p := range n.t.Status().Peers {
			if p.Name == name {
				return p.MeshAddress, p.Seed
			}
		}
		return "", ""
	}
	waitUntil(t, "alpha to have beta's record and a session", func() bool {
		addr, seed := peerOf(a.memNode, "beta")
		return addr != "" && seed != ""
	})
	prefix := mesh.NetworkOf(s1).Prefix.String()
	stA := a.t.Status()
	addrA, addrB := stA.Mesh.Address, func() string { s, _ := peerOf(a.memNode, "beta"); return s }()
	if stA.Mesh.Network != prefix {
		t.Fatalf("network %s, want %s", stA.Mesh.Network, prefix)
	}
	badSig := a.t.counterMap()["mesh_record_bad_signature"] + b.t.counterMap()["mesh_record_bad_signature"]

	writeSecret(t, filepath.Dir(fa), "seed", s2)
	writeSecret(t, filepath.Dir(fb), "seed", s2)
	for _, n := range []*meshNode{a, b} {
		if _, err := n.t.ReloadChanges(n.cfg()); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, "the session on the new seed", func() bool {
		_, sa := peerOf(a.memNode, "beta")
		_, sb := peerOf(b.memNode, "alpha")
		return sa == shortSeed(s2) && sb == shortSeed(s2)
	})
	stA = a.t.Status()
	if got, _ := peerOf(a.memNode, "beta"); stA.Mesh.Network != prefix || stA.Mesh.Address != addrA || got != addrB {
		t.Fatalf("after the seed change: network %s, address %s, beta at %s; want %s, %s, %s",
			stA.Mesh.Network, stA.Mesh.Address, got, prefix, addrA, addrB)
	}
	if n := a.t.counterMap()["mesh_record_bad_signature"] + b.t.counterMap()["mesh_record_bad_signature"]; n != badSig {
		t.Fatalf("%d records refused for their signature after the seed change", n-badSig)
	}

	// A node started on the rewritten file (the new seed and the network line).
	g := start("gamma", "10.78.0.3/24", fa, boot)
	if st := g.t.Status(); st.Mesh.Network != prefix || st.Seed.ID != shortSeed(s2) {
		t.Fatalf("gamma on the rewritten file: network %s, seed %+v", st.Mesh.Network, st.Seed)
	}
	waitUntil(t, "gamma to join", func() bool { _, seed := peerOf(g.memNode, "beta"); return seed == shortSeed(s2) })
}

// A reload planned before StageSeed changed the seeds (the in-band rotation runs on the
// mesh's goroutines, outside the reload lock) plans again rather than putting the old
// file back.
func TestReloadPlannedBeforeStageSeedKeepsTheStagedSeed(t *testing.T) {
	cur, next := [32]byte{13}, [32]byte{14}
	l := newSeedLab(t, cur)
	plan, err := l.a.t.planSeedReload(l.na.seedFile)
	if err != nil {
		t.Fatal(err)
	}
	from := time.Now().Add(time.Hour)
	if err := l.a.t.StageSeed(next, from, from.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if warn := l.a.t.applySeedReload(plan); len(warn) != 0 {
		t.Fatalf("warnings %q", warn)
	}
	if n, _, _, ok := l.a.t.StagedSeed(); !ok || n != next {
		t.Fatal("the reload undid the staged seed")
	}
	want := [][16]byte{handshake.SeedID(cur), handshake.SeedID(next)}
	if ids := l.a.t.Node().SeedStats().IDs; !slices.Equal(ids, want) {
		t.Fatalf("alpha holds %x, want current then next", ids)
	}
}

// The seeds held follow the wall clock when it steps: a node that read its seed file
// with the clock far behind (booted without a real-time clock, before NTP) accepts the
// seed a finished rotation retired; once the clock is set right it must stop, without
// waiting for a boundary timer armed on the wrong clock (decades away).
func TestSeedsFollowAStepOfTheWallClock(t *testing.T) {
	cur, next := [32]byte{21}, [32]byte{22}
	l := newSeedLab(t, cur)
	from := time.Now().Add(-2 * time.Hour)
	if err := l.a.t.StageSeed(next, from, from.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if ids := l.a.t.Node().SeedStats().IDs; !slices.Equal(ids, [][16]byte{handshake.SeedID(next)}) {
		t.Fatalf("after the rotation alpha holds %x, want the next seed alone", ids)
	}
	s := &l.a.t.seed
	var mu sync.Mutex
	wall := time.Unix(0, 0)
	s.mu.Lock()
	s.recheck = 20 * time.Millisecond
	s.clock = func() time.Time { mu.Lock(); defer mu.Unlock(); return wall }
	s.mu.Unlock()
	if err := l.a.t.applySeeds(s.file, false); err != nil { // as read at a boot in 1970
		t.Fatal(err)
	}
	if ids := l.a.t.Node().SeedStats().IDs; len(ids) != 2 {
		t.Fatalf("with the clock in 1970 alpha holds %x, want both seeds", ids)
	}
	mu.Lock()
	wall = time.Now() // NTP steps the clock
	mu.Unlock()
	waitUntil(t, "alpha drops the retired seed once its clock is right", func() bool {
		return slices.Equal(l.a.t.Node().SeedStats().IDs, [][16]byte{handshake.SeedID(next)})
	})
}

// The status's seed says what the node holds, not what the clock says it should: while
// the node still accepts the current seed (its boundary not applied yet, or its seeds
// read with the clock behind), status must not say that the rotation is over.
func TestSeedStatusSaysWhatTheNodeHolds(t *testing.T) {
	cur, next := [32]byte{31}, [32]byte{32}
	l := newSeedLab(t, cur)
	from := time.Now().Add(-2 * time.Hour)
	if err := l.a.t.StageSeed(next, from, from.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	s := &l.a.t.seed
	s.mu.Lock()
	s.clock = func() time.Time { return from.Add(time.Minute) } // in the overlap
	s.mu.Unlock()
	if err := l.a.t.applySeeds(s.file, false); err != nil {
		t.Fatal(err)
	}
	if ids := l.a.t.Node().SeedStats().IDs; len(ids) != 2 {
		t.Fatalf("alpha holds %x, want both seeds", ids)
	}
	if st := l.a.t.Status().Seed; st == nil || st.ID != shortSeed(cur) || st.NextID != shortSeed(next) {
		t.Errorf("status seed %+v while alpha accepts both seeds, want %s with next %s", st, shortSeed(cur), shortSeed(next))
	}
}
