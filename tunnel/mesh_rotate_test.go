package tunnel

import (
	"crypto/ed25519"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/stt/mesh"
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
