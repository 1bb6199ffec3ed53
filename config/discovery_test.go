package config

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

// discoveryHead is a node with a legacy-free configuration to which tests add
// [discovery] keys; line 6 is the [discovery] header.
var discoveryHead = []string{
	`[interface]`,
	`node_name = "alpha"`,
	`addresses = ["10.99.0.1/24"]`,
	`seed_file = "/s"`,
	`key_file = "/etc/stt-tun/alpha.key"`,
	`[discovery]`,
}

func discoveryDoc(lines ...string) string {
	return doc(append(append([]string(nil), discoveryHead...), lines...)...)
}

func TestParseDiscovery(t *testing.T) {
	src := doc(
		`[interface]`,
		`node_name = "alpha"`,
		`addresses = ["10.99.0.1/24"]`,
		`seed_file = "/s"`,
		`key_file = "/k"`,
		`[websocket]`,
		`listen = "127.0.0.1:8080"`,
		`public_url = "wss://alpha.example.net/stt"`,
		`[discovery]`,
		`bootstrap = ["hub.example.net:51900", "192.0.2.1:51900", "[2001:db8::1]:51900", "wss://hub.example.net/stt", "ws://192.0.2.1:8080/stt"]`,
		`accept_prefixes = ["10.99.0.0/16", "fd99::/64"]`,
		`announce_prefixes = ["192.168.10.0/24"]`,
		`endpoints = ["203.0.113.5:51900", "[2001:db8::5]:4000"]`,
		`idle_timeout = "90s"`,
		`mesh_ipv6 = false`,
		`relay = true`,
		`nat_keepalive = "20s"`,
		`[[peer]]`,
		`name = "beta"`,
		`public_key = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="`,
	)
	cfg, err := Parse([]byte(src), "/etc/stt-tun/alpha.toml")
	if err != nil {
		t.Fatal(err)
	}
	want := Discovery{
		Enabled:          true,
		Bootstrap:        []string{"hub.example.net:51900", "192.0.2.1:51900", "[2001:db8::1]:51900", "wss://hub.example.net/stt", "ws://192.0.2.1:8080/stt"},
		AcceptPrefixes:   mustPrefixes(t, "10.99.0.0/16", "fd99::/64"),
		AnnouncePrefixes: mustPrefixes(t, "192.168.10.0/24"),
		Endpoints:        []netip.AddrPort{netip.MustParseAddrPort("203.0.113.5:51900"), netip.MustParseAddrPort("[2001:db8::5]:4000")},
		IdleTimeout:      90 * time.Second,
		MeshIPv6:         false,
		Relay:            true,
		NATKeepalive:     20 * time.Second,
	}
	if !reflect.DeepEqual(cfg.Discovery, want) {
		t.Errorf("discovery:\n%+v\nwant\n%+v", cfg.Discovery, want)
	}
	if cfg.WebSocket.PublicURL != "wss://alpha.example.net/stt" {
		t.Errorf("public_url %q", cfg.WebSocket.PublicURL)
	}
	// With [discovery], a peer may leave allowed_prefixes to its member record.
	if p := cfg.Peer("beta"); p == nil || len(p.AllowedPrefixes) != 0 || p.PublicKey == nil {
		t.Errorf("peer without allowed_prefixes: %+v", p)
	}
}

func TestDiscoveryDefaults(t *testing.T) {
	cfg, err := Parse([]byte(discoveryDoc()), "t.toml")
	if err != nil {
		t.Fatal(err)
	}
	want := Discovery{Enabled: true, IdleTimeout: 5 * time.Minute, MeshIPv6: true, NATKeepalive: 25 * time.Second}
	if !reflect.DeepEqual(cfg.Discovery, want) {
		t.Errorf("empty [discovery]: %+v, want %+v", cfg.Discovery, want)
	}
	// Without the section the mesh is off, and nothing else is filled in.
	cfg, err = Parse([]byte(doc(baseLines...)), "t.toml")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg.Discovery, Discovery{}) {
		t.Errorf("no [discovery]: %+v", cfg.Discovery)
	}
	// Dotted keys make the section too.
	cfg, err = Parse([]byte(doc(`discovery.mesh_ipv6 = false`, `[interface]`, `seed_file = "/s"`, `key_file = "/k"`)), "t.toml")
	if err != nil || !cfg.Discovery.Enabled || cfg.Discovery.MeshIPv6 {
		t.Errorf("dotted discovery key: %+v, %v", cfg.Discovery, err)
	}
	// "0s" turns the idle timeout off.
	cfg, err = Parse([]byte(discoveryDoc(`idle_timeout = "0s"`)), "t.toml")
	if err != nil || cfg.Discovery.IdleTimeout != 0 {
		t.Errorf("idle_timeout 0s: %+v, %v", cfg.Discovery, err)
	}
}

// TestPeerNeedsPrefixesWithoutDiscovery: only [discovery] makes allowed_prefixes
// optional.
func TestPeerNeedsPrefixesWithoutDiscovery(t *testing.T) {
	_, err := Parse([]byte(edit(9, `endpoint = "192.0.2.2:51900"`)), "t.toml")
	if err == nil || !strings.Contains(err.Error(), "t.toml:7: peer \"beta\": allowed_prefixes is required") {
		t.Errorf("without [discovery]: %v", err)
	}
	_, err = Parse([]byte(edit(9, `endpoint = "192.0.2.2:51900"`, `[discovery]`)), "t.toml")
	if err != nil {
		t.Errorf("with [discovery]: %v", err)
	}
}

var discoveryBadCases = []badCase{
	{"bootstrap empty string", discoveryDoc(`bootstrap = [""]`), 7, []string{`discovery: bootstrap "" is empty`}},
	{"bootstrap without port", discoveryDoc(`bootstrap = ["hub.example.net"]`), 7, []string{`discovery: bootstrap "hub.example.net" has no port`}},
	{"bootstrap https", discoveryDoc(`bootstrap = ["https://hub.example.net/stt"]`), 7, []string{"is an https:// URL", "wss://"}},
	{"bootstrap password hidden", discoveryDoc(`bootstrap = ["wss://u:hunter2@hub.example.net/stt"]`), 7, []string{"u:xxxxx@", "may not contain a user name"}},
	{"bootstrap duplicate", discoveryDoc(`bootstrap = [`, `  "192.0.2.1:51900",`, `  "hub:1",`, `  "192.0.2.1:51900",`, `]`), 10, []string{`bootstrap "192.0.2.1:51900" is listed twice (also at line 8)`}},
	{"bootstrap duplicate name in capitals", discoveryDoc(`bootstrap = ["hub.example.net:1", "HUB.example.net:1"]`), 7, []string{"listed twice"}},
	{"bootstrap too many", discoveryDoc(`bootstrap = [` + func() string {
		var s []string
		for i := range 17 {
			s = append(s, `"h`+itoa(i)+`:1"`)
		}
		return strings.Join(s, ", ")
	}() + `]`), 7, []string{"bootstrap has 17 entries; the limit is 16"}},
	{"bootstrap not strings", discoveryDoc(`bootstrap = "hub:1"`), 7, []string{`discovery: bootstrap must be an array of strings such as`}},
	{"bootstrap UDP with udp = false", doc(`[interface]`, `udp = false`, `seed_file = "/s"`, `key_file = "/k"`, `[discovery]`, `bootstrap = ["hub:1", "wss://hub/stt"]`), 6,
		[]string{`bootstrap "hub:1" is a UDP address, and this node has udp = false (line 2)`}},
	{"accept host bits", discoveryDoc(`accept_prefixes = ["10.99.0.1/16"]`), 7, []string{"discovery: accept_prefixes: 10.99.0.1/16 has host bits set; did you mean 10.99.0.0/16?"}},
	{"accept no length", discoveryDoc(`accept_prefixes = ["10.99.0.1"]`), 7, []string{"has no prefix length; did you mean 10.99.0.1/32?"}},
	{"accept default route", discoveryDoc(`accept_prefixes = ["::/0"]`), 7, []string{"accept_prefixes: ::/0 would let any member claim every address"}},
	{"accept duplicate", discoveryDoc(`accept_prefixes = [`, `"10.99.0.0/16",`, `"10.99.0.0/16"]`), 9, []string{"accept_prefixes: 10.99.0.0/16 is listed twice (also at line 8)"}},
	{"accept inside another", discoveryDoc(`accept_prefixes = ["10.99.1.0/24", "10.99.0.0/16"]`), 7, []string{"10.99.1.0/24 is already covered by 10.99.0.0/16"}},
	{"announce default route", discoveryDoc(`announce_prefixes = ["0.0.0.0/0"]`), 7, []string{"announce_prefixes: 0.0.0.0/0 would claim every address", "exit_peer"}},
	{"announce too many", discoveryDoc(`announce_prefixes = [` + func() string {
		var s []string
		for i := range 17 {
			s = append(s, `"10.0.`+itoa(i)+`.0/24"`)
		}
		return strings.Join(s, ", ")
	}() + `]`), 7, []string{"announce_prefixes has 17 entries; the limit is 16"}},
	{"announce overlaps a peer", discoveryDoc(`announce_prefixes = ["192.168.50.0/24"]`, `[[peer]]`, `name = "beta"`, `allowed_prefixes = ["10.99.0.2/32", "192.168.0.0/16", "0.0.0.0/0"]`), 7,
		[]string{`announce_prefixes: 192.168.50.0/24 overlaps 192.168.0.0/16 of peer "beta" (line 10); this node cannot serve addresses it routes to a peer`}},
	{"endpoint name", discoveryDoc(`endpoints = ["vpn.example.net:51900"]`), 7, []string{`discovery: endpoints: "vpn.example.net:51900" is not IP:PORT; endpoints are announced as addresses, not host names`}},
	{"endpoint port 0", discoveryDoc(`endpoints = ["203.0.113.5:0"]`), 7, []string{"has port 0"}},
	{"endpoint loopback", discoveryDoc(`endpoints = ["127.0.0.1:51900"]`), 7, []string{"has address 127.0.0.1, which other nodes cannot send to"}},
	{"endpoint unspecified", discoveryDoc(`endpoints = ["[::]:51900"]`), 7, []string{"has address ::, which other nodes cannot send to"}},
	{"endpoint mapped", discoveryDoc(`endpoints = ["[::ffff:192.0.2.1]:1"]`), 7, []string{"IPv4-mapped"}},
	{"endpoint zone", discoveryDoc(`endpoints = ["[fe80::1%eth0]:1"]`), 7, []string{"has a zone"}},
	{"endpoint duplicate", discoveryDoc(`endpoints = ["203.0.113.5:1", "203.0.113.5:1"]`), 7, []string{"203.0.113.5:1 is listed twice (also at line 7)"}},
	{"endpoints too many", discoveryDoc(`endpoints = ["192.0.2.1:1", "192.0.2.2:1", "192.0.2.3:1", "192.0.2.4:1", "192.0.2.5:1"]`), 7, []string{"endpoints has 5 entries; the limit is 4"}},
	{"endpoints with udp = false", doc(`[interface]`, `udp = false`, `seed_file = "/s"`, `key_file = "/k"`, `[discovery]`, `endpoints = ["192.0.2.1:1"]`), 6,
		[]string{"discovery: endpoints are UDP addresses, and this node has udp = false (line 2)"}},
	{"idle_timeout negative", discoveryDoc(`idle_timeout = "-1s"`), 7, []string{`discovery: idle_timeout = "-1s" is negative`}},
	{"idle_timeout no unit", discoveryDoc(`idle_timeout = "300"`), 7, []string{`idle_timeout = "300" has no unit`}},
	{"idle_timeout integer", discoveryDoc(`idle_timeout = 300`), 7, []string{`discovery: idle_timeout must be a duration string such as "5m"`}},
	{"mesh_ipv6 not a bool", discoveryDoc(`mesh_ipv6 = "yes"`), 7, []string{"discovery: mesh_ipv6 must be true or false"}},
	{"relay not a bool", discoveryDoc(`relay = 1`), 7, []string{"discovery: relay must be true or false"}},
	{"nat_keepalive too short", discoveryDoc(`nat_keepalive = "100ms"`), 7, []string{`discovery: nat_keepalive = "100ms" is out of range: 0s (none) or 1s to 1h`}},
	{"nat_keepalive no unit", discoveryDoc(`nat_keepalive = "25"`), 7, []string{`nat_keepalive = "25" has no unit`}},
	{"unknown key in discovery", discoveryDoc(`bootstraps = []`), 7, []string{`unknown key "bootstraps" in [discovery]`, "did you mean bootstrap"}},
	{"discovery key in interface", doc(`[interface]`, `seed_file = "/s"`, `key_file = "/k"`, `bootstrap = ["a:1"]`), 4, []string{`unknown key "bootstrap" in [interface]`, "belongs in [discovery]"}},
	{"discovery as array table", doc(`[interface]`, `seed_file = "/s"`, `key_file = "/k"`, `[[discovery]]`), 4, []string{"[[discovery]] must be written [discovery]"}},
	{"small mtu with mesh_ipv6", doc(`[interface]`, `addresses = ["10.0.0.1/24"]`, `mtu = 1000`, `seed_file = "/s"`, `key_file = "/k"`, `[discovery]`), 3,
		[]string{"interface: mtu = 1000 is too small for [discovery] mesh_ipv6", "minimum is 1280", "mesh_ipv6 = false"}},
	{"too many addresses for a record", doc(`[interface]`, `addresses = [`+func() string {
		var s []string
		for i := range 8 {
			s = append(s, `"10.0.`+itoa(i)+`.1/24"`)
		}
		return strings.Join(s, ", ")
	}()+`]`, `seed_file = "/s"`, `key_file = "/k"`, `[discovery]`), 2, []string{"interface: addresses has 8 entries; with [discovery] the limit is 7 (a member record carries 8 addresses, one of which mesh_ipv6 takes)"}},
	{"public_url without discovery", edit(6, `[websocket]`, `listen = ":443"`, `public_url = "wss://a.example/stt"`, ``), 8, []string{"websocket: public_url has no use without [discovery]"}},
	{"public_url without listen", discoveryDoc(`[websocket]`, `public_url = "wss://a.example/stt"`), 8, []string{"websocket: public_url has no use without listen"}},
	{"public_url https", discoveryDoc(`[websocket]`, `listen = ":443"`, `public_url = "https://a.example/stt"`), 9, []string{`websocket: public_url "https://a.example/stt" is an https:// URL`}},
	{"public_url too long", discoveryDoc(`[websocket]`, `listen = ":443"`, `public_url = "wss://a.example/`+strings.Repeat("x", 190)+`"`), 9, []string{"public_url is 206 bytes long; the limit is 200"}},
}

func TestParseDiscoveryErrors(t *testing.T) { checkBadCases(t, discoveryBadCases) }

// TestDiscoveryAcceptsWhatIsValid: the forms next to the refused ones are accepted,
// so the refusals are about the rule and not the syntax.
func TestDiscoveryAcceptsWhatIsValid(t *testing.T) {
	for _, src := range []string{
		discoveryDoc(`bootstrap = []`, `accept_prefixes = []`, `announce_prefixes = []`, `endpoints = []`),
		discoveryDoc(`bootstrap = ["hub.example.net:1", "wss://hub.example.net:1/stt"]`), // same host, UDP and WebSocket
		discoveryDoc(`accept_prefixes = ["10.99.0.0/16", "10.100.0.0/16", "fd00::/8"]`),
		discoveryDoc(`announce_prefixes = ["192.168.50.0/24"]`, `[[peer]]`, `name = "exit"`, `allowed_prefixes = ["0.0.0.0/0", "10.99.0.2/32"]`),
		discoveryDoc(`endpoints = ["192.0.2.1:1", "192.0.2.2:1", "192.0.2.3:1", "[2001:db8::1]:1"]`),
		doc(`[interface]`, `mtu = 1000`, `addresses = ["10.0.0.1/24"]`, `seed_file = "/s"`, `key_file = "/k"`, `[discovery]`, `mesh_ipv6 = false`),
		doc(`[interface]`, `addresses = ["10.0.0.1/24", "10.0.1.1/24", "10.0.2.1/24", "10.0.3.1/24", "10.0.4.1/24", "10.0.5.1/24", "10.0.6.1/24", "10.0.7.1/24"]`,
			`seed_file = "/s"`, `key_file = "/k"`, `[discovery]`, `mesh_ipv6 = false`),
		doc(`[interface]`, `udp = false`, `seed_file = "/s"`, `key_file = "/k"`, `[discovery]`, `bootstrap = ["wss://hub/stt"]`),
		discoveryDoc(`[websocket]`, `listen = "127.0.0.1:8080"`, `public_url = ""`),
	} {
		if _, err := Parse([]byte(src), "t.toml"); err != nil {
			t.Errorf("%v\n%s", err, numbered(src))
		}
	}
}

func TestCheckKeyForDiscovery(t *testing.T) {
	legacy := NodeKey{Legacy: true}
	nk, _ := GenerateNodeKey()
	on, err := Parse([]byte(discoveryDoc()), "t.toml")
	if err != nil {
		t.Fatal(err)
	}
	off, err := Parse([]byte(doc(baseLines...)), "t.toml")
	if err != nil {
		t.Fatal(err)
	}
	err = on.CheckKeyForDiscovery(legacy)
	const want = "key file /etc/stt-tun/alpha.key holds a legacy X25519 key, and [discovery] needs a key in the ed25519 format; convert it with: stt-tun key-upgrade /etc/stt-tun/alpha.key"
	if err == nil || !strings.HasPrefix(err.Error(), want) || strings.Contains(err.Error(), "\n") {
		t.Errorf("legacy key with [discovery]: %v\nwant it to begin %q", err, want)
	}
	if !errors.Is(err, ErrLegacyKey) {
		t.Errorf("%v is not ErrLegacyKey", err)
	}
	if err := on.CheckKeyForDiscovery(nk); err != nil {
		t.Errorf("ed25519 key with [discovery]: %v", err)
	}
	if err := off.CheckKeyForDiscovery(legacy); err != nil {
		t.Errorf("legacy key without [discovery]: %v", err)
	}
}
