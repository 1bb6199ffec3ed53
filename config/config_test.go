package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// doc joins lines with newlines, so that a test can count lines at a glance.
func doc(lines ...string) string { return strings.Join(lines, "\n") + "\n" }

const fullExample = `[interface]
name = "stt1"
node_name = "alpha"
addresses = ["10.99.0.1/24", "fd99::1/64"]
mtu = 1400
listen_port = 51901
seed_file = "seed"
key_file = "/etc/stt-tun/alpha.key"
exit_peer = "beta"
fwmark = 0x1234
table = 100
kill_switch = false
mss_clamp = false

[websocket]
listen = "[::]:8443"
path = "/tunnel/stt"
tls_cert = "certs/alpha.crt"
tls_key = "/etc/ssl/private/alpha.key"
max_pending = 1024
max_pending_per_source = 8

[forwarding]
enabled = true
masquerade = true

[[peer]]
name = "beta"
endpoint = "192.0.2.2:51900"
allowed_prefixes = ["10.99.0.2/32", "192.168.50.0/24", "0.0.0.0/0", "::/0"]
public_key = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
persistent_keepalive = "25s"
route = true
ws_url = "wss://beta.example.net/stt"
ws_proxy = "http://proxy.example.net:3128"
ws_ca_file = "beta-ca.pem"

[[peer]]
name = "gamma"
endpoint = "[2001:db8::3]:51900"
allowed_prefixes = ["10.99.0.3/32", "fd99::3/128"]
route = false
ws_url = "wss://[2001:db8::3]:8443/tunnel/stt"
ws_proxy = "none"
ws_insecure = true

[metrics]
listen = "127.0.0.1:9586"

[logging]
level = "debug"
format = "json"

[advanced]
rekey_after = "90s"
rekey_after_messages = 1000
fallback_after = "2s"
probe_interval = "1m"
`

func mustPrefixes(t *testing.T, ss ...string) []netip.Prefix {
	t.Helper()
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestParseFullExample(t *testing.T) {
	cfg, err := Parse([]byte(fullExample), "/etc/stt-tun/alpha.toml")
	if err != nil {
		t.Fatal(err)
	}
	pub, err := DecodeKey("hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=")
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		Path: "/etc/stt-tun/alpha.toml",
		Interface: Interface{
			Name:       "stt1",
			NodeName:   "alpha",
			Addresses:  mustPrefixes(t, "10.99.0.1/24", "fd99::1/64"),
			MTU:        1400,
			ListenPort: 51901,
			SeedFile:   "/etc/stt-tun/seed",
			KeyFile:    "/etc/stt-tun/alpha.key",
			ExitPeer:   "beta",
			FwMark:     0x1234,
			Table:      100,
			KillSwitch: false,
			MSSClamp:   false,
		},
		WebSocket: WebSocket{
			Listen:  "[::]:8443",
			Path:    "/tunnel/stt",
			TLSCert: "/etc/stt-tun/certs/alpha.crt",
			TLSKey:  "/etc/ssl/private/alpha.key",

			MaxPending:          1024,
			MaxPendingPerSource: 8,
		},
		Forwarding: Forwarding{Enabled: true, Masquerade: true},
		Peers: []Peer{
			{
				Name:                "beta",
				Endpoint:            "192.0.2.2:51900",
				AllowedPrefixes:     mustPrefixes(t, "10.99.0.2/32", "192.168.50.0/24", "0.0.0.0/0", "::/0"),
				PublicKey:           &pub,
				PersistentKeepalive: 25 * time.Second,
				Route:               true,
				WSURL:               "wss://beta.example.net/stt",
				WSProxy:             "http://proxy.example.net:3128",
				WSCAFile:            "/etc/stt-tun/beta-ca.pem",
			},
			{
				Name:            "gamma",
				Endpoint:        "[2001:db8::3]:51900",
				AllowedPrefixes: mustPrefixes(t, "10.99.0.3/32", "fd99::3/128"),
				Route:           false,
				WSURL:           "wss://[2001:db8::3]:8443/tunnel/stt",
				WSProxy:         "none",
				WSInsecure:      true,
			},
		},
		Metrics:  Metrics{Listen: "127.0.0.1:9586"},
		Logging:  Logging{Level: slog.LevelDebug, Format: LogJSON},
		Advanced: Advanced{RekeyAfter: 90 * time.Second, RekeyAfterMessages: 1000, FallbackAfter: 2 * time.Second, ProbeInterval: time.Minute, ReplayWindow: DefaultReplayWindow, PMTUDiscovery: true, PMTUReprobe: DefaultPMTUReprobe},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got\n%#v\nwant\n%#v", cfg, want)
	}
	if p := cfg.Peer("gamma"); p == nil || p.Name != "gamma" {
		t.Errorf("Peer(gamma) = %v", p)
	}
	if cfg.Peer("delta") != nil {
		t.Error("Peer(delta) found a peer")
	}
}

func TestParseDefaults(t *testing.T) {
	src := doc(
		`[interface]`,
		`seed_file = "seed"`,
		`key_file = "keys/node.key"`,
		`[[peer]]`,
		`name = "zz-peer"`,
		`allowed_prefixes = ["10.99.0.2/32"]`,
	)
	cfg, err := Parse([]byte(src), "lab/a.toml")
	if err != nil {
		t.Fatal(err)
	}
	in := cfg.Interface
	if in.Name != "a" || in.MTU != DefaultMTU || in.ListenPort != DefaultListenPort || in.DisableUDP ||
		in.FwMark != DefaultFwMark || in.Table != DefaultTable || in.ExitPeer != "" || len(in.Addresses) != 0 ||
		!in.KillSwitch {
		t.Errorf("interface defaults: %+v", in)
	}
	for file, want := range map[string]string{"": DefaultName, "/etc/stt-tun/office.toml": "office", "x/has space.toml": DefaultName, "/etc/stt-tun/much-too-long-for-a-link.toml": DefaultName} {
		if got := defaultLinkName(file); got != want {
			t.Errorf("default link name for %q: %q, want %q", file, got, want)
		}
	}
	if in.NodeName != defaultNodeName() || in.NodeName == "" || len(in.NodeName) > MaxNameLen {
		t.Errorf("node_name default %q, host-derived %q", in.NodeName, defaultNodeName())
	}
	if in.SeedFile != "lab/seed" || in.KeyFile != "lab/keys/node.key" {
		t.Errorf("relative paths: seed %q key %q", in.SeedFile, in.KeyFile)
	}
	if cfg.Forwarding != (Forwarding{}) {
		t.Errorf("forwarding: %+v", cfg.Forwarding)
	}
	if cfg.WebSocket != (WebSocket{Path: DefaultWSPath, MaxPending: DefaultWSMaxPending, MaxPendingPerSource: DefaultWSMaxPendingPerSource}) {
		t.Errorf("websocket: %+v", cfg.WebSocket)
	}
	p := cfg.Peers[0]
	if !p.Route || p.PersistentKeepalive != 0 || p.PublicKey != nil || p.Endpoint != "" ||
		p.WSURL != "" || p.WSProxy != "" || p.WSCAFile != "" || p.WSInsecure {
		t.Errorf("peer defaults: %+v", p)
	}
	if cfg.Advanced.RekeyAfter != 120*time.Second || cfg.Advanced.RekeyAfterMessages != 1<<32 ||
		cfg.Advanced.FallbackAfter != 3*time.Second || cfg.Advanced.ProbeInterval != 10*time.Second {
		t.Errorf("advanced defaults: %+v", cfg.Advanced)
	}
}

func TestDefaultMTU(t *testing.T) {
	if DefaultMTU != 1420 {
		t.Errorf("DefaultMTU = %d, the documentation says 1420", DefaultMTU)
	}
	if MaxMTU != 65475 {
		t.Errorf("MaxMTU = %d, the documentation says 65475", MaxMTU)
	}
}

// TestParseValidVariants covers accepted forms beyond the full example.
func TestParseValidVariants(t *testing.T) {
	head := doc(
		`[interface]`,
		`node_name = "alpha"`,
		`seed_file = "/s"`,
		`key_file = "/k"`,
	)
	cases := []struct {
		name, src string
		check     func(t *testing.T, c *Config)
	}{
		{"logging defaults", head,
			func(t *testing.T, c *Config) {
				if c.Logging != (Logging{Level: slog.LevelInfo, Format: LogText}) || strings.Contains(c.String(), "[logging]") {
					t.Errorf("logging: %+v", c.Logging)
				}
			}},
		{"logging warn as text", head + doc(`[logging]`, `level = "warn"`),
			func(t *testing.T, c *Config) {
				if c.Logging != (Logging{Level: slog.LevelWarn, Format: LogText}) ||
					!strings.Contains(c.String(), "[logging]\nlevel = \"warn\"\nformat = \"text\"\n") {
					t.Errorf("logging: %+v\n%s", c.Logging, c)
				}
			}},
		{"metrics on every address", head + doc(`[metrics]`, `listen = "[::]:9586"`),
			func(t *testing.T, c *Config) {
				if c.Metrics.Listen != "[::]:9586" {
					t.Errorf("metrics: %+v", c.Metrics)
				}
			}},
		{"metrics off with an empty listen", head + doc(`[metrics]`, `listen = ""`),
			func(t *testing.T, c *Config) {
				if c.Metrics != (Metrics{}) || strings.Contains(c.String(), "[metrics]") {
					t.Errorf("metrics: %+v", c.Metrics)
				}
			}},
		{"inline peers", `peer = [{name = "b", allowed_prefixes = ["10.0.0.0/8"]}, {name = "c", allowed_prefixes = ["fd00::/8"], route = false}]` + "\n" + head,
			func(t *testing.T, c *Config) {
				if len(c.Peers) != 2 || c.Peers[1].Route {
					t.Errorf("peers: %+v", c.Peers)
				}
			}},
		{"default routes beside specific ones", head + doc(
			`[[peer]]`, `name = "exit"`, `allowed_prefixes = ["0.0.0.0/0", "::/0", "10.99.0.2/32"]`,
			`[[peer]]`, `name = "lan"`, `allowed_prefixes = ["192.168.1.0/24", "10.99.0.3/32"]`),
			func(t *testing.T, c *Config) {
				if len(c.Peers[0].AllowedPrefixes) != 3 {
					t.Errorf("prefixes: %v", c.Peers[0].AllowedPrefixes)
				}
			}},
		{"dotted keys and empty optional strings", doc(
			`interface.seed_file = "/s"`, `interface.key_file = "/k"`, `interface.exit_peer = ""`, `interface.node_name = "a"`,
			`[[peer]]`, `name = "b"`, `endpoint = ""`, `allowed_prefixes = ["10.0.0.1/32"]`),
			func(t *testing.T, c *Config) {
				if c.Interface.ExitPeer != "" || c.Peers[0].Endpoint != "" {
					t.Errorf("got %+v", c)
				}
			}},
		{"ipv4 only allows small mtu", head + "addresses = [\"10.0.0.1/24\"]\nmtu = 576\n",
			func(t *testing.T, c *Config) {
				if c.Interface.MTU != 576 {
					t.Errorf("mtu %d", c.Interface.MTU)
				}
			}},
		{"endpoint forms", head + doc(
			`[[peer]]`, `name = "b"`, `endpoint = "vpn.example.net:51900"`, `allowed_prefixes = ["10.0.0.2/32"]`,
			`[[peer]]`, `name = "c"`, `endpoint = "[fe80::1%eth0]:1"`, `allowed_prefixes = ["10.0.0.3/32"]`),
			nil},
		{"listen port zero", head + "listen_port = 0\n", func(t *testing.T, c *Config) {
			if c.Interface.ListenPort != 0 {
				t.Errorf("listen_port %d", c.Interface.ListenPort)
			}
		}},
		{"websocket only node", head + doc(`udp = false`,
			`[websocket]`, `listen = ":8443"`,
			`[[peer]]`, `name = "b"`, `ws_url = "ws://192.0.2.2:8080/stt"`, `allowed_prefixes = ["10.0.0.2/32"]`,
			`[[peer]]`, `name = "c"`, `allowed_prefixes = ["10.0.0.3/32"]`),
			func(t *testing.T, c *Config) {
				if !c.Interface.DisableUDP || c.Interface.ListenPort != 0 || c.WebSocket.Listen != ":8443" || c.WebSocket.Path != "/stt" {
					t.Errorf("got %+v %+v", c.Interface, c.WebSocket)
				}
			}},
		{"websocket only node without listener", head + doc(`udp = false`,
			`[[peer]]`, `name = "b"`, `ws_url = "wss://vpn.example.net/stt"`, `allowed_prefixes = ["10.0.0.2/32"]`), nil},
		{"udp = true is the default", head + doc(`udp = true`, `listen_port = 4000`), func(t *testing.T, c *Config) {
			if c.Interface.DisableUDP || c.Interface.ListenPort != 4000 {
				t.Errorf("got %+v", c.Interface)
			}
		}},
		{"websocket empty strings mean none", head + doc(`[websocket]`, `listen = ""`, `tls_cert = ""`,
			`[[peer]]`, `name = "b"`, `ws_url = ""`, `ws_proxy = ""`, `ws_ca_file = ""`, `ws_insecure = false`, `allowed_prefixes = ["10.0.0.2/32"]`),
			func(t *testing.T, c *Config) {
				if c.WebSocket != (WebSocket{Path: "/stt", MaxPending: 512, MaxPendingPerSource: 32}) || c.Peers[0].WSURL != "" {
					t.Errorf("got %+v %+v", c.WebSocket, c.Peers[0])
				}
			}},
		{"tls in one file, relative", head + doc(`[websocket]`, `listen = "127.0.0.1:443"`, `tls_cert = "both.pem"`, `tls_key = "both.pem"`),
			func(t *testing.T, c *Config) {
				if c.WebSocket.TLSCert != "both.pem" || c.WebSocket.TLSKey != "both.pem" {
					t.Errorf("got %+v", c.WebSocket)
				}
			}},
		{"ws_url forms", head + doc(
			`[[peer]]`, `name = "b"`, `ws_url = "wss://vpn.example.net"`, `allowed_prefixes = ["10.0.0.2/32"]`,
			`[[peer]]`, `name = "c"`, `ws_url = "ws://[fd00::1]:80/a/b?x=1"`, `ws_proxy = "http://u:p@proxy:3128"`, `allowed_prefixes = ["10.0.0.3/32"]`,
			`[[peer]]`, `name = "d"`, `ws_url = "wss://10.1.2.3:8443/stt"`, `ws_proxy = "http://[fd00::9]/"`, `allowed_prefixes = ["10.0.0.4/32"]`),
			nil},
		{"durations at the limits", head + doc(`[advanced]`, `fallback_after = "1s"`, `probe_interval = "1h"`),
			func(t *testing.T, c *Config) {
				if c.Advanced.FallbackAfter != time.Second || c.Advanced.ProbeInterval != time.Hour {
					t.Errorf("got %+v", c.Advanced)
				}
			}},
		{"path MTU discovery off, re-probe at the limits", head + doc(`[advanced]`, `pmtu_discovery = false`, `pmtu_reprobe_interval = "1s"`),
			func(t *testing.T, c *Config) {
				if c.Advanced.PMTUDiscovery || c.Advanced.PMTUReprobe != time.Second {
					t.Errorf("got %+v", c.Advanced)
				}
				// Written back, it reads the same.
				c2, err := Parse([]byte(c.String()), "t.toml")
				if err != nil || c2.Advanced != c.Advanced {
					t.Errorf("formatted and parsed again: %+v, %v", c2.Advanced, err)
				}
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.src), "t.toml")
			if err != nil {
				t.Fatalf("%v\n%s", err, tc.src)
			}
			if tc.check != nil {
				tc.check(t, c)
			}
		})
	}
}

// base is a minimal valid document; bad cases edit it. Line numbers:
//
//	1 [interface]
//	2 node_name = "alpha"
//	3 addresses = ["10.99.0.1/24", "fd99::1/64"]
//	4 seed_file = "/etc/stt-tun/seed"
//	5 key_file = "/etc/stt-tun/alpha.key"
//	6
//	7 [[peer]]
//	8 name = "beta"
//	9 allowed_prefixes = ["10.99.0.2/32"]
var baseLines = []string{
	`[interface]`,
	`node_name = "alpha"`,
	`addresses = ["10.99.0.1/24", "fd99::1/64"]`,
	`seed_file = "/etc/stt-tun/seed"`,
	`key_file = "/etc/stt-tun/alpha.key"`,
	``,
	`[[peer]]`,
	`name = "beta"`,
	`allowed_prefixes = ["10.99.0.2/32"]`,
}

// edit returns base with line n (1-based) replaced by repl, which may hold several
// lines; n = len+1 appends.
func edit(n int, repl ...string) string {
	out := append([]string(nil), baseLines[:n-1]...)
	out = append(out, repl...)
	if n <= len(baseLines) {
		out = append(out, baseLines[n:]...)
	}
	return doc(out...)
}

// insert returns base with lines added before line n.
func insert(n int, add ...string) string {
	out := append([]string(nil), baseLines[:n-1]...)
	out = append(out, add...)
	out = append(out, baseLines[n-1:]...)
	return doc(out...)
}

const appendLine = 10 // edit(appendLine, ...) appends to base

type badCase struct {
	name string
	src  string
	line int
	want []string // substrings of the message at line
}

var badCases = []badCase{
	{"syntax error", edit(3, `addresses = ["10.99.0.1/24"`), 4, []string{"expected ',' or ']'"}},
	{"unknown top-level key", insert(1, `listen_port = 1`), 1, []string{`unknown key "listen_port" at top level`, "[interface]"}},
	{"unknown top-level key, no home", insert(1, `colour = "blue"`), 1, []string{`unknown key "colour"`, "[[peer]]"}},
	{"unknown section", edit(appendLine, `[peers]`), 10, []string{"unknown section [peers]", "[[peer]]"}},
	{"unknown subsection", edit(appendLine, `[interface.extra]`), 10, []string{"[interface.extra]"}},
	{"unknown key in interface", insert(3, `listenport = 51900`), 3, []string{`unknown key "listenport" in [interface]`, "did you mean listen_port"}},
	{"unknown key in interface, CamelCase", insert(3, `ListenPort = 51900`), 3, []string{`"ListenPort"`, "did you mean listen_port"}},
	{"unknown key in peer", edit(appendLine, `allowed_ips = ["10.0.0.0/8"]`), 10, []string{`unknown key "allowed_ips" in [[peer]] "beta"`}},
	{"interface key after peer", edit(appendLine, `mtu = 1400`), 10, []string{`unknown key "mtu" in [[peer]] "beta"`, "belongs in [interface]"}},
	{"unknown key in second peer", edit(appendLine, `[[peer]]`, `name = "gamma"`, `alowed_prefixes = []`), 12, []string{`[[peer]] "gamma"`, `"alowed_prefixes"`, "did you mean allowed_prefixes"}},
	{"unknown key in forwarding", edit(appendLine, `[forwarding]`, `enable = true`), 11, []string{`unknown key "enable" in [forwarding]`, "did you mean enabled"}},
	{"unknown key in advanced", edit(appendLine, `[advanced]`, `rekey = "1s"`), 11, []string{`"rekey"`, "[advanced]"}},
	{"wrong type", insert(3, `mtu = "1400"`), 3, []string{"interface: mtu must be an integer, not a TOML string"}},
	{"wrong type in peer", edit(appendLine, `route = "yes"`), 10, []string{`peer "beta": route must be true or false`}},
	{"keepalive as integer", edit(appendLine, `persistent_keepalive = 25`), 10, []string{"persistent_keepalive must be a duration string", `"25s"`}},
	{"peer as table", edit(7, `[peer]`), 7, []string{"[peer] must be written [[peer]]"}},
	{"peer as inline table", insert(1, `peer = {name = "x"}`), 1, []string{"peer must be written as [[peer]] sections"}},
	{"interface as array table", edit(1, `[[interface]]`), 1, []string{"[[interface]] must be written [interface]"}},
	{"duplicate key", insert(3, `node_name = "x"`), 3, []string{"node_name"}},
	{"missing interface", doc(`[[peer]]`, `name = "b"`, `allowed_prefixes = ["10.0.0.1/32"]`), 1, []string{"missing [interface]"}},
	{"missing seed_file", edit(4, `# no seed`), 1, []string{"seed_file is required"}},
	{"empty key_file", edit(5, `key_file = ""`), 5, []string{"key_file is empty"}},
	{"same seed and key file", edit(5, `key_file = "/etc/stt-tun/./seed"`), 5, []string{"key_file and seed_file are the same file /etc/stt-tun/seed"}},
	{"bad interface name", insert(2, `name = "a-very-long-name-0"`), 2, []string{`name "a-very-long-name-0"`, "at most 15"}},
	{"interface name with slash", insert(2, `name = "a/b"`), 2, []string{`"a/b"`, "may not contain '/'"}},
	{"interface name dot-dot", insert(2, `name = ".."`), 2, []string{`".."`, "is not a valid interface name"}},
	{"node_name too long", edit(2, `node_name = "`+strings.Repeat("n", 33)+`"`), 2, []string{"node_name", "33 bytes"}},
	{"node_name with space", edit(2, `node_name = "my node"`), 2, []string{`node_name "my node"`, "spaces"}},
	{"bad address", edit(3, `addresses = ["10.99.0.1/24", "fd99::1/129"]`), 3, []string{`"fd99::1/129" is not an IP prefix`}},
	{"address without length", edit(3, `addresses = ["10.99.0.1"]`), 3, []string{`"10.99.0.1" has no prefix length`}},
	{"address listed twice", edit(3, `addresses = ["10.99.0.1/24", "10.99.0.1/24"]`), 3, []string{"10.99.0.1/24 is listed twice"}},
	{"multi-line addresses", edit(3, `addresses = [`, `  "10.99.0.1/24",`, `  "0.0.0.0/8",`, `]`), 5, []string{"0.0.0.0/8 is the unspecified address"}},
	{"mtu too small for v6", insert(3, `mtu = 1000`), 3, []string{"mtu = 1000 is too small", "1280"}},
	{"mtu too large", insert(3, `mtu = 65535`), 3, []string{"mtu = 65535 is too large", "65475"}},
	{"bad listen port", insert(3, `listen_port = 70000`), 3, []string{"listen_port = 70000", "0..65535"}},
	{"negative listen port", insert(3, `listen_port = -1`), 3, []string{"listen_port = -1"}},
	{"fwmark zero", insert(3, `fwmark = 0`), 3, []string{"fwmark = 0"}},
	{"reserved table", insert(3, `table = 254`), 3, []string{"table = 254 is reserved"}},
	{"kill_switch not a bool", insert(3, `kill_switch = "off"`), 3, []string{"kill_switch must be true or false"}},
	{"exit_peer unknown", insert(3, `exit_peer = "delta"`), 3, []string{`exit_peer "delta" is not the name of any [[peer]]`}},
	{"exit_peer without default route", insert(3, `exit_peer = "beta"`), 3, []string{`exit_peer "beta"`, "neither 0.0.0.0/0 nor ::/0", "line 10"}},
	{"exit_peer with route off", doc(append(append([]string{}, baseLines[:2]...), `exit_peer = "beta"`, baseLines[2], baseLines[3], baseLines[4],
		`[[peer]]`, `name = "beta"`, `allowed_prefixes = ["0.0.0.0/0"]`, `route = false`)...),
		3, []string{`exit_peer "beta" has route = false (line 10)`}},
	{"masquerade without forwarding", edit(6, `[forwarding]`, `masquerade = true`, ``), 7, []string{"masquerade = true needs enabled = true"}},
	{"peer without name", edit(8, `# anonymous`), 7, []string{"peer #1: name is required"}},
	{"empty peer name", edit(8, `name = ""`), 8, []string{`peer #1: name ""`, "is empty"}},
	{"duplicate peer name", edit(appendLine, `[[peer]]`, `name = "beta"`, `allowed_prefixes = ["10.99.0.3/32"]`), 11, []string{`peer "beta": name is used twice (first at line 8)`}},
	{"peer named like this node", edit(8, `name = "alpha"`), 8, []string{`peer "alpha": name is this node's own node_name`}},
	{"missing allowed_prefixes", edit(9, `endpoint = "192.0.2.2:51900"`), 7, []string{`peer "beta": allowed_prefixes is required`}},
	{"empty allowed_prefixes", edit(9, `allowed_prefixes = []`), 9, []string{`allowed_prefixes is required`}},
	{"bad prefix", edit(9, `allowed_prefixes = ["10.99.0.300/32"]`), 9, []string{`peer "beta": allowed_prefixes: "10.99.0.300/32" is not an IP prefix`}},
	{"prefix without length", edit(9, `allowed_prefixes = ["10.99.0.2"]`), 9, []string{"10.99.0.2 has no prefix length; did you mean 10.99.0.2/32?"}},
	{"host bits set", edit(9, `allowed_prefixes = ["10.99.0.2/32", "10.1.1.1/24"]`), 9, []string{`peer "beta": allowed_prefixes: 10.1.1.1/24 has host bits set; did you mean 10.1.1.0/24?`}},
	{"host bits set, multi-line", edit(9, `allowed_prefixes = [`, `  "10.99.0.2/32",`, `  "fd00::1/64",`, `]`), 11, []string{"fd00::1/64 has host bits set; did you mean fd00::/64?"}},
	{"prefix twice in one peer", edit(9, `allowed_prefixes = ["10.99.0.2/32", "10.99.0.2/32"]`), 9, []string{"10.99.0.2/32 is listed twice"}},
	{"prefix inside another of the same peer", edit(9, `allowed_prefixes = ["10.0.0.0/8", "10.1.0.0/16"]`), 9, []string{"10.1.0.0/16 is already covered by 10.0.0.0/8"}},
	{"overlapping peers", edit(appendLine, `[[peer]]`, `name = "gamma"`, `allowed_prefixes = ["10.99.0.0/24"]`), 12,
		[]string{`peer "gamma": allowed_prefixes: 10.99.0.0/24 overlaps 10.99.0.2/32 of peer "beta" (line 9)`}},
	{"two default routes", edit(9, `allowed_prefixes = ["0.0.0.0/0"]`, `[[peer]]`, `name = "gamma"`, `allowed_prefixes = ["0.0.0.0/0"]`), 12,
		[]string{"0.0.0.0/0 overlaps 0.0.0.0/0"}},
	{"endpoint without port", edit(appendLine, `endpoint = "192.0.2.2"`), 10, []string{`endpoint "192.0.2.2" has no port`, "192.0.2.2:51900"}},
	{"endpoint v6 without brackets", edit(appendLine, `endpoint = "2001:db8::2"`), 10, []string{"brackets", "[2001:db8::2]:51900"}},
	{"endpoint bad port", edit(appendLine, `endpoint = "192.0.2.2:0"`), 10, []string{`endpoint "192.0.2.2:0" has port "0"`}},
	{"endpoint port too big", edit(appendLine, `endpoint = "host.example:65536"`), 10, []string{`has port "65536"`}},
	{"endpoint URL", edit(appendLine, `endpoint = "wss://example.net/stt"`), 10, []string{"is a URL"}},
	{"endpoint bad host", edit(appendLine, `endpoint = "bad_host!:1"`), 10, []string{"invalid host name"}},
	{"bad base64 key", edit(appendLine, `public_key = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTm!="`), 10, []string{`peer "beta": public_key: key is not valid base64`}},
	{"wrong key length", edit(appendLine, `public_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"`), 10, []string{"public_key: key is 40 characters long"}},
	{"key decodes short", edit(appendLine, `public_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="`), 10, []string{"public_key: key decodes to 31 bytes"}},
	{"bad duration", edit(appendLine, `persistent_keepalive = "soon"`), 10, []string{`persistent_keepalive = "soon" is not a duration`}},
	{"duration without unit", edit(appendLine, `persistent_keepalive = "25"`), 10, []string{`"25" has no unit`, `"25s"`}},
	{"keepalive too short", edit(appendLine, `persistent_keepalive = "10ms"`), 10, []string{`persistent_keepalive = "10ms"`}},
	{"negative keepalive", edit(appendLine, `persistent_keepalive = "-5s"`), 10, []string{"is negative"}},
	{"bad rekey_after", edit(appendLine, `[advanced]`, `rekey_after = "0s"`), 11, []string{`rekey_after = "0s" must be between 1s and 24h0m0s`}},
	{"bad rekey_after_messages", edit(appendLine, `[advanced]`, `rekey_after_messages = 0`), 11, []string{"rekey_after_messages = 0"}},

	// WebSocket and path selection.
	{"udp not a bool", insert(3, `udp = "no"`), 3, []string{"interface: udp must be true or false"}},
	{"listen_port with udp off", insert(3, `udp = false`, `listen_port = 51900`, `[websocket]`, `listen = ":443"`), 4,
		[]string{"listen_port has no use with udp = false (line 3)", "remove listen_port"}},
	{"udp off, peer only on UDP", doc(`[interface]`, `node_name = "alpha"`, `udp = false`, `seed_file = "/s"`, `key_file = "/k"`,
		`[[peer]]`, `name = "beta"`, `endpoint = "192.0.2.2:51900"`, `allowed_prefixes = ["10.99.0.2/32"]`), 8,
		[]string{`peer "beta": endpoint is a UDP address, and this node has udp = false (line 3), so the peer could never be reached; give it a ws_url`}},
	{"udp off, endpoint beside ws_url", doc(`[interface]`, `node_name = "alpha"`, `udp = false`, `seed_file = "/s"`, `key_file = "/k"`,
		`[[peer]]`, `name = "beta"`, `endpoint = "192.0.2.2:51900"`, `ws_url = "wss://b.example/stt"`, `allowed_prefixes = ["10.99.0.2/32"]`), 8,
		[]string{`endpoint is a UDP address`, "remove it, ws_url reaches the peer"}},
	{"udp off, no way in", doc(`[interface]`, `node_name = "alpha"`, `udp = false`, `seed_file = "/s"`, `key_file = "/k"`,
		`[[peer]]`, `name = "beta"`, `allowed_prefixes = ["10.99.0.2/32"]`), 6,
		[]string{`peer "beta" could never be reached: this node has udp = false (line 3) and no [websocket] listen`}},
	{"unknown key in websocket", edit(6, `[websocket]`, `listen = ":443"`, `port = 443`, ``), 8, []string{`unknown key "port" in [websocket]`}},
	{"websocket as array", edit(6, `[[websocket]]`, `listen = ":443"`), 6, []string{"[[websocket]] must be written [websocket]"}},
	{"listen without port", edit(6, `[websocket]`, `listen = "0.0.0.0"`, ``), 7, []string{`websocket: listen "0.0.0.0" is not HOST:PORT`}},
	{"listen port zero", edit(6, `[websocket]`, `listen = ":0"`, ``), 7, []string{`websocket: listen ":0" has port "0"`}},
	{"listen as URL", edit(6, `[websocket]`, `listen = "ws://0.0.0.0:80"`, ``), 7, []string{"is a URL"}},
	{"listen not a string", edit(6, `[websocket]`, `listen = 8443`, ``), 7, []string{`websocket: listen must be a string HOST:PORT such as "0.0.0.0:8443", not a TOML integer`}},
	{"path without slash", edit(6, `[websocket]`, `listen = ":443"`, `path = "stt"`, ``), 8, []string{`websocket: path "stt" must start with /`}},
	{"path with query", edit(6, `[websocket]`, `listen = ":443"`, `path = "/stt?x"`, ``), 8, []string{`may not contain '?'`}},
	{"path without listen", edit(6, `[websocket]`, `path = "/stt"`, ``), 7, []string{"websocket: path has no use without listen"}},
	{"cert without key", edit(6, `[websocket]`, `listen = ":443"`, `tls_cert = "c.pem"`, ``), 8, []string{"websocket: tls_cert needs tls_key"}},
	{"key without cert", edit(6, `[websocket]`, `listen = ":443"`, `tls_key = "k.pem"`, ``), 8, []string{"websocket: tls_key needs tls_cert"}},
	{"tls without listen", edit(6, `[websocket]`, `tls_cert = "c.pem"`, `tls_key = "k.pem"`, ``), 7, []string{"websocket: tls_cert has no use without listen"}},
	{"max_pending zero", edit(6, `[websocket]`, `listen = ":443"`, `max_pending = 0`, ``), 8, []string{"websocket: max_pending = 0 must be between 1 and 65535"}},
	{"max_pending too large", edit(6, `[websocket]`, `listen = ":443"`, `max_pending = 70000`, ``), 8, []string{"websocket: max_pending = 70000 must be between 1 and 65535"}},
	{"max_pending without listen", edit(6, `[websocket]`, `max_pending = 10`, ``), 7, []string{"websocket: max_pending has no use without listen"}},
	{"per source over max_pending", edit(6, `[websocket]`, `listen = ":443"`, `max_pending = 10`, `max_pending_per_source = 11`, ``), 9, []string{"websocket: max_pending_per_source = 11 must be between 1 and max_pending (10)"}},
	{"per source zero", edit(6, `[websocket]`, `listen = ":443"`, `max_pending_per_source = 0`, ``), 8, []string{"websocket: max_pending_per_source = 0 must be between 1 and max_pending (512)"}},
	{"ws_url https", edit(appendLine, `ws_url = "https://vpn.example.net/stt"`), 10, []string{`peer "beta": ws_url "https://vpn.example.net/stt" is an https:// URL`, "wss://"}},
	{"ws_url other scheme", edit(appendLine, `ws_url = "tcp://vpn.example.net:1"`), 10, []string{"must start with ws:// or wss://"}},
	{"ws_url without scheme", edit(appendLine, `ws_url = "vpn.example.net:443"`), 10, []string{"must start with ws:// or wss://"}},
	{"ws_url without host", edit(appendLine, `ws_url = "wss:///stt"`), 10, []string{"has no host"}},
	{"ws_url bad port", edit(appendLine, `ws_url = "wss://vpn.example.net:70000/stt"`), 10, []string{`has port "70000"`}},
	{"ws_url credentials", edit(appendLine, `ws_url = "wss://me:secret@vpn.example.net/stt"`), 10, []string{"may not contain a user name or password", "me:xxxxx@"}},
	{"ws_url fragment", edit(appendLine, `ws_url = "wss://vpn.example.net/stt#x"`), 10, []string{"#fragment"}},
	{"ws_url bad host", edit(appendLine, `ws_url = "wss://bad_host!/stt"`), 10, []string{`invalid host name "bad_host!"`}},
	{"ws_url unspecified", edit(appendLine, `ws_url = "ws://0.0.0.0:80/stt"`), 10, []string{"cannot be a peer's address"}},
	{"ws_proxy without ws_url", edit(appendLine, `ws_proxy = "none"`), 10, []string{`peer "beta": ws_proxy has no use without ws_url`}},
	{"ws_proxy https", edit(appendLine, `ws_url = "wss://v.example/stt"`, `ws_proxy = "https://proxy:3128"`), 11, []string{"only http:// proxies"}},
	{"ws_proxy no scheme", edit(appendLine, `ws_url = "wss://v.example/stt"`, `ws_proxy = "proxy:3128"`), 11, []string{`is not "none" or a proxy URL`}},
	{"ws_proxy password not echoed", edit(appendLine, `ws_url = "wss://v.example/stt"`, `ws_proxy = "socks5://u:hunter2@proxy:1080"`), 11, []string{`"socks5://u:xxxxx@proxy:1080" must be "none" or an http:// URL`}},
	{"ws_proxy with path", edit(appendLine, `ws_url = "wss://v.example/stt"`, `ws_proxy = "http://proxy:3128/x"`), 11, []string{"without a path"}},
	{"ws_ca_file with ws://", edit(appendLine, `ws_url = "ws://v.example/stt"`, `ws_ca_file = "ca.pem"`), 11, []string{"ws_ca_file applies to wss:// only, and ws_url (line 10) is ws://"}},
	{"ws_ca_file without ws_url", edit(appendLine, `ws_ca_file = "ca.pem"`), 10, []string{"ws_ca_file has no use without a wss:// ws_url"}},
	{"ws_insecure with ws://", edit(appendLine, `ws_url = "ws://v.example/stt"`, `ws_insecure = true`), 11, []string{"ws_insecure applies to wss:// only"}},
	{"ws_insecure and ws_ca_file", edit(appendLine, `ws_url = "wss://v.example/stt"`, `ws_ca_file = "ca.pem"`, `ws_insecure = true`), 12,
		[]string{"ws_insecure = true skips the certificate check that ws_ca_file (line 11) is for"}},
	{"ws_insecure not a bool", edit(appendLine, `ws_insecure = "yes"`), 10, []string{`peer "beta": ws_insecure must be true or false`}},
	{"ws key in interface", insert(3, `ws_url = "wss://v.example/stt"`), 3, []string{`unknown key "ws_url" in [interface]`, "belongs in [[peer]]"}},
	{"fallback_after too short", edit(appendLine, `[advanced]`, `fallback_after = "100ms"`), 11, []string{`advanced: fallback_after = "100ms" must be between 1s and 5m0s`}},
	{"fallback_after no unit", edit(appendLine, `[advanced]`, `fallback_after = "3"`), 11, []string{`fallback_after = "3" has no unit`}},
	{"pmtu_reprobe_interval too short", edit(appendLine, `[advanced]`, `pmtu_reprobe_interval = "500ms"`), 11, []string{`advanced: pmtu_reprobe_interval = "500ms" must be between 1s and 24h0m0s`}},
	{"pmtu_discovery not a boolean", edit(appendLine, `[advanced]`, `pmtu_discovery = "yes"`), 11, []string{`pmtu_discovery must be true or false`}},
	{"probe_interval too long", edit(appendLine, `[advanced]`, `probe_interval = "2h"`), 11, []string{`advanced: probe_interval = "2h" must be between 1s and 1h0m0s`}},
	{"probe_interval as integer", edit(appendLine, `[advanced]`, `probe_interval = 10`), 11, []string{`probe_interval must be a duration string such as "10s"`}},
	{"logging level unknown", edit(appendLine, `[logging]`, `level = "verbose"`), 11, []string{`logging: level = "verbose" must be "debug", "info", "warn" or "error"`}},
	{"logging level in capitals", edit(appendLine, `[logging]`, `level = "DEBUG"`), 11, []string{`logging: level = "DEBUG" must be`}},
	{"logging level as integer", edit(appendLine, `[logging]`, `level = -4`), 11, []string{`logging: level must be a string: "debug", "info", "warn" or "error"`}},
	{"logging format unknown", edit(appendLine, `[logging]`, `format = "logfmt"`), 11, []string{`logging: format = "logfmt" must be "text" or "json"`}},
	{"unknown key in logging", edit(appendLine, `[logging]`, `file = "/var/log/stt-tun.log"`), 11, []string{`unknown key "file" in [logging]`, "valid keys are format, level"}},
	{"metrics listen without port", edit(appendLine, `[metrics]`, `listen = "127.0.0.1"`), 11, []string{`metrics: listen "127.0.0.1" is not HOST:PORT`}},
	{"metrics listen port 0", edit(appendLine, `[metrics]`, `listen = "127.0.0.1:0"`), 11, []string{`metrics: listen "127.0.0.1:0" has port "0"`}},
	{"metrics listen as URL", edit(appendLine, `[metrics]`, `listen = "http://127.0.0.1:9586/metrics"`), 11, []string{"is a URL; write HOST:PORT"}},
	{"metrics listen as integer", edit(appendLine, `[metrics]`, `listen = 9586`), 11, []string{`metrics: listen must be a string HOST:PORT such as "127.0.0.1:9586"`}},
	{"unknown key in metrics", edit(appendLine, `[metrics]`, `address = "127.0.0.1:9586"`), 11, []string{`unknown key "address" in [metrics]`, "valid keys are listen"}},
	{"metrics as array table", edit(appendLine, `[[metrics]]`), 10, []string{"[[metrics]] must be written [metrics]"}},
}

func TestParseErrors(t *testing.T) { checkBadCases(t, badCases) }

// checkBadCases parses each case and checks the message at its line.
func checkBadCases(t *testing.T, cases []badCase) {
	const file = "/etc/stt-tun/alpha.toml"
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.src), file)
			if err == nil {
				t.Fatalf("no error for\n%s", tc.src)
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("error %T is not a *config.Error: %v", err, err)
			}
			// Find the message at the expected line; there may be several errors.
			var msg string
			for _, e := range err.(ErrorList) {
				if e.Line == tc.line {
					msg = e.Error()
					break
				}
			}
			if msg == "" {
				t.Fatalf("no error at line %d; got:\n%v\ndocument:\n%s", tc.line, err, numbered(tc.src))
			}
			prefix := file + ":" + itoa(tc.line) + ": "
			if !strings.HasPrefix(msg, prefix) {
				t.Errorf("message %q does not start with %q", msg, prefix)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("message %q lacks %q", msg, w)
				}
			}
		})
	}
}

// TestParseReportsAllProblems checks that independent problems are reported
// together, in line order.
func TestParseReportsAllProblems(t *testing.T) {
	src := doc(
		`[interface]`,
		`mtu = 10`,
		`seed_file = "/s"`,
		`key_file = "/k"`,
		`[[peer]]`,
		`name = "b"`,
		`allowed_prefixes = ["10.1.1.1/24"]`,
		`persistent_keepalive = "x"`,
	)
	_, err := Parse([]byte(src), "f.toml")
	var list ErrorList
	if !errors.As(err, &list) || len(list) != 3 {
		t.Fatalf("want 3 errors, got %v", err)
	}
	for i, line := range []int{2, 7, 8} {
		if list[i].Line != line {
			t.Errorf("error %d at line %d, want %d: %v", i, list[i].Line, line, list[i])
		}
	}
	if got := strings.Count(err.Error(), "\n"); got != 2 {
		t.Errorf("want one line per error, got %q", err.Error())
	}
}

func TestParseCapsErrors(t *testing.T) {
	lines := append([]string(nil), baseLines[:5]...)
	for i := range 30 {
		lines = append(lines, `[[peer]]`, `name = "p`+itoa(i)+`"`, `allowed_prefixes = ["10.`+itoa(i)+`.0.1/16"]`)
	}
	_, err := Parse([]byte(doc(lines...)), "f.toml")
	var list ErrorList
	if !errors.As(err, &list) || len(list) != maxErrors+1 {
		t.Fatalf("want %d errors and a summary, got %d: %v", maxErrors, len(list), err)
	}
	if last := list[len(list)-1]; !strings.Contains(last.Msg, "10 more problems not shown") {
		t.Errorf("summary: %v", last)
	}
}

func TestParseNoPathName(t *testing.T) {
	_, err := Parse([]byte("x = 1\n"), "")
	if err == nil || !strings.HasPrefix(err.Error(), "<input>:1: ") {
		t.Errorf("got %v", err)
	}
}

func TestStringRoundTrip(t *testing.T) {
	wsOnly := doc(`[interface]`, `node_name = "alpha"`, `udp = false`, `seed_file = "/s"`, `key_file = "/k"`,
		`[websocket]`, `listen = "127.0.0.1:8080"`,
		`[[peer]]`, `name = "beta"`, `ws_url = "ws://192.0.2.2/stt"`, `allowed_prefixes = ["10.99.0.2/32"]`,
		`[advanced]`, `probe_interval = "3s"`)
	mesh := doc(`[interface]`, `node_name = "alpha"`, `seed_file = "/s"`, `key_file = "/k"`,
		`[websocket]`, `listen = "127.0.0.1:8080"`, `public_url = "wss://alpha.example.net/stt"`,
		`[discovery]`, `bootstrap = ["hub.example.net:51900", "[2001:db8::1]:51900", "wss://hub.example.net/stt"]`,
		`accept_prefixes = ["10.99.0.0/16", "fd99::/64"]`, `announce_prefixes = ["192.168.10.0/24"]`,
		`endpoints = ["203.0.113.5:51900", "[2001:db8::5]:1"]`, `idle_timeout = "1h30m"`, `mesh_ipv6 = false`,
		`[[peer]]`, `name = "beta"`, `public_key = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="`,
		`[[peer]]`, `name = "gamma"`, `allowed_prefixes = ["10.99.0.3/32"]`)
	meshDefaults := doc(`[interface]`, `node_name = "alpha"`, `seed_file = "/s"`, `key_file = "/k"`, `[discovery]`)
	for _, src := range []string{fullExample, doc(baseLines...), wsOnly, mesh, meshDefaults} {
		cfg, err := Parse([]byte(src), "/etc/stt-tun/a.toml")
		if err != nil {
			t.Fatal(err)
		}
		again, err := Parse([]byte(cfg.String()), "/etc/stt-tun/a.toml")
		if err != nil {
			t.Fatalf("String() output does not parse: %v\n%s", err, cfg)
		}
		if !reflect.DeepEqual(cfg, again) {
			t.Errorf("round trip differs:\n%#v\n%#v\n%s", cfg, again, cfg)
		}
		if src == mesh && (!again.Discovery.Enabled || len(again.Discovery.Endpoints) != 2 || again.WebSocket.PublicURL == "") {
			t.Errorf("the mesh keys were lost:\n%s", cfg)
		}
		if src == meshDefaults && !strings.Contains(cfg.String(), "[discovery]\n") {
			t.Errorf("an empty [discovery] was dropped:\n%s", cfg)
		}
	}
}

func TestResolvePath(t *testing.T) {
	cases := map[string]string{
		"alpha":                "/etc/stt-tun/alpha.toml",
		"stt0":                 "/etc/stt-tun/stt0.toml",
		"alpha.toml":           "alpha.toml",
		"./alpha":              "./alpha",
		"/srv/stt/alpha.conf":  "/srv/stt/alpha.conf",
		"lab/alpha.toml":       "lab/alpha.toml",
		"":                     "",
		"..":                   "..",
		"/etc/stt-tun/x.toml":  "/etc/stt-tun/x.toml",
		"name-with.dots":       "/etc/stt-tun/name-with.dots.toml",
		"relative/without/ext": "relative/without/ext",
	}
	for in, want := range cases {
		if got := ResolvePath(in); got != want {
			t.Errorf("ResolvePath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "alpha.toml")
	// Load checks that the TLS files exist; Parse does not.
	src := strings.Replace(fullExample, "/etc/ssl/private/alpha.key", "alpha.key.pem", 1)
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "certs"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"certs/alpha.crt", "alpha.key.pem", "beta-ca.pem"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("pem\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Path != path || cfg.Interface.SeedFile != filepath.Join(dir, "seed") {
		t.Errorf("Path %q SeedFile %q", cfg.Path, cfg.Interface.SeedFile)
	}

	// A relative path to Load still yields absolute paths in the Config.
	t.Chdir(dir)
	cfg, err = Load("alpha.toml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Path != path || cfg.Interface.SeedFile != filepath.Join(dir, "seed") {
		t.Errorf("relative Load: Path %q SeedFile %q", cfg.Path, cfg.Interface.SeedFile)
	}

	if cfg.WebSocket.TLSKey != filepath.Join(dir, "alpha.key.pem") || cfg.Peers[0].WSCAFile != filepath.Join(dir, "beta-ca.pem") {
		t.Errorf("TLS paths: key %q, CA %q", cfg.WebSocket.TLSKey, cfg.Peers[0].WSCAFile)
	}

	// Missing TLS files are reported at their keys; a directory is not a file.
	if err := os.Remove(filepath.Join(dir, "beta-ca.pem")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "certs", "alpha.crt")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "certs", "alpha.crt"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err = Load("alpha.toml")
	lines := strings.Split(src, "\n")
	lineOf := func(prefix string) int {
		for i, l := range lines {
			if strings.HasPrefix(l, prefix) {
				return i + 1
			}
		}
		t.Fatalf("no %q in the example", prefix)
		return 0
	}
	for _, want := range []string{
		fmt.Sprintf("alpha.toml:%d: websocket: tls_cert %s is a directory", lineOf("tls_cert"), filepath.Join(dir, "certs", "alpha.crt")),
		fmt.Sprintf("alpha.toml:%d: peer \"beta\": ws_ca_file %s does not exist", lineOf("ws_ca_file"), filepath.Join(dir, "beta-ca.pem")),
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Load with missing TLS files: %v\nwant %q", err, want)
		}
	}
	if _, err := Parse([]byte(src), path); err != nil {
		t.Errorf("Parse looked at the files: %v", err)
	}

	_, err = Load(filepath.Join(dir, "missing.toml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}

	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte(insert(3, "bogus = 1")), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = Load("bad.toml")
	if err == nil || !strings.HasPrefix(err.Error(), "bad.toml:3: ") {
		t.Errorf("errors should name the file as given: %v", err)
	}
}

func TestTruncateUTF8(t *testing.T) {
	cases := []struct {
		in   string
		n    int
		want string
	}{
		{"short", 32, "short"},
		{strings.Repeat("a", 40), 32, strings.Repeat("a", 32)},
		{strings.Repeat("a", 31) + "é", 32, strings.Repeat("a", 31)},
		{strings.Repeat("a", 30) + "é", 32, strings.Repeat("a", 30) + "é"},
	}
	for _, c := range cases {
		if got := truncateUTF8(c.in, c.n); got != c.want {
			t.Errorf("truncateUTF8(%q, %d) = %q, want %q", c.in, c.n, got, c.want)
		}
	}
}

func numbered(s string) string {
	var b strings.Builder
	for i, l := range strings.Split(strings.TrimSuffix(s, "\n"), "\n") {
		b.WriteString(itoa(i+1) + "\t" + l + "\n")
	}
	return b.String()
}

func itoa(i int) string { return strconv.Itoa(i) }
