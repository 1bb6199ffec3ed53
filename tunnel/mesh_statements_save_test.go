package tunnel

import (
	"context"
	"crypto/ed25519"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/stt/mesh"
	"github.com/stt-tun/stt-tun/tun/tuntest"
)

// A statements file that cannot be written (a read-only file system, a directory
// statedir refuses) is said once at warn, not at every pass of the mesh loop (every
// second, for as long as it lasts); it is tried again, and a statement is still kept
// in memory.
func TestStatementsSaveFailureWarnsOnce(t *testing.T) {
	_, admin, _ := ed25519.GenerateKey(nil)
	seed, _ := config.GenerateSeed()
	seedFile := writeSecret(t, t.TempDir(), "seed", seed)
	key, _ := config.GenerateNodeKey()
	keyFile := filepath.Join(t.TempDir(), "alpha.key")
	writeFileT(t, keyFile, key.Encode()+"\n")
	adm := adminSection(admin)
	cfg := meshConfig(t, seedFile, keyFile, "alpha", "10.77.0.1/24", "", adm)
	var log lockedBuffer
	dev := tuntest.NewMem(cfg.Interface.Name, 1420, 16)
	tu, err := Start(context.Background(), cfg, Options{Device: dev, Logger: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tu.Close() })
	if err := os.Chmod(filepath.Dir(seedFile), 0o775); err != nil { // statedir refuses it
		t.Fatal(err)
	}
	st := mesh.Statement{Kind: mesh.StatementRevoke, Issued: uint64(time.Now().UnixNano()), Revoke: &mesh.Revocation{Target: [32]byte{7}}}
	raw, err := st.Marshal(admin, tu.mesh.netID)
	if err != nil {
		t.Fatal(err)
	}
	if ok, reason, err := tu.OfferStatement(raw); !ok || err != nil {
		t.Fatalf("offer: %v %s %v", ok, reason, err)
	}
	for range 5 {
		tu.mesh.stmtDirty.Store(true)
		tu.saveStatements()
	}
	if n := strings.Count(log.String(), "cannot save the statements"); n != 1 {
		t.Errorf("the save failure was logged %d times, want once", n)
	}
	if !tu.mesh.stmtDirty.Load() {
		t.Error("the statements are no longer marked to be saved")
	}
	if !tu.Node().Revoked([32]byte{7}) {
		t.Error("the revocation is not in force")
	}
}
