package config

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
)

// adminPubB64 is the Ed25519 public key of the seed 0x60..0x7f (docs/protocol.md 10.7).
const adminPubB64 = "F0VTtFbd38aQjsqxwQH+arIeK6oGF3lbfUOmNIKZP9U="

func testAdminKey(i byte) string {
	seed := bytes.Repeat([]byte{i}, ed25519.SeedSize)
	return base64.StdEncoding.EncodeToString(ed25519.NewKeyFromSeed(seed).Public().(ed25519.PublicKey))
}

func TestMembershipAdminsParse(t *testing.T) {
	cfg, err := Parse([]byte(discoveryDoc(`[membership]`, fmt.Sprintf(`admins = [%q, %q]`, adminPubB64, testAdminKey(1)))), "/etc/stt-tun/a.toml")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Membership.Admins) != 2 || base64.StdEncoding.EncodeToString(cfg.Membership.Admins[0]) != adminPubB64 {
		t.Fatalf("admins = %x", cfg.Membership.Admins)
	}
	// The canonical form keeps them.
	again, err := Parse([]byte(cfg.String()), "/etc/stt-tun/a.toml")
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Membership.Admins) != 2 || !again.Membership.HasAdmin(cfg.Membership.Admins[1]) {
		t.Fatalf("after String(): %x", again.Membership.Admins)
	}
}

// Each bad admins list is refused with one error at the line of the entry at fault.
func TestMembershipAdminsRefused(t *testing.T) {
	nine := make([]string, 9)
	for i := range nine {
		nine[i] = fmt.Sprintf("%q", testAdminKey(byte(i+1)))
	}
	x25519NotPoint := "" // a key that is no point of the curve
	for i := 0; i < 256 && x25519NotPoint == ""; i++ {
		k := bytes.Repeat([]byte{byte(i)}, 32)
		if _, err := DecodeAdminKey(base64.StdEncoding.EncodeToString(k)); err != nil && strings.Contains(err.Error(), "not an Ed25519") {
			x25519NotPoint = base64.StdEncoding.EncodeToString(k)
		}
	}
	cases := []struct {
		name, line, want string
		noDiscovery      bool
	}{
		{"duplicate", fmt.Sprintf("admins = [%q,\n  %q]", adminPubB64, adminPubB64), ":9: membership: admins lists the key " + adminPubB64 + " twice", false},
		{"not base64", `admins = ["not a key"]`, ":8: membership: admins entry 1: key is 9 characters long", false},
		{"hex", `admins = ["174553b456dddfc6908ecab1c101fe6ab21e2baa0617795b7d43a63482993fd5"]`, "looks like hex", false},
		{"not a point", fmt.Sprintf("admins = [%q]", x25519NotPoint), ":8: membership: admins entry 1: key is not an Ed25519 public key", false},
		{"too many", "admins = [" + strings.Join(nine, ",\n") + "]", ":16: membership: admins has 9 keys; the limit is 8", false},
		{"no discovery", fmt.Sprintf("admins = [%q]", adminPubB64), ":7: membership: admins has no use without [discovery]", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var src string
			if c.noDiscovery {
				src = doc(append(append([]string(nil), discoveryHead[:5]...), `[membership]`, c.line)...)
			} else {
				src = discoveryDoc(`[membership]`, c.line)
			}
			_, err := Parse([]byte(src), "/etc/stt-tun/a.toml")
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want %q", err, c.want)
			}
			if n := strings.Count(err.Error(), "membership:"); n != 1 {
				t.Fatalf("%d errors, want 1: %v", n, err)
			}
		})
	}
}
