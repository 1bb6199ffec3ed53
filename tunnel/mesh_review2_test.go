package tunnel

import (
	"testing"
	"time"

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

// TestMeshRefusedHandshakeMemberForgotten: a member admitted by a handshake that never
// sent a record and then lost its name (a handshake under a name another key holds) is
// forgotten after recordWait like any admitted member without a record; it stayed in the
// member table for good, so that keys made up by one seed holder filled the table and
// every new member was refused ("member table full").
func TestMeshRefusedHandshakeMemberForgotten(t *testing.T) {
	n := newMeshNode(t)
	bob, eve := newIdentity(t), newIdentity(t)
	n.offer(t, bob, mesh.Record{Name: "bob"})
	n.member(t, bob, func(p status.Peer) bool { return p.MeshAddress != "" })
	if _, err := n.t.admit("eve", eve.Public); err != nil {
		t.Fatal(err)
	}
	if _, err := n.t.admit("bob", eve.Public); err == nil {
		t.Fatal("eve admitted under bob's name")
	}
	m := n.t.mesh
	waitUntil(t, "eve loses her peer", func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		mb := m.members[eve.Public]
		return mb != nil && mb.p == nil
	})
	m.mu.Lock()
	m.members[eve.Public].admitted = time.Now().Add(-recordWait - time.Minute)
	m.mu.Unlock()
	m.kick()
	waitUntil(t, "eve, refused and silent, is forgotten", func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.members[eve.Public] == nil
	})
}

// TestMeshAdmittedMemberRoutedAtOnce: a member admitted by its handshake is in the prefix
// table (its key-derived address) as soon as the mesh loop wakes, before any record of
// its arrives; it waited for some record in the mesh to change.
func TestMeshAdmittedMemberRoutedAtOnce(t *testing.T) {
	n := newMeshNode(t)
	dave := newIdentity(t)
	if _, err := n.t.admit("dave", dave.Public); err != nil {
		t.Fatal(err)
	}
	addr := mesh.MemberAddr(n.seed, dave.Public)
	waitUntil(t, "dave's mesh address routes to dave", func() bool { return n.route(addr) == "dave" })
}
