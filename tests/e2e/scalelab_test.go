//go:build e2e

// The scale lab (issue 16): a mesh of many members behind a few NAT routers, with two
// public introducers that every member names as its bootstrap.
//
//	                          inet (forwards; 198.18.N.1 on link N)
//	   ┌────────────┬──────────────┼──────────────┬──────────────┬──────────────┐
//	   i1           i2          a1-gw (easy)   b1-gw (easy)   c1-gw (firewall) h1-gw (hard-random)
//	198.18.1.2   198.18.2.2       │ a1 … aK       │ b1 … bK        │ c1 … cK        │ h1 … hJ
//	introducers: public members, relay = true, each the other's bootstrap
//
// Each router is a namespace with nftables rules (internal/nslab.NATRouter); its hosts
// sit on LANs of their own behind it and share its NAT. Members are configured with the
// seed, their key and the introducers' two UDP addresses: nothing else. Between two
// members the path is direct UDP (easy, firewall, public, and two hosts behind one
// router), or through an introducer acting as relay when one end is behind the hard NAT
// (its router maps each destination to a new port: no punch gets through).
//
// TestMeshScaleTenNodes (in `make test`) builds ten members this way and asserts what
// a user of a growing mesh relies on: every member comes to list every other with its
// mesh address, and every member's echoes to every other are answered. Timings are not
// asserted. TestMeshScaleLabFigures (scalelab_bench_test.go, STT_LAB50=1,
// scripts/lab50.sh) builds fifty and measures.
package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/internal/nslab"
	"github.com/stt-tun/stt-tun/internal/status"
)

// scalePingTimeout bounds one `stt-tun ping`: its echo waits for the handshake, and for
// the punch (retries at 2, 4, 8 s) or the relay (after 3 s) when NAT is in the way.
const scalePingTimeout = 20 * time.Second

// scaleMember is one member of the scale lab.
type scaleMember struct {
	name string
	kind nslab.NATKind // NATPublic for the introducers
	nd   *node
}

// scaleLab is the lab above: introducers first in all, then the members site by site.
type scaleLab struct {
	*meshLab
	intro []*scaleMember
	all   []*scaleMember
	sites []*nslab.NATSite
}

// scaleSite is one router of the lab: its kind, the letter its hosts' names start
// with, and how many hosts it has.
type scaleSite struct {
	kind   nslab.NATKind
	letter string
	hosts  int
}

// scaleSites spreads members (2 introducers aside) over four routers: one hard NAT
// with an eighth of them (at least one), the rest evenly over two easy NATs and a
// firewall. A relay forwards for at most 8 pairs with any one member, so the hard site
// stays small: its members reach most others through a relay.
func scaleSites(members int) []scaleSite {
	hard := max(1, members/8)
	rest := members - hard
	sites := []scaleSite{
		{nslab.NATEasy, "a", 0}, {nslab.NATEasy, "b", 0}, {nslab.NATFirewall, "c", 0},
	}
	for i := range sites {
		sites[i].hosts = rest / len(sites)
		if i < rest%len(sites) {
			sites[i].hosts++
		}
	}
	return append(sites, scaleSite{nslab.NATHardRandom, "h", hard})
}

// scaleMaxNodes is the most nodes newScaleLab builds: 16 hosts a router (nslab).
const scaleMaxNodes = 2 + 3*16 + 6

// newScaleLab builds the lab with n nodes (two introducers and n-2 members), writes
// every configuration, and starts nothing.
func newScaleLab(t *testing.T, n int) *scaleLab {
	t.Helper()
	if n < 6 || n > scaleMaxNodes {
		t.Fatalf("scale lab of %d nodes: want 6 to %d", n, scaleMaxNodes)
	}
	sl := &scaleLab{meshLab: newMeshLab(t)}
	var boots []string
	for i := 1; i <= 2; i++ {
		boots = append(boots, fmt.Sprintf("%s:%d", underlay(i), port))
	}
	// The introducers are members of the mesh lab (meshLab.add), so they also carry its
	// 10.77.0.i/24 on their links; no member accepts it, and nothing here uses it.
	for i := 1; i <= 2; i++ {
		other := boots[2-i] // each introducer names the other
		nd, _ := sl.add(fmt.Sprintf("i%d", i), fmt.Sprintf("\n[discovery]\nbootstrap = [%q]\nrelay = true\n", other))
		mb := &scaleMember{name: nd.name, kind: nslab.NATPublic, nd: nd}
		sl.intro = append(sl.intro, mb)
		sl.all = append(sl.all, mb)
	}
	conf := nodeConf{seedFile: sl.seed, extra: fmt.Sprintf("\n[discovery]\nbootstrap = %s\n", quoteList(boots))}
	for s, site := range scaleSites(n - 2) {
		var ns *nslab.NATSite
		for h := 1; h <= site.hosts; h++ {
			name := fmt.Sprintf("%s%d", site.letter, h)
			if h == 1 {
				ns = sl.lab.NATRouter(sl.router, name, site.kind, 11+s)
				sl.sites = append(sl.sites, ns)
			} else {
				sl.lab.NATHost(ns, name)
			}
			nd := newNode(t, ns.Hosts[h-1], name)
			nd.writeConfig(conf)
			sl.nodes[name] = nd
			sl.all = append(sl.all, &scaleMember{name: name, kind: site.kind, nd: nd})
		}
	}
	return sl
}

// startAll starts every daemon, the introducers first and one at a time, then the
// members workers at once, and returns when each `up` has returned: the time the first
// member's `up` started and the time the last one's returned. A failed `up` is an
// error; a daemon up starts is taken down (then killed by PID) at cleanup either way.
func (sl *scaleLab) startAll(workers int) (first, last time.Time, err error) {
	for _, mb := range sl.intro {
		mb.nd.upDaemon()
	}
	members := sl.all[len(sl.intro):]
	for _, mb := range members {
		registerDown(mb.nd)
	}
	var mu sync.Mutex
	var errs []string
	jobs := make(chan *scaleMember)
	var wg sync.WaitGroup
	first = time.Now()
	for range workers {
		wg.Go(func() {
			for mb := range jobs {
				if r := mb.nd.stt("up", "-c", mb.nd.cfgPath); r.err != nil {
					mu.Lock()
					errs = append(errs, fmt.Sprintf("%s: stt-tun up: %v: %s", mb.name, r.err, strings.TrimSpace(r.stderr)))
					mu.Unlock()
				}
			}
		})
	}
	for _, mb := range members {
		jobs <- mb
	}
	close(jobs)
	wg.Wait()
	last = time.Now()
	if len(errs) > 0 {
		return first, last, fmt.Errorf("%d of %d members did not start: %s", len(errs), len(members), strings.Join(errs, "; "))
	}
	return first, last, nil
}

// othersOf lists the names of every node of the lab but mb.
func (sl *scaleLab) othersOf(mb *scaleMember) []string {
	var out []string
	for _, x := range sl.all {
		if x != mb {
			out = append(out, x.name)
		}
	}
	return out
}

// missingFrom lists the names in want that st does not list as a member with a mesh
// address.
func missingFrom(st status.Status, want []string) []string {
	var missing []string
	for _, name := range want {
		if !slices.ContainsFunc(st.Peers, func(p status.Peer) bool { return p.Name == name && p.MeshAddress != "" }) {
			missing = append(missing, name)
		}
	}
	return missing
}

// waitConverged polls every node's status (over its control socket: the document
// `status --json` prints) every poll until each lists every other node with a mesh
// address, or until limit. It returns when each node was first seen to (the time its
// status was asked for), what each node that was not at the first poll lacked at its
// last poll before, and an error naming the nodes still missing some and which.
func (sl *scaleLab) waitConverged(ctx context.Context, poll, limit time.Duration) (knew map[string]time.Time, lacked map[string][]string, err error) {
	knew, lacked = map[string]time.Time{}, map[string][]string{}
	missing := map[string][]string{}
	deadline := time.Now().Add(limit)
	tick := time.NewTicker(poll)
	defer tick.Stop()
	for {
		for _, mb := range sl.all {
			if _, ok := knew[mb.name]; ok {
				continue
			}
			asked := time.Now()
			st, err := ctlStatus(ctx, mb.nd)
			if err != nil {
				missing[mb.name] = []string{"(status: " + err.Error() + ")"}
				continue
			}
			if m := missingFrom(st, sl.othersOf(mb)); len(m) > 0 {
				missing[mb.name] = m
				continue
			}
			knew[mb.name] = asked
			delete(missing, mb.name)
		}
		for name, m := range missing {
			lacked[name] = m
		}
		if len(knew) == len(sl.all) {
			return knew, lacked, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			var b strings.Builder
			for _, mb := range sl.all {
				if m, ok := missing[mb.name]; ok {
					fmt.Fprintf(&b, "\n  %s (%s) lacks %d: %s", mb.name, mb.kind, len(m), strings.Join(m, " "))
				}
			}
			return knew, lacked, fmt.Errorf("%d of %d nodes do not list every other with a mesh address within %v:%s",
				len(sl.all)-len(knew), len(sl.all), limit, b.String())
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
		}
	}
}

// checkListsAll reads each node's `stt-tun status --json` (the command itself) and
// returns an error for each that does not list every other node with a mesh address.
func (sl *scaleLab) checkListsAll() error {
	var errs []string
	for _, mb := range sl.all {
		st, err := mb.nd.meshStatus()
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", mb.name, err))
			continue
		}
		listed := map[string]bool{}
		for _, p := range st.Peers {
			if p.MeshAddress != "" {
				listed[p.Name] = true
			}
		}
		var missing []string
		for _, name := range sl.othersOf(mb) {
			if !listed[name] {
				missing = append(missing, name)
			}
		}
		if len(missing) > 0 {
			errs = append(errs, fmt.Sprintf("%s's status --json lacks %s", mb.name, strings.Join(missing, " ")))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// scalePing is one `stt-tun ping` between two nodes and what came of it.
type scalePing struct {
	From string  `json:"from"`
	To   string  `json:"to"`
	OK   bool    `json:"answered"`
	Path string  `json:"path,omitempty"` // "udp" or "relay"; "" when unanswered
	Via  string  `json:"via,omitempty"`  // the endpoint, or the relaying member
	RTT  float64 `json:"rtt_ms,omitempty"`
	// Took is the whole command's wall time: a handshake, a punch or a relay included.
	Took   float64 `json:"took_seconds"`
	Output string  `json:"output,omitempty"` // when unanswered
}

var scaleReply = regexp.MustCompile(`(?m)^reply from \S+ via (\S+)(?: (\S+))?: seq=1 time=([0-9.]+) ms$`)

// ping runs `stt-tun ping -c 1` from a to b, which waits up to scalePingTimeout for the
// answer (the handshake, a punch or a relay included).
func ping1(a, b *scaleMember) scalePing {
	start := time.Now()
	r := a.nd.stt("ping", "-c", "1", "-W", scalePingTimeout.String(), "-I", linkName, b.name)
	p := scalePing{From: a.name, To: b.name, Took: time.Since(start).Seconds()}
	if m := scaleReply.FindStringSubmatch(r.stdout); r.err == nil && m != nil {
		p.OK, p.Path, p.Via = true, m[1], m[2]
		fmt.Sscanf(m[3], "%g", &p.RTT)
		return p
	}
	p.Output = strings.TrimSpace(r.stdout + " " + r.stderr)
	if r.err != nil {
		p.Output += fmt.Sprintf(" (%v)", r.err)
	}
	return p
}

// pingPairs pings every pair, workers at once, and returns the results in pairs' order.
func pingPairs(pairs [][2]*scaleMember, workers int) []scalePing {
	out := make([]scalePing, len(pairs))
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range jobs {
				out[i] = ping1(pairs[i][0], pairs[i][1])
			}
		})
	}
	for i := range pairs {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	return out
}

// randomPairs picks n distinct ordered pairs of distinct nodes with rng.
func (sl *scaleLab) randomPairs(rng *rand.Rand, n int) [][2]*scaleMember {
	var all [][2]*scaleMember
	for _, a := range sl.all {
		for _, b := range sl.all {
			if a != b {
				all = append(all, [2]*scaleMember{a, b})
			}
		}
	}
	rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	return all[:min(n, len(all))]
}

// TestMeshScaleTenNodes: ten members — two public introducers and eight behind four
// NAT routers (two easy, a firewall, a hard NAT), each configured with only the seed,
// its key and the introducers' addresses — started together come to list every other
// member with its mesh address (in `stt-tun status --json`), and every member's echo to
// every other (`stt-tun ping`) is answered: directly, or through an introducer for the
// member behind the hard NAT. No timing is asserted.
func TestMeshScaleTenNodes(t *testing.T) {
	t.Parallel() // mostly waiting (convergence, overlaps): runs beside the other long labs
	begin := time.Now()
	sl := newScaleLab(t, 10)
	built := time.Now()
	if _, _, err := sl.startAll(4); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	if _, _, err := sl.waitConverged(context.Background(), 100*time.Millisecond, meshTimeout); err != nil {
		t.Fatal(err)
	}
	converged := time.Now()
	if err := sl.checkListsAll(); err != nil {
		t.Fatal(err)
	}
	var pairs [][2]*scaleMember
	for i, a := range sl.all {
		for _, b := range sl.all[i+1:] {
			pairs = append(pairs, [2]*scaleMember{a, b})
		}
	}
	var failed []string
	paths := map[string]int{}
	for _, p := range pingPairs(pairs, 4) {
		if !p.OK {
			failed = append(failed, fmt.Sprintf("%s → %s: %s", p.From, p.To, p.Output))
			continue
		}
		paths[p.Path]++
	}
	if len(failed) > 0 {
		t.Fatalf("%d of %d pairs unanswered:\n%s", len(failed), len(pairs), strings.Join(failed, "\n"))
	}
	t.Logf("%d pairs answered, by path: %v; lab built in %v, daemons started in %v, converged %v later, pings took %v",
		len(pairs), paths, built.Sub(begin).Round(time.Millisecond), started.Sub(built).Round(time.Millisecond),
		converged.Sub(started).Round(time.Millisecond), time.Since(converged).Round(time.Millisecond))
}
