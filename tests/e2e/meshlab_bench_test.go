//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/internal/ctl"
	"github.com/stt-tun/stt-tun/internal/nslab"
	"github.com/stt-tun/stt-tun/internal/status"
)

// The mesh lab measures two figures of docs/benchmarks.md ("Mesh"): how long a new
// member takes to know the others (and they it), and what a converged mesh sends at
// rest. It is a measurement, not a test: it runs only with STT_MESH_LAB=1, which
// scripts/mesh-lab.sh (`make bench-mesh`) sets. Nothing it measures is asserted.
//
//	STT_MESH_LAB_RUNS   joins measured, each in a fresh lab (default 5)
//	STT_MESH_LAB_IDLE   how long the last lab is watched at rest (default 2m)
//	STT_MESH_LAB_JSON   file to write every sample to, as JSON
//	STT_MESH_LAB_POLL   how often each daemon's status is asked for (default 50ms)
//	STT_MESH_LAB_IDLE_TIMEOUT  [discovery] idle_timeout of every member (default: the default)

// labPoll is how often the lab asks the daemons for their status
// (STT_MESH_LAB_POLL changes it).
var labPoll = 50 * time.Millisecond

// labSettle is how long the rest measurement waits after the last join, so that
// the join's own exchanges are over.
const labSettle = 15 * time.Second

func labEnvInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 50 {
		t.Fatalf("%s=%q: want a number from 1 to 50", name, v)
	}
	return n
}

// labResults is what the lab measured, as STT_MESH_LAB_JSON gets it.
type labResults struct {
	// Joins: per run, seconds from the new node's `up` returning until it knew all
	// five members with their mesh addresses (NewKnowsAll), until each of the five
	// knew it (OthersKnowNew, by member), and how long `up` itself took.
	Joins []labJoin `json:"joins"`
	// Rest: per node, over IdleSeconds at rest.
	IdleSeconds float64    `json:"idle_seconds"`
	Rest        []labRest  `json:"rest"`
	Machine     labMachine `json:"machine"`
}

type labJoin struct {
	Up            float64            `json:"up_seconds"`
	NewKnowsAll   float64            `json:"new_knows_all_seconds"`
	OthersKnowNew map[string]float64 `json:"others_know_new_seconds"`
	AllKnowNew    float64            `json:"all_know_new_seconds"`
	// The same two, from the moment `up` was started.
	NewKnowsAllFromStart float64 `json:"new_knows_all_from_start_seconds"`
	AllKnowNewFromStart  float64 `json:"all_know_new_from_start_seconds"`
}

type labRest struct {
	Node string `json:"node"`
	// UnderlayTxBytesPerSec is what the node's namespace sent on its veth (Ethernet
	// frames, every protocol), per second.
	UnderlayTxBytesPerSec float64 `json:"underlay_tx_bytes_per_sec"`
	UnderlayTxPktsPerSec  float64 `json:"underlay_tx_packets_per_sec"`
	// MeshBytesOutPerSec is the gossip the engine sent (mesh_bytes_out: message
	// type, length and body, before encryption), per second.
	MeshBytesOutPerSec float64 `json:"mesh_bytes_out_per_sec"`
	MeshMsgsOutPerSec  float64 `json:"mesh_messages_out_per_sec"`
	// Counters are the node's counters that moved during the rest period.
	Counters map[string]uint64 `json:"counters_delta"`
	Sessions int               `json:"sessions"`
}

type labMachine struct {
	Load string `json:"loadavg_start"`
	CPUs int    `json:"cpus"`
}

// TestMeshLabFigures: see the comment at the top of this file.
func TestMeshLabFigures(t *testing.T) {
	if os.Getenv("STT_MESH_LAB") == "" {
		t.Skip("a measurement, not a test: run it with `make bench-mesh` (scripts/mesh-lab.sh)")
	}
	runs := labEnvInt(t, "STT_MESH_LAB_RUNS", 5)
	idle := 2 * time.Minute
	if v := os.Getenv("STT_MESH_LAB_IDLE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 10*time.Second || d > 10*time.Minute {
			t.Fatalf("STT_MESH_LAB_IDLE=%q: want a duration from 10s to 10m", v)
		}
		idle = d
	}
	if v := os.Getenv("STT_MESH_LAB_POLL"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Millisecond || d > time.Second {
			t.Fatalf("STT_MESH_LAB_POLL=%q: want a duration from 1ms to 1s", v)
		}
		labPoll = d
	}
	// Ctrl-C or SIGTERM (from the script's trap) ends the run through the normal
	// cleanups: daemons down, namespaces deleted.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var res labResults
	load, _ := os.ReadFile("/proc/loadavg")
	res.Machine = labMachine{Load: strings.TrimSpace(string(load)), CPUs: runtime.NumCPU()}
	for r := 1; r <= runs; r++ {
		last := r == runs
		t.Run(fmt.Sprintf("run%d", r), func(t *testing.T) {
			j := labJoinOnce(ctx, t, last, idle, &res)
			res.Joins = append(res.Joins, j)
			t.Logf("run %d: up took %.3fs; from up returning: new node knows all 5 %.3fs, all 5 know it %.3fs %v; from up starting: %.3fs, %.3fs",
				r, j.Up, j.NewKnowsAll, j.AllKnowNew, j.OthersKnowNew, j.NewKnowsAllFromStart, j.AllKnowNewFromStart)
		})
		if t.Failed() || ctx.Err() != nil {
			t.FailNow()
		}
	}
	labReport(t, &res)
	if p := os.Getenv("STT_MESH_LAB_JSON"); p != "" {
		b, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(p, append(b, '\n'), 0o644); err != nil {
			t.Error(err)
		}
	}
}

// labJoinOnce builds the lab, brings up five members and waits until they know each
// other, then starts the sixth with only m1 as bootstrap and times, polling every
// labPoll, until it knows the five and until each of them knows it. With rest, it then
// measures the six at rest for idle.
func labJoinOnce(ctx context.Context, t *testing.T, rest bool, idle time.Duration, res *labResults) labJoin {
	m := newMeshLab(t)
	// [discovery] is the last section of the file, so a key appended goes into it.
	var extra string
	if v := os.Getenv("STT_MESH_LAB_IDLE_TIMEOUT"); v != "" {
		extra = fmt.Sprintf("idle_timeout = %q\n", v)
	}
	boot, _ := m.add("m1", "\n[discovery]\naccept_prefixes = [\"10.77.0.0/24\"]\n"+extra)
	bootAddr := underlay(1) + fmt.Sprintf(":%d", port)
	all := []*node{boot}
	for i := 2; i <= 5; i++ {
		nd, _ := m.add(fmt.Sprintf("m%d", i), discovery(bootAddr)+extra)
		all = append(all, nd)
	}
	for _, nd := range all {
		nd.upDaemon()
	}
	for _, nd := range all {
		labWait(ctx, t, nd, 60*time.Second, func(st status.Status) bool { return knowsAll(st, names(all, nd)) })
	}

	m6, _ := m.add("m6", discovery(bootAddr)+extra)
	registerDown(m6)
	// The pollers start before `up`, so that what happens while `up` runs is seen too
	// (m6's own socket does not answer until its daemon listens).
	var mu sync.Mutex
	var wg sync.WaitGroup
	knew := map[string]time.Time{}
	start := time.Now()
	for _, nd := range append(slices.Clone(all), m6) {
		wg.Go(func() {
			var want []string
			if nd == m6 {
				want = names(all, nil)
			} else {
				want = []string{"m6"}
			}
			at := labWait(ctx, t, nd, 60*time.Second, func(st status.Status) bool { return knowsAll(st, want) })
			mu.Lock()
			knew[nd.name] = at
			mu.Unlock()
		})
	}
	r := m6.stt("up", "-c", m6.cfgPath)
	upReturned := time.Now()
	if r.err != nil {
		t.Errorf("m6: stt-tun up: %v\n%s%s", r.err, r.stdout, r.stderr)
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	// Times from `up` returning; what was already known when it returned counts 0.
	since := func(at time.Time) float64 { return max(0, at.Sub(upReturned).Seconds()) }
	j := labJoin{
		Up:                   upReturned.Sub(start).Seconds(),
		NewKnowsAll:          since(knew["m6"]),
		NewKnowsAllFromStart: knew["m6"].Sub(start).Seconds(),
		OthersKnowNew:        map[string]float64{},
	}
	for _, nd := range all {
		d := since(knew[nd.name])
		j.OthersKnowNew[nd.name] = d
		j.AllKnowNew = max(j.AllKnowNew, d)
		j.AllKnowNewFromStart = max(j.AllKnowNewFromStart, knew[nd.name].Sub(start).Seconds())
	}
	if rest {
		labRestFor(ctx, t, append(all, m6), idle, res)
	}
	return j
}

// names lists the node names of nodes except skip.
func names(nodes []*node, skip *node) []string {
	var out []string
	for _, nd := range nodes {
		if nd != skip {
			out = append(out, nd.name)
		}
	}
	return out
}

// knowsAll: st lists every name in want as a member with its mesh address.
func knowsAll(st status.Status, want []string) bool {
	n := 0
	for _, p := range st.Peers {
		if p.MeshAddress != "" && slices.Contains(want, p.Name) {
			n++
		}
	}
	return n == len(want)
}

// ctlStatus asks nd's daemon for its status over its control socket: what
// `status --json` prints, without starting a process per poll.
func ctlStatus(ctx context.Context, nd *node) (status.Status, error) {
	c, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return ctl.Status(c, ctl.SocketPath(nd.stateDir, linkName))
}

// labWait polls nd's status every labPoll until cond holds, and returns when it first
// did (the time the status was asked for). Safe from several goroutines: on failure
// it reports with Errorf and returns.
func labWait(ctx context.Context, t *testing.T, nd *node, limit time.Duration, cond func(status.Status) bool) time.Time {
	deadline := time.Now().Add(limit)
	tick := time.NewTicker(labPoll)
	defer tick.Stop()
	var last status.Status
	var lastErr error
	for {
		asked := time.Now()
		st, err := ctlStatus(ctx, nd)
		if err == nil && cond(st) {
			return asked
		}
		last, lastErr = st, err
		if ctx.Err() != nil {
			t.Errorf("%s: interrupted", nd.name)
			return asked
		}
		if asked.After(deadline) {
			t.Errorf("%s: condition not reached within %v (%v): peers %+v", nd.name, limit, lastErr, last.Peers)
			return asked
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
		}
	}
}

// registerDown registers what upDaemon registers before `up`: at the end, `down`, and
// the daemon killed by its PID (found by the node's unique state directory) if down
// did not stop it.
func registerDown(n *node) {
	n.t.Cleanup(func() {
		if len(daemonPIDs(n.stateDir)) == 0 {
			return
		}
		n.stt("down", linkName)
		c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = nslab.WaitFor(c, func() bool { return len(daemonPIDs(n.stateDir)) == 0 })
		for _, pid := range daemonPIDs(n.stateDir) {
			n.t.Errorf("%s: daemon %d still running after down; killing it", n.name, pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
}

// vethTx is what the namespace sent on its links other than loopback and the tunnel:
// bytes and packets from the kernel's counters.
func vethTx(t *testing.T, nd *node) (bytes, pkts uint64) {
	out := mustIn(t, nd.ns, "ip", "-j", "-s", "link", "show")
	var links []struct {
		Name  string `json:"ifname"`
		Stats struct {
			TX struct {
				Bytes   uint64 `json:"bytes"`
				Packets uint64 `json:"packets"`
			} `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil {
		t.Fatalf("%s: ip -j -s link: %v", nd.name, err)
	}
	for _, l := range links {
		if l.Name == "lo" || l.Name == linkName {
			continue
		}
		bytes += l.Stats.TX.Bytes
		pkts += l.Stats.TX.Packets
	}
	return bytes, pkts
}

// labRestFor waits labSettle, then reads every node's underlay and mesh counters,
// waits idle with no traffic of its own, and reads them again.
func labRestFor(ctx context.Context, t *testing.T, nodes []*node, idle time.Duration, res *labResults) {
	t.Logf("waiting %v, then measuring %v at rest", labSettle, idle)
	select {
	case <-time.After(labSettle):
	case <-ctx.Done():
		t.FailNow()
	}
	type snap struct {
		bytes, pkts uint64
		ctr         map[string]uint64
	}
	read := func() ([]snap, time.Time) {
		out := make([]snap, len(nodes))
		for i, nd := range nodes {
			st, err := ctlStatus(ctx, nd)
			if err != nil {
				t.Fatalf("%s: status: %v", nd.name, err)
			}
			out[i].ctr = st.Counters
			out[i].bytes, out[i].pkts = vethTx(t, nd)
		}
		return out, time.Now()
	}
	s0, t0 := read()
	select {
	case <-time.After(idle):
	case <-ctx.Done():
		t.FailNow()
	}
	s1, t1 := read()
	secs := t1.Sub(t0).Seconds()
	res.IdleSeconds = secs
	for i, nd := range nodes {
		r := labRest{
			Node:                  nd.name,
			UnderlayTxBytesPerSec: float64(s1[i].bytes-s0[i].bytes) / secs,
			UnderlayTxPktsPerSec:  float64(s1[i].pkts-s0[i].pkts) / secs,
			MeshBytesOutPerSec:    float64(s1[i].ctr["mesh_bytes_out"]-s0[i].ctr["mesh_bytes_out"]) / secs,
			MeshMsgsOutPerSec:     float64(s1[i].ctr["mesh_messages_out"]-s0[i].ctr["mesh_messages_out"]) / secs,
			Counters:              map[string]uint64{},
		}
		for k, v := range s1[i].ctr {
			if d := v - s0[i].ctr[k]; d != 0 {
				r.Counters[k] = d
			}
		}
		if st, err := ctlStatus(ctx, nd); err == nil && st.Mesh != nil {
			r.Sessions = st.Mesh.Connected
		}
		res.Rest = append(res.Rest, r)
	}
}

// labReport logs the figures: joins as median and max over the runs, rest as min,
// median and max over the nodes.
func labReport(t *testing.T, res *labResults) {
	var newAll, allNew, up, newAll0, allNew0 []float64
	for _, j := range res.Joins {
		newAll = append(newAll, j.NewKnowsAll)
		allNew = append(allNew, j.AllKnowNew)
		newAll0 = append(newAll0, j.NewKnowsAllFromStart)
		allNew0 = append(allNew0, j.AllKnowNewFromStart)
		up = append(up, j.Up)
	}
	t.Logf("MESH LAB (%d runs, polled every %v; load at start %s)", len(res.Joins), labPoll, res.Machine.Load)
	t.Logf("  `up` of the new node:                 median %s max %s s", med(up), mx(up))
	t.Logf("  new node knows all 5 (from up):       median %s max %s s", med(newAll), mx(newAll))
	t.Logf("  all 5 know the new node (from up):    median %s max %s s", med(allNew), mx(allNew))
	t.Logf("  new node knows all 5 (from up start): median %s max %s s", med(newAll0), mx(newAll0))
	t.Logf("  all 5 know it (from up start):        median %s max %s s", med(allNew0), mx(allNew0))
	if len(res.Rest) == 0 {
		return
	}
	var ub, up2, mb, mm []float64
	for _, r := range res.Rest {
		ub = append(ub, r.UnderlayTxBytesPerSec)
		up2 = append(up2, r.UnderlayTxPktsPerSec)
		mb = append(mb, r.MeshBytesOutPerSec)
		mm = append(mm, r.MeshMsgsOutPerSec)
		t.Logf("  rest %s: underlay %.1f B/s (%.2f pkt/s), gossip %.1f B/s (%.2f msg/s), sessions %d, counters %v",
			r.Node, r.UnderlayTxBytesPerSec, r.UnderlayTxPktsPerSec, r.MeshBytesOutPerSec, r.MeshMsgsOutPerSec, r.Sessions, r.Counters)
	}
	t.Logf("  at rest over %.0f s, per node min / median / max:", res.IdleSeconds)
	t.Logf("    underlay sent:  %s / %s / %s B/s", mn(ub), med(ub), mx(ub))
	t.Logf("    underlay pkts:  %s / %s / %s pkt/s", mn(up2), med(up2), mx(up2))
	t.Logf("    gossip sent:    %s / %s / %s B/s", mn(mb), med(mb), mx(mb))
	t.Logf("    gossip msgs:    %s / %s / %s msg/s", mn(mm), med(mm), mx(mm))
}

func med(xs []float64) string {
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return fmt.Sprintf("%.3f", s[len(s)/2])
	}
	return fmt.Sprintf("%.3f", (s[len(s)/2-1]+s[len(s)/2])/2)
}
func mx(xs []float64) string { return fmt.Sprintf("%.3f", slices.Max(xs)) }
func mn(xs []float64) string { return fmt.Sprintf("%.3f", slices.Min(xs)) }
