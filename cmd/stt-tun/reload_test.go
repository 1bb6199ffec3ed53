package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
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

// reloadTunnel is a fake tunnel that reloads and pings: it records the configurations
// it is given and refuses any whose MTU is 1300.
type reloadTunnel struct {
	*fakeTunnel
	mu      sync.Mutex
	reloads []*config.Config
}

func (f *reloadTunnel) ReloadFile(path string) ([]string, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if cfg.Interface.MTU == 1300 {
		return nil, fmt.Errorf("%w: interface.mtu changed from 1420 to 1300", tunnel.ErrRestartNeeded)
	}
	f.reloads = append(f.reloads, cfg)
	var changes []string
	for _, p := range cfg.Peers {
		changes = append(changes, fmt.Sprintf("peer %q added", p.Name))
	}
	return changes, nil
}

func (f *reloadTunnel) Ping(ctx context.Context, peer string) (status.PingReply, error) {
	if peer != "beta" {
		return status.PingReply{}, fmt.Errorf("%w named %q", status.ErrUnknownPeer, peer)
	}
	return status.PingReply{RTT: time.Millisecond, Path: "ws", Endpoint: "192.0.2.2:443"}, nil
}

func (f *reloadTunnel) reloadCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.reloads)
}

// startReloadDaemon runs `up --foreground -c cfg` in this process with a reloadTunnel
// and waits until its control socket shows it up.
func startReloadDaemon(t *testing.T, h *harness, cfg string) (*reloadTunnel, func() result) {
	t.Helper()
	started := make(chan *reloadTunnel, 1)
	var stdout, stderr bytes.Buffer
	e := defaultEnv()
	e.stdin, e.stdout, e.stderr = strings.NewReader(""), &stdout, &stderr
	e.start = func(_ context.Context, c *config.Config, _ tunnel.Options) (daemonTunnel, error) {
		f := &reloadTunnel{fakeTunnel: &fakeTunnel{
			status: status.Status{Interface: c.Interface.Name, NodeName: c.Interface.NodeName, PublicKey: "k"},
			done:   make(chan struct{}),
		}}
		started <- f
		return f, nil
	}
	exited := make(chan int, 1)
	go func() { exited <- run(context.Background(), []string{"stt-tun", "up", "--foreground", "-c", cfg}, e) }()
	var f *reloadTunnel
	select {
	case f = <-started:
	case code := <-exited:
		t.Fatalf("daemon exited with %d: %s", code, stderr.String())
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := ctl.Status(context.Background(), ctl.SocketPath(h.dir, "stt9"))
		if err == nil && st.PublicKey != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon not up: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	stop := func() result {
		if r := h.run("", "down", "stt9"); r.code != 0 {
			t.Errorf("down: %+v", r)
		}
		return result{code: <-exited, stderr: stderr.String()}
	}
	return f, stop
}

func TestReloadThroughDaemon(t *testing.T) {
	h := newHarness(t)
	cfg := h.writeConfig("alpha", "stt9", "alpha")
	f, stop := startReloadDaemon(t, h, cfg)

	// Nothing changed.
	if r := h.run("", "reload", "alpha"); r.code != 0 || r.stdout != "stt9: reloaded, nothing changed\n" || r.stderr != "" {
		t.Errorf("reload: %+v", r)
	}
	// A peer added to the file.
	h.write("alpha.toml", readText(t, cfg)+"\n[[peer]]\nname = \"beta\"\nallowed_prefixes = [\"10.99.0.2/32\"]\n")
	if r := h.run("", "reload", "stt9"); r.code != 0 || r.stdout != "stt9: reloaded\n  peer \"beta\" added\n" {
		t.Errorf("reload with a new peer: %+v", r)
	}
	if n := f.reloadCount(); n != 2 {
		t.Fatalf("%d reloads reached the tunnel, want 2", n)
	}
	if got := f.reloads[1].Peer("beta"); got == nil {
		t.Error("the tunnel was not given the file as it is now")
	}
	// The daemon's ping goes to the tunnel.
	if r := h.run("", "ping", "-c", "1", "-I", "stt9", "beta"); r.code != 0 || !strings.Contains(r.stdout, "reply from beta via ws 192.0.2.2:443: seq=1 time=1.000 ms\n") {
		t.Errorf("ping: %+v", r)
	}

	// An invalid file: refused with FILE:LINE, the tunnel not asked.
	good := readText(t, cfg)
	h.write("alpha.toml", good+"mtu = 10\n")
	refused := "stt-tun: reload stt9 refused, still running as before:\n" + cfg + ":11: unknown key \"mtu\" in [[peer]] \"beta\"; "
	if r := h.run("", "reload", "stt9"); r.code != 1 || !strings.HasPrefix(r.stderr, refused) || strings.Count(r.stderr, "\n") != 2 {
		t.Errorf("reload stt9 of an invalid file: %+v", r)
	}
	// With -c, or the NAME the interface was started as, the daemon started from the
	// file is found although the file no longer parses.
	for _, args := range [][]string{{"-c", cfg}, {"alpha"}} {
		if r := h.run("", append([]string{"reload"}, args...)...); r.code != 1 || !strings.HasPrefix(r.stderr, refused) {
			t.Errorf("reload %v of an invalid file: %+v", args, r)
		}
	}
	// A change the tunnel refuses.
	h.write("alpha.toml", strings.Replace(good, "[interface]\n", "[interface]\nmtu = 1300\n", 1))
	checkOneLineError(t, h.run("", "reload", "stt9"), 1, "reload stt9 refused, still running as before: restart needed: interface.mtu changed from 1420 to 1300")
	if n := f.reloadCount(); n != 2 {
		t.Errorf("%d reloads reached the tunnel, want 2", n)
	}

	// SIGHUP reloads too.
	h.write("alpha.toml", good)
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for f.reloadCount() != 3 {
		if time.Now().After(deadline) {
			t.Fatal("SIGHUP did not reload")
		}
		time.Sleep(10 * time.Millisecond)
	}

	res := stop()
	if res.code != 0 {
		t.Errorf("daemon exit %d: %s", res.code, res.stderr)
	}
	for _, want := range []string{"SIGHUP: reloading", "reload requested over the control socket"} {
		if !strings.Contains(res.stderr, want) {
			t.Errorf("daemon log lacks %q:\n%s", want, res.stderr)
		}
	}
	checkOneLineError(t, h.run("", "reload", "stt9"), 1, "stt9 is not up")
}

// reloadOnly serves reloads on a control socket, with a fixed answer.
type reloadOnly struct {
	ctlFake
	changes []string
	err     error
}

func (f reloadOnly) Reload() ([]string, error) { return f.changes, f.err }

func TestReloadCommand(t *testing.T) {
	h := newHarness(t)
	checkOneLineError(t, h.run("", "reload"), 2, "reload: missing NAME or -c FILE")
	checkOneLineError(t, h.run("", "reload", "stt0"), 1, "stt0 is not up")

	for _, tc := range []struct {
		link       string
		f          reloadOnly
		code       int
		out, error string
	}{
		{"stt0", reloadOnly{changes: []string{`peer "gamma" added`, "route 10.99.3.0/24 added"}}, 0,
			"stt0: reloaded\n  peer \"gamma\" added\n  route 10.99.3.0/24 added\n", ""},
		{"stt1", reloadOnly{err: errors.New("/etc/stt-tun/stt1.toml:3: interface: mtu = 10 is too small\n/etc/stt-tun/stt1.toml:9: peer \"b\": bad")}, 1,
			"", "stt-tun: reload stt1 refused, still running as before:\n/etc/stt-tun/stt1.toml:3: interface: mtu = 10 is too small\n/etc/stt-tun/stt1.toml:9: peer \"b\": bad\n"},
		{"stt2", reloadOnly{err: errors.New("/etc/stt-tun/stt2.toml:3: interface: mtu = 10 is too small")}, 1,
			"", "stt-tun: reload stt2 refused, still running as before:\n/etc/stt-tun/stt2.toml:3: interface: mtu = 10 is too small\n"},
		{"stt3", reloadOnly{err: errors.New("restart needed: interface.mtu changed from 1420 to 1300")}, 1,
			"", "stt-tun: reload stt3 refused, still running as before: restart needed: interface.mtu changed from 1420 to 1300\n"},
	} {
		tc.f.st = status.Status{Interface: tc.link}
		srv, err := ctl.Listen(h.dir, tc.link, nil)
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(tc.f)
		t.Cleanup(func() { srv.Close() })
		r := h.run("", "reload", tc.link)
		if r.code != tc.code || r.stdout != tc.out || r.stderr != tc.error {
			t.Errorf("reload %s: %+v\nwant exit %d, stdout %q, stderr %q", tc.link, r, tc.code, tc.out, tc.error)
		}
	}
}

func readText(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
