//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The fifty-node lab measures the mesh at the size of issue 16 (docs/benchmarks.md,
// "Scale: fifty-node lab"): the lab of scalelab_test.go with 50 nodes, two introducers
// and 48 members behind four NAT routers. It is a measurement, not a test: it runs only
// with STT_LAB50=1, which scripts/lab50.sh (`make lab-scale`) sets, and asserts nothing
// but that the lab works (every member starts, the mesh converges, the echoes are
// answered: a run where they do not is reported as a failure, with the figures).
//
//	STT_LAB50_NODES  nodes in the lab, introducers included (default 50; 6 to 56)
//	STT_LAB50_REST   how long the converged mesh is watched at rest (default 5m; 10s to 30m)
//	STT_LAB50_PAIRS  random ordered pairs pinged (default 100)
//	STT_LAB50_SEED   seed of the pair sample (default: the clock; the report prints it)
//	STT_LAB50_JSON   file to write every figure to, as JSON
//
// In order: the lab is built; the introducers start, then the members, eight `stt-tun
// up` at a time; every node's status is polled until each lists every other with its
// mesh address (the convergence time, from the last `up` returning); each node's
// `stt-tun status --json` is checked once more; resident memory; the rest measurement
// (labRestFor: 15 s to settle, then the underlay bytes each namespace sends and the
// gossip counters over STT_LAB50_REST, with nothing else sent or asked); memory and CPU
// again; the ping matrix, four `stt-tun ping -c 1` at a time; memory once more.

// lab50Poll is how often each node's status is asked for while converging (a sweep
// over fifty nodes takes longer than that under load; the report gives the sweep).
const lab50Poll = 100 * time.Millisecond

// lab50ConvergeLimit bounds the wait for convergence.
const lab50ConvergeLimit = 3 * time.Minute

// lab50Results is what STT_LAB50_JSON gets.
type lab50Results struct {
	Nodes   int        `json:"nodes"`
	Sites   []string   `json:"sites"` // "easy ×14", …
	Machine labMachine `json:"machine"`
	Commit  string     `json:"commit,omitempty"`
	// BuildSeconds: namespaces, links and routers. StartSeconds: from the first
	// member's `up` starting to the last one's returning (eight at a time).
	BuildSeconds float64 `json:"build_seconds"`
	StartSeconds float64 `json:"start_seconds"`
	// ConvergeSeconds: from the last `up` returning until every node listed every
	// other with a mesh address (the last node first seen to); from the first `up`
	// starting too. PerNode: each node, from the last `up` returning (0 if earlier).
	ConvergeSeconds          float64            `json:"converge_after_last_up_seconds"`
	ConvergeFromFirstSeconds float64            `json:"converge_after_first_up_start_seconds"`
	ConvergePerNode          map[string]float64 `json:"converge_per_node_seconds"`
	SweepSeconds             float64            `json:"status_sweep_seconds"` // the poll's resolution
	// Lacked: for each node that did not list every other at the first poll, the
	// nodes it lacked at its last poll before it did.
	Lacked map[string][]string `json:"lacked_before_converging"`
	// Rest: per node, as the mesh lab reports it (underlay, gossip, counters).
	RestSeconds float64   `json:"rest_seconds"`
	Rest        []labRest `json:"rest"`
	// CPUAtRest: each daemon's CPU time (user + system) over the rest period, as a
	// fraction of one CPU.
	CPUAtRest map[string]float64 `json:"cpu_at_rest"`
	// RSSKiB: VmRSS of each daemon, by phase: "converged", "rested", "pinged".
	RSSKiB map[string]map[string]int `json:"rss_kib"`
	Seed   uint64                    `json:"pair_seed"`
	Pings  []scalePing               `json:"pings"`
}

func lab50Env(t *testing.T, name string, def, lo, hi int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		t.Fatalf("%s=%q: want a number from %d to %d", name, v, lo, hi)
	}
	return n
}

// TestMeshScaleLabFigures: see the comment at the top of this file.
func TestMeshScaleLabFigures(t *testing.T) {
	if os.Getenv("STT_LAB50") == "" {
		t.Skip("a measurement, not a test: run it with `make lab-scale` (scripts/lab50.sh)")
	}
	nodes := lab50Env(t, "STT_LAB50_NODES", 50, 6, scaleMaxNodes)
	npairs := lab50Env(t, "STT_LAB50_PAIRS", 100, 1, 10000)
	rest := 5 * time.Minute
	if v := os.Getenv("STT_LAB50_REST"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 10*time.Second || d > 30*time.Minute {
			t.Fatalf("STT_LAB50_REST=%q: want a duration from 10s to 30m", v)
		}
		rest = d
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("STT_LAB50_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("STT_LAB50_SEED=%q: want a number", v)
		}
		seed = s
	}
	// Ctrl-C or SIGTERM (from the script's trap) ends the run through the normal
	// cleanups: daemons down (then killed by PID), namespaces deleted with the links
	// and nftables rules inside them.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	interrupted := func() {
		if ctx.Err() != nil {
			t.Fatal("interrupted")
		}
	}

	load, _ := os.ReadFile("/proc/loadavg")
	res := lab50Results{
		Nodes:           nodes,
		Machine:         labMachine{Load: strings.TrimSpace(string(load)), CPUs: runtime.NumCPU()},
		Commit:          os.Getenv("STT_LAB50_COMMIT"),
		ConvergePerNode: map[string]float64{},
		CPUAtRest:       map[string]float64{},
		RSSKiB:          map[string]map[string]int{},
		Seed:            seed,
	}
	for _, s := range scaleSites(nodes - 2) {
		res.Sites = append(res.Sites, fmt.Sprintf("%s ×%d", s.kind, s.hosts))
	}
	t.Logf("LAB50 building %d nodes: 2 introducers (public, relay) and %s; load %s", nodes, strings.Join(res.Sites, ", "), res.Machine.Load)
	begin := time.Now()
	sl := newScaleLab(t, nodes)
	res.BuildSeconds = time.Since(begin).Seconds()
	interrupted()
	t.Logf("LAB50 lab built in %.1f s; starting the daemons", res.BuildSeconds)

	first, last, err := sl.startAll(8)
	res.StartSeconds = last.Sub(first).Seconds()
	if err != nil {
		t.Fatal(err)
	}
	interrupted()
	knew, lacked, err := sl.waitConverged(ctx, lab50Poll, lab50ConvergeLimit)
	res.Lacked = lacked
	if err != nil {
		t.Fatal(err)
	}
	var lastKnew time.Time
	for name, at := range knew {
		res.ConvergePerNode[name] = max(0, at.Sub(last).Seconds())
		if at.After(lastKnew) {
			lastKnew = at
		}
	}
	res.ConvergeSeconds = max(0, lastKnew.Sub(last).Seconds())
	res.ConvergeFromFirstSeconds = lastKnew.Sub(first).Seconds()
	if err := sl.checkListsAll(); err != nil {
		t.Fatalf("converged by the control socket, but: %v", err)
	}
	// One sweep over the control sockets, as waitConverged polls: the resolution.
	sweep := time.Now()
	for _, mb := range sl.all {
		_, _ = ctlStatus(ctx, mb.nd)
	}
	res.SweepSeconds = time.Since(sweep).Seconds()
	t.Logf("LAB50 members started in %.1f s (8 at a time); every node lists every other %.2f s after the last `up` returned (%.2f s after the first started)",
		res.StartSeconds, res.ConvergeSeconds, res.ConvergeFromFirstSeconds)
	res.RSSKiB["converged"] = sl.rss(t)
	interrupted()

	// At rest.
	pids := map[string]int{}
	for _, mb := range sl.all {
		if p := daemonPIDs(mb.nd.stateDir); len(p) == 1 {
			pids[mb.name] = p[0]
		}
	}
	ticks0 := map[string]uint64{}
	for name, pid := range pids {
		ticks0[name] = cpuTicks(t, pid)
	}
	restStart := time.Now()
	var lr labResults
	var nds []*node
	for _, mb := range sl.all {
		nds = append(nds, mb.nd)
	}
	labRestFor(ctx, t, nds, rest, &lr)
	restWall := time.Since(restStart).Seconds()
	res.RestSeconds, res.Rest = lr.IdleSeconds, lr.Rest
	for name, pid := range pids {
		res.CPUAtRest[name] = float64(cpuTicks(t, pid)-ticks0[name]) / 100 / restWall // USER_HZ
	}
	res.RSSKiB["rested"] = sl.rss(t)
	interrupted()

	// The ping matrix.
	pairs := sl.randomPairs(rand.New(rand.NewPCG(seed, seed^0x5354)), npairs)
	res.Pings = pingPairs(pairs, 4)
	res.RSSKiB["pinged"] = sl.rss(t)

	lab50Report(t, sl, &res)
	if p := os.Getenv("STT_LAB50_JSON"); p != "" {
		b, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(p, append(b, '\n'), 0o644); err != nil {
			t.Error(err)
		}
	}
	for _, p := range res.Pings {
		if !p.OK {
			t.Errorf("%s → %s unanswered: %s", p.From, p.To, p.Output)
		}
	}
}

// rss reads VmRSS of every node's daemon, in KiB.
func (sl *scaleLab) rss(t *testing.T) map[string]int {
	out := map[string]int{}
	for _, mb := range sl.all {
		pids := daemonPIDs(mb.nd.stateDir)
		if len(pids) != 1 {
			t.Errorf("%s: want one daemon, found %v", mb.name, pids)
			continue
		}
		out[mb.name] = vmKB(t, pids[0], "VmRSS")
	}
	return out
}

// lab50Report logs the figures, each line starting with "LAB50" for the script.
func lab50Report(t *testing.T, sl *scaleLab, res *lab50Results) {
	stats := func(xs []float64, f string) string {
		if len(xs) == 0 {
			return "-"
		}
		s := slices.Sorted(slices.Values(xs))
		med := s[len(s)/2]
		if len(s)%2 == 0 {
			med = (s[len(s)/2-1] + s[len(s)/2]) / 2
		}
		return fmt.Sprintf(f+" / "+f+" / "+f, s[0], med, s[len(s)-1])
	}
	byKind := func(get func(name string) (float64, bool)) string {
		var parts []string
		for _, kind := range []string{"public", "easy", "firewall", "hard-random"} {
			var xs []float64
			for _, mb := range sl.all {
				if string(mb.kind) != kind {
					continue
				}
				if v, ok := get(mb.name); ok {
					xs = append(xs, v)
				}
			}
			if len(xs) > 0 {
				parts = append(parts, fmt.Sprintf("%s %s", kind, stats(xs, "%.1f")))
			}
		}
		return strings.Join(parts, "; ")
	}
	var conv []float64
	for _, v := range res.ConvergePerNode {
		conv = append(conv, v)
	}
	t.Logf("LAB50 RESULTS: %d nodes (%s), %d CPUs, load at start %s", res.Nodes, strings.Join(res.Sites, ", "), res.Machine.CPUs, res.Machine.Load)
	t.Logf("LAB50 lab built %.1f s; members' `up` from first start to last return %.2f s", res.BuildSeconds, res.StartSeconds)
	t.Logf("LAB50 converged (every node lists every other with a mesh address) %.2f s after the last `up` returned, %.2f s after the first started; per node min / median / max %s s (one status sweep %.3f s)",
		res.ConvergeSeconds, res.ConvergeFromFirstSeconds, stats(conv, "%.2f"), res.SweepSeconds)
	for _, mb := range sl.all {
		if m, ok := res.Lacked[mb.name]; ok && res.ConvergePerNode[mb.name] > 1 {
			t.Logf("LAB50   %s (%s) listed every other %.2f s after the last `up`; the poll before, it lacked %d: %s",
				mb.name, mb.kind, res.ConvergePerNode[mb.name], len(m), strings.Join(m, " "))
		}
	}
	var ub, up, gb, gm, cpu, sess, hs []float64
	rest := map[string]labRest{}
	for _, r := range res.Rest {
		rest[r.Node] = r
		ub = append(ub, r.UnderlayTxBytesPerSec)
		up = append(up, r.UnderlayTxPktsPerSec)
		gb = append(gb, r.MeshBytesOutPerSec)
		gm = append(gm, r.MeshMsgsOutPerSec)
		sess = append(sess, float64(r.Sessions))
		hs = append(hs, float64(r.Counters["handshakes_started"]))
		cpu = append(cpu, 100*res.CPUAtRest[r.Node])
	}
	t.Logf("LAB50 at rest over %.0f s, per node min / median / max:", res.RestSeconds)
	t.Logf("LAB50   underlay sent  %s B/s", stats(ub, "%.1f"))
	t.Logf("LAB50   underlay pkts  %s pkt/s", stats(up, "%.2f"))
	t.Logf("LAB50   gossip sent    %s B/s", stats(gb, "%.1f"))
	t.Logf("LAB50   gossip msgs    %s msg/s", stats(gm, "%.3f"))
	t.Logf("LAB50   sessions       %s", stats(sess, "%.0f"))
	t.Logf("LAB50   CPU            %s %% of one CPU", stats(cpu, "%.2f"))
	t.Logf("LAB50   handshakes started over the rest period %s", stats(hs, "%.0f"))
	t.Logf("LAB50   underlay B/s by kind: %s", byKind(func(n string) (float64, bool) { r, ok := rest[n]; return r.UnderlayTxBytesPerSec, ok }))
	lab50Breakdown(t, sl, res)
	for _, phase := range []string{"converged", "rested", "pinged"} {
		var xs []float64
		for _, kb := range res.RSSKiB[phase] {
			xs = append(xs, float64(kb)/1024)
		}
		t.Logf("LAB50 RSS %-9s %s MiB (min / median / max); by kind: %s", phase, stats(xs, "%.1f"),
			byKind(func(n string) (float64, bool) { kb, ok := res.RSSKiB[phase][n]; return float64(kb) / 1024, ok }))
	}
	answered := 0
	paths := map[string]int{}
	var rtt, took []float64
	for _, p := range res.Pings {
		if p.OK {
			answered++
			paths[p.Path]++
			rtt = append(rtt, p.RTT)
		}
		took = append(took, p.Took)
	}
	t.Logf("LAB50 ping matrix (seed %d): %d of %d random pairs answered; by path %v; rtt %s ms; whole command (handshake, punch or relay included) %s s",
		res.Seed, answered, len(res.Pings), paths, stats(rtt, "%.3f"), stats(took, "%.2f"))
	for _, r := range res.Rest {
		t.Logf("rest %s: underlay %.1f B/s (%.2f pkt/s), gossip %.1f B/s (%.3f msg/s), sessions %d, cpu %.2f%%, counters %v",
			r.Node, r.UnderlayTxBytesPerSec, r.UnderlayTxPktsPerSec, r.MeshBytesOutPerSec, r.MeshMsgsOutPerSec, r.Sessions, 100*res.CPUAtRest[r.Node], r.Counters)
	}
}

// lab50Breakdown logs where the bytes at rest go, for the introducers and the members
// apart: the median over the nodes of each kind of frame sent (the node's sent_<kind>
// counters, with 28 bytes of IPv4 and UDP headers a frame so that they add up to the
// underlay's figure), the relay's forwarding, what is left of the underlay's bytes (DATA,
// WebSocket, ARP...), and the gossip messages sent by type (the bodies, carried inside
// "reliable").
func lab50Breakdown(t *testing.T, sl *scaleLab, res *lab50Results) {
	kinds := []string{"keepalive", "ack", "ping", "probe", "reliable", "control", "handshake"}
	gossip := []string{"summary", "digest", "want", "records", "observe", "observed", "statements"}
	kindOf := map[string]string{}
	for _, mb := range sl.all {
		kindOf[mb.name] = string(mb.kind)
	}
	median := func(xs []float64) float64 {
		if len(xs) == 0 {
			return 0
		}
		s := slices.Sorted(slices.Values(xs))
		if len(s)%2 == 1 {
			return s[len(s)/2]
		}
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	for _, group := range []string{"introducers", "members"} {
		by := map[string][]float64{}
		n := 0
		for _, r := range res.Rest {
			if (kindOf[r.Node] == "public") != (group == "introducers") {
				continue
			}
			n++
			c := func(k string) float64 { return float64(r.Counters[k]) / res.RestSeconds }
			var sum float64
			for _, k := range kinds {
				v := c("sent_"+k+"_bytes") + 28*c("sent_"+k+"_frames")
				by[k] = append(by[k], v)
				sum += v
			}
			relay := c("relay_forwarded_bytes") + 28*c("relay_forwarded_packets")
			by["relay"] = append(by["relay"], relay)
			by["rest"] = append(by["rest"], r.UnderlayTxBytesPerSec-sum-relay)
			by["underlay"] = append(by["underlay"], r.UnderlayTxBytesPerSec)
			for _, g := range gossip {
				by["g_"+g] = append(by["g_"+g], c("mesh_bytes_out_"+g))
				by["m_"+g] = append(by["m_"+g], c("mesh_messages_out_"+g))
			}
		}
		if n == 0 {
			continue
		}
		var parts, gparts []string
		for _, k := range append(kinds, "relay", "rest") {
			parts = append(parts, fmt.Sprintf("%s %.1f", k, median(by[k])))
		}
		for _, g := range gossip {
			gparts = append(gparts, fmt.Sprintf("%s %.1f (%.3f msg/s)", g, median(by["g_"+g]), median(by["m_"+g])))
		}
		t.Logf("LAB50   %s (%d), median B/s sent by kind: underlay %.1f = %s", group, n, median(by["underlay"]), strings.Join(parts, ", "))
		t.Logf("LAB50   %s (%d), median gossip B/s by type (bodies, inside reliable): %s", group, n, strings.Join(gparts, ", "))
	}
}
