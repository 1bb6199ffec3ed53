//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/internal/nslab"
)

// Addresses shared by the tests. Every one of them lives in a namespace a test creates.
var (
	underA = []string{"10.231.0.1/24", "fd00:231::1/64"}
	underB = []string{"10.231.0.2/24", "fd00:231::2/64"}
	tunA   = []string{"10.99.0.1/24", "fd99::1/64"}
	tunB   = []string{"10.99.0.2/24", "fd99::2/64"}
	// What each side allows for the other: its tunnel addresses only.
	allowA = []string{"10.99.0.1/32", "fd99::1/128"}
	allowB = []string{"10.99.0.2/32", "fd99::2/128"}
)

const (
	endpointB = "10.231.0.2:51900"
	// transferSize is the payload of the big transfer through the tunnel.
	transferSize = 50 << 20
)

// seedFile writes a new network seed, made with `stt-tun genseed`, with mode 0600.
func seedFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "seed")
	writeSecret(t, p, cli(t, "", "genseed")+"\n")
	return p
}

// pair builds namespaces a and b joined by the underlay veth, and a node in each.
func pair(t *testing.T) (lab *nslab.Lab, a, b *node, seed string) {
	t.Helper()
	lab = newLab(t)
	nsA, nsB := lab.NS("a"), lab.NS("b")
	lab.Link(nsA, underA, nsB, underB)
	return lab, newNode(t, nsA, "alpha"), newNode(t, nsB, "beta"), seedFile(t)
}

// transfer sends size bytes over TCP from src to host in dst and checks the SHA-256.
func transfer(t *testing.T, src, dst *nslab.NS, host string, size int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	res, err := nslab.Transfer(ctx, src, dst, host, size)
	if err != nil {
		t.Fatalf("transfer to %s: %v (%v)", host, err, res)
	}
	if !res.OK() {
		t.Fatalf("transfer to %s corrupted: %v", host, res)
	}
	d := time.Since(start)
	t.Logf("transfer %s -> %s (%s): %d bytes in %v (%.0f Mbit/s), sha256 %x ok",
		src, dst, host, res.ReceivedBytes, d.Round(time.Millisecond),
		float64(res.ReceivedBytes)*8/d.Seconds()/1e6, res.ReceivedSHA256[:8])
}

// TestTwoNodes: pings both ways over IPv4 and IPv6, a 50 MB transfer, status in JSON
// and text, and down leaving both namespaces as they were. alpha runs in the
// foreground (a process the test owns); beta uses the daemonizing `up`.
func TestTwoNodes(t *testing.T) {
	t.Parallel()
	_, a, b, seed := pair(t)
	a.writeConfig(nodeConf{addresses: tunA, seedFile: seed, peers: []peerConf{
		{name: "beta", endpoint: endpointB, allowed: allowB, publicKey: b.publicKey()},
	}})
	b.writeConfig(nodeConf{addresses: tunB, seedFile: seed, peers: []peerConf{
		{name: "alpha", allowed: allowA, publicKey: a.publicKey()},
	}})
	beforeA, beforeB := takeSnapshot(t, a.ns), takeSnapshot(t, b.ns)

	b.upDaemon()
	a.startForeground()

	for _, p := range []struct {
		from *node
		to   string
	}{
		{a, "10.99.0.2"}, {a, "fd99::2"}, {b, "10.99.0.1"}, {b, "fd99::1"},
	} {
		waitPing(t, p.from.ns, p.to)
	}

	transfer(t, a.ns, b.ns, "10.99.0.2", transferSize)
	transfer(t, b.ns, a.ns, "fd99::1", 8<<20)

	// status --json: the peer, a recent handshake and counters that saw the transfers.
	stA, stB := a.mustStatus(), b.mustStatus()
	if stA.Interface != linkName || stA.NodeName != "alpha" || stA.ListenPort != port {
		t.Errorf("alpha status header: %+v", stA)
	}
	if stA.PublicKey != a.publicKey() || stB.PublicKey != b.publicKey() {
		t.Errorf("status public keys %q, %q; want %q, %q (stt-tun pubkey)", stA.PublicKey, stB.PublicKey, a.publicKey(), b.publicKey())
	}
	now := time.Now()
	for _, c := range []struct {
		st       statusJSON
		peer     string
		key      string
		endpoint string
		txMin    uint64
		rxMin    uint64
	}{
		{stA, "beta", b.publicKey(), endpointB, transferSize, 8 << 20},
		{stB, "alpha", a.publicKey(), "10.231.0.1:51900", 8 << 20, transferSize},
	} {
		p := c.st.peer(t, c.peer)
		if p.Path != "udp" || p.Endpoint != c.endpoint {
			t.Errorf("%s's peer %s: path %q endpoint %q, want udp %s", c.st.NodeName, c.peer, p.Path, p.Endpoint, c.endpoint)
		}
		if p.PublicKey != c.key {
			t.Errorf("%s's peer %s: public key %q, want %q", c.st.NodeName, c.peer, p.PublicKey, c.key)
		}
		if age := now.Sub(p.LastHandshake); p.LastHandshake.IsZero() || age > 2*time.Minute || age < -5*time.Second {
			t.Errorf("%s's peer %s: last handshake %v (%v ago), want a recent one", c.st.NodeName, c.peer, p.LastHandshake, age)
		}
		if p.TxBytes < c.txMin || p.RxBytes < c.rxMin || p.TxPackets == 0 || p.RxPackets == 0 {
			t.Errorf("%s's peer %s: tx %d B/%d pkts, rx %d B/%d pkts; want tx >= %d B, rx >= %d B",
				c.st.NodeName, c.peer, p.TxBytes, p.TxPackets, p.RxBytes, p.RxPackets, c.txMin, c.rxMin)
		}
	}

	// status, text: all interfaces, and one by name.
	for _, args := range [][]string{{"status"}, {"status", linkName}} {
		out := a.mustStt(args...)
		for _, want := range []string{"interface: " + linkName, "node name: alpha", "public key: " + a.publicKey(), "udp " + endpointB} {
			if !strings.Contains(out, want) {
				t.Errorf("`stt-tun %s` lacks %q:\n%s", strings.Join(args, " "), want, out)
			}
		}
		var row string
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(strings.TrimSpace(l), "beta ") {
				row = l
			}
		}
		if row == "" || strings.Contains(row, "never") {
			t.Errorf("`stt-tun %s`: peer row for beta missing or without a handshake: %q\n%s", strings.Join(args, " "), row, out)
		}
	}

	a.down()
	b.down()
	sameSnapshot(t, a.ns, "alpha after down", beforeA)
	sameSnapshot(t, b.ns, "beta after down", beforeB)
	if r := a.stt("status", linkName); r.code == 0 {
		t.Errorf("status after down succeeded:\n%s", r.stdout)
	}
}

// TestSubnetRouter: a LAN behind beta is reachable from alpha through the tunnel,
// without NAT (the LAN routes alpha's tunnel addresses back via beta).
func TestSubnetRouter(t *testing.T) {
	t.Parallel()
	lab, a, b, seed := pair(t)
	lan := lab.NS("lan")
	lab.Link(b.ns, []string{"192.168.77.1/24", "fdaa:77::1/64"}, lan, []string{"192.168.77.2/24", "fdaa:77::2/64"})
	mustIn(t, lan, "ip", "route", "add", "10.99.0.0/24", "via", "192.168.77.1")
	mustIn(t, lan, "ip", "-6", "route", "add", "fd99::/64", "via", "fdaa:77::1")

	a.writeConfig(nodeConf{addresses: tunA, seedFile: seed, peers: []peerConf{
		{name: "beta", endpoint: endpointB, allowed: append([]string{"192.168.77.0/24", "fdaa:77::/64"}, allowB...)},
	}})
	b.writeConfig(nodeConf{addresses: tunB, seedFile: seed, forwarding: true, peers: []peerConf{
		{name: "alpha", allowed: allowA},
	}})
	// beta has no key yet: the daemon creates it on first start, mode 0600.
	if err := os.Remove(b.keyPath); err != nil {
		t.Fatal(err)
	}
	beforeA, beforeB := takeSnapshot(t, a.ns), takeSnapshot(t, b.ns)

	b.startForeground()
	a.startForeground()
	if fi, err := os.Stat(b.keyPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key created on first start: %v, %v; want mode 0600", fi, err)
	}
	if got := strings.TrimSpace(mustIn(t, b.ns, "sysctl", "-n", "net.ipv4.ip_forward")); got != "1" {
		t.Errorf("beta with [forwarding] enabled: net.ipv4.ip_forward = %s", got)
	}
	routes := mustIn(t, a.ns, "ip", "route", "show", "192.168.77.0/24")
	if !strings.Contains(routes, "dev "+linkName) {
		t.Errorf("alpha has no route to the LAN via %s: %q", linkName, routes)
	}

	waitPing(t, a.ns, "192.168.77.2")
	waitPing(t, a.ns, "fdaa:77::2")
	waitPing(t, lan, "10.99.0.1")
	waitPing(t, lan, "fd99::1")

	// The LAN sees alpha's own tunnel address: routed, not masqueraded.
	if got := remoteAddrSeen(t, a.ns, lan, "192.168.77.2"); got != netip.MustParseAddr("10.99.0.1") {
		t.Errorf("LAN saw a connection from alpha coming from %s, want 10.99.0.1", got)
	}
	if got := remoteAddrSeen(t, a.ns, lan, "fdaa:77::2"); got != netip.MustParseAddr("fd99::1") {
		t.Errorf("LAN saw a connection from alpha coming from %s, want fd99::1", got)
	}
	transfer(t, a.ns, lan, "192.168.77.2", 4<<20)

	a.down()
	b.down()
	sameSnapshot(t, a.ns, "alpha after down", beforeA)
	sameSnapshot(t, b.ns, "beta after down", beforeB)
}

// remoteAddrSeen connects from src to a listener in dst on host and returns the
// client address the listener saw.
func remoteAddrSeen(t *testing.T, src, dst *nslab.NS, host string) netip.Addr {
	t.Helper()
	ln, err := dst.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), reachTimeout)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	accepted := make(chan net.Addr, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c.RemoteAddr()
		c.Close()
	}()
	c, err := src.Dial(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("connect from %s to %s: %v", src, ln.Addr(), err)
	}
	defer c.Close()
	ra := <-accepted
	if ra == nil {
		t.Fatalf("listener in %s on %s accepted nothing", dst, ln.Addr())
	}
	ap, err := netip.ParseAddrPort(ra.String())
	if err != nil {
		t.Fatal(err)
	}
	return ap.Addr().Unmap()
}

// TestExitPeer: alpha sends everything through beta. The "internet" namespace is
// reachable only behind beta, which masquerades; alpha's own UDP to beta must keep
// using the underlay, and beta's endpoint is reachable only through alpha's default
// route, so without the fwmark rule the tunnel would route into itself. down, also
// after the daemon was SIGKILLed, must restore alpha's routes, rules, addresses and
// sysctls exactly; beta's down must remove its nftables table.
func TestExitPeer(t *testing.T) {
	t.Parallel()
	lab, a, b, seed := pair(t)
	inet := lab.NS("inet")
	lab.Link(b.ns, []string{"198.51.100.1/24", "2001:db8:51::1/64"}, inet, []string{"198.51.100.2/24", "2001:db8:51::2/64"})
	// beta's "public" address, reachable from alpha only via alpha's default route.
	const publicB = "10.233.0.2"
	mustIn(t, b.ns, "ip", "addr", "add", publicB+"/32", "dev", "lo")
	mustIn(t, a.ns, "ip", "route", "add", "default", "via", "10.231.0.2")
	mustIn(t, a.ns, "ip", "-6", "route", "add", "default", "via", "fd00:231::2")

	a.writeConfig(nodeConf{addresses: tunA, seedFile: seed, exitPeer: "beta", peers: []peerConf{
		{name: "beta", endpoint: publicB + ":51900", allowed: append([]string{"0.0.0.0/0", "::/0"}, allowB...)},
	}})
	b.writeConfig(nodeConf{addresses: tunB, seedFile: seed, forwarding: true, masquerade: true, peers: []peerConf{
		{name: "alpha", allowed: allowA},
	}})
	beforeA, beforeB := takeSnapshot(t, a.ns), takeSnapshot(t, b.ns)
	nftTable := "stt-tun-" + linkName

	b.startForeground()
	mustIn(t, b.ns, "nft", "list", "table", "inet", nftTable)

	a.startForeground()
	checkFullTunnel := func() {
		t.Helper()
		for _, fam := range []string{"-4", "-6"} {
			rules := mustIn(t, a.ns, "ip", fam, "rule")
			for _, want := range []string{"not from all fwmark 0x5354 lookup 5354", "from all lookup main suppress_prefixlength 0"} {
				if !strings.Contains(rules, want) {
					t.Errorf("alpha `ip %s rule` lacks %q:\n%s", fam, want, rules)
				}
			}
		}
		if got := mustIn(t, a.ns, "ip", "route", "get", "198.51.100.2"); !strings.Contains(got, "dev "+linkName) {
			t.Errorf("alpha routes the internet outside the tunnel: %s", got)
		}
		if got := mustIn(t, a.ns, "ip", "-6", "route", "get", "2001:db8:51::2"); !strings.Contains(got, "dev "+linkName) {
			t.Errorf("alpha routes the IPv6 internet outside the tunnel: %s", got)
		}
		if got := mustIn(t, a.ns, "ip", "route", "get", publicB, "mark", "0x5354"); strings.Contains(got, "dev "+linkName) {
			t.Errorf("alpha's marked tunnel packets to beta would loop into the tunnel: %s", got)
		}
	}
	checkFullTunnel()

	waitPing(t, a.ns, "10.99.0.2")
	waitPing(t, a.ns, "198.51.100.2")
	waitPing(t, a.ns, "2001:db8:51::2")
	if got := remoteAddrSeen(t, a.ns, inet, "198.51.100.2"); got != netip.MustParseAddr("198.51.100.1") {
		t.Errorf("internet saw alpha's connection coming from %s, want beta's 198.51.100.1", got)
	}
	if got := remoteAddrSeen(t, a.ns, inet, "2001:db8:51::2"); got != netip.MustParseAddr("2001:db8:51::1") {
		t.Errorf("internet saw alpha's IPv6 connection coming from %s, want beta's 2001:db8:51::1", got)
	}
	transfer(t, a.ns, inet, "198.51.100.2", 4<<20)
	if p := a.mustStatus().peer(t, "beta"); p.TxBytes < 4<<20 {
		t.Errorf("alpha sent %d bytes to beta; the exit traffic did not go through the tunnel", p.TxBytes)
	}

	a.down()
	sameSnapshot(t, a.ns, "alpha after down", beforeA)

	// Again, but the daemon dies without cleaning up; down undoes from the journal.
	a.startForeground()
	checkFullTunnel()
	waitPing(t, a.ns, "198.51.100.2")
	if err := a.proc.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := a.proc.Wait(); err == nil {
		t.Fatal("alpha's daemon exited cleanly on SIGKILL?")
	}
	a.proc = nil
	if _, err := os.Stat(filepath.Join(a.stateDir, linkName+".json")); err != nil {
		t.Errorf("no routing journal after the daemon was killed: %v", err)
	}
	if rules := mustIn(t, a.ns, "ip", "rule"); !strings.Contains(rules, "lookup 5354") {
		t.Fatalf("the killed daemon's rules are gone already; nothing left for down to undo:\n%s", rules)
	}
	stderr := a.down()
	if !strings.Contains(stderr, "journal") {
		t.Errorf("down after SIGKILL: stderr %q does not say it undid the routing from the journal", stderr)
	}
	sameSnapshot(t, a.ns, "alpha after SIGKILL and down", beforeA)

	b.down()
	if r := runIn(b.ns, "nft", "list", "table", "inet", nftTable); r.err == nil {
		t.Errorf("beta's nftables table %s still there after down:\n%s", nftTable, r.stdout)
	}
	sameSnapshot(t, b.ns, "beta after down", beforeB)
}

// TestSourceFilter: packets from beta with a source address outside what alpha allows
// for beta reach alpha's tunnel but never its TUN device; the same socket sees packets
// from beta's allowed address.
func TestSourceFilter(t *testing.T) {
	t.Parallel()
	_, a, b, seed := pair(t)
	// alpha also knows gamma (never started): beta must not borrow gamma's addresses.
	a.writeConfig(nodeConf{addresses: tunA, seedFile: seed, peers: []peerConf{
		{name: "beta", endpoint: endpointB, allowed: allowB},
		{name: "gamma", allowed: []string{"10.99.0.3/32", "fd99::3/128"}},
	}})
	b.writeConfig(nodeConf{addresses: tunB, seedFile: seed, peers: []peerConf{
		{name: "alpha", allowed: allowA},
	}})
	b.startForeground()
	a.startForeground()
	waitPing(t, a.ns, "10.99.0.2")
	waitPing(t, a.ns, "fd99::2")

	// beta gets addresses alpha does not allow for it: of no peer, and gamma's.
	for _, addr := range []string{"10.99.0.66/32", "10.99.0.3/32"} {
		mustIn(t, b.ns, "ip", "addr", "add", addr, "dev", linkName)
	}
	for _, addr := range []string{"fd99::66/128", "fd99::3/128"} {
		mustIn(t, b.ns, "ip", "addr", "add", addr, "dev", linkName, "nodad")
	}

	ln, err := a.ns.ListenPacket("udp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lport := ln.LocalAddr().(*net.UDPAddr).Port

	send := func(from, to, payload string, count int) {
		t.Helper()
		pc, err := b.ns.ListenPacket("udp", net.JoinHostPort(from, "0"))
		if err != nil {
			t.Fatalf("bind %s in beta: %v", from, err)
		}
		defer pc.Close()
		dst := &net.UDPAddr{IP: net.ParseIP(to), Port: lport}
		for i := 0; i < count; i++ {
			if _, err := pc.WriteTo([]byte(fmt.Sprintf("%s %d", payload, i)), dst); err != nil {
				t.Fatalf("send from %s to %s: %v", from, dst, err)
			}
		}
	}

	const n = 20
	st0 := a.mustStatus()
	rx0, drops0, denied0 := st0.peer(t, "beta").RxPackets, st0.peer(t, "beta").Drops, st0.Counters["tunnel_source_denied"]
	send("10.99.0.66", "10.99.0.1", "forbidden", n)
	send("fd99::66", "fd99::1", "forbidden", n)
	send("10.99.0.3", "10.99.0.1", "forbidden-as-gamma", n)
	send("fd99::3", "fd99::1", "forbidden-as-gamma", n)
	// They reached alpha's tunnel (received and decrypted from beta)...
	ctx, cancel := context.WithTimeout(context.Background(), reachTimeout)
	defer cancel()
	var rx uint64
	if err := nslab.WaitFor(ctx, func() bool {
		rx = a.mustStatus().peer(t, "beta").RxPackets
		return rx >= rx0+4*n
	}); err != nil {
		t.Fatalf("alpha received %d packets from beta, want at least %d: the forbidden packets never reached alpha, so this test proves nothing", rx-rx0, 4*n)
	}
	// ...then allowed ones follow; the listener must see only those.
	send("10.99.0.2", "10.99.0.1", "allowed4", 1)
	send("fd99::2", "fd99::1", "allowed6", 1)
	got := map[string]bool{}
	var leaked []string
	buf := make([]byte, 2048)
	deadline := time.Now().Add(reachTimeout)
	for !got["allowed4 0"] || !got["allowed6 0"] {
		ln.SetReadDeadline(deadline)
		k, from, err := ln.ReadFrom(buf)
		if err != nil {
			t.Fatalf("alpha's listener: %v; got %v", err, got)
		}
		msg := string(buf[:k])
		if strings.HasPrefix(msg, "forbidden") {
			leaked = append(leaked, fmt.Sprintf("%q from %s", msg, from))
		}
		got[msg] = true
	}
	if len(leaked) > 0 {
		t.Errorf("alpha delivered %d of %d packets whose source is outside beta's allowed prefixes %v, e.g. %s",
			len(leaked), 4*n, allowB, leaked[0])
	}
	// Each refused packet is counted once, against beta, the peer that sent it.
	st := a.mustStatus()
	if d := st.Counters["tunnel_source_denied"] - denied0; d != 4*n {
		t.Errorf("tunnel_source_denied rose by %d, want %d", d, 4*n)
	}
	if d := st.peer(t, "beta").Drops - drops0; d != 4*n {
		t.Errorf("beta's drops rose by %d, want %d", d, 4*n)
	}
	if d := st.peer(t, "gamma").Drops; d != 0 {
		t.Errorf("gamma's drops are %d, want 0: beta's spoofing is not gamma's", d)
	}
}

// TestBrokenConfigs: up refuses each broken file with one line on stderr that says
// where the problem is, and changes nothing.
func TestBrokenConfigs(t *testing.T) {
	t.Parallel()
	lab := newLab(t)
	ns := lab.NS("x")
	n := newNode(t, ns, "alpha")
	seed := seedFile(t)
	good := nodeConf{addresses: tunA, seedFile: seed, peers: []peerConf{
		{name: "beta", endpoint: endpointB, allowed: allowB},
	}}
	n.writeConfig(good)
	text, err := os.ReadFile(n.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(text), "\n")
	lineOf := func(prefix string) int {
		for i, l := range lines {
			if strings.HasPrefix(l, prefix) {
				return i
			}
		}
		t.Fatalf("no line %q in the config", prefix)
		return 0
	}
	// edit returns the config with line i replaced by repl, and repl's line number.
	edit := func(i int, repl string) (string, int) {
		out := append([]string(nil), lines...)
		out[i] = repl
		return strings.Join(out, "\n"), i + 1
	}
	unknown, unknownLine := edit(lineOf("listen_port"), "listenport = 51900")
	badPrefix, badPrefixLine := edit(lineOf("allowed_prefixes"), `allowed_prefixes = ["10.99.0.2/33"]`)
	hostBits, hostBitsLine := edit(lineOf("allowed_prefixes"), `allowed_prefixes = ["10.99.0.2/24"]`)

	loose := filepath.Join(t.TempDir(), "loose-seed")
	writeSecret(t, loose, mustRead(t, seed))
	if err := os.Chmod(loose, 0o644); err != nil {
		t.Fatal(err)
	}
	looseCfg := good
	looseCfg.seedFile = loose

	cases := []struct {
		name, config, want string
	}{
		{"unknown key", unknown, fmt.Sprintf("%s:%d:", n.cfgPath, unknownLine)},
		{"bad prefix", badPrefix, fmt.Sprintf("%s:%d:", n.cfgPath, badPrefixLine)},
		{"prefix with host bits", hostBits, fmt.Sprintf("%s:%d:", n.cfgPath, hostBitsLine)},
		{"world-readable seed", looseCfg.render(), "chmod 600 " + loose},
	}
	before := takeSnapshot(t, ns)
	for _, c := range cases {
		if c.name == "world-readable seed" {
			n.writeConfig(looseCfg)
		} else {
			writeSecret(t, n.cfgPath, c.config)
		}
		for _, fg := range []bool{false, true} {
			args := []string{"up", "-c", n.cfgPath}
			if fg {
				args = []string{"up", "--foreground", "-c", n.cfgPath}
			}
			r := n.stt(args...)
			what := fmt.Sprintf("%s: stt-tun %s", c.name, strings.Join(args, " "))
			if r.code == 0 || r.code == -1 {
				t.Errorf("%s: exit %d (%v), want a non-zero exit status", what, r.code, r.err)
			}
			errLine := strings.TrimRight(r.stderr, "\n")
			if fg {
				// The foreground daemon logs to stderr; the error is its last line.
				errLine = errLine[strings.LastIndex(errLine, "\n")+1:]
			} else if errLine == "" || strings.Contains(errLine, "\n") {
				t.Errorf("%s: stderr is not one line:\n%s", what, r.stderr)
			}
			if !strings.Contains(errLine, c.want) {
				t.Errorf("%s: stderr %q does not contain %q", what, errLine, c.want)
			}
			if strings.Contains(r.stderr, strings.TrimSpace(mustRead(t, seed))) {
				t.Errorf("%s: stderr shows the seed", what)
			}
			if pids := daemonPIDs(n.stateDir); len(pids) != 0 {
				t.Errorf("%s: daemon processes %v left running", what, pids)
			}
			for _, leftover := range []string{linkName + ".json", linkName + ".sock"} {
				if _, err := os.Stat(filepath.Join(n.stateDir, leftover)); err == nil {
					t.Errorf("%s: %s left in the state directory", what, leftover)
				}
			}
			sameSnapshot(t, ns, what, before)
		}
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestIPv6Underlay: the same tunnel, IPv4 and IPv6 inside, carried over an IPv6-only
// path between the nodes (the peer's endpoint is an IPv6 address).
func TestIPv6Underlay(t *testing.T) {
	t.Parallel()
	_, a, b, seed := pair(t)
	a.writeConfig(nodeConf{addresses: tunA, seedFile: seed, peers: []peerConf{
		{name: "beta", endpoint: "[fd00:231::2]:51900", allowed: allowB},
	}})
	b.writeConfig(nodeConf{addresses: tunB, seedFile: seed, peers: []peerConf{
		{name: "alpha", allowed: allowA},
	}})
	b.startForeground()
	a.startForeground()
	for _, to := range []string{"10.99.0.2", "fd99::2"} {
		waitPing(t, a.ns, to)
	}
	waitPing(t, b.ns, "10.99.0.1")
	transfer(t, a.ns, b.ns, "fd99::2", 4<<20)
	for _, st := range []statusJSON{a.mustStatus(), b.mustStatus()} {
		if len(st.Peers) != 1 || !strings.HasPrefix(st.Peers[0].Endpoint, "[fd00:231::") {
			t.Fatalf("%s: peer endpoint %+v, want the IPv6 underlay", st.NodeName, st.Peers)
		}
	}
}
