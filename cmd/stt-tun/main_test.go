package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/internal/ctl"
	"github.com/stt-tun/stt-tun/internal/status"
	"github.com/stt-tun/stt-tun/tunnel"
)

var update = flag.Bool("update", false, "rewrite golden files")

// daemonEnvVar makes the test binary act as stt-tun with a fake tunnel, so that `up`
// can start it as its background daemon through /proc/self/exe.
const daemonEnvVar = "STT_TUN_TEST_FAKE_DAEMON"

// notRootEnvVar makes that daemon act as if it did not run as root, and logMaxEnvVar
// sets the cap of its log.
const (
	notRootEnvVar = "STT_TUN_TEST_NOT_ROOT"
	logMaxEnvVar  = "STT_TUN_TEST_LOG_MAX"
)

func TestMain(m *testing.M) {
	if os.Getenv(daemonEnvVar) != "" {
		e := defaultEnv()
		e.start = fakeStart(nil)
		e.undo = func(string, string) error { return errors.New("undo not faked in the daemon") }
		if os.Getenv(notRootEnvVar) != "" {
			notRoot = func() bool { return true }
		}
		if n, err := strconv.ParseInt(os.Getenv(logMaxEnvVar), 10, 64); err == nil {
			maxLogSize = n
		}
		os.Exit(run(context.Background(), append([]string{"stt-tun"}, os.Args[1:]...), e))
	}
	os.Exit(m.Run())
}

// fakeTunnel stands in for *tunnel.Tunnel.
type fakeTunnel struct {
	status status.Status
	done   chan struct{}
	once   sync.Once
	mu     sync.Mutex
	err    error
	closed bool
}

func (f *fakeTunnel) Status() status.Status { return f.status }
func (f *fakeTunnel) Done() <-chan struct{} { return f.done }
func (f *fakeTunnel) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}
func (f *fakeTunnel) Close() error {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.once.Do(func() { close(f.done) })
	return nil
}

// die makes the tunnel stop by itself with err.
func (f *fakeTunnel) die(err error) {
	f.mu.Lock()
	f.err = err
	f.mu.Unlock()
	f.once.Do(func() { close(f.done) })
}

func (f *fakeTunnel) isClosed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed
}

// fakeStart starts fake tunnels whose behaviour the config's node_name selects:
// "fail" fails to start, "crash" exits the process, "hang" blocks until ctx ends, and
// anything else comes up. Started tunnels are sent on started, if it is not nil.
func fakeStart(started chan<- *fakeTunnel) func(context.Context, *config.Config, tunnel.Options) (daemonTunnel, error) {
	return func(ctx context.Context, cfg *config.Config, opts tunnel.Options) (daemonTunnel, error) {
		switch cfg.Interface.NodeName {
		case "fail":
			return nil, fmt.Errorf("create tun device: %w", syscall.EPERM)
		case "crash":
			os.Exit(3)
		case "hang":
			if started != nil {
				started <- nil
			}
			<-ctx.Done()
			return nil, fmt.Errorf("resolve peer endpoint: %w", ctx.Err())
		}
		var addrs []string
		for _, a := range cfg.Interface.Addresses {
			addrs = append(addrs, a.String())
		}
		f := &fakeTunnel{
			status: status.Status{
				Interface:  cfg.Interface.Name,
				NodeName:   cfg.Interface.NodeName,
				ListenPort: cfg.Interface.ListenPort,
				MTU:        cfg.Interface.MTU,
				Addresses:  addrs,
			},
			done: make(chan struct{}),
		}
		if started != nil {
			started <- f
		}
		return f, nil
	}
}

// harness runs the CLI in this process against a temporary state and config directory.
type harness struct {
	t        *testing.T
	dir      string // state directory and config directory
	started  chan *fakeTunnel
	undo     func(stateDir, link string) error
	linkFree func(name string) error // nil: no link is in the way
	// killSwitch fakes routing.HoldsKillSwitch; nil reports none.
	killSwitch func(stateDir, link string) (bool, error)
	undoneMu   sync.Mutex
	undone     []string
}

func newHarness(t *testing.T) *harness {
	dir := t.TempDir()
	t.Setenv("STT_TUN_STATE_DIR", dir)
	t.Setenv("STT_TUN_CONFIG_DIR", dir)
	h := &harness{t: t, dir: dir, started: make(chan *fakeTunnel, 4)}
	h.undo = func(string, string) error { return fmt.Errorf("routing: undo: %w", fs.ErrNotExist) }
	seed, err := config.GenerateSeed()
	if err != nil {
		t.Fatal(err)
	}
	h.write("seed", config.EncodeKey(seed)+"\n")
	return h
}

func (h *harness) write(name, content string) string {
	h.t.Helper()
	p := filepath.Join(h.dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		h.t.Fatal(err)
	}
	return p
}

// writeConfig writes NAME.toml for interface link with the given node name.
func (h *harness) writeConfig(name, link, node string) string {
	return h.write(name+".toml", fmt.Sprintf(`[interface]
name = %q
node_name = %q
addresses = ["10.99.0.1/24"]
seed_file = "seed"
key_file = "%s.key"
`, link, node, name))
}

type result struct {
	code           int
	stdout, stderr string
}

func (h *harness) run(stdin string, args ...string) result {
	h.t.Helper()
	return h.runContext(context.Background(), stdin, args...)
}

func (h *harness) runContext(ctx context.Context, stdin string, args ...string) result {
	var stdout, stderr bytes.Buffer
	e := defaultEnv()
	e.stdin = strings.NewReader(stdin)
	e.stdout = &stdout
	e.stderr = &stderr
	e.start = fakeStart(h.started)
	e.undo = func(stateDir, link string) error {
		h.undoneMu.Lock()
		h.undone = append(h.undone, link)
		h.undoneMu.Unlock()
		return h.undo(stateDir, link)
	}
	e.killSwitch = func(stateDir, link string) (bool, error) {
		if h.killSwitch == nil {
			return false, fmt.Errorf("routing: %s: %w", link, fs.ErrNotExist)
		}
		return h.killSwitch(stateDir, link)
	}
	e.linkFree = func(name string) error {
		if h.linkFree == nil {
			return nil
		}
		return h.linkFree(name)
	}
	code := run(ctx, append([]string{"stt-tun"}, args...), e)
	return result{code, stdout.String(), stderr.String()}
}

// checkOneLineError fails unless r is a failure with one stderr line "stt-tun: want...".
func checkOneLineError(t *testing.T, r result, code int, want string) {
	t.Helper()
	if r.code != code {
		t.Errorf("exit status %d, want %d (stderr %q)", r.code, code, r.stderr)
	}
	if !strings.HasPrefix(r.stderr, "stt-tun: ") || strings.Count(r.stderr, "\n") != 1 ||
		!strings.HasSuffix(r.stderr, "\n") {
		t.Errorf("stderr is not one line \"stt-tun: ...\": %q", r.stderr)
	}
	if !strings.Contains(r.stderr, want) {
		t.Errorf("stderr %q does not contain %q", r.stderr, want)
	}
	if r.stdout != "" {
		t.Errorf("stdout not empty on error: %q", r.stdout)
	}
}

func decode32(t *testing.T, s string) []byte {
	t.Helper()
	if !strings.HasSuffix(s, "\n") || strings.Count(s, "\n") != 1 {
		t.Fatalf("output %q is not one line", s)
	}
	b, err := base64.StdEncoding.DecodeString(strings.TrimSuffix(s, "\n"))
	if err != nil || len(b) != 32 {
		t.Fatalf("output %q is not 32 bytes of base64 (%d bytes, %v)", s, len(b), err)
	}
	return b
}

func TestGenseedAndGenkey(t *testing.T) {
	h := newHarness(t)
	for _, cmd := range []string{"genseed", "genkey"} {
		a, b := h.run("", cmd), h.run("", cmd)
		if a.code != 0 || b.code != 0 || a.stderr != "" {
			t.Fatalf("%s: %+v", cmd, a)
		}
		if cmd == "genkey" {
			// A new key is an Ed25519 seed: "ed25519:" and 44 characters of base64.
			for _, r := range []*result{&a, &b} {
				rest, ok := strings.CutPrefix(r.stdout, "ed25519:")
				if !ok {
					t.Fatalf("genkey printed %q, want ed25519:BASE64", r.stdout)
				}
				r.stdout = rest
			}
		}
		if bytes.Equal(decode32(t, a.stdout), decode32(t, b.stdout)) {
			t.Errorf("%s printed the same value twice", cmd)
		}
	}
}

// TestPubkeyReadsBothFormats: pubkey prints the X25519 public key derived from an
// ed25519 key file, and the X25519 public key of a legacy one.
func TestPubkeyReadsBothFormats(t *testing.T) {
	h := newHarness(t)
	k, _ := config.GenerateNodeKey()
	r := h.run(k.Encode()+"\n", "pubkey")
	if want := config.EncodeKey(config.PublicKey(config.X25519FromEd25519Seed(k.Ed25519Seed))) + "\n"; r.code != 0 || r.stdout != want {
		t.Errorf("pubkey of an ed25519 key = %+v, want %q", r, want)
	}
	x, _ := config.GenerateKey()
	r = h.run(config.EncodeKey(x), "pubkey")
	if want := config.EncodeKey(config.PublicKey(x)) + "\n"; r.code != 0 || r.stdout != want {
		t.Errorf("pubkey of a legacy key = %+v, want %q", r, want)
	}
	r = h.run("ed25519:"+config.EncodeKey(k.Ed25519Seed)[:40], "pubkey")
	checkOneLineError(t, r, 1, "read private key: ed25519 key is 40 characters long")
	if strings.Contains(r.stderr, config.EncodeKey(k.Ed25519Seed)[:20]) {
		t.Errorf("error reveals the key: %q", r.stderr)
	}
}

func TestPubkeyOfGenkey(t *testing.T) {
	h := newHarness(t)
	priv := h.run("", "genkey")
	pub := h.run(priv.stdout, "pubkey")
	if pub.code != 0 || pub.stderr != "" {
		t.Fatalf("pubkey: %+v", pub)
	}
	decode32(t, pub.stdout)
	if pub.stdout == priv.stdout {
		t.Error("public key equals private key")
	}
}

func TestPubkeyKnownAnswer(t *testing.T) {
	// RFC 7748, section 6.1: Alice's private and public key.
	priv, _ := hex.DecodeString("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
	pub, _ := hex.DecodeString("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
	h := newHarness(t)
	r := h.run("  "+base64.StdEncoding.EncodeToString(priv)+"\n\n", "pubkey")
	if want := base64.StdEncoding.EncodeToString(pub) + "\n"; r.code != 0 || r.stdout != want {
		t.Fatalf("pubkey = %+v, want stdout %q", r, want)
	}
}

func TestErrors(t *testing.T) {
	h := newHarness(t)
	h.write("bad.toml", "[interface]\nname = \"stt9\"\nlistenport = 1\n")
	valid := h.writeConfig("alpha", "stt9", "alpha")
	for _, tc := range []struct {
		name  string
		stdin string
		args  []string
		code  int
		want  string
	}{
		{"bad global flag", "", []string{"--bogus"}, 2, "flag provided but not defined: -bogus"},
		{"bad command flag", "", []string{"up", "--bogus", "alpha"}, 2, "up: flag provided but not defined: -bogus (see 'stt-tun up --help')"},
		{"unknown command", "", []string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{"up without NAME", "", []string{"up"}, 2, "up: missing NAME or -c FILE"},
		{"up NAME and file", "", []string{"up", "-c", valid, "alpha"}, 2, "give NAME or -c FILE, not both"},
		{"up two NAMEs", "", []string{"up", "alpha", "beta"}, 2, "one NAME at a time"},
		{"status flag after NAME", "", []string{"status", "stt9", "--json"}, 1, "stt9 is not up"},
		{"up bad log level", "", []string{"up", "--log-level", "loud", "alpha"}, 2, `--log-level "loud"`},
		{"up unknown NAME", "", []string{"up", "nope"}, 1, "nope: no configuration " + filepath.Join(h.dir, "nope.toml")},
		{"up missing file", "", []string{"up", "-c", filepath.Join(h.dir, "missing.toml")}, 1, "missing.toml: no such file or directory"},
		{"down not up", "", []string{"down", "stt9"}, 1, "stt9 is not up"},
		{"down NAME of config not up", "", []string{"down", "alpha"}, 1, "stt9 is not up"},
		{"status not up", "", []string{"status", "stt9"}, 1, "stt9 is not up"},
		{"pubkey empty", "", []string{"pubkey"}, 1, "stdin is empty"},
		{"pubkey bad", "not a key\n", []string{"pubkey"}, 1, "read private key: key is 9 characters long"},
		{"pubkey argument", "", []string{"pubkey", "x"}, 2, "pubkey takes no arguments"},
		{"version argument", "", []string{"version", "x"}, 2, "version takes no arguments"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := h.run(tc.stdin, tc.args...)
			checkOneLineError(t, r, tc.code, tc.want)
		})
	}
}

// TestConfigErrorsOnePerLine: a configuration's problems are printed one FILE:LINE:
// message per line, as docs/configuration.md shows, not joined into one line.
func TestConfigErrorsOnePerLine(t *testing.T) {
	h := newHarness(t)
	bad := h.write("bad.toml", "[interface]\nname = \"stt9\"\nlistenport = 1\n")
	want := []string{
		bad + `:1: interface: seed_file is required`,
		bad + `:1: interface: key_file is required`,
		bad + `:3: unknown key "listenport" in [interface]; did you mean listen_port?`,
	}
	for _, args := range [][]string{{"up", "-c", bad}, {"up", "--foreground", "-c", bad}, {"down", "-c", bad}, {"reload", "bad"}} {
		r := h.run("", args...)
		lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
		if r.code != 1 || r.stdout != "" || len(lines) != len(want) {
			t.Errorf("%v: %+v, want the %d problems on lines of their own", args, r, len(want))
			continue
		}
		for i, l := range lines {
			if !strings.HasPrefix(l, want[i]) {
				t.Errorf("%v: line %d is %q, want it to begin %q", args, i+1, l, want[i])
			}
		}
	}
	// One problem is one line, in the same form.
	one := h.write("one.toml", "[interface]\nname = \"stt9\"\nseed_file = \"seed\"\nkey_file = \"k\"\nlistenport = 1\n")
	if r := h.run("", "up", "-c", one); r.code != 1 || !strings.HasPrefix(r.stderr, one+`:5: unknown key "listenport"`) || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("one problem: %+v", r)
	}
}

// TestVersionFlagMatchesVersionCommand: `stt-tun --version` prints the line `stt-tun
// version` prints, not urfave/cli's own.
func TestVersionFlagMatchesVersionCommand(t *testing.T) {
	h := newHarness(t)
	want := h.run("", "version")
	for _, flag := range []string{"--version", "-v"} {
		if r := h.run("", flag); r.code != 0 || r.stdout != want.stdout || r.stdout != "stt-tun "+versionString()+"\n" {
			t.Errorf("%s printed %q, version printed %q", flag, r.stdout, want.stdout)
		}
	}
}

// TestTunPermissionErrorSaysNeedsRoot: without root, creating the TUN device fails
// with a permission error, and `up` says that stt-tun needs root, also when the
// error comes from a background daemon, as text over its readiness pipe.
func TestTunPermissionErrorSaysNeedsRoot(t *testing.T) {
	h := newHarness(t)
	t.Setenv(daemonEnvVar, "1")
	t.Setenv(notRootEnvVar, "1")
	saved := notRoot
	notRoot = func() bool { return true }
	t.Cleanup(func() { notRoot = saved })
	cfg := h.writeConfig("failing", "stt8", "fail")
	const want = "start stt8: create tun device: operation not permitted (stt-tun needs root)"
	r := h.run("", "up", "failing")
	checkOneLineError(t, r, 1, want)
	if strings.Count(r.stderr, "needs root") != 1 {
		t.Errorf("hint repeated: %q", r.stderr)
	}
	r = h.run("", "up", "--foreground", "-c", cfg)
	if r.code != 1 || !strings.HasSuffix(r.stderr, "stt-tun: "+want+"\n") {
		t.Errorf("up --foreground: %+v", r)
	}
}

func TestHelpHasExamples(t *testing.T) {
	h := newHarness(t)
	for _, cmd := range newApp(defaultEnv()).Commands {
		r := h.run("", cmd.Name, "--help")
		if r.code != 0 || !strings.Contains(r.stdout, "Example") {
			t.Errorf("%s --help: exit %d, no example in:\n%s", cmd.Name, r.code, r.stdout)
		}
	}
	if r := h.run("", "--help"); r.code != 0 || !strings.Contains(r.stdout, "Example") {
		t.Errorf("--help: exit %d, no example in:\n%s", r.code, r.stdout)
	}
}

func TestVersion(t *testing.T) {
	h := newHarness(t)
	if r := h.run("", "version"); r.code != 0 || !strings.HasPrefix(r.stdout, "stt-tun ") {
		t.Errorf("version: %+v", r)
	}
}

func sampleStatus() []status.Status {
	now := sampleNow()
	return []status.Status{
		{
			State:      status.StateUp,
			Interface:  "stt0",
			NodeName:   "alpha",
			PublicKey:  "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=",
			ListenPort: 51900,
			MTU:        1420,
			Addresses:  []string{"10.99.0.1/24", "fd99::1/64"},
			Counters: map[string]uint64{
				"handshakes_started": 9, "handshakes_completed": 7, "drop_replay": 3,
				"drop_bad_mac1": 12, "drop_auth": 0, "tunnel_no_route": 3, "drop_refused": 2,
			},
			Peers: []status.Peer{
				{
					Name: "beta", Endpoint: "192.0.2.2:51900", Path: "udp",
					AllowedPrefixes: []string{"10.99.0.2/32", "192.168.50.0/24"},
					LastHandshake:   now.Add(-12 * time.Second), RTT: 1.234,
					TxBytes: 1536, RxBytes: 3 << 20, TxPackets: 1, RxPackets: 2400, Drops: 0,
					PathMTU: 1440, PathMTUDatagram: 1472, PathMTUState: "confirmed",
				},
				{
					Name: "gamma", Endpoint: "wss://relay.example.net/stt", Path: "ws",
					AllowedPrefixes: []string{"10.99.0.3/32"},
					LastHandshake:   now.Add(-(2*time.Hour + 5*time.Minute)), RTT: 48.25,
					TxBytes: 5 << 30, RxBytes: 999, TxPackets: 4000000, RxPackets: 7, Drops: 12,
				},
				{
					Name: "delta", Path: "none", Endpoint: "192.0.2.4:51900", Refused: "unknown_peer",
				},
				{
					Name: "epsilon", Path: "none", AllowedPrefixes: []string{"10.99.0.5/32"},
					EndpointError: `resolve endpoint "epsilon.example.net:51900": lookup epsilon.example.net: no such host`,
				},
			},
		},
		{
			State:      status.StateUp,
			Interface:  "stt1",
			NodeName:   "alpha-lab",
			ListenPort: 0,
			MTU:        1280,
		},
		{
			State:     status.StateStarting,
			Interface: "stt2",
			NodeName:  "alpha-starting",
		},
	}
}

func sampleNow() time.Time { return time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC) }

func TestStatusRenderGolden(t *testing.T) {
	var b bytes.Buffer
	// The status of one whose daemon is gone is listed after the running ones.
	all := append([]status.Status{goneStatus("stt3")}, sampleStatus()...)
	all = append(all, sampleMeshStatus())
	if err := renderStatus(&b, all, DefaultStateDir, sampleNow()); err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "status.golden", "status rendering", b.Bytes())
}

// checkGolden holds got to testdata/name (go test -update rewrites it).
func checkGolden(t *testing.T, name, what string, got []byte) {
	t.Helper()
	golden := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Errorf("%s differs from %s (go test -update rewrites it):\n%s\nwant:\n%s", what, golden, got, want)
	}
}

func TestFormatHelpers(t *testing.T) {
	now := sampleNow()
	for _, tc := range []struct{ got, want string }{
		{ago(time.Time{}, now), "never"},
		{ago(now.Add(time.Second/2), now), "now"},
		{ago(now.Add(-59*time.Second), now), "59s ago"},
		{ago(now.Add(-61*time.Second), now), "1m 1s ago"},
		{ago(now.Add(-25*time.Hour), now), "1d 1h ago"},
		{humanBytes(0), "0 B"},
		{humanBytes(1023), "1023 B"},
		{humanBytes(1024), "1.00 KiB"},
		{humanBytes(1536 << 20), "1.50 GiB"},
		{rtt(0), "-"},
		{rtt(0.25), "0.25 ms"},
		{rtt(250), "250 ms"},
		{traffic(10, 1), "10 B (1 pkt)"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

// ctlFake serves a fixed status on a control socket, as a daemon would.
type ctlFake struct{ st status.Status }

func (f ctlFake) Status() status.Status { return f.st }
func (f ctlFake) Shutdown()             {}

func serveFake(t *testing.T, dir string, st status.Status) {
	t.Helper()
	srv, err := ctl.Listen(dir, st.Interface, nil)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ctlFake{st})
	t.Cleanup(func() { srv.Close() })
}

// staleSocket leaves a socket nothing listens on, as a killed daemon does.
func staleSocket(t *testing.T, dir, name string) {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: ctl.SocketPath(dir, name), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
}

func TestStatusFromDaemons(t *testing.T) {
	h := newHarness(t)
	sts := sampleStatus()
	for _, st := range sts {
		serveFake(t, h.dir, st)
	}
	staleSocket(t, h.dir, "stt7")

	r := h.run("", "status", "--json")
	var all []status.Status
	if err := json.Unmarshal([]byte(r.stdout), &all); r.code != 0 || err != nil {
		t.Fatalf("status --json: %+v: %v", r, err)
	}
	if len(all) != 3 || all[0].Interface != "stt0" || all[1].Interface != "stt1" || all[2].State != status.StateStarting || len(all[0].Peers) != 4 {
		t.Errorf("status --json = %+v", all)
	}

	r = h.run("", "status", "--json", "stt1")
	var one status.Status
	if err := json.Unmarshal([]byte(r.stdout), &one); r.code != 0 || err != nil || one.Interface != "stt1" {
		t.Fatalf("status --json stt1: %+v: %v", r, err)
	}

	r = h.run("", "status")
	if r.code != 0 || !strings.Contains(r.stdout, "interface: stt0\n") ||
		!strings.Contains(r.stdout, "interface: stt1\n") || strings.Contains(r.stdout, "stt7") {
		t.Errorf("status: %+v", r)
	}
}

func TestStatusNoDaemons(t *testing.T) {
	h := newHarness(t)
	if r := h.run("", "status", "--json"); r.code != 0 || r.stdout != "[]\n" {
		t.Errorf("status --json with nothing up: %+v", r)
	}
	if r := h.run("", "status"); r.code != 0 || r.stdout != "" {
		t.Errorf("status with nothing up: %+v", r)
	}
}

// readyPipe is a readiness pipe for a daemon run in this process: the fd to pass as
// --ready-fd, and a function that returns the line the daemon reports.
func readyPipe(t *testing.T) (int, func() string) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	// The daemon closes the fd it is given; give it its own.
	fd, _, errno := syscall.Syscall(syscall.SYS_FCNTL, w.Fd(), syscall.F_DUPFD_CLOEXEC, 0)
	if errno != 0 {
		t.Fatal(errno)
	}
	w.Close()
	t.Cleanup(func() { r.Close() })
	return int(fd), func() string {
		b, _ := io.ReadAll(r)
		return string(b)
	}
}

// foreground runs `up --foreground` in this process until it reports readiness.
func (h *harness) foreground(args ...string) (*fakeTunnel, <-chan result) {
	h.t.Helper()
	fd, ready := readyPipe(h.t)
	exited := make(chan result, 1)
	go func() {
		exited <- h.run("", append([]string{"up", "--foreground", "--ready-fd", fmt.Sprint(fd)}, args...)...)
	}()
	if line := ready(); line != "READY\n" {
		h.t.Fatalf("daemon reported %q, exit %+v", line, <-exited)
	}
	return <-h.started, exited
}

func TestForegroundDaemonUpStatusDown(t *testing.T) {
	h := newHarness(t)
	h.writeConfig("alpha", "stt9", "alpha")
	f, exited := h.foreground("alpha")

	fi, err := os.Lstat(ctl.SocketPath(h.dir, "stt9"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("control socket: %v, %v", fi, err)
	}
	if r := h.run("", "status", "--json", "stt9"); r.code != 0 || !strings.Contains(r.stdout, `"node_name": "alpha"`) {
		t.Errorf("status: %+v", r)
	}
	// status and down also accept the NAME given to up.
	if r := h.run("", "status", "alpha"); r.code != 0 || !strings.Contains(r.stdout, "interface: stt9") {
		t.Errorf("status alpha: %+v", r)
	}
	checkOneLineError(t, h.run("", "up", "alpha"), 1, "stt9 is already up")

	if r := h.run("", "down", "alpha"); r.code != 0 || r.stderr != "" {
		t.Fatalf("down: %+v", r)
	}
	// down returns after the tunnel is closed and the socket is gone.
	if !f.isClosed() {
		t.Error("tunnel not closed when down returned")
	}
	if _, err := os.Lstat(ctl.SocketPath(h.dir, "stt9")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket left after down: %v", err)
	}
	if r := <-exited; r.code != 0 {
		t.Errorf("daemon exit: %+v", r)
	}
	checkOneLineError(t, h.run("", "down", "stt9"), 1, "stt9 is not up")
}

func TestForegroundDaemonTunnelFails(t *testing.T) {
	h := newHarness(t)
	cfg := h.writeConfig("alpha", "stt9", "alpha")
	f, exited := h.foreground("-c", cfg)
	f.die(errors.New("tun device vanished"))
	r := <-exited
	if r.code != 1 || !strings.Contains(r.stderr, "stt-tun: stt9 stopped: tun device vanished\n") {
		t.Errorf("daemon exit: %+v", r)
	}
	if !f.isClosed() {
		t.Error("tunnel not closed after it failed")
	}
}

func TestForegroundDaemonStartFails(t *testing.T) {
	h := newHarness(t)
	cfg := h.writeConfig("alpha", "stt9", "fail")
	fd, ready := readyPipe(t)
	r := h.run("", "up", "--foreground", "--ready-fd", fmt.Sprint(fd), "-c", cfg)
	want := "start stt9: create tun device: operation not permitted"
	if line := ready(); line != "ERROR "+want+"\n" {
		t.Errorf("readiness line %q", line)
	}
	if r.code != 1 || !strings.HasSuffix(r.stderr, "stt-tun: "+want+"\n") {
		t.Errorf("exit: %+v", r)
	}
	// Nothing is left that would make the interface look up.
	if _, err := os.Lstat(ctl.SocketPath(h.dir, "stt9")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket left after failed start: %v", err)
	}
}

func TestDownAbortsStart(t *testing.T) {
	h := newHarness(t)
	cfg := h.writeConfig("alpha", "stt9", "hang")
	fd, ready := readyPipe(t)
	exited := make(chan result, 1)
	go func() {
		exited <- h.run("", "up", "--foreground", "--ready-fd", fmt.Sprint(fd), "-c", cfg)
	}()
	<-h.started // the daemon is inside tunnel.Start, and its socket answers
	if r := h.run("", "status", "--json", "stt9"); r.code != 0 || !strings.Contains(r.stdout, `"node_name": "hang"`) ||
		!strings.Contains(r.stdout, `"state": "starting"`) {
		t.Errorf("status --json while starting does not say starting: %+v", r)
	}
	// The text says so, and shows no zeros that read as settings ("mtu: 0").
	if r := h.run("", "status", "stt9"); r.code != 0 || !strings.Contains(r.stdout, "state: starting") ||
		strings.Contains(r.stdout, "mtu") || strings.Contains(r.stdout, "listening port") {
		t.Errorf("status while starting: %+v", r)
	}
	if r := h.run("", "down", "stt9"); r.code != 0 {
		t.Errorf("down while starting: %+v", r)
	}
	want := "stt9: start aborted by 'stt-tun down': resolve peer endpoint: context canceled"
	if line := ready(); line != "ERROR "+want+"\n" {
		t.Errorf("readiness line %q", line)
	}
	if r := <-exited; r.code != 1 || !strings.HasSuffix(r.stderr, "stt-tun: "+want+"\n") {
		t.Errorf("daemon exit: %+v", r)
	}
}

func TestDownAfterDaemonKilled(t *testing.T) {
	for _, tc := range []struct {
		name    string
		undo    error
		code    int
		message string
	}{
		{"journal undone", nil, 0, "stt-tun: stt9: the daemon was gone (killed?); undid its routing from the journal\n"},
		{"no journal", fmt.Errorf("routing: undo stt9: %w", fs.ErrNotExist), 1, "stt-tun: stt9 is not up\n"},
		{"undo fails", errors.New("routing: undo stt9: permission denied"), 1,
			"stt-tun: stt9: the daemon is gone; undo its routing from the journal: routing: undo stt9: permission denied\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.undo = func(string, string) error { return tc.undo }
			staleSocket(t, h.dir, "stt9")
			r := h.run("", "down", "stt9")
			if r.code != tc.code || r.stderr != tc.message {
				t.Errorf("down: %+v, want exit %d and %q", r, tc.code, tc.message)
			}
			if len(h.undone) != 1 || h.undone[0] != "stt9" {
				t.Errorf("undo called for %v", h.undone)
			}
			if tc.undo == nil || errors.Is(tc.undo, fs.ErrNotExist) {
				if _, err := os.Lstat(ctl.SocketPath(h.dir, "stt9")); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("stale socket left: %v", err)
				}
			}
		})
	}
}

// TestBackgroundUp runs the real daemonisation: `up` re-executes this test binary,
// which TestMain turns into stt-tun with a fake tunnel.
func TestBackgroundUp(t *testing.T) {
	h := newHarness(t)
	t.Setenv(daemonEnvVar, "1")
	h.writeConfig("alpha", "stt9", "alpha")
	h.writeConfig("failing", "stt8", "fail")
	h.writeConfig("crashing", "stt7", "crash")

	r := h.run("", "up", "alpha")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("up: %+v", r)
	}
	t.Cleanup(func() { h.run("", "down", "stt9") })
	if r := h.run("", "status", "--json", "stt9"); r.code != 0 || !strings.Contains(r.stdout, `"interface": "stt9"`) {
		t.Errorf("status: %+v", r)
	}
	checkOneLineError(t, h.run("", "up", "alpha"), 1, "stt9 is already up")
	if r := h.run("", "down", "stt9"); r.code != 0 || r.stderr != "" {
		t.Errorf("down: %+v", r)
	}
	checkOneLineError(t, h.run("", "down", "stt9"), 1, "stt9 is not up")
	if log, err := os.ReadFile(filepath.Join(h.dir, "stt9.log")); err != nil || !strings.Contains(string(log), "msg=up") {
		t.Errorf("daemon log: %v\n%s", err, log)
	}

	checkOneLineError(t, h.run("", "up", "failing"), 1, "stt-tun: start stt8: create tun device: operation not permitted")
	checkOneLineError(t, h.run("", "up", "crashing"), 1,
		"stt7: daemon exited before it was ready (exit status 3); see "+filepath.Join(h.dir, "stt7.log"))
}

func TestFlagsMayFollowName(t *testing.T) {
	app := newApp(defaultEnv())
	for _, c := range []struct{ in, want []string }{
		{[]string{"stt-tun", "status", "wg0", "--json"}, []string{"stt-tun", "status", "--json", "wg0"}},
		{[]string{"stt-tun", "--state-dir", "/x", "up", "wg0", "--log-level", "debug", "-f"}, []string{"stt-tun", "--state-dir", "/x", "up", "--log-level", "debug", "-f", "wg0"}},
		{[]string{"stt-tun", "up", "-c", "a.toml", "--foreground"}, []string{"stt-tun", "up", "-c", "a.toml", "--foreground"}},
		{[]string{"stt-tun", "down", "wg0", "--timeout=5s"}, []string{"stt-tun", "down", "--timeout=5s", "wg0"}},
		{[]string{"stt-tun", "status", "--", "-odd"}, []string{"stt-tun", "status", "--", "-odd"}},
		{[]string{"stt-tun", "frobnicate", "x", "-y"}, []string{"stt-tun", "frobnicate", "x", "-y"}},
	} {
		if got := flagsFirst(app, c.in); strings.Join(got, " ") != strings.Join(c.want, " ") {
			t.Errorf("%q: got %q, want %q", c.in, got, c.want)
		}
	}
}
