// Validation of [membership]: the admin keys whose signed statements (revocations, seed
// rotations) this node obeys (docs/protocol.md 10.7, docs/security.md).

package config

import (
	"bytes"
	"crypto/ed25519"
	"strconv"

	"filippo.io/edwards25519"
)

// MaxAdmins is the most admin keys [membership] admins may list.
const MaxAdmins = 8

// Membership is the [membership] section.
type Membership struct {
	// Admins are the Ed25519 public keys whose statements this node obeys, in file
	// order, none twice; empty: nothing network-wide can be commanded in band.
	Admins []ed25519.PublicKey
}

// HasAdmin reports whether key is one of the admin keys.
func (m Membership) HasAdmin(key ed25519.PublicKey) bool {
	for _, a := range m.Admins {
		if bytes.Equal(a, key) {
			return true
		}
	}
	return false
}

// DecodeAdminKey parses an admin public key as [membership] admins lists it: the base64
// of an Ed25519 public key, which must be a point of the curve.
func DecodeAdminKey(s string) (ed25519.PublicKey, error) {
	k, err := DecodeKey(s)
	if err != nil {
		return nil, err
	}
	if _, err := new(edwards25519.Point).SetBytes(k[:]); err != nil {
		return nil, errNotEd25519
	}
	return ed25519.PublicKey(k[:]), nil
}

type adminKeyError struct{}

func (adminKeyError) Error() string {
	return "key is not an Ed25519 public key (print one with: stt-tun admin pubkey < ADMIN_KEY_FILE)"
}

var errNotEd25519 error = adminKeyError{}

func (v *validator) membership(r *rawMembership, d Discovery) Membership {
	var m Membership
	if r == nil {
		return m
	}
	for i, s := range r.Admins {
		path := "membership.admins." + strconv.Itoa(i)
		if i == MaxAdmins {
			v.errAt(path, "membership: admins has %d keys; the limit is %d", len(r.Admins), MaxAdmins)
			break
		}
		k, err := DecodeAdminKey(s)
		if err != nil {
			v.errAt(path, "membership: admins entry %d: %v", i+1, err)
			continue
		}
		if m.HasAdmin(k) {
			v.errAt(path, "membership: admins lists the key %s twice", EncodeKey([32]byte(k)))
			continue
		}
		m.Admins = append(m.Admins, k)
	}
	if len(r.Admins) > 0 && !d.Enabled {
		v.errAt("membership.admins", "membership: admins has no use without [discovery]: statements travel between the members of the mesh")
	}
	return m
}
