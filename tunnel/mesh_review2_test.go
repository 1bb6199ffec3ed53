package tunnel

import (
	"testing"

	"github.com/stt-tun/stt-tun/internal/status"
	"github.com/stt-tun/stt-tun/stt/mesh"
)

// TestMeshRenamedMemberAdmittedUnderNewName: a member that restarts under a new name (its
// new record arrives first, then its handshake under the new name, which is refused while
// its peer has the old name) is admitted under the new name on its next handshake, not
// only when it next re-signs its record (Lifetime/3, ten minutes later).
func TestMeshRenamedMemberAdmittedUnderNewName(t *testing.T) {
	n := newMeshNode(t)
	bob := newIdentity(t)
	if _, err := n.t.admit("bob", bob.Public); err != nil {
		t.Fatal(err)
	}
	n.offer(t, bob, mesh.Record{Name: "bob"})
	n.member(t, bob, func(p status.Peer) bool { return p.Name == "bob" && p.MeshAddress != "" })
	// Restarted as "robert": its record says so before any handshake does.
	n.offer(t, bob, mesh.Record{Name: "robert"})
	n.member(t, bob, func(p status.Peer) bool { return len(p.Refusals) > 0 })
	if _, err := n.t.admit("robert", bob.Public); err == nil {
		t.Log("admitted at once")
	}
	waitUntil(t, "the member is admitted under its new name", func() bool {
		_, err := n.t.admit("robert", bob.Public)
		return err == nil
	})
	p := n.member(t, bob, func(p status.Peer) bool { return p.Name == "robert" })
	if len(p.Refusals) != 0 {
		t.Errorf("robert still refused: %v", p.Refusals)
	}
}
