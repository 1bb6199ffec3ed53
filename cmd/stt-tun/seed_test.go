package main

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/internal/status"
	"github.com/stt-tun/stt-tun/stt/mesh"
)

func TestParseWhenTakesOffsetsAndTimes(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 500_000_000, time.UTC)
	for _, c := range []struct {
		in   string
		want time.Time
	}{
		{"+2m", time.Date(2026, 12, 6, 12, 2, 1, 0, time.UTC)}, // rounded up: never earlier than asked
		{"90s", time.Date(2026, 12, 6, 12, 1, 31, 0, time.UTC)},
		{"+5", time.Date(2026, 12, 6, 12, 0, 6, 0, time.UTC)},
		{"2026-12-06T22:00:00Z", time.Date(2026, 12, 6, 22, 0, 0, 0, time.UTC)},
		{"2026-12-06T23:00:00+01:00", time.Date(2026, 12, 6, 22, 0, 0, 0, time.UTC)},
	} {
		got, err := parseWhen(c.in, now)
		if err != nil || !got.Equal(c.want) {
			t.Errorf("parseWhen(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{"", "soon", "-1m", "2026-12-06T11:00:00Z", "+1x"} {
		if got, err := parseWhen(in, now); err == nil {
			t.Errorf("parseWhen(%q) = %v, want an error", in, got)
		}
	}
}

// Without [membership] admins on the daemon, nothing can be commanded in band:
// seed rotate says so in one line and signs nothing; so it does for an admin key the
// daemon does not list, and for a daemon without the mesh.
func TestSeedRotateRefusedWithoutAdmins(t *testing.T) {
	k, err := config.GenerateNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	admin, _ := adminKeyOf(k, nil)
	pub := base64.StdEncoding.EncodeToString(admin.Public().(ed25519.PublicKey))
	other := base64.StdEncoding.EncodeToString(make([]byte, 32))
	netID := "00112233445566778899aabbccddeeff"
	for _, c := range []struct {
		name string
		mesh *status.Mesh
		want string
	}{
		{"no mesh", nil, "has no [discovery]"},
		{"no admins", &status.Mesh{NetworkID: netID}, "has no [membership] admins, so no member obeys a rotation; rotate by hand"},
		{"another admin", &status.Mesh{NetworkID: netID, Admins: []string{other}}, "is not one of the admins of stt0"},
	} {
		_, err := rotationNetwork(status.Status{Interface: "stt0", Mesh: c.mesh}, admin.Public().(ed25519.PublicKey), "admin.key")
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v, want one line with %q", c.name, err, c.want)
		}
	}
	id, err := rotationNetwork(status.Status{Interface: "stt0", Mesh: &status.Mesh{NetworkID: netID, Admins: []string{other, pub}}},
		admin.Public().(ed25519.PublicKey), "admin.key")
	if err != nil || hex.EncodeToString(id[:]) != netID {
		t.Errorf("a listed admin: %x, %v", id, err)
	}
}

// --exclude takes a member's name, a revoked member's name, or a key; every revoked key
// is excluded too, and an unknown name is refused by its flag.
func TestSeedRotateExcludeResolvesNamesAndAddsTheRevoked(t *testing.T) {
	key := func(b byte) string { return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{b}, 32)) }
	st := status.Status{Interface: "stt0",
		Peers: []status.Peer{{Name: "beta", PublicKey: key(2)}, {Name: "gamma", PublicKey: key(3)}},
		Mesh:  &status.Mesh{Revoked: []status.Revoked{{Key: key(9), Name: "mallory"}, {Key: key(8)}}}}
	var p rotatePlan
	if err := p.exclude(st, []string{"beta", "mallory", key(7)}); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, k := range p.excluded {
		got = append(got, config.EncodeKey(k))
	}
	if want := []string{key(2), key(9), key(7), key(8)}; !slices.Equal(got, want) {
		t.Errorf("excluded %v, want %v", got, want)
	}
	if err := (&rotatePlan{}).exclude(st, []string{"nobody"}); err == nil || !strings.Contains(err.Error(), "--exclude") {
		t.Errorf("an unknown name: %v", err)
	}
	st.PublicKey = key(3)
	if err := (&rotatePlan{}).exclude(st, []string{"gamma"}); err == nil || !strings.Contains(err.Error(), "itself") {
		t.Errorf("excluding the daemon's own node: %v", err)
	}
	// The daemon's own name is not among its peers: it is still recognised, not
	// reported as an unknown member.
	st.NodeName = "alpha"
	if err := (&rotatePlan{}).exclude(st, []string{"alpha"}); err == nil || !strings.Contains(err.Error(), `--exclude "alpha" is stt0 itself`) {
		t.Errorf("excluding the daemon's own node by name: %v", err)
	}
}

// Two revoked keys under one name (a member revoked, back under a fresh key, revoked
// again) are told apart in the list of the excluded that seed rotate prints.
func TestSeedRotateExcludedNamesTellRevokedKeysApart(t *testing.T) {
	key := func(b byte) string { return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{b}, 32)) }
	st := status.Status{Interface: "stt0",
		Mesh: &status.Mesh{Revoked: []status.Revoked{{Key: key(9), Name: "epsilon"}, {Key: key(8), Name: "epsilon"}, {Key: key(7), Name: "kappa"}}}}
	var p rotatePlan
	if err := p.exclude(st, nil); err != nil {
		t.Fatal(err)
	}
	want := []string{"epsilon " + key(9)[:8] + "… (revoked)", "epsilon " + key(8)[:8] + "… (revoked)", "kappa (revoked)"}
	if !slices.Equal(p.names, want) {
		t.Errorf("names %q, want %q", p.names, want)
	}
}

// Flags are checked before anything else, each refusal naming its flag.
func TestSeedRotateFlagsRefusedByName(t *testing.T) {
	h := newHarness(t)
	k, err := config.GenerateNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	key := h.write("admin.key", k.Encode()+"\n")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"seed", "rotate"}, "--admin-key"},
		{[]string{"seed", "rotate", "--admin-key", key, "--from", "yesterday"}, "--from"},
		{[]string{"seed", "rotate", "--admin-key", key, "--overlap", "0"}, "--overlap"},
		{[]string{"seed", "rotate", "--admin-key", key, "--overlap", "60.5"}, "--overlap"},
		{[]string{"seed", "rotate", "--admin-key", key, "--overlap", "30s"}, "--overlap"},
		{[]string{"seed", "rotate", "--admin-key", key, "stt0"}, "-I NAME"},
	} {
		r := h.run("", c.args...)
		checkOneLineError(t, r, 2, c.want)
	}
	// No daemon: one line, nothing else.
	checkOneLineError(t, h.run("", "seed", "rotate", "--admin-key", key), 1, "no interface is up")
}

// The excluded keys of a rotation fit one packet (mesh.MaxExcludedSent): more given
// with --exclude is refused; the revoked keys are added while there is room, the
// newest revocations first, and the ones left off are counted (every member holding
// their revocation refuses them anyway).
func TestSeedRotateExcludesAtMostWhatFitsOnePacket(t *testing.T) {
	key := func(i int) string {
		return base64.StdEncoding.EncodeToString(append([]byte{0xAA, byte(i)}, make([]byte, 30)...))
	}
	var args []string
	for i := range mesh.MaxExcludedSent + 1 {
		args = append(args, key(i))
	}
	if err := (&rotatePlan{}).exclude(status.Status{Interface: "stt0", Mesh: &status.Mesh{}}, args); err == nil {
		t.Errorf("%d keys given with --exclude were taken", len(args))
	}
	var revoked []status.Revoked
	for i := range mesh.MaxExcludedSent + 5 {
		revoked = append(revoked, status.Revoked{Key: key(100 + i), Issued: time.Date(2026, 1, 1, 0, i, 0, 0, time.UTC).Format(time.RFC3339)})
	}
	st := status.Status{Interface: "stt0", Mesh: &status.Mesh{Revoked: revoked}}
	var p rotatePlan
	if err := p.exclude(st, []string{key(1)}); err != nil {
		t.Fatal(err)
	}
	if len(p.excluded) != mesh.MaxExcludedSent || p.unlisted != 6 {
		t.Fatalf("%d excluded, %d unlisted; want %d and 6", len(p.excluded), p.unlisted, mesh.MaxExcludedSent)
	}
	if config.EncodeKey(p.excluded[0]) != key(1) || config.EncodeKey(p.excluded[1]) != key(100+mesh.MaxExcludedSent+4) {
		t.Errorf("the given key and the newest revocation come first: %s, %s", config.EncodeKey(p.excluded[0]), config.EncodeKey(p.excluded[1]))
	}
}
