//go:build e2e

// Package e2e runs the stt-tun binary in network namespaces and checks what a network
// administrator would check: pings and transfers through the tunnel, subnet and exit
// routing, source filtering, `status`, that `down` leaves the machine as it was, and the
// WebSocket transport where UDP is blocked (directly, behind nginx, through tinyproxy,
// and switching paths under a running transfer).
//
// Run it with `make e2e` (as root). The tests use the binary that `make build` puts at
// bin/stt-tun; they never build it themselves, so that what is tested is what ships.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/internal/nslab"
)

const (
	// readyTimeout bounds how long a daemon may take to come up.
	readyTimeout = 20 * time.Second
	// reachTimeout bounds how long a path through the tunnel may take to start working
	// (the first handshake).
	reachTimeout = 15 * time.Second
	// cmdTimeout bounds one CLI invocation.
	cmdTimeout = 40 * time.Second
	// linkName is the tunnel interface in every node; each node is in its own namespace.
	linkName = "stt0"
	// port is every node's UDP listen port.
	port = 51900
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// binary returns the absolute path of bin/stt-tun under the repository root, or fails
// the test saying how to build it.
func binary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.Getwd()
		if err != nil {
			binErr = err
			return
		}
		for {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				break
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				binErr = errors.New("no go.mod above the test directory")
				return
			}
			dir = parent
		}
		p := filepath.Join(dir, "bin", "stt-tun")
		fi, err := os.Stat(p)
		if err != nil {
			binErr = fmt.Errorf("%s missing (run `make build` first, or `make e2e`): %w", p, err)
			return
		}
		if fi.Mode()&0o111 == 0 {
			binErr = fmt.Errorf("%s is not executable (run `make build`)", p)
			return
		}
		binPath = p
	})
	if binErr != nil {
		t.Fatalf("stt-tun binary: %v", binErr)
	}
	return binPath
}

// newLab is nslab.New plus a check that the binary exists, so a missing binary fails
// before any namespace is made.
func newLab(t *testing.T) *nslab.Lab {
	t.Helper()
	binary(t)
	return nslab.New(t)
}

// cli runs stt-tun with args in the host namespace; for commands that touch no network
// (genseed, genkey, pubkey).
func cli(t testing.TB, stdin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary(t), args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("stt-tun %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return strings.TrimSpace(string(out))
}

// result is one finished command.
type result struct {
	stdout, stderr string
	code           int
	err            error
}

// runIn runs a command inside ns with a timeout and returns its outputs separately.
func runIn(ns *nslab.NS, args ...string) result {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name()}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String(), err: err}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		r.code = -1
	}
	return r
}

// mustIn is runIn that fails the test on error and returns stdout.
func mustIn(t testing.TB, ns *nslab.NS, args ...string) string {
	t.Helper()
	r := runIn(ns, args...)
	if r.err != nil {
		t.Fatalf("in %s: %s: %v\nstdout: %s\nstderr: %s", ns, strings.Join(args, " "), r.err, r.stdout, r.stderr)
	}
	return r.stdout
}

// writeSecret writes a file with mode 0600.
func writeSecret(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o600); err != nil { // whatever the umask
		t.Fatal(err)
	}
}

// peerConf is one [[peer]] of a configuration.
type peerConf struct {
	name      string
	endpoint  string
	allowed   []string
	publicKey string
	// WebSocket: wsURL, and wsProxy, which is "none" unless given, so that a proxy in
	// the environment of the test cannot change what is tested.
	wsURL, wsProxy, wsCAFile string
	wsInsecure               bool
}

// wsConf is the [websocket] section; empty listen means none.
type wsConf struct {
	listen, path, cert, key string
}

// nodeConf is one node's configuration file.
type nodeConf struct {
	nodeName   string
	addresses  []string
	seedFile   string
	keyFile    string
	exitPeer   string
	killSwitch string // kill_switch = ..., when set
	mssClamp   string // mss_clamp = ..., when set
	forwarding bool
	masquerade bool
	noUDP      bool   // udp = false
	ws         wsConf // [websocket]
	// fallbackAfter and probeInterval go to [advanced] when set.
	fallbackAfter, probeInterval string
	peers                        []peerConf
	// extra is appended verbatim, for broken configurations.
	extra string
}

func quoteList(xs []string) string {
	q := make([]string, len(xs))
	for i, x := range xs {
		q[i] = strconv.Quote(x)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// render writes the configuration in the format of docs/configuration.md.
func (c nodeConf) render() string {
	var b strings.Builder
	fmt.Fprintf(&b, "[interface]\n")
	fmt.Fprintf(&b, "name = %q\n", linkName)
	fmt.Fprintf(&b, "node_name = %q\n", c.nodeName)
	fmt.Fprintf(&b, "addresses = %s\n", quoteList(c.addresses))
	if c.noUDP {
		fmt.Fprintf(&b, "udp = false\n")
	} else {
		fmt.Fprintf(&b, "listen_port = %d\n", port)
	}
	fmt.Fprintf(&b, "seed_file = %q\n", c.seedFile)
	fmt.Fprintf(&b, "key_file = %q\n", c.keyFile)
	if c.exitPeer != "" {
		fmt.Fprintf(&b, "exit_peer = %q\n", c.exitPeer)
	}
	if c.killSwitch != "" {
		fmt.Fprintf(&b, "kill_switch = %s\n", c.killSwitch)
	}
	if c.mssClamp != "" {
		fmt.Fprintf(&b, "mss_clamp = %s\n", c.mssClamp)
	}
	if c.ws.listen != "" {
		fmt.Fprintf(&b, "\n[websocket]\nlisten = %q\n", c.ws.listen)
		if c.ws.path != "" {
			fmt.Fprintf(&b, "path = %q\n", c.ws.path)
		}
		if c.ws.cert != "" {
			fmt.Fprintf(&b, "tls_cert = %q\ntls_key = %q\n", c.ws.cert, c.ws.key)
		}
	}
	if c.forwarding || c.masquerade {
		fmt.Fprintf(&b, "\n[forwarding]\nenabled = %t\nmasquerade = %t\n", c.forwarding, c.masquerade)
	}
	for _, p := range c.peers {
		fmt.Fprintf(&b, "\n[[peer]]\nname = %q\n", p.name)
		if p.endpoint != "" {
			fmt.Fprintf(&b, "endpoint = %q\n", p.endpoint)
		}
		fmt.Fprintf(&b, "allowed_prefixes = %s\n", quoteList(p.allowed))
		if p.publicKey != "" {
			fmt.Fprintf(&b, "public_key = %q\n", p.publicKey)
		}
		if p.wsURL != "" {
			proxy := p.wsProxy
			if proxy == "" {
				proxy = "none"
			}
			fmt.Fprintf(&b, "ws_url = %q\nws_proxy = %q\n", p.wsURL, proxy)
			if p.wsCAFile != "" {
				fmt.Fprintf(&b, "ws_ca_file = %q\n", p.wsCAFile)
			}
			if p.wsInsecure {
				fmt.Fprintf(&b, "ws_insecure = true\n")
			}
		}
	}
	if c.fallbackAfter != "" || c.probeInterval != "" {
		b.WriteString("\n[advanced]\n")
		if c.fallbackAfter != "" {
			fmt.Fprintf(&b, "fallback_after = %q\n", c.fallbackAfter)
		}
		if c.probeInterval != "" {
			fmt.Fprintf(&b, "probe_interval = %q\n", c.probeInterval)
		}
	}
	b.WriteString(c.extra)
	return b.String()
}

// node is one stt-tun node: a namespace, its files and, once up, its daemon.
type node struct {
	t        *testing.T
	ns       *nslab.NS
	name     string // node_name
	dir      string // seed, key and config files
	stateDir string
	cfgPath  string
	keyPath  string
	proc     *nslab.Proc // the --foreground daemon, if started so
}

// newNode prepares a node in ns: a private key made with `genkey` and an empty state
// directory. The seed is shared; pass the path of the one the network uses.
func newNode(t *testing.T, ns *nslab.NS, name string) *node {
	t.Helper()
	dir := t.TempDir()
	n := &node{
		t:        t,
		ns:       ns,
		name:     name,
		dir:      dir,
		stateDir: filepath.Join(t.TempDir(), "state"),
		cfgPath:  filepath.Join(dir, name+".toml"),
		keyPath:  filepath.Join(dir, name+".key"),
	}
	writeSecret(t, n.keyPath, cli(t, "", "genkey")+"\n")
	// Cleanups run last-registered first: stop the daemon before its temporary
	// directories (registered above) are removed, so that it can undo its routing
	// and remove its journal. The lab would stop it too, but only after that.
	t.Cleanup(func() {
		if n.proc != nil {
			n.proc.Stop()
		}
	})
	return n
}

// publicKey is the node's public key, from `stt-tun pubkey`.
func (n *node) publicKey() string {
	key, err := os.ReadFile(n.keyPath)
	if err != nil {
		n.t.Fatal(err)
	}
	return cli(n.t, string(key), "pubkey")
}

// writeConfig writes the node's configuration, filling in its name and key file.
func (n *node) writeConfig(c nodeConf) {
	n.t.Helper()
	c.nodeName = n.name
	c.keyFile = n.keyPath
	writeSecret(n.t, n.cfgPath, c.render())
}

// stt runs the binary inside the node's namespace with the node's state directory.
func (n *node) stt(args ...string) result {
	return runIn(n.ns, append([]string{binary(n.t), "--state-dir", n.stateDir}, args...)...)
}

// mustStt is stt that fails the test on a non-zero exit.
func (n *node) mustStt(args ...string) string {
	n.t.Helper()
	r := n.stt(args...)
	if r.err != nil {
		n.t.Fatalf("%s: stt-tun %s: %v\nstdout: %s\nstderr: %s", n.name, strings.Join(args, " "), r.err, r.stdout, r.stderr)
	}
	return r.stdout
}

// startBetaWithGhost configures alpha with beta and a peer "ghost" whose endpoint name
// never resolves, configures beta with alpha, and starts beta; it returns alpha's two
// peers for configurations built on them.
func startBetaWithGhost(a, b *node, seed string) (ghost, beta peerConf) {
	a.t.Helper()
	ghost = peerConf{name: "ghost", endpoint: "ghost.stt-tun.invalid:51900", allowed: []string{"10.99.0.7/32"}}
	beta = peerConf{name: "beta", endpoint: endpointB, allowed: allowB}
	a.writeConfig(nodeConf{addresses: tunA, seedFile: seed, peers: []peerConf{ghost, beta}})
	b.writeConfig(nodeConf{addresses: tunB, seedFile: seed, peers: []peerConf{{name: "alpha", allowed: allowA}}})
	b.startForeground()
	return ghost, beta
}

// startForeground runs `stt-tun up --foreground -c FILE` in the node's namespace as a
// process the lab owns, and waits until it is up.
func (n *node) startForeground() {
	n.t.Helper()
	n.proc = n.ns.Start(binary(n.t), "--state-dir", n.stateDir, "up", "--foreground", "-c", n.cfgPath)
	n.waitUp()
}

// upDaemon runs the daemonizing `stt-tun up -c FILE`, which returns once the interface
// is up, and registers a cleanup that takes it down and, failing that, kills the
// daemon by the PID found for this node's (unique) state directory. It returns what up
// wrote to stderr (its warnings).
func (n *node) upDaemon() string {
	n.t.Helper()
	n.t.Cleanup(func() {
		if len(daemonPIDs(n.stateDir)) == 0 {
			return
		}
		n.stt("down", linkName)
		// down returns once the daemon released its lock; the process may take a
		// moment more to exit.
		exit, cancelExit := context.WithTimeout(context.Background(), 5*time.Second)
		_ = nslab.WaitFor(exit, func() bool { return len(daemonPIDs(n.stateDir)) == 0 })
		cancelExit()
		for _, pid := range daemonPIDs(n.stateDir) {
			n.t.Errorf("%s: daemon %d still running after down; killing it", n.name, pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = nslab.WaitFor(ctx, func() bool { return len(daemonPIDs(n.stateDir)) == 0 })
	})
	r := n.stt("up", "-c", n.cfgPath)
	if r.err != nil {
		n.t.Fatalf("%s: stt-tun up: %v\nstdout: %s\nstderr: %s", n.name, r.err, r.stdout, r.stderr)
	}
	if pids := daemonPIDs(n.stateDir); len(pids) != 1 {
		n.t.Fatalf("%s: after up, want 1 daemon process with --state-dir %s, found %v", n.name, n.stateDir, pids)
	}
	// up returned, so the interface must be up already: no waiting here.
	if st, err := n.status(); err != nil || st.PublicKey == "" {
		n.t.Fatalf("%s: daemonized up returned but status is not ready: %+v, %v", n.name, st, err)
	}
	n.checkLinkAddrs()
	return r.stderr
}

// daemonLog is what the node's daemon logged: a foreground daemon's output, or the
// log file of one that up started.
func (n *node) daemonLog() string {
	if n.proc != nil {
		return n.proc.Output()
	}
	b, _ := os.ReadFile(filepath.Join(n.stateDir, linkName+".log"))
	return string(b)
}

// daemonPIDs returns the processes whose command line names stateDir: the daemons (and
// any CLI) of one node. State directories are unique temporary directories, so these
// are processes this test started.
func daemonPIDs(stateDir string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(raw), "\x00")
		for i := 0; i+1 < len(args); i++ {
			if args[i] == "--state-dir" && args[i+1] == stateDir && containsArg(args, "up") {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

func containsArg(args []string, s string) bool {
	for _, a := range args {
		if a == s {
			return true
		}
	}
	return false
}

// status is `stt-tun status --json stt0`, decoded.
func (n *node) status() (statusJSON, error) {
	var st statusJSON
	r := n.stt("status", "--json", linkName)
	if r.err != nil {
		return st, fmt.Errorf("status: %v: %s", r.err, strings.TrimSpace(r.stderr))
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		return st, fmt.Errorf("status --json: %v in %q", err, r.stdout)
	}
	return st, nil
}

func (n *node) mustStatus() statusJSON {
	n.t.Helper()
	st, err := n.status()
	if err != nil {
		n.t.Fatalf("%s: %v", n.name, err)
	}
	return st
}

// waitUp polls `status --json` until the daemon reports a running tunnel (a starting
// daemon answers with its name only), and fails if the foreground daemon exits first.
func (n *node) waitUp() {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	var exited bool
	var last error
	err := nslab.WaitFor(ctx, func() bool {
		if n.proc != nil {
			select {
			case <-n.proc.Done():
				exited = true
				return true
			default:
			}
		}
		st, err := n.status()
		last = err
		return err == nil && st.PublicKey != "" && len(st.Addresses) > 0
	})
	if exited {
		n.t.Fatalf("%s: daemon exited while starting: %v\n%s", n.name, n.proc.Wait(), n.proc.Output())
	}
	if err != nil {
		n.t.Fatalf("%s: not up within %v: %v (last status error: %v)", n.name, readyTimeout, err, last)
	}
	n.checkLinkAddrs()
}

// checkLinkAddrs checks that the tunnel link exists and carries the status' addresses.
func (n *node) checkLinkAddrs() {
	n.t.Helper()
	st := n.mustStatus()
	out := mustIn(n.t, n.ns, "ip", "-o", "addr", "show", "dev", linkName)
	for _, a := range st.Addresses {
		if !strings.Contains(out, " "+a+" ") {
			n.t.Fatalf("%s: link %s lacks address %s:\n%s", n.name, linkName, a, out)
		}
	}
}

// down runs `stt-tun down stt0` and, for a foreground daemon, checks that it exits 0.
// It returns the command's stderr.
func (n *node) down() string {
	n.t.Helper()
	r := n.stt("down", linkName)
	if r.err != nil {
		n.t.Fatalf("%s: stt-tun down: %v\nstdout: %s\nstderr: %s", n.name, r.err, r.stdout, r.stderr)
	}
	if n.proc != nil {
		select {
		case <-n.proc.Done():
		case <-time.After(readyTimeout):
			n.t.Fatalf("%s: foreground daemon still running %v after down returned", n.name, readyTimeout)
		}
		if err := n.proc.Wait(); err != nil {
			n.t.Errorf("%s: foreground daemon exited with %v after down:\n%s", n.name, err, n.proc.Output())
		}
		n.proc = nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if err := nslab.WaitFor(ctx, func() bool { return len(daemonPIDs(n.stateDir)) == 0 }); err != nil {
		n.t.Fatalf("%s: daemon processes %v still running after down", n.name, daemonPIDs(n.stateDir))
	}
	if _, err := os.Stat(filepath.Join(n.stateDir, linkName+".json")); !errors.Is(err, os.ErrNotExist) {
		n.t.Errorf("%s: routing journal still present after down (stat: %v)", n.name, err)
	}
	if r := runIn(n.ns, "ip", "link", "show", "dev", linkName); r.err == nil {
		n.t.Errorf("%s: link %s still exists after down:\n%s", n.name, linkName, r.stdout)
	}
	return r.stderr
}

// statusJSON mirrors status.Status as `status --json` prints it. It is decoded from
// the JSON, not shared with the Go type, so that a renamed field fails here.
type statusJSON struct {
	State      string            `json:"state"`
	Interface  string            `json:"interface"`
	NodeName   string            `json:"node_name"`
	PublicKey  string            `json:"public_key"`
	ListenPort int               `json:"listen_port"`
	MTU        int               `json:"mtu"`
	Addresses  []string          `json:"addresses"`
	Peers      []peerJSON        `json:"peers"`
	Counters   map[string]uint64 `json:"counters"`
}

type peerJSON struct {
	Name            string    `json:"name"`
	PublicKey       string    `json:"public_key"`
	Endpoint        string    `json:"endpoint"`
	EndpointError   string    `json:"endpoint_error"`
	Path            string    `json:"path"`
	AllowedPrefixes []string  `json:"allowed_prefixes"`
	LastHandshake   time.Time `json:"last_handshake"`
	RTT             float64   `json:"rtt_ms"`
	TxBytes         uint64    `json:"tx_bytes"`
	RxBytes         uint64    `json:"rx_bytes"`
	TxPackets       uint64    `json:"tx_packets"`
	RxPackets       uint64    `json:"rx_packets"`
	Drops           uint64    `json:"drops"`
	Refused         string    `json:"refused"`
}

func (s statusJSON) peer(t testing.TB, name string) peerJSON {
	t.Helper()
	for _, p := range s.Peers {
		if p.Name == name {
			return p
		}
	}
	t.Fatalf("status of %s has no peer %q: %+v", s.NodeName, name, s.Peers)
	return peerJSON{}
}

// waitPing pings addr from ns until a reply comes or reachTimeout passes: the first
// packets may wait for a handshake.
func waitPing(t testing.TB, ns *nslab.NS, addr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), reachTimeout)
	defer cancel()
	var last error
	if err := nslab.WaitFor(ctx, func() bool { last = ns.Ping(addr); return last == nil }); err != nil {
		t.Fatalf("ping %s from %s: no reply within %v: %v", addr, ns, reachTimeout, last)
	}
}

// snapshot is what `down` must leave exactly as it found it in one namespace.
type snapshot map[string]string

var snapshotCmds = [][]string{
	{"ip", "addr"},
	{"ip", "link"},
	{"ip", "route", "show", "table", "all"},
	{"ip", "-6", "route", "show", "table", "all"},
	{"ip", "rule"},
	{"ip", "-6", "rule"},
	{"nft", "list", "ruleset"},
	{"sysctl", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding", "net.ipv4.conf.all.src_valid_mark"},
}

func takeSnapshot(t testing.TB, ns *nslab.NS) snapshot {
	t.Helper()
	s := snapshot{}
	for _, c := range snapshotCmds {
		s[strings.Join(c, " ")] = mustIn(t, ns, c...)
	}
	return s
}

// sameSnapshot fails the test for every dump that differs from before.
func sameSnapshot(t testing.TB, ns *nslab.NS, what string, before snapshot) {
	t.Helper()
	after := takeSnapshot(t, ns)
	for _, c := range snapshotCmds {
		k := strings.Join(c, " ")
		if before[k] != after[k] {
			t.Errorf("%s: in %s, `%s` differs from before up:\n--- before\n%s--- after\n%s", what, ns, k, before[k], after[k])
		}
	}
}
