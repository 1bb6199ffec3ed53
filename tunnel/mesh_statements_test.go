package tunnel

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/stt"
	"github.com/stt-tun/stt-tun/stt/mesh"
	"github.com/stt-tun/stt-tun/tun/tuntest"
)

// stmtNode is a mesh node on an in-memory device with its own state directory, which
// a restart keeps.
type stmtNode struct {
	*memNode
	cfg   *config.Config
	dir   string
	key   config.NodeKey
	start func() // starts it again with the same configuration and state directory
}

func startStmtNode(t *testing.T, seedFile, name, addr, discovery, membership string) *stmtNode {
	t.Helper()
	key, err := config.GenerateNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), name+".key")
	writeFileT(t, keyFile, key.Encode()+"\n")
	n := &stmtNode{cfg: meshConfig(t, seedFile, keyFile, name, addr, discovery, membership), dir: t.TempDir(), key: key}
	n.start = func() {
		dev := tuntest.NewMem(n.cfg.Interface.Name, 1420, 16)
		tu, err := Start(context.Background(), n.cfg, Options{Device: dev, StateDir: n.dir})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = tu.Close() })
		n.memNode = &memNode{t: tu, dev: dev}
	}
	n.start()
	return n
}

func adminKeyT(t *testing.T) (ed25519.PrivateKey, string) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return priv, base64.StdEncoding.EncodeToString(priv.Public().(ed25519.PublicKey))
}

func signRevoke(t *testing.T, admin ed25519.PrivateKey, seed [32]byte, target [32]byte, issued time.Time) []byte {
	t.Helper()
	s := mesh.Statement{Kind: mesh.StatementRevoke, Issued: uint64(issued.UnixNano()), Revoke: &mesh.Revocation{Target: target, Name: "c"}}
	raw, err := s.Marshal(admin, mesh.NetworkID(seed))
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func hasSessionWith(n *memNode, name string) bool {
	sp := n.t.Node().Peer(name)
	return sp != nil && sp.HasSession()
}

// A revocation handed to one member over the control path reaches the others, which
// close their sessions with the revoked member, forget it, refuse it from then on, save
// the revocation, and still refuse it after a restart, before any member tells them.
func TestRevocationSpreadsClosesAndSurvivesRestart(t *testing.T) {
	seed, _ := config.GenerateSeed()
	seedFile := writeSecret(t, t.TempDir(), "seed", seed)
	admin, adminB64 := adminKeyT(t)
	membership := fmt.Sprintf("[membership]\nadmins = [%q]", adminB64)
	a := startStmtNode(t, seedFile, "a", "10.77.0.1/24", "", membership)
	boot := fmt.Sprintf("bootstrap = [%q]", endpointOf(a.memNode))
	b := startStmtNode(t, seedFile, "b", "10.77.0.2/24", boot, membership)
	// c dials both: a and b have a session with it at once, without waiting for its
	// record to spread.
	c := startStmtNode(t, seedFile, "c", "10.77.0.3/24", fmt.Sprintf("bootstrap = [%q, %q]", endpointOf(a.memNode), endpointOf(b.memNode)), membership)
	waitUntil(t, "a and b to know c", func() bool {
		return a.t.Status().Mesh.Members == 2 && b.t.Status().Mesh.Members == 2
	})
	for _, n := range []*stmtNode{a, b} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if _, err := n.t.Ping(ctx, "c"); err != nil {
			cancel()
			t.Fatalf("ping c: %v", err)
		}
		cancel()
	}
	cKey := c.key.PublicKey()
	ok, reason, err := b.t.OfferStatement(signRevoke(t, admin, seed, cKey, time.Now()))
	if err != nil || !ok {
		t.Fatalf("offer: %v %s", err, reason)
	}
	for _, n := range []*stmtNode{a, b} {
		waitUntil(t, n.cfg.Interface.NodeName+" to drop c", func() bool {
			st := n.t.Status()
			return !hasSessionWith(n.memNode, "c") && n.t.mesh.eng.Member(cKey) == nil &&
				len(st.Mesh.Revoked) == 1 && st.Mesh.Revoked[0].Key == config.EncodeKey(cKey) &&
				st.Mesh.Members == 1 && n.t.Node().Revoked(cKey)
		})
	}
	// c keeps trying (it knows a as its bootstrap): refused, counted.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	_, err = c.t.Ping(ctx, "a")
	cancel()
	if err == nil {
		t.Fatal("the revoked member still reaches a")
	}
	waitUntil(t, "a to count c's handshakes as revoked", func() bool {
		return a.t.Node().Stats().Drops[stt.DropRevoked] > 0
	})
	// a saved it (0600) and refuses c from its first packet after a restart.
	path := statementsPath(a.cfg.Interface.SeedFile, a.cfg.Interface.Name)
	waitUntil(t, "a to save the statements", func() bool {
		fi, err := os.Stat(path)
		return err == nil && fi.Mode().Perm() == 0o600 && fi.Size() > int64(len(statementsHeader))
	})
	if err := a.t.Close(); err != nil {
		t.Fatal(err)
	}
	a.start()
	if !a.t.Node().Revoked(cKey) || len(a.t.Status().Mesh.Revoked) != 1 {
		t.Fatal("after a restart, a does not refuse the revoked key before any member speaks")
	}
}

// Without admins, the control path refuses a statement outright; with admins, a
// statement of another key, a replay and an older one are refused and counted.
func TestOfferStatementRefusals(t *testing.T) {
	seed, _ := config.GenerateSeed()
	seedFile := writeSecret(t, t.TempDir(), "seed", seed)
	admin, adminB64 := adminKeyT(t)
	none := startStmtNode(t, seedFile, "n", "10.77.1.1/24", "", "")
	if _, _, err := none.t.OfferStatement(signRevoke(t, admin, seed, [32]byte{1}, time.Now())); err == nil || !strings.Contains(err.Error(), "no [membership] admins") {
		t.Fatalf("no admins: %v", err)
	}
	a := startStmtNode(t, seedFile, "a", "10.77.1.2/24", "", fmt.Sprintf("[membership]\nadmins = [%q]", adminB64))
	other, _ := adminKeyT(t)
	now := time.Now()
	for _, tc := range []struct {
		raw  []byte
		want string
	}{
		{signRevoke(t, other, seed, [32]byte{1}, now), mesh.ReasonUnknownAdmin},
		{signRevoke(t, admin, seed, [32]byte{1}, now), mesh.ReasonAccepted},
		{signRevoke(t, admin, seed, [32]byte{1}, now), mesh.ReasonStale},
		{signRevoke(t, admin, seed, [32]byte{1}, now.Add(-time.Minute)), mesh.ReasonStale},
	} {
		ok, reason, err := a.t.OfferStatement(tc.raw)
		if err != nil || reason != tc.want || ok != (tc.want == mesh.ReasonAccepted) {
			t.Fatalf("offer: %v %q %v, want %q", ok, reason, err, tc.want)
		}
	}
	if got := a.t.meshStatementCounter(mesh.ReasonStale); got != 2 {
		t.Fatalf("stale counted %d, want 2", got)
	}
}

func (t *Tunnel) meshStatementCounter(reason string) uint64 {
	return t.mesh.eng.StatementStats().Offers[reason]
}

// A reload that removes the admin key lifts its revocations: the node no longer refuses
// the key, and the file is written without the statement.
func TestReloadAdminsLiftsRevocations(t *testing.T) {
	seed, _ := config.GenerateSeed()
	seedFile := writeSecret(t, t.TempDir(), "seed", seed)
	admin, adminB64 := adminKeyT(t)
	a := startStmtNode(t, seedFile, "a", "10.77.2.1/24", "", fmt.Sprintf("[membership]\nadmins = [%q]", adminB64))
	target := [32]byte{7, 7}
	if ok, reason, err := a.t.OfferStatement(signRevoke(t, admin, seed, target, time.Now())); !ok || err != nil {
		t.Fatalf("offer: %s %v", reason, err)
	}
	waitUntil(t, "the node to refuse the key", func() bool { return a.t.Node().Revoked(target) })
	cfg := *a.cfg
	cfg.Membership = config.Membership{}
	changes, err := a.t.ReloadChanges(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	if want := "membership.admins: none (1 statement of a key no longer listed dropped); no revocation or rotation is obeyed"; len(changes) != 1 || changes[0] != want {
		t.Fatalf("changes %q, want %q", changes, want)
	}
	if a.t.Node().Revoked(target) || len(a.t.Status().Mesh.Revoked) != 0 {
		t.Fatal("the revocation of a removed admin still holds")
	}
}

// A statements file with lines that do not decode or that the store refuses keeps
// what parses (one log line) and is written again without the rest.
func TestStatementsFileKeepsWhatParses(t *testing.T) {
	seed, _ := config.GenerateSeed()
	seedFile := writeSecret(t, t.TempDir(), "seed", seed)
	admin, adminB64 := adminKeyT(t)
	other, _ := adminKeyT(t)
	good := signRevoke(t, admin, seed, [32]byte{3, 3}, time.Now())
	n := startStmtNode(t, seedFile, "a", "10.77.3.1/24", "", fmt.Sprintf("[membership]\nadmins = [%q]", adminB64))
	if err := n.t.Close(); err != nil {
		t.Fatal(err)
	}
	path := statementsPath(n.cfg.Interface.SeedFile, n.cfg.Interface.Name)
	content := statementsHeader + "not base64 at all\n" + base64.StdEncoding.EncodeToString(good) + "\n" +
		base64.StdEncoding.EncodeToString(signRevoke(t, other, seed, [32]byte{4}, time.Now())) + "\n"
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	n.start()
	if !n.t.Node().Revoked([32]byte{3, 3}) || n.t.Node().Revoked([32]byte{4}) {
		t.Fatal("the good statement was not loaded, or the other admin's was")
	}
	waitUntil(t, "the file to be written again without the bad lines", func() bool {
		b, err := os.ReadFile(path)
		return err == nil && string(b) == statementsHeader+base64.StdEncoding.EncodeToString(good)+"\n"
	})
	// A symbolic link in its place is not followed.
	if err := n.t.Close(); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "elsewhere")
	if err := os.Rename(path, target); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	n.start()
	if n.t.Node().Revoked([32]byte{3, 3}) {
		t.Fatal("statements read through a symbolic link")
	}
}

// reload's line for a new admin list counts keys and dropped statements in words an
// administrator reads as written ("1 admin key", not "1 admin keys").
func TestReloadAdminsLineGrammar(t *testing.T) {
	for _, c := range []struct {
		n, dropped int
		want       string
	}{
		{1, 0, "membership.admins: 1 admin key"},
		{2, 0, "membership.admins: 2 admin keys"},
		{1, 1, "membership.admins: 1 admin key (1 statement of a key no longer listed dropped)"},
		{2, 3, "membership.admins: 2 admin keys (3 statements of keys no longer listed dropped)"},
		{0, 0, "membership.admins: none; no revocation or rotation is obeyed"},
	} {
		if got := adminsChange(c.n, c.dropped); got != c.want {
			t.Errorf("adminsChange(%d, %d) = %q, want %q", c.n, c.dropped, got, c.want)
		}
	}
}
