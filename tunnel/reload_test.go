package tunnel

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/stt"
	"github.com/stt-tun/stt-tun/stt/mesh"
	"github.com/stt-tun/stt-tun/tun/tuntest"
)

// cfgNode is one node of a reload test: its files and how to write its configuration.
type cfgNode struct {
	name, addr, seedFile, keyFile string
	key                           [32]byte
	dir                           string
}

func newCfgNode(t *testing.T, seedFile, name, addr string) *cfgNode {
	t.Helper()
	dir := t.TempDir()
	key, err := config.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return &cfgNode{name: name, addr: addr, seedFile: seedFile, keyFile: writeSecret(t, dir, name+".key", key), key: key, dir: dir}
}

// pubKey is the node's public key as a configuration writes it.
func (n *cfgNode) pubKey() string { return config.EncodeKey(config.PublicKey(n.key)) }

// config parses the node's configuration with extra appended: the [interface] keys
// first, then sections.
func (n *cfgNode) config(t *testing.T, ifaceExtra string, sections ...string) *config.Config {
	t.Helper()
	src := fmt.Sprintf("[interface]\nname = \"mem-%s\"\nnode_name = %q\naddresses = [%q]\nlisten_port = 0\nseed_file = %q\nkey_file = %q\n%s\n%s",
		n.name, n.name, n.addr, n.seedFile, n.keyFile, ifaceExtra, strings.Join(sections, "\n"))
	cfg, err := config.Parse([]byte(src), filepath.Join(n.dir, n.name+".toml"))
	if err != nil {
		t.Fatalf("test configuration:\n%s\n%v", src, err)
	}
	return cfg
}

// peerSection writes a [[peer]]; extra lines follow the prefixes.
func peerSection(name, endpoint string, prefixes []string, extra ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[[peer]]\nname = %q\n", name)
	if endpoint != "" {
		fmt.Fprintf(&b, "endpoint = %q\n", endpoint)
	}
	q := make([]string, len(prefixes))
	for i, p := range prefixes {
		q[i] = fmt.Sprintf("%q", p)
	}
	fmt.Fprintf(&b, "allowed_prefixes = [%s]\n", strings.Join(q, ", "))
	for _, e := range extra {
		b.WriteString(e + "\n")
	}
	return b.String()
}

// startCfg starts a tunnel with cfg on an in-memory device.
func startCfg(t testing.TB, cfg *config.Config) *memNode {
	t.Helper()
	dev := tuntest.NewMem(cfg.Interface.Name, 1420, 16)
	tu, err := Start(context.Background(), cfg, Options{Device: dev})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tu.Close() })
	return &memNode{t: tu, dev: dev}
}

func endpointOf(n *memNode) string { return fmt.Sprintf("127.0.0.1:%d", n.t.Node().Port()) }

// waitUntil polls cond until it holds, failing with what after a deadline generous
// enough for a loaded machine; the deadline bounds a failure, it measures nothing.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// noPacket fails if the device writes anything within d.
func noPacket(t *testing.T, dev *tuntest.Mem, d time.Duration) {
	t.Helper()
	select {
	case p := <-dev.Written():
		t.Fatalf("unexpected packet reached the tun: %x", p)
	case <-time.After(d):
	}
}

func sessionID(t *testing.T, n *memNode, peer string) uint32 {
	t.Helper()
	sp := n.t.Node().Peer(peer)
	if sp == nil {
		t.Fatalf("%s has no node peer %s", n.t.Status().NodeName, peer)
	}
	id, ok := sp.SessionID()
	if !ok {
		t.Fatalf("%s has no session with %s", n.t.Status().NodeName, peer)
	}
	return id
}

// waitConfirmed waits until n's sessions with peers are up: confirmed by the peer, so
// that no handshake completes later, during what the test measures.
func waitConfirmed(t *testing.T, n *memNode, peers ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for _, name := range peers {
		for !n.t.Node().Peer(name).HasSession() {
			if time.Now().After(deadline) {
				t.Fatalf("no confirmed session with %s", name)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// reloadLab is alpha with peers beta and delta; gamma is configured to reach alpha, which
// does not know it yet.
type reloadLab struct {
	a, b, c, d     *memNode
	na, nb, nc, nd *cfgNode
}

func newReloadLab(t *testing.T) *reloadLab {
	t.Helper()
	seed, _ := config.GenerateSeed()
	seedFile := writeSecret(t, t.TempDir(), "seed", seed)
	l := &reloadLab{
		na: newCfgNode(t, seedFile, "alpha", "10.9.0.1/24"),
		nb: newCfgNode(t, seedFile, "beta", "10.9.0.2/24"),
		nc: newCfgNode(t, seedFile, "gamma", "10.9.0.3/24"),
		nd: newCfgNode(t, seedFile, "delta", "10.9.0.4/24"),
	}
	l.b = startCfg(t, l.nb.config(t, "", peerSection("alpha", "", []string{"10.9.0.1/32"})))
	l.d = startCfg(t, l.nd.config(t, "", peerSection("alpha", "", []string{"10.9.0.1/32"})))
	l.a = startCfg(t, l.alphaConfig(t, ""))
	l.c = startCfg(t, l.nc.config(t, "", peerSection("alpha", endpointOf(l.a), []string{"10.9.0.1/32"}, "persistent_keepalive = \"1s\"")))
	return l
}

// alphaConfig is alpha's starting configuration: beta with its address, delta.
func (l *reloadLab) alphaConfig(t *testing.T, ifaceExtra string) *config.Config {
	return l.na.config(t, ifaceExtra,
		peerSection("beta", endpointOf(l.b), []string{"10.9.0.2/32"}),
		peerSection("delta", endpointOf(l.d), []string{"10.9.0.4/32"}))
}

// TestReloadPeersAndPrefixes: a peer added, one removed, one's prefixes and keepalive
// changed; beta's session is the same before and after, with no handshake, and traffic
// follows the new table.
func TestReloadPeersAndPrefixes(t *testing.T) {
	l := newReloadLab(t)
	toB := ipv4UDP("10.9.0.1", "10.9.0.2", 1000, 2000, []byte("to beta"))
	l.a.dev.Inject(toB)
	expectPacket(t, l.b.dev, toB)
	toD := ipv4UDP("10.9.0.1", "10.9.0.4", 1000, 2000, []byte("to delta"))
	l.a.dev.Inject(toD)
	expectPacket(t, l.d.dev, toD)
	waitConfirmed(t, l.a, "beta", "delta")

	idB := sessionID(t, l.a, "beta")
	spB := l.a.t.Node().Peer("beta")
	hsB := spB.LastHandshake()
	handshakes := l.a.t.Node().Stats().HandshakesDone

	next := l.na.config(t, "",
		peerSection("beta", endpointOf(l.b), []string{"10.9.0.2/32", "192.168.77.0/24"}, `persistent_keepalive = "25s"`),
		peerSection("gamma", "", []string{"10.9.0.3/32"}))
	changes, err := l.a.t.ReloadChanges(next)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`peer "beta": allowed_prefixes, persistent_keepalive changed`,
		`peer "gamma" added`,
		`peer "delta" removed`,
	}
	if !slices.Equal(changes, want) {
		t.Errorf("changes:\n%q\nwant\n%q", changes, want)
	}

	// beta: the same session, no handshake, and its new prefix is routed to it.
	if got := sessionID(t, l.a, "beta"); got != idB {
		t.Errorf("beta's session %d was replaced by %d", idB, got)
	}
	if l.a.t.Node().Peer("beta") != spB || !spB.LastHandshake().Equal(hsB) {
		t.Error("beta's node peer or its handshake changed")
	}
	if got := l.a.t.Node().Stats().HandshakesDone; got != handshakes {
		t.Errorf("handshakes %d -> %d across the reload", handshakes, got)
	}
	l.a.dev.Inject(toB)
	expectPacket(t, l.b.dev, toB)
	lan := ipv4UDP("10.9.0.1", "192.168.77.5", 1000, 53, []byte("to beta's lan"))
	l.a.dev.Inject(lan)
	expectPacket(t, l.b.dev, lan)
	if got := sessionID(t, l.a, "beta"); got != idB {
		t.Errorf("beta's session %d was replaced by %d", idB, got)
	}

	// delta: gone from the node and the table.
	if l.a.t.Node().Peer("delta") != nil {
		t.Error("delta is still a node peer")
	}
	noRoute := l.a.t.Counters().NoRoute
	l.a.dev.Inject(toD)
	// The pump counts the drop once it has looked the packet up: wait for that, not
	// for a guessed time, then make sure nothing reached delta.
	waitUntil(t, "the packet to removed delta is counted as no-route", func() bool {
		return l.a.t.Counters().NoRoute > noRoute
	})
	noPacket(t, l.d.dev, 100*time.Millisecond)
	if got := l.a.t.Counters().NoRoute; got != noRoute+1 {
		t.Errorf("packet to removed delta: no-route counter %d -> %d, want +1", noRoute, got)
	}

	// gamma: connects (keepalive) and its packets are delivered.
	//
	// gamma's keepalive has been handshaking since it started; before the reload alpha
	// refused it (unknown peer). A session counts (HasSession) only once alpha confirmed
	// it (protocol.md 4.7, 4.8): then it is one alpha holds, and what gamma seals on it
	// arrives.
	fromC := ipv4UDP("10.9.0.3", "10.9.0.1", 3000, 1000, []byte("from gamma"))
	waitUntil(t, "gamma has a session with alpha that alpha confirmed", l.c.t.Node().Peer("alpha").HasSession)
	l.c.dev.Inject(fromC)
	expectPacket(t, l.a.dev, fromC)
	toC := ipv4UDP("10.9.0.1", "10.9.0.3", 1000, 3000, []byte("to gamma"))
	l.a.dev.Inject(toC)
	expectPacket(t, l.c.dev, toC)

	// Status shows the new configuration.
	st := l.a.t.Status()
	var names []string
	for _, p := range st.Peers {
		names = append(names, p.Name)
		if p.Name == "beta" && !slices.Equal(p.AllowedPrefixes, []string{"10.9.0.2/32", "192.168.77.0/24"}) {
			t.Errorf("beta's prefixes in status: %v", p.AllowedPrefixes)
		}
	}
	if !slices.Equal(names, []string{"beta", "gamma"}) {
		t.Errorf("peers in status: %v", names)
	}

	// The same configuration again changes nothing.
	if changes, err := l.a.t.ReloadChanges(next); err != nil || len(changes) != 0 {
		t.Errorf("second reload: %q, %v; want no changes", changes, err)
	}
}

// TestReloadRefused: settings that need a restart, an invalid configuration, a seed
// file of another network and a new key in the same file are refused, naming the key,
// and nothing changes.
func TestReloadRefused(t *testing.T) {
	l := newReloadLab(t)
	toB := ipv4UDP("10.9.0.1", "10.9.0.2", 1000, 2000, []byte("to beta"))
	l.a.dev.Inject(toB)
	expectPacket(t, l.b.dev, toB)
	idB := sessionID(t, l.a, "beta")
	before := l.a.t.Status()

	withPeers := func(ifaceExtra string, sections ...string) *config.Config {
		base := []string{
			peerSection("beta", endpointOf(l.b), []string{"10.9.0.2/32", "10.9.9.0/24"}),
			peerSection("delta", endpointOf(l.d), []string{"10.9.0.4/32"}),
		}
		return l.na.config(t, ifaceExtra, append(base, sections...)...)
	}
	otherSeed, _ := config.GenerateSeed()
	otherKey, _ := config.GenerateKey()
	cases := []struct {
		name string
		cfg  func() *config.Config
		want string
	}{
		{"mtu", func() *config.Config { return withPeers("mtu = 1380") },
			"restart needed: interface.mtu changed from 1420 to 1380"},
		{"listen port", func() *config.Config {
			c := withPeers("")
			c.Interface.ListenPort = 51999
			return c
		},
			"restart needed: interface.listen_port changed from 0 to 51999"},
		{"node name and forwarding", func() *config.Config {
			c := withPeers("", "[forwarding]\nenabled = true")
			c.Interface.NodeName = "alpha2"
			return c
		}, `restart needed: interface.node_name changed from "alpha" to "alpha2"; forwarding.enabled changed from false to true`},
		{"udp", func() *config.Config {
			c := withPeers("", "[websocket]\nlisten = \"127.0.0.1:8443\"")
			c.Interface.DisableUDP, c.Interface.ListenPort = true, 0
			c.Peers[0].Endpoint, c.Peers[1].Endpoint = "", ""
			return c
		}, `restart needed: interface.udp changed from true to false; websocket.listen changed from "" to "127.0.0.1:8443"`},
		{"kill switch", func() *config.Config { return withPeers("kill_switch = false") },
			"restart needed: interface.kill_switch changed from true to false"},
		{"advanced", func() *config.Config { return withPeers("", "[advanced]\nrekey_after = \"60s\"") },
			`restart needed: advanced.rekey_after changed from "2m0s" to "1m0s"`},
		{"addresses", func() *config.Config {
			c := withPeers("")
			c.Interface.Addresses = append(c.Interface.Addresses, netip.MustParsePrefix("fd09::1/64"))
			return c
		}, `restart needed: interface.addresses changed from ["10.9.0.1/24"] to ["10.9.0.1/24", "fd09::1/64"]`},
		{"seed contents", func() *config.Config {
			writeSecret(t, filepath.Dir(l.na.seedFile), "seed2", otherSeed)
			c := withPeers("")
			c.Interface.SeedFile = filepath.Join(filepath.Dir(l.na.seedFile), "seed2")
			return c
		}, "restart needed: interface.seed_file changed from"},
		{"key contents", func() *config.Config {
			c := withPeers("")
			c.Interface.KeyFile = writeSecret(t, t.TempDir(), "alpha.key", otherKey)
			return c
		}, "restart needed: interface.key_file changed"},
		{"invalid: overlapping prefixes", func() *config.Config {
			c := withPeers("")
			c.Peers[1].AllowedPrefixes = append(c.Peers[1].AllowedPrefixes, netip.MustParsePrefix("10.9.9.128/25"))
			return c
		}, "invalid configuration"},
		{"invalid: no configuration", func() *config.Config { return nil }, "no configuration"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := l.a.t.Reload(tc.cfg())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if strings.HasPrefix(tc.want, "restart needed") != errors.Is(err, ErrRestartNeeded) {
				t.Errorf("errors.Is(err, ErrRestartNeeded) = %v for %v", errors.Is(err, ErrRestartNeeded), err)
			}
			after := l.a.t.Status()
			if fmt.Sprint(after.Peers[0].AllowedPrefixes, len(after.Peers)) != fmt.Sprint(before.Peers[0].AllowedPrefixes, len(before.Peers)) ||
				after.MTU != before.MTU {
				t.Errorf("a refused reload changed the status:\n%+v\n%+v", before, after)
			}
			if got := sessionID(t, l.a, "beta"); got != idB {
				t.Errorf("beta's session replaced by a refused reload")
			}
		})
	}
	// The seed file rewritten in place naming another network: caught by its contents.
	// (A new seed of the same network is applied: seeds_test.go.)
	raw := mesh.NetworkOf(otherSeed).Raw()
	if err := os.WriteFile(l.na.seedFile, []byte(config.EncodeKey(otherSeed)+"\nnetwork "+base64.StdEncoding.EncodeToString(raw[:])+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := l.a.t.Reload(l.alphaConfig(t, "")); err == nil || !strings.Contains(err.Error(), "restart needed: the seed file "+l.na.seedFile+" names another network") {
		t.Errorf("seed rewritten: %v", err)
	}
	if l.a.t.reloadsRefused.Load() != uint64(len(cases)+1) || l.a.t.reloadsApplied.Load() != 0 {
		t.Errorf("reload counters: %d refused, %d applied", l.a.t.reloadsRefused.Load(), l.a.t.reloadsApplied.Load())
	}
	l.a.dev.Inject(toB)
	expectPacket(t, l.b.dev, toB)
}

// TestReloadPin: a pin that matches keeps the session; one that does not closes it and
// no new session with the unpinned key follows.
func TestReloadPin(t *testing.T) {
	l := newReloadLab(t)
	toB := ipv4UDP("10.9.0.1", "10.9.0.2", 1000, 2000, []byte("to beta"))
	l.a.dev.Inject(toB)
	expectPacket(t, l.b.dev, toB)
	waitConfirmed(t, l.a, "beta")
	idB := sessionID(t, l.a, "beta")

	pinned := func(key string) *config.Config {
		return l.na.config(t, "",
			peerSection("beta", endpointOf(l.b), []string{"10.9.0.2/32"}, fmt.Sprintf("public_key = %q", key)),
			peerSection("delta", endpointOf(l.d), []string{"10.9.0.4/32"}))
	}
	changes, err := l.a.t.ReloadChanges(pinned(l.nb.pubKey()))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(changes, []string{`peer "beta": public_key changed`}) {
		t.Errorf("changes %q", changes)
	}
	if got := sessionID(t, l.a, "beta"); got != idB {
		t.Fatal("a pin that matches replaced the session")
	}

	changes, err = l.a.t.ReloadChanges(pinned(l.nc.pubKey())) // gamma's key, not beta's
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) != 1 || !strings.Contains(changes[0], "session closed") {
		t.Errorf("changes %q; want the session closed", changes)
	}
	if l.a.t.Node().Peer("beta").HasSession() {
		t.Fatal("session kept under a pin it does not match")
	}
	l.a.dev.Inject(toB)
	// The packet starts a handshake; wait until beta's answer is refused for its key
	// rather than for a guessed time, then make sure the packet never reached beta.
	waitUntil(t, "a handshake with beta is refused for the pin (was one even tried?)", func() bool {
		return l.a.t.Node().Stats().Drops[stt.DropPinMismatch] > 0
	})
	noPacket(t, l.b.dev, 200*time.Millisecond)
}

// TestReloadMetricsListener: the metrics listener opens, moves and closes with reloads.
func TestReloadMetricsListener(t *testing.T) {
	l := newReloadLab(t)
	if l.a.t.MetricsAddr() != "" {
		t.Fatal("metrics served without [metrics]")
	}
	withMetrics := func(listen string) *config.Config {
		c := l.alphaConfig(t, "")
		c.Metrics.Listen = listen
		return c
	}
	ln, err := listenMetrics("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().String()
	ln.Close()
	if err := l.a.t.Reload(withMetrics(port)); err != nil {
		t.Fatal(err)
	}
	if got := l.a.t.MetricsAddr(); got != port {
		t.Fatalf("metrics on %q, want %s", got, port)
	}
	scrape(t, "http://"+port+MetricsPath)
	// A port in use refuses the reload and the old listener stays.
	busy, err := listenMetrics("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	if err := l.a.t.Reload(withMetrics(busy.Addr().String())); err == nil || !strings.Contains(err.Error(), "metrics: listen on") {
		t.Fatalf("reload onto a busy port: %v", err)
	}
	scrape(t, "http://"+port+MetricsPath)
	// The same port under another name: the old listener must make way first.
	_, p, _ := strings.Cut(port, ":")
	if err := l.a.t.Reload(withMetrics("localhost:" + p)); err != nil {
		t.Fatal(err)
	}
	scrape(t, "http://"+port+MetricsPath)
	if err := l.a.t.Reload(withMetrics("")); err != nil {
		t.Fatal(err)
	}
	if got := l.a.t.MetricsAddr(); got != "" {
		t.Fatalf("metrics still on %s", got)
	}
}

func TestDiffPrefixes(t *testing.T) {
	p := netip.MustParsePrefix
	from := []netip.Prefix{p("10.0.0.0/24"), p("10.0.1.0/24"), p("0.0.0.0/0")}
	to := []netip.Prefix{p("10.0.1.0/24"), p("10.0.2.0/24"), p("::/0")}
	add, del := diffPrefixes(from, to)
	if !slices.Equal(add, []netip.Prefix{p("10.0.2.0/24")}) || !slices.Equal(del, []netip.Prefix{p("10.0.0.0/24")}) {
		t.Errorf("add %v, del %v", add, del)
	}
}

func TestRoutesOf(t *testing.T) {
	cfg, err := config.Parse([]byte(`[interface]
node_name = "a"
seed_file = "/s"
key_file = "/k"
exit_peer = "b"

[[peer]]
name = "b"
allowed_prefixes = ["10.0.0.2/32", "0.0.0.0/0"]

[[peer]]
name = "c"
allowed_prefixes = ["10.0.0.3/32", "::/0"]

[[peer]]
name = "d"
allowed_prefixes = ["10.0.0.4/32"]
route = false
`), "/etc/stt-tun/a.toml")
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprint(routesOf(cfg))
	if want := "[10.0.0.2/32 0.0.0.0/0 10.0.0.3/32]"; got != want {
		t.Errorf("routes %s, want %s", got, want)
	}
}

func TestRestartNeededExitPeer(t *testing.T) {
	parse := func(prefixes string) *config.Config {
		cfg, err := config.Parse([]byte(`[interface]
node_name = "a"
seed_file = "/s"
key_file = "/k"
exit_peer = "b"

[[peer]]
name = "b"
allowed_prefixes = `+prefixes+`
`), "/etc/stt-tun/a.toml")
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	old := parse(`["10.0.0.2/32", "0.0.0.0/0"]`)
	if err := restartNeeded(old, parse(`["10.0.0.2/32", "10.1.0.0/16", "0.0.0.0/0"]`)); err != nil {
		t.Errorf("a specific prefix of the exit peer: %v", err)
	}
	err := restartNeeded(old, parse(`["10.0.0.2/32", "0.0.0.0/0", "::/0"]`))
	if err == nil || !strings.Contains(err.Error(), `peer "b" allowed_prefixes: the full tunnel's default prefixes changed from [0.0.0.0/0] to [0.0.0.0/0, ::/0]`) {
		t.Errorf("a new default prefix of the exit peer: %v", err)
	}
}

// TestReloadFile: the file is read again; one that does not load is refused and
// counted.
func TestReloadFile(t *testing.T) {
	l := newReloadLab(t)
	path := filepath.Join(t.TempDir(), "alpha.toml")
	if err := os.WriteFile(path, []byte(l.alphaConfig(t, "").String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if changes, err := l.a.t.ReloadFile(path); err != nil || len(changes) != 0 {
		t.Fatalf("ReloadFile of the running configuration: %q, %v", changes, err)
	}
	if err := os.WriteFile(path, []byte("[interface]\nmtu = \"big\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := l.a.t.ReloadFile(path); err == nil || !strings.Contains(err.Error(), path+":2: interface: mtu must be an integer") {
		t.Fatalf("ReloadFile of a broken file: %v", err)
	}
	if a, r := l.a.t.reloadsApplied.Load(), l.a.t.reloadsRefused.Load(); a != 1 || r != 1 {
		t.Errorf("reloads: %d applied, %d refused; want 1 and 1", a, r)
	}
}
