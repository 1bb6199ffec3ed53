package main

import (
	"strings"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/config"
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

// seedRotateHarness writes a configuration with [discovery] and the membership lines
// given, and an admin key file; it returns the harness and the key file.
func seedRotateHarness(t *testing.T, membership string) (*harness, string) {
	h := newHarness(t)
	h.write("alpha.toml", `[interface]
name = "stt0"
node_name = "alpha"
addresses = ["10.99.0.1/24"]
seed_file = "seed"
key_file = "alpha.key"

[discovery]
`+membership)
	k, err := config.GenerateNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	return h, h.write("admin.key", k.Encode()+"\n")
}

// Without [membership] admins, nothing can be commanded in band: seed rotate says so in
// one line, before it needs a daemon, and sends nothing.
func TestSeedRotateRefusedWithoutAdmins(t *testing.T) {
	h, key := seedRotateHarness(t, "")
	r := h.run("", "seed", "rotate", "alpha", "--admin-key", key)
	checkOneLineError(t, r, 1, "configures no [membership] admins")
	if !strings.Contains(r.stderr, "rotate by hand") {
		t.Errorf("the refusal does not say what to do instead: %q", r.stderr)
	}
}

// Flags are checked before anything else, each refusal naming its flag.
func TestSeedRotateFlagsRefusedByName(t *testing.T) {
	h, key := seedRotateHarness(t, "")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"seed", "rotate", "alpha"}, "--admin-key"},
		{[]string{"seed", "rotate", "alpha", "--admin-key", key, "--from", "yesterday"}, "--from"},
		{[]string{"seed", "rotate", "alpha", "--admin-key", key, "--overlap", "0"}, "--overlap"},
		{[]string{"seed", "rotate", "alpha", "--admin-key", key, "--overlap", "1.5"}, "--overlap"},
		{[]string{"seed", "rotate", "--admin-key", key}, "missing NAME"},
	} {
		r := h.run("", c.args...)
		checkOneLineError(t, r, 2, c.want)
	}
}
