// Command memberlist-fit measures how hashicorp/memberlist would use STT sessions if
// stt-tun spread its member records with it: N memberlist nodes run in one process
// over an in-memory Transport that records every distinct peer each node exchanges
// with (each such pair would need an encrypted STT session), the traffic at rest, the
// time until every node lists every member, and what happens to members behind
// endpoint-dependent filtering NATs. It is a measurement script only; memberlist
// (MPL-2.0) is used unmodified and is not linked into stt-tun.
package main

import (
	"bytes"
	"crypto/rand"
	"flag"
	"fmt"
	"log"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

type options struct {
	speed  float64
	steady time.Duration // simulated steady state after the last join
	idle   time.Duration // simulated session idle timeout
	meta   int
	stag   time.Duration // simulated gap between joins
	natTTL time.Duration
}

func main() {
	ns := flag.String("n", "50", "comma-separated member counts, e.g. 10,50,200")
	profiles := flag.String("profile", "lan,wan", "comma-separated memberlist profiles: lan, wan")
	nats := flag.String("nat", "0", "comma-separated counts of NATed members (inbound only from peers they sent to first)")
	var o options
	flag.Float64Var(&o.speed, "speed", 4, "time compression: every memberlist interval and timeout is divided by this")
	flag.DurationVar(&o.steady, "steady", 120*time.Second, "simulated steady state measured once the cluster is at rest (30 s after the last join, or at convergence if later); 120s fills every fan-out column")
	flag.DurationVar(&o.idle, "idle", 60*time.Second, "simulated session idle timeout for the 'active sessions' and 'handshakes' columns")
	flag.IntVar(&o.meta, "meta", 500, "node meta bytes (memberlist refuses more than 512)")
	flag.DurationVar(&o.stag, "stagger", 100*time.Millisecond, "simulated gap between two joins")
	flag.DurationVar(&o.natTTL, "nat-ttl", 0, "simulated lifetime of a NAT filter entry after our last send to that peer (0 = never expires)")
	header := flag.Bool("header", true, "print the markdown table header")
	flag.Parse()
	if o.meta > memberlist.MetaMaxSize {
		fmt.Fprintf(os.Stderr, "-meta: %d exceeds memberlist's MetaMaxSize %d\n", o.meta, memberlist.MetaMaxSize)
		os.Exit(2)
	}
	nList, err := ints(*ns)
	if err != nil {
		fmt.Fprintf(os.Stderr, "-n: %v\n", err)
		os.Exit(2)
	}
	natList, err := ints(*nats)
	if err != nil {
		fmt.Fprintf(os.Stderr, "-nat: %v\n", err)
		os.Exit(2)
	}
	if *header {
		fmt.Println(tableHeader)
	}
	for _, p := range strings.Split(*profiles, ",") {
		if p != "lan" && p != "wan" {
			fmt.Fprintf(os.Stderr, "-profile: unknown profile %q (lan or wan)\n", p)
			os.Exit(2)
		}
		for _, n := range nList {
			for _, k := range natList {
				if k >= n {
					fmt.Fprintf(os.Stderr, "-nat: %d NATed members leave no public seed among %d\n", k, n)
					os.Exit(2)
				}
				fmt.Println(run(p, n, k, o))
			}
		}
	}
}

func ints(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v < 0 {
			return nil, fmt.Errorf("%q is not a count", f)
		}
		out = append(out, v)
	}
	return out, nil
}

// config returns memberlist's stock profile with every interval and timeout
// divided by speed, so that one simulated second takes 1/speed real seconds.
func config(profile string, speed float64) *memberlist.Config {
	c := memberlist.DefaultLANConfig()
	if profile == "wan" {
		c = memberlist.DefaultWANConfig()
	}
	s := func(d *time.Duration) { *d = time.Duration(float64(*d) / speed) }
	s(&c.TCPTimeout)
	s(&c.PushPullInterval)
	s(&c.ProbeTimeout)
	s(&c.ProbeInterval)
	s(&c.GossipInterval)
	s(&c.GossipToTheDeadTime)
	s(&c.QueueCheckInterval)
	return c
}

type delegate struct{ meta []byte }

func (d *delegate) NodeMeta(limit int) []byte                  { return d.meta }
func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

// events counts the failure-detector verdicts a node logs about each subject.
type events struct {
	mu      sync.Mutex
	suspect map[int]int // subject -> "Suspect X has failed" lines (this observer)
	dead    map[int]int // subject -> "Marking X as failed" lines
	refute  atomic.Int64
}

func nodeName(i int) string { return fmt.Sprintf("m%04d", i) }

func subject(line, prefix string) (int, bool) {
	i := strings.Index(line, prefix)
	if i < 0 {
		return 0, false
	}
	rest := line[i+len(prefix):]
	if len(rest) < 5 || rest[0] != 'm' {
		return 0, false
	}
	v, err := strconv.Atoi(rest[1:5])
	return v, err == nil
}

func (e *events) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(p, []byte{'\n'}) {
		l := string(line)
		if s, ok := subject(l, "memberlist: Suspect "); ok {
			e.mu.Lock()
			e.suspect[s]++
			e.mu.Unlock()
		} else if s, ok := subject(l, "memberlist: Marking "); ok {
			e.mu.Lock()
			e.dead[s]++
			e.mu.Unlock()
		} else if strings.Contains(l, "Refuting a suspect") || strings.Contains(l, "Refuting a dead") {
			e.refute.Add(1)
		}
	}
	return len(p), nil
}

const tableHeader = "| profile | N | NATed | converge s | fan-out since join 30/60/120 s | fan-out at rest 30/60/120 s | active sessions (idle timeout) | handshakes /node/min | pkt/s/node | B/s/node | streams /node/min | suspect (public/NATed) | dead (public/NATed) | refutes |\n" +
	"|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"

func run(profile string, n, nNAT int, o options) string {
	mn := newMemNet(n, o.speed, o.natTTL, o.idle)
	isNAT := make([]bool, n)
	// Spread the NATed members over the join order; member 0 is the public seed.
	for k := 0; k < nNAT; k++ {
		i := n - 1 - k*(n-1)/nNAT
		isNAT[i] = true
		mn.nodes[i].nat = true
	}
	evs := make([]*events, n)
	mls := make([]*memberlist.Memberlist, n)
	joined := make([]time.Duration, n)
	real := func(d time.Duration) time.Duration { return time.Duration(float64(d) / o.speed) }
	seed := string(mn.nodes[0].addr)
	for i := 0; i < n; i++ {
		c := config(profile, o.speed)
		c.Name = nodeName(i)
		c.Transport = mn.nodes[i]
		meta := make([]byte, o.meta)
		_, _ = rand.Read(meta) // a signed record is mostly keys and signature: incompressible
		c.Delegate = &delegate{meta: meta}
		evs[i] = &events{suspect: map[int]int{}, dead: map[int]int{}}
		c.Logger = log.New(evs[i], "", 0)
		ml, err := memberlist.Create(c)
		if err != nil {
			log.Fatalf("create %s: %v", c.Name, err)
		}
		mls[i] = ml
		joined[i] = mn.sim()
		if i > 0 {
			if _, err := ml.Join([]string{seed}); err != nil {
				log.Printf("%s: join: %v", c.Name, err)
			}
		}
		time.Sleep(real(o.stag))
	}
	lastJoin := mn.sim()
	// Convergence: every node lists all n members. Watched until the end of the run.
	var convergedAt atomic.Int64
	convergedAt.Store(-1)
	watchDone := make(chan struct{})
	var stop atomic.Bool
	go func() {
		defer close(watchDone)
		for !stop.Load() {
			all := true
			for _, ml := range mls {
				if ml.NumMembers() != n {
					all = false
					break
				}
			}
			if all {
				convergedAt.Store(int64(mn.sim() - lastJoin))
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	// Rates "at rest" are taken over -steady from 30 simulated seconds after the
	// last join, or from convergence if that comes later (waiting at most 60 s more).
	wStart := lastJoin + 30*time.Second
	for mn.sim() < wStart || (convergedAt.Load() < 0 && mn.sim() < wStart+60*time.Second) {
		time.Sleep(real(time.Second) / 4)
	}
	if mn.sim() > wStart {
		wStart = mn.sim()
	}
	end := wStart + o.steady
	type snap struct{ pkts, bytes, dials, sbytes, sess int64 }
	take := func() []snap {
		s := make([]snap, n)
		for i, t := range mn.nodes {
			t.mu.Lock()
			s[i] = snap{t.pktsOut.Load(), t.bytesOut.Load(), t.dialsOut.Load(), t.streamBytes.Load(), t.sessOpen}
			t.mu.Unlock()
		}
		return s
	}
	s0, t0 := take(), mn.sim()
	for _, t := range mn.nodes {
		t.mu.Lock()
		t.rest, t.restAt = make(map[int]time.Duration), t0
		t.mu.Unlock()
	}
	var activeSum float64
	var samples int
	for mn.sim() < end {
		now := mn.sim()
		for _, t := range mn.nodes {
			t.mu.Lock()
			for _, l := range t.last {
				if now-l <= o.idle {
					activeSum++
				}
			}
			t.mu.Unlock()
		}
		samples++
		time.Sleep(real(time.Second))
	}
	s1, t1 := take(), mn.sim()
	stop.Store(true)
	var wg sync.WaitGroup
	for _, ml := range mls {
		wg.Add(1)
		go func(ml *memberlist.Memberlist) { defer wg.Done(); _ = ml.Shutdown() }(ml)
	}
	wg.Wait()
	<-watchDone
	converged := time.Duration(convergedAt.Load())
	var chanDrop, natDrop, blocked int64
	for _, t := range mn.nodes {
		chanDrop += t.chanDropped.Load()
		natDrop += t.natDropped.Load()
		blocked += t.dialsBlocked.Load()
	}
	fmt.Fprintf(os.Stderr, "%s n=%d nat=%d: inbound queue drops %d, NAT-filtered packets %d, NAT-blocked dials %d, at-rest window %.0fs\n",
		profile, n, nNAT, chanDrop, natDrop, blocked, (t1 - t0).Seconds())

	secs := (t1 - t0).Seconds()
	var pkts, byts, dials, hs float64
	for i := range s0 {
		pkts += float64(s1[i].pkts - s0[i].pkts)
		byts += float64(s1[i].bytes - s0[i].bytes + s1[i].sbytes - s0[i].sbytes)
		dials += float64(s1[i].dials - s0[i].dials)
		hs += float64(s1[i].sess - s0[i].sess)
	}
	per := float64(n) * secs
	// fan returns the mean share of the other members a node has exchanged with
	// within `after` of its own join (rest=false) or of the rest mark (rest=true).
	fan := func(after time.Duration, rest bool) string {
		var sum float64
		for i, t := range mn.nodes {
			c := 0
			t.mu.Lock()
			m, from := t.first, joined[i]
			if rest {
				m, from = t.rest, t.restAt
			}
			for _, f := range m {
				if f-from <= after {
					c++
				}
			}
			t.mu.Unlock()
			sum += float64(c) / float64(n-1)
		}
		if rest && t0+after > t1 {
			return "n/a"
		}
		return fmt.Sprintf("%.0f%%", 100*sum/float64(n))
	}
	var susP, susN, deadP, deadN int
	var refutes int64
	suspectedNAT := map[int]bool{}
	for _, e := range evs {
		e.mu.Lock()
		for s, c := range e.suspect {
			if isNAT[s] {
				susN += c
				suspectedNAT[s] = true
			} else {
				susP += c
			}
		}
		for s, c := range e.dead {
			if isNAT[s] {
				deadN += c
			} else {
				deadP += c
			}
		}
		e.mu.Unlock()
		refutes += e.refute.Load()
	}
	conv := "never"
	if converged >= 0 {
		conv = fmt.Sprintf("%.1f", converged.Seconds())
	}
	natCol := strconv.Itoa(nNAT)
	if nNAT > 0 && o.natTTL > 0 {
		natCol += fmt.Sprintf(" (ttl %s)", o.natTTL)
	}
	var nat string
	if nNAT > 0 {
		nat = fmt.Sprintf("%d/%d", susP, susN)
	} else {
		nat = strconv.Itoa(susP)
	}
	dead := strconv.Itoa(deadP)
	if nNAT > 0 {
		dead = fmt.Sprintf("%d/%d", deadP, deadN)
	}
	return fmt.Sprintf("| %s | %d | %s | %s | %s / %s / %s | %s / %s / %s | %.1f (%s) | %.2f | %.2f | %.0f | %.2f | %s | %s | %d |",
		profile, n, natCol, conv,
		fan(30*time.Second, false), fan(60*time.Second, false), fan(120*time.Second, false),
		fan(30*time.Second, true), fan(60*time.Second, true), fan(120*time.Second, true),
		activeSum/float64(samples)/float64(n), o.idle, hs/per*60,
		pkts/per, byts/per, dials/per*60, nat, dead, refutes)
}
