package main

import (
	"crypto/ed25519"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/internal/status"
	"github.com/stt-tun/stt-tun/stt/mesh"
)

// admin genkey makes an ed25519: key, admin pubkey prints its Ed25519 public key (not the
// X25519 one pubkey prints), and a legacy key is refused in one line.
func TestAdminGenkeyAndPubkey(t *testing.T) {
	h := newHarness(t)
	g := h.run("", "admin", "genkey")
	if g.code != 0 || !strings.HasPrefix(g.stdout, "ed25519:") {
		t.Fatalf("admin genkey: %+v", g)
	}
	k, err := config.DecodeNodeKey(g.stdout)
	if err != nil {
		t.Fatal(err)
	}
	want := base64.StdEncoding.EncodeToString(ed25519.NewKeyFromSeed(k.Ed25519Seed[:]).Public().(ed25519.PublicKey)) + "\n"
	p := h.run(g.stdout, "admin", "pubkey")
	if p.code != 0 || p.stdout != want {
		t.Fatalf("admin pubkey = %+v, want %q", p, want)
	}
	if x := h.run(g.stdout, "pubkey"); x.stdout == want {
		t.Fatal("admin pubkey printed the X25519 key")
	}
	// What it prints is what [membership] admins takes.
	if _, err := config.DecodeAdminKey(strings.TrimSpace(p.stdout)); err != nil {
		t.Fatalf("[membership] refuses admin pubkey's output: %v", err)
	}
	legacy, _ := config.GenerateKey()
	checkOneLineError(t, h.run(config.EncodeKey(legacy), "admin", "pubkey"), 1, "a legacy X25519 key has no Ed25519 key")
}

// revocationFor refuses, with one line and before anything is signed or sent, a daemon
// without admins, an admin key it does not list, and a member it cannot name.
func TestRevokeRefusedBeforeSending(t *testing.T) {
	admin := ed25519.NewKeyFromSeed(make([]byte, 32))
	pub := admin.Public().(ed25519.PublicKey)
	pubB64 := base64.StdEncoding.EncodeToString(pub)
	member := "p0Y8jv6Q2c3L1m7tXr9WbqZ4e5F0aK2sH8dN1uV3yGc="
	base := func() status.Status {
		return status.Status{Interface: "stt0", NodeName: "alpha", PublicKey: "mK8fT2yq0b6v7dW1lYbX8m3T9QJ0e9a0aQ4cZ1vJ5Ws=",
			Peers: []status.Peer{{Name: "theta", PublicKey: member}, {Name: "kappa", PublicKey: "b1Xq9Vd0R2m5N8c3L6t4Z7y1W0e2K9j5H3g8F6s4A2o="},
				{Name: "kappa", PublicKey: "d3Zs1Xe2T4o7P0e5N8v6B9a3Y2g4M1l7J5i0H8u6C4q="}},
			Mesh: &status.Mesh{NetworkID: "06bf2be6b984bb6b212c9f4594c5a35b", Admins: []string{pubB64}}}
	}
	noMesh := base()
	noMesh.Mesh = nil
	noAdmins := base()
	noAdmins.Mesh.Admins = nil
	other := base()
	other.Mesh.Admins = []string{"F0VTtFbd38aQjsqxwQH+arIeK6oGF3lbfUOmNIKZP9U="}
	for _, tc := range []struct {
		name   string
		st     status.Status
		member string
		want   string
	}{
		{"no mesh", noMesh, "theta", "stt0 has no [discovery]"},
		{"no admins", noAdmins, "theta", "stt0 has no [membership] admins, so no member obeys a revocation"},
		{"not an admin", other, "theta", "is not one of the admins of stt0"},
		{"unknown name", base(), "nobody", `stt0 knows no member named "nobody"`},
		{"two keys", base(), "kappa", `2 keys go by the name "kappa"`},
		{"itself", base(), "alpha", "is stt0 itself"},
	} {
		_, _, err := revocationFor(tc.st, tc.member, pub, "admin.key")
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v, want one line with %q", tc.name, err, tc.want)
		}
	}
	s, netID, err := revocationFor(base(), "theta", pub, "admin.key")
	if err != nil || s.Revoke.Name != "theta" || config.EncodeKey(s.Revoke.Target) != member || netID[0] != 0x06 {
		t.Fatalf("theta: %+v %x %v", s, netID, err)
	}
	s, _, err = revocationFor(base(), member, pub, "admin.key")
	if err != nil || s.Revoke.Name != "theta" {
		t.Fatalf("by key: %+v %v", s, err)
	}
	s.Issued = 1
	raw, err := s.Marshal(admin, netID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mesh.ParseStatement(raw, netID, []ed25519.PublicKey{pub}); err != nil {
		t.Fatalf("the signed revocation does not parse: %v", err)
	}
}

// revoke without --admin-key, or with a legacy key, is refused with one line.
func TestRevokeCommandLine(t *testing.T) {
	h := newHarness(t)
	checkOneLineError(t, h.run("", "revoke", "theta"), 2, "missing --admin-key FILE")
	checkOneLineError(t, h.run("", "revoke", "--admin-key", "x"), 2, "missing MEMBER")
	legacy, _ := config.GenerateKey()
	f := h.write("legacy.key", config.EncodeKey(legacy)+"\n")
	checkOneLineError(t, h.run("", "revoke", "--admin-key", f, "theta"), 1, "a legacy X25519 key has no Ed25519 key")
	// A key file that cannot be read is named by its flag, for revoke and seed rotate.
	missing := h.dir + "/no-such.key"
	checkOneLineError(t, h.run("", "revoke", "--admin-key", missing, "theta"), 1, "revoke: --admin-key: ")
	checkOneLineError(t, h.run("", "seed", "rotate", "--admin-key", missing), 1, "seed rotate: --admin-key: ")
}

// revoke's answer names the member, or says the key is not one the daemon knows — not
// "revoked member (KEY)", which reads as a member called "member".
func TestRevokedLineNamesTheMemberOrSaysItIsUnknown(t *testing.T) {
	const key = "V1Ww9QelxWoMZk17d94btTVp99vNMdMnmm1dmPEiG3s="
	if got, want := revokedLine("epsilon", key, "stt0"), "revoked epsilon ("+key+") on stt0: spreading to the members"; got != want {
		t.Errorf("known member: %q, want %q", got, want)
	}
	if got, want := revokedLine("", key, "stt0"), "revoked "+key+" (no member stt0 knows has that key) on stt0: spreading to the members"; got != want {
		t.Errorf("unknown key: %q, want %q", got, want)
	}
}
