package tunnel

// mesh_rotate_stmts.go: the statement store's side of the rotation, until the
// statements branch lands (issue 15, H2). Replaced at the merge.

import (
	"crypto/ed25519"

	"github.com/stt-tun/stt-tun/stt/mesh"
)

func (t *Tunnel) statementAdmins() []ed25519.PublicKey { return nil }

func (t *Tunnel) offerStatement(raw []byte) string { return mesh.ReasonUnknownAdmin }

func (t *Tunnel) heldRotation() (*mesh.Statement, []byte) { return nil, nil }

func (t *Tunnel) statementRevoked(key [32]byte) bool { return false }
