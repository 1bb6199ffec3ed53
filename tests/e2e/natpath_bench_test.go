//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/internal/nslab"
)

// The NAT path figures of docs/benchmarks.md ("Through NAT"): how long a member behind
// NAT takes, from the first packet it sends to another member behind NAT, until its
// status shows a working path to it — a direct UDP path made by hole punching when
// both NATs are easy, a path through a relay member when one of them is hard. It is a
// measurement, not a test: it runs only with STT_NAT_BENCH=1, which `make bench-nat`
// sets, and asserts nothing about the times.
//
//	STT_NAT_BENCH_RUNS      runs per case, each in a fresh lab (default 5)
//	STT_NAT_BENCH_POLL      how often each of the two daemons is asked for its status (default 20ms)
//	STT_NAT_BENCH_DEADLINE  how long a run waits for the path (default 40s)
//	STT_NAT_BENCH_JSON      file to write every run to, as JSON
//
// The lab, per run: the internet namespace of tests/e2e/mesh_test.go with three public
// members p1, p2, p3 (198.18.1-3.2; p1 has [discovery] relay = true, p2 and p3 name p1
// as bootstrap), and two members a and b behind NAT routers of nslab.NATRouter
// (198.18.11.2 and 198.18.12.2 outside, 10.11.0.2 and 10.12.0.2 inside). a and b name
// the three public members as bootstrap: a member dials all its bootstrap addresses at
// once and keeps three neighbours, so a and b hold their three sessions with p1–p3 and
// dial no one else — in particular not each other — until the first packet. (With one
// bootstrap member only, a and b would take each other as neighbours and start a
// session on their own, and "from the first packet" would mean nothing.) The three
// public members also give each NATed member two observers at distinct addresses, from
// which it tells its NAT's kind.

// natPathCase is one pair of NAT kinds: a (behind from) sends the first packet to b
// (behind to), and the run waits until a's status shows b with path want ("udp" with
// no relay, or "relay" via p1).
type natPathCase struct {
	from, to nslab.NATKind
	want     string
}

func (c natPathCase) String() string {
	return fmt.Sprintf("%s→%s", c.from, c.to)
}

var natPathCases = []natPathCase{
	{nslab.NATEasy, nslab.NATEasy, "udp"},
	{nslab.NATEasy, nslab.NATHardRandom, "relay"},
	{nslab.NATHardRandom, nslab.NATEasy, "relay"},
}

// natRelayName is the relay member of the lab.
const natRelayName = "p1"

// natLoopPeriod is how often a daemon's mesh loop runs (tunnel.meshTick).
const natLoopPeriod = time.Second

// natPathRun is one run of a case.
type natPathRun struct {
	Case string `json:"case"`
	Run  int    `json:"run"`
	// NATFrom and NATTo are the NAT kinds a and b reported (status mesh.nat) when the
	// first packet was sent; empty when this stt-tun's status has no such field.
	NATFrom string `json:"nat_from,omitempty"`
	NATTo   string `json:"nat_to,omitempty"`
	// Sender is the time from the first packet until a's status showed b on the wanted
	// path; Receiver until b's status showed a on it. Both -1 when not within the
	// deadline.
	Sender   float64 `json:"sender_seconds"`
	Receiver float64 `json:"receiver_seconds"`
	// Final is the path each side showed at the end; PingOK whether a ping from a to b's
	// mesh address was then answered within two seconds.
	Final  string `json:"final"`
	PingOK bool   `json:"ping_ok"`
	Note   string `json:"note,omitempty"`
}

// natPathStatus is the part of `status --json` the figures need, decoded from the
// daemon's status by name so that fields this build does not have yet read as empty.
type natPathStatus struct {
	Mesh *struct {
		Address   string  `json:"address"`
		NAT       *string `json:"nat"`
		Connected int     `json:"connected"`
	} `json:"mesh"`
	Peers []natPathPeer `json:"peers"`
}

type natPathPeer struct {
	Name        string `json:"name"`
	Path        string `json:"path"`
	RelayVia    string `json:"relay_via"`
	PathReason  string `json:"path_reason"`
	MeshAddress string `json:"mesh_address"`
}

func (s natPathStatus) peer(name string) (natPathPeer, bool) {
	for _, p := range s.Peers {
		if p.Name == name {
			return p, true
		}
	}
	return natPathPeer{}, false
}

func (s natPathStatus) nat() string {
	if s.Mesh == nil || s.Mesh.NAT == nil {
		return ""
	}
	return *s.Mesh.NAT
}

// natStatus asks nd's daemon for its status over its control socket and keeps the
// fields of natPathStatus.
func natStatus(ctx context.Context, nd *node) (natPathStatus, error) {
	var out natPathStatus
	st, err := ctlStatus(ctx, nd)
	if err != nil {
		return out, err
	}
	b, err := json.Marshal(st)
	if err != nil {
		return out, err
	}
	err = json.Unmarshal(b, &out)
	if err == nil && out.Mesh == nil {
		err = fmt.Errorf("%s: status has no mesh section", nd.name)
	}
	return out, err
}

// onPath: p is on the path want ("udp": direct UDP, no relay; "relay": via p1).
func onPath(p natPathPeer, want string) bool {
	if want == "relay" {
		return p.Path == "relay" && p.RelayVia == natRelayName
	}
	return p.Path == want && p.RelayVia == ""
}

func describePath(p natPathPeer, ok bool) string {
	if !ok {
		return "unknown peer"
	}
	s := p.Path
	if p.RelayVia != "" {
		s += " via " + p.RelayVia
	}
	if p.PathReason != "" {
		s += " (" + p.PathReason + ")"
	}
	return s
}

// TestNATPathFigures: see the comment at the top of this file.
func TestNATPathFigures(t *testing.T) {
	if os.Getenv("STT_NAT_BENCH") == "" {
		t.Skip("a measurement, not a test: run it with `make bench-nat`")
	}
	runs := labEnvInt(t, "STT_NAT_BENCH_RUNS", 5)
	poll := natEnvDuration(t, "STT_NAT_BENCH_POLL", 20*time.Millisecond, time.Millisecond, time.Second)
	deadline := natEnvDuration(t, "STT_NAT_BENCH_DEADLINE", 40*time.Second, 5*time.Second, 5*time.Minute)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	load, _ := os.ReadFile("/proc/loadavg")
	var all []natPathRun
	for _, c := range natPathCases {
		for r := 1; r <= runs; r++ {
			t.Run(fmt.Sprintf("%s/run%d", c, r), func(t *testing.T) {
				res := natPathOnce(ctx, t, c, poll, deadline)
				res.Case, res.Run = c.String(), r
				all = append(all, res)
				t.Logf("%s run %d: NAT %q→%q, sender %s, receiver %s; final %s; ping %v %s",
					c, r, res.NATFrom, res.NATTo, secs(res.Sender), secs(res.Receiver), res.Final, res.PingOK, res.Note)
			})
			if ctx.Err() != nil {
				t.FailNow()
			}
		}
	}
	natPathReport(t, all, runs, poll, deadline, strings.TrimSpace(string(load)))
	if p := os.Getenv("STT_NAT_BENCH_JSON"); p != "" {
		b, _ := json.MarshalIndent(map[string]any{
			"runs": all, "poll_ms": poll.Milliseconds(), "deadline_s": deadline.Seconds(),
			"loadavg_start": strings.TrimSpace(string(load)), "cpus": runtime.NumCPU(),
		}, "", "  ")
		if err := os.WriteFile(p, append(b, '\n'), 0o644); err != nil {
			t.Error(err)
		}
	}
}

func natEnvDuration(t *testing.T, name string, def, lo, hi time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < lo || d > hi {
		t.Fatalf("%s=%q: want a duration from %v to %v", name, v, lo, hi)
	}
	return d
}

func secs(s float64) string {
	if s < 0 {
		return "not reached"
	}
	return fmt.Sprintf("%.3fs", s)
}

// natPathOnce builds the lab of the file comment for case c, waits until a and b know
// each other and hold their sessions with the three public members, sends one UDP
// datagram from a to b's mesh address, and polls both daemons every poll until each
// shows the other on the wanted path, or deadline passes.
func natPathOnce(ctx context.Context, t *testing.T, c natPathCase, poll, deadline time.Duration) natPathRun {
	res := natPathRun{Sender: -1, Receiver: -1}
	m := newMeshLab(t)
	accept := "\n[discovery]\naccept_prefixes = [\"10.77.0.0/24\"]\n"
	p1, _ := m.add(natRelayName, accept+"relay = true\n")
	boot1 := underlay(1) + fmt.Sprintf(":%d", port)
	p2, _ := m.add("p2", discovery(boot1))
	p3, _ := m.add("p3", discovery(boot1))
	var boots []string
	for i := 1; i <= 3; i++ {
		boots = append(boots, fmt.Sprintf("%s:%d", underlay(i), port))
	}
	nat := func(name string, kind nslab.NATKind, n int) *node {
		site := m.lab.NATRouter(m.router, name, kind, n)
		nd := newNode(t, site.Host, name)
		nd.writeConfig(nodeConf{addresses: []string{overlay4(n) + "/24"}, seedFile: m.seed, extra: discovery(boots...)})
		m.nodes[name] = nd
		return nd
	}
	a := nat("a", c.from, 11)
	b := nat("b", c.to, 12)
	for _, nd := range []*node{p1, p2, p3} {
		nd.upDaemon()
	}
	a.upDaemon()
	b.upDaemon()

	// Ready: a and b know each other's record and mesh address and hold a session with
	// each public member; and, if this stt-tun reports it, know their NAT's kind.
	var sa, sb natPathStatus
	ready := func(st natPathStatus, other string) bool {
		p, ok := st.peer(other)
		return ok && p.MeshAddress != "" && st.Mesh.Connected >= 3 && st.nat() != "unknown"
	}
	wctx, cancel := context.WithTimeout(ctx, meshTimeout)
	err := nslab.WaitFor(wctx, func() bool {
		var e1, e2 error
		sa, e1 = natStatus(wctx, a)
		sb, e2 = natStatus(wctx, b)
		return e1 == nil && e2 == nil && ready(sa, "b") && ready(sb, "a")
	})
	cancel()
	if err != nil {
		t.Fatalf("a and b not ready within %v (they know each other, 3 sessions, NAT kind known): a %+v %+v, b %+v %+v",
			meshTimeout, sa.Mesh, sa.Peers, sb.Mesh, sb.Peers)
	}
	res.NATFrom, res.NATTo = sa.nat(), sb.nat()
	pa, _ := sa.peer("b")
	pb, _ := sb.peer("a")
	if pa.Path != "none" || pb.Path != "none" {
		// Not a first packet any more: say so and measure all the same.
		res.Note = fmt.Sprintf("before the first packet a→b was %s, b→a %s", describePath(pa, true), describePath(pb, true))
	}

	// The daemons' mesh loop, which sends punch and relay requests, runs once a second
	// (tunnel.meshTick), and the NAT kind that ready waits for is set by it: ready holds
	// just after a pass. Sent at once, the first packet would always wait almost a whole
	// second for the next pass; sent after a random part of a second, it comes at a
	// random moment of the loop, as a user's packet does.
	select {
	case <-time.After(rand.N(natLoopPeriod)):
	case <-ctx.Done():
		t.FailNow()
	}

	// The first packet: one datagram from a's namespace to b's mesh address.
	dst := net.JoinHostPort(pa.MeshAddress, "9")
	var sent time.Time
	err = a.ns.Do(func() error {
		conn, err := net.Dial("udp", dst)
		if err != nil {
			return err
		}
		defer conn.Close()
		sent = time.Now()
		_, err = conn.Write([]byte("stt-tun bench-nat: first packet"))
		return err
	})
	if err != nil {
		t.Fatalf("first packet from a to %s: %v", dst, err)
	}

	// Both sides polled at once, each until it shows the other on the wanted path.
	var wg sync.WaitGroup
	var mu sync.Mutex
	var last [2]natPathPeer
	var seen [2]bool
	wctx, cancel = context.WithDeadline(ctx, sent.Add(deadline))
	defer cancel()
	for i, side := range []struct {
		nd    *node
		other string
		out   *float64
	}{{a, "b", &res.Sender}, {b, "a", &res.Receiver}} {
		wg.Go(func() {
			tick := time.NewTicker(poll)
			defer tick.Stop()
			for {
				asked := time.Now()
				st, err := natStatus(wctx, side.nd)
				if err == nil {
					p, ok := st.peer(side.other)
					mu.Lock()
					last[i], seen[i] = p, ok
					mu.Unlock()
					if ok && onPath(p, c.want) {
						*side.out = asked.Sub(sent).Seconds()
						return
					}
				}
				select {
				case <-tick.C:
				case <-wctx.Done():
					return
				}
			}
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		t.FailNow()
	}
	res.Final = fmt.Sprintf("a→b %s, b→a %s", describePath(last[0], seen[0]), describePath(last[1], seen[1]))
	res.PingOK = a.ns.Ping(pa.MeshAddress) == nil
	if res.Sender < 0 || res.Receiver < 0 {
		t.Logf("%s: not on path %q within %v: %s", c, c.want, deadline, res.Final)
		// What each side did about it, for whoever reads why.
		for _, nd := range []*node{a, b, p1} {
			st, err := ctlStatus(ctx, nd)
			if err != nil {
				continue
			}
			var moved []string
			for k, v := range st.Counters {
				if v != 0 && (strings.Contains(k, "relay") || strings.Contains(k, "punch") || strings.Contains(k, "nat_")) {
					moved = append(moved, fmt.Sprintf("%s=%d", k, v))
				}
			}
			slices.Sort(moved)
			t.Logf("  %s counters: %s", nd.name, strings.Join(moved, " "))
		}
		res.Note = strings.TrimSpace(res.Note + " not reached; see the counters in the log")
	}
	return res
}

// natPathReport logs, per case, the times of the runs that reached the path: median,
// min and max, from the sender's status and from both sides'.
func natPathReport(t *testing.T, all []natPathRun, runs int, poll, deadline time.Duration, load string) {
	t.Logf("NAT PATHS (%d runs per case, each in a fresh lab; status polled every %v; deadline %v; load at start %s)",
		runs, poll, deadline, load)
	t.Logf("  time from a's first packet to b until the path shows in status, median [min–max]:")
	for _, c := range natPathCases {
		var sender, both []float64
		var kinds []string
		n := 0
		for _, r := range all {
			if r.Case != c.String() {
				continue
			}
			n++
			if k := r.NATFrom + "→" + r.NATTo; r.NATFrom != "" && !slices.Contains(kinds, k) {
				kinds = append(kinds, k)
			}
			if r.Sender >= 0 {
				sender = append(sender, r.Sender)
			}
			if r.Sender >= 0 && r.Receiver >= 0 {
				both = append(both, max(r.Sender, r.Receiver))
			}
		}
		want := "direct UDP"
		if c.want == "relay" {
			want = "relay via " + natRelayName
		}
		t.Logf("  %-24s → %-14s a sees it: %s (%d of %d runs); both see it: %s (%d of %d); NAT kinds reported %v",
			c, want, summarize(sender), len(sender), n, summarize(both), len(both), n, kinds)
	}
}

func summarize(xs []float64) string {
	if len(xs) == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%s [%s–%s] s", med(xs), mn(xs), mx(xs))
}
