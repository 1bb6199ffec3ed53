package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/stt-tun/stt-tun/internal/ctl"
	"github.com/stt-tun/stt-tun/internal/status"
)

// pingFake is a daemon whose peers answer pings as scripted, in 0.3 ms and 0.1 ms more
// each time: "flaky" every other time, "dead" never, the others always.
type pingFake struct {
	st    status.Status
	mu    sync.Mutex
	calls map[string]int
}

func (f *pingFake) Status() status.Status { return f.st }
func (f *pingFake) Shutdown()             {}

func (f *pingFake) Ping(ctx context.Context, peer string) (status.PingReply, error) {
	f.mu.Lock()
	n := f.calls[peer]
	f.calls[peer]++
	f.mu.Unlock()
	known := false
	for _, p := range f.st.Peers {
		known = known || p.Name == peer
	}
	switch {
	case !known:
		return status.PingReply{}, fmt.Errorf("%w named %q on %s", status.ErrUnknownPeer, peer, f.st.Interface)
	case peer == "far":
		return status.PingReply{RTT: 2 * time.Millisecond, Path: "relay", Via: "hub"}, nil
	case peer != "dead" && (peer != "flaky" || n%2 == 0):
		return status.PingReply{RTT: time.Duration(300+100*n) * time.Microsecond, Path: "udp", Endpoint: "192.0.2.2:51900"}, nil
	}
	<-ctx.Done()
	return status.PingReply{}, fmt.Errorf("no reply from %s: %w", peer, ctx.Err())
}

// servePingFake runs a daemon for interface link with the named peers.
func servePingFake(t *testing.T, dir, link string, peers ...string) *pingFake {
	t.Helper()
	f := &pingFake{st: status.Status{Interface: link, NodeName: "alpha"}, calls: make(map[string]int)}
	for _, p := range peers {
		f.st.Peers = append(f.st.Peers, status.Peer{Name: p})
	}
	srv, err := ctl.Listen(dir, link, nil)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(f)
	t.Cleanup(func() { srv.Close() })
	return f
}

func TestPingReplies(t *testing.T) {
	h := newHarness(t)
	servePingFake(t, h.dir, "stt0", "beta", "flaky", "dead")
	r := h.run("", "ping", "-c", "3", "-i", "10ms", "beta")
	want := `PING beta on stt0: STT echo through the session
reply from beta via udp 192.0.2.2:51900: seq=1 time=0.300 ms
reply from beta via udp 192.0.2.2:51900: seq=2 time=0.400 ms
reply from beta via udp 192.0.2.2:51900: seq=3 time=0.500 ms

--- beta ping statistics ---
3 sent, 3 received, 0% loss, rtt min/avg/max = 0.300/0.400/0.500 ms
`
	if r.code != 0 || r.stdout != want || r.stderr != "" {
		t.Errorf("ping beta: exit %d\nstdout:\n%s\nwant:\n%s\nstderr: %s", r.code, r.stdout, want, r.stderr)
	}

	// A member reached through a relay: the relay's name, not an address.
	servePingFake(t, h.dir, "stt1", "far")
	r = h.run("", "ping", "-c", "1", "-I", "stt1", "far")
	if want := "reply from far via relay hub: seq=1 time=2.000 ms\n"; !strings.Contains(r.stdout, want) {
		t.Errorf("ping through a relay:\n%s\nwant a line %q", r.stdout, want)
	}

	// Flags after PEER, and some answers lost.
	r = h.run("", "ping", "flaky", "-c", "4", "-i", "10ms", "-W", "50ms", "-I", "stt0")
	if r.code != 0 || strings.Count(r.stdout, "reply from flaky via udp") != 2 ||
		strings.Count(r.stdout, "no reply from flaky: seq=") != 2 ||
		!strings.Contains(r.stdout, "no reply from flaky: seq=2: no reply within 50ms\n") ||
		!strings.Contains(r.stdout, "4 sent, 2 received, 50% loss, rtt min/avg/max = 0.300/0.400/0.500 ms\n") {
		t.Errorf("ping flaky: %+v", r)
	}
}

func TestPingNoReplyFails(t *testing.T) {
	h := newHarness(t)
	servePingFake(t, h.dir, "stt0", "dead")
	r := h.run("", "ping", "-c", "2", "-i", "10ms", "-W", "20ms", "dead")
	if r.code != 1 || r.stderr != "stt-tun: no reply from dead\n" ||
		!strings.HasSuffix(r.stdout, "\n--- dead ping statistics ---\n2 sent, 0 received, 100% loss\n") {
		t.Errorf("ping dead: %+v", r)
	}
}

func TestPingChoosesInterface(t *testing.T) {
	h := newHarness(t)
	checkOneLineError(t, h.run("", "ping", "beta"), 1, "ping: no interface is up")
	servePingFake(t, h.dir, "stt0", "beta")
	servePingFake(t, h.dir, "stt1", "beta", "gamma")
	staleSocket(t, h.dir, "stt7")

	// gamma is on stt1 only.
	if r := h.run("", "ping", "-c", "1", "gamma"); r.code != 0 || !strings.HasPrefix(r.stdout, "PING gamma on stt1:") {
		t.Errorf("ping gamma: %+v", r)
	}
	checkOneLineError(t, h.run("", "ping", "-c", "1", "beta"), 2, `ping: peer "beta" is on several interfaces (stt0, stt1); choose one with -I NAME`)
	if r := h.run("", "ping", "-c", "1", "--interface", "stt0", "beta"); r.code != 0 || !strings.HasPrefix(r.stdout, "PING beta on stt0:") {
		t.Errorf("ping --interface stt0 beta: %+v", r)
	}
	checkOneLineError(t, h.run("", "ping", "zeta"), 1, `ping: no running interface has a peer named "zeta" (up: stt0, stt1)`)
	checkOneLineError(t, h.run("", "ping", "-I", "stt1", "zeta"), 1, `ping: no such peer named "zeta" on stt1`)
	checkOneLineError(t, h.run("", "ping", "-I", "stt5", "beta"), 1, "stt5 is not up")

	// -I also takes the NAME given to up, when its configuration names the interface.
	h.writeConfig("alpha", "stt1", "alpha")
	if r := h.run("", "ping", "-c", "1", "-I", "alpha", "gamma"); r.code != 0 || !strings.HasPrefix(r.stdout, "PING gamma on stt1:") {
		t.Errorf("ping -I alpha gamma: %+v", r)
	}
}

func TestPingUsage(t *testing.T) {
	h := newHarness(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"ping"}, "ping: missing PEER"},
		{[]string{"ping", "a", "b"}, `ping: unexpected arguments ["b"]`},
		{[]string{"ping", "-c", "-1", "beta"}, "ping: -c -1: want a count of 1 or more, or 0 for no limit"},
		{[]string{"ping", "-i", "1ms", "beta"}, "ping: -i 1ms: the interval is at least 10ms"},
		{[]string{"ping", "-W", "0s", "beta"}, "ping: -W 0s: want a timeout above 0 and at most 1m0s"},
		{[]string{"ping", "-W", "2m", "beta"}, "ping: -W 2m0s"},
		{[]string{"ping", "-c", "x", "beta"}, "ping: invalid value"},
	} {
		checkOneLineError(t, h.run("", tc.args...), 2, tc.want)
	}
}

// TestPingUntilInterrupted: -c 0 pings until the context ends, then prints the summary.
func TestPingUntilInterrupted(t *testing.T) {
	h := newHarness(t)
	servePingFake(t, h.dir, "stt0", "beta")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	r := h.runContext(ctx, "", "ping", "-c", "0", "-i", "20ms", "beta")
	if r.code != 0 || !strings.Contains(r.stdout, "--- beta ping statistics ---\n") || strings.Count(r.stdout, "reply from beta") < 2 {
		t.Errorf("ping -c 0 interrupted: %+v", r)
	}
}

func TestPingSummary(t *testing.T) {
	for _, tc := range []struct {
		sent int
		rtts []float64
		want string
	}{
		{0, nil, "0 sent, 0 received, 0% loss"},
		{3, nil, "3 sent, 0 received, 100% loss"},
		{3, []float64{1, 2}, "3 sent, 2 received, 33% loss, rtt min/avg/max = 1.000/1.500/2.000 ms"},
	} {
		if got := pingSummary(tc.sent, tc.rtts); got != tc.want {
			t.Errorf("pingSummary(%d, %v) = %q, want %q", tc.sent, tc.rtts, got, tc.want)
		}
	}
}

// TestPingTakesPing8Habits: a value glued to a short flag ("-c1") and plain seconds
// ("-W 1", "-i 0.2") work as they do with ping(8).
func TestPingTakesPing8Habits(t *testing.T) {
	h := newHarness(t)
	servePingFake(t, h.dir, "stt0", "beta")
	r := h.run("", "ping", "-c1", "-W", "1", "-i", "0.2", "beta")
	if r.code != 0 || strings.Count(r.stdout, "reply from beta") != 1 || !strings.Contains(r.stdout, "1 sent, 1 received") {
		t.Errorf("ping -c1 -W 1 -i 0.2 beta: %+v", r)
	}
	r = h.run("", "ping", "beta", "-c2", "-i0.01", "-W1", "-Istt0")
	if r.code != 0 || !strings.Contains(r.stdout, "2 sent, 2 received") {
		t.Errorf("ping beta -c2 -i0.01 -W1 -Istt0: %+v", r)
	}
	// Plain numbers are seconds: the limits see 5 ms and 61 s.
	checkOneLineError(t, h.run("", "ping", "-i", "0.005", "beta"), 2, "ping: -i 5ms: the interval is at least 10ms")
	checkOneLineError(t, h.run("", "ping", "-W61", "beta"), 2, "ping: -W 1m1s: want a timeout above 0 and at most 1m0s")
	// "-i" followed by a value that looks like glued flags stays a value.
	checkOneLineError(t, h.run("", "ping", "-I", "-c1", "beta"), 1, "-c1 is not up")
}

func TestParseSecondsOrDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"1": time.Second, "0.2": 200 * time.Millisecond, "1.5": 1500 * time.Millisecond,
		"200ms": 200 * time.Millisecond, "1m30s": 90 * time.Second, "0": 0, " 2 ": 2 * time.Second,
	} {
		if got, err := parseSecondsOrDuration(in); err != nil || got != want {
			t.Errorf("parseSecondsOrDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "1e3", "inf", "NaN", "0x10", "1e400", "10 s"} {
		if got, err := parseSecondsOrDuration(in); err == nil {
			t.Errorf("parseSecondsOrDuration(%q) = %v, want an error", in, got)
		}
	}
}

// TestDurationFlagsSayPlainSecondsWork: every duration flag of every command takes
// plain seconds and its help says so.
func TestDurationFlagsSayPlainSecondsWork(t *testing.T) {
	n := 0
	for _, cmd := range newApp(defaultEnv()).Commands {
		for _, f := range cmd.Flags {
			if _, ok := f.(*cli.DurationFlag); ok {
				t.Errorf("%s --%s is a cli.DurationFlag, which refuses plain seconds", cmd.Name, f.Names()[0])
			}
			g, ok := f.(*cli.GenericFlag)
			if !ok {
				continue
			}
			if _, ok := g.Value.(*secondsOrDuration); !ok {
				continue
			}
			n++
			if !strings.Contains(g.Usage, "plain seconds") || !strings.Contains(g.Usage, "unit") {
				t.Errorf("%s --%s: usage %q does not say that a unit or plain seconds are accepted", cmd.Name, g.Name, g.Usage)
			}
			h := newHarness(t)
			r := h.run("", cmd.Name, "--help")
			if !strings.Contains(r.stdout, "--"+g.Name+" DURATION") {
				t.Errorf("%s --help does not show --%s DURATION:\n%s", cmd.Name, g.Name, r.stdout)
			}
		}
	}
	if n < 6 {
		t.Errorf("found %d duration flags, want the timeouts of up, down, status, reload and ping's -i and -W", n)
	}
}
