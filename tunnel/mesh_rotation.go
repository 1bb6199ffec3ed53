package tunnel

import (
	"crypto/ed25519"
	"slices"
	"time"

	"github.com/stt-tun/stt-tun/stt/mesh"
)

// The rotation's view of the statement store (mesh_statements.go, the engine's store):
// the admins obeyed, offering a statement, the newest rotation held, revocations.

func (t *Tunnel) statementAdmins() []ed25519.PublicKey { return t.mesh.eng.Admins() }

// offerStatement offers raw to the statement store and returns why it took it or not
// (one of mesh.StatementReasons); taken, it spreads to the members.
func (t *Tunnel) offerStatement(raw []byte) string {
	_, reason := t.mesh.eng.OfferStatement(raw)
	return reason
}

func (t *Tunnel) heldRotation() (*mesh.Statement, []byte) { return t.mesh.eng.RotationStatement() }

func (t *Tunnel) statementRevoked(key [32]byte) bool { return t.mesh.eng.Revoked(key) }

// rotationAccepted is called when a ROTATE statement is taken (statementAccepted): from
// a member's gossip, an offer, or `seed rotate`. The seed comes with an offer
// (mesh_rotate.go); what the statement alone changes is that a rotation this node holds
// and offers is no longer the newest, so it stops offering it (sendSeedOffer checks).
func (t *Tunnel) rotationAccepted(st *mesh.Statement) {
	from, until := rotationTimes(st)
	r := t.mesh.rot
	newest, newestRaw := t.heldRotation()
	r.mu.Lock()
	superseded := r.st != nil && r.st.Rotate.NextSeedID != st.Rotate.NextSeedID
	if newest != nil && newest.Rotate.NextSeedID == st.Rotate.NextSeedID && r.takenID != st.Rotate.NextSeedID {
		r.takenID, r.takenAt = st.Rotate.NextSeedID, time.Now()
		r.snapshotOfferableLocked(newest, newestRaw) // kept across a restart
	}
	r.mu.Unlock()
	t.log.Info("mesh: seed rotation statement taken", "next_seed_id", shortSeedID(st.Rotate.NextSeedID),
		"from", from.UTC().Format(time.RFC3339), "until", until.UTC().Format(time.RFC3339),
		"excluded", len(st.Rotate.Excluded), "supersedes_the_held_one", superseded)
	if slices.Contains(st.Rotate.Excluded, t.mesh.self) {
		t.log.Warn("mesh: an admin's seed rotation excludes this node: it will not be given the next seed, and loses the network when the current seed stops being accepted",
			"until", until.UTC().Format(time.RFC3339))
	}
}
