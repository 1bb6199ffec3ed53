//go:build e2e

package e2e

import (
	"context"
	encbin "encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/internal/impair"
	"github.com/stt-tun/stt-tun/internal/nslab"
)

// The relayed lab: alpha and beta reach each other only through the impairment relay
// in a third namespace, which listens on one address per side.
//
//	alpha 10.241.1.1 ── veth ── 10.241.1.254:40000 [relay] 10.241.2.254:40000 ── veth ── 10.241.2.1 beta
//
// alpha's endpoint for beta is the relay's A side; beta sees alpha come from the
// relay's B side. The relay runs in the test process, its sockets in the middle
// namespace, so that the test changes the impairment while traffic flows.
const (
	underRelayA = "10.241.1.1"
	relayA      = "10.241.1.254"
	relayB      = "10.241.2.254"
	underRelayB = "10.241.2.1"
	relayPort   = 40000
	// echoPort is the UDP echo service that probes use inside the tunnel.
	echoPort = 7007
	// tunnelB, tunnelA are the nodes' IPv4 tunnel addresses (tunA, tunB).
	tunnelA = "10.99.0.1"
	tunnelB = "10.99.0.2"
)

// relayed is two nodes joined through the impairment relay.
type relayed struct {
	lab   *nslab.Lab
	mid   *nslab.NS
	a, b  *node
	relay *impair.Relay
	seed  string
	// The underlay links: alpha's and the relay's A-side veth, the relay's B-side
	// and beta's.
	aDev, midADev, midBDev, bDev string
}

type relayedOpts struct {
	capture  int    // datagrams the relay keeps per direction
	advanced string // [advanced] keys for both nodes, one per line
	// bDialsA gives beta an endpoint for alpha (the relay's B side), so that either
	// side can start a handshake.
	bDialsA bool
	// manual leaves starting the daemons to the test.
	manual bool
}

// newRelayed builds the relayed lab, starts beta then alpha in the foreground and waits
// until alpha reaches beta through the tunnel (unless o.manual).
func newRelayed(t *testing.T, o relayedOpts) *relayed {
	t.Helper()
	lab := newLab(t)
	nsA, mid, nsB := lab.NS("a"), lab.NS("relay"), lab.NS("b")
	r := &relayed{lab: lab, mid: mid, a: newNode(t, nsA, "alpha"), b: newNode(t, nsB, "beta"), seed: seedFile(t)}
	r.aDev, r.midADev = lab.Link(nsA, []string{underRelayA + "/24"}, mid, []string{relayA + "/24"})
	r.midBDev, r.bDev = lab.Link(mid, []string{relayB + "/24"}, nsB, []string{underRelayB + "/24"})
	rel, err := impair.New(impair.Config{
		ListenA:      fmt.Sprintf("%s:%d", relayA, relayPort),
		ListenB:      fmt.Sprintf("%s:%d", relayB, relayPort),
		PeerB:        fmt.Sprintf("%s:%d", underRelayB, port),
		Seed:         uint64(time.Now().UnixNano()),
		Capture:      o.capture,
		ListenPacket: mid.ListenPacket,
	})
	if err != nil {
		t.Fatalf("relay: %v", err)
	}
	// Registered after the lab's cleanup, so it runs before the namespaces go.
	t.Cleanup(func() { _ = rel.Close() })
	r.relay = rel
	var extra string
	if o.advanced != "" {
		extra = "\n[advanced]\n" + o.advanced + "\n"
	}
	r.a.writeConfig(nodeConf{addresses: tunA, seedFile: r.seed, extra: extra, peers: []peerConf{
		{name: "beta", endpoint: fmt.Sprintf("%s:%d", relayA, relayPort), allowed: allowB},
	}})
	bPeer := peerConf{name: "alpha", allowed: allowA}
	if o.bDialsA {
		bPeer.endpoint = fmt.Sprintf("%s:%d", relayB, relayPort)
	}
	r.b.writeConfig(nodeConf{addresses: tunB, seedFile: r.seed, extra: extra, peers: []peerConf{bPeer}})
	if o.manual {
		return r
	}
	r.b.startForeground()
	r.a.startForeground()
	waitPing(t, r.a.ns, tunnelB)
	return r
}

// counters is the "counters" object of `status --json`.
func (n *node) counters() map[string]uint64 {
	n.t.Helper()
	r := n.stt("status", "--json", linkName)
	if r.err != nil {
		n.t.Fatalf("%s: status: %v: %s", n.name, r.err, r.stderr)
	}
	var st struct {
		Counters map[string]uint64 `json:"counters"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		n.t.Fatalf("%s: status --json: %v", n.name, err)
	}
	if len(st.Counters) == 0 {
		n.t.Fatalf("%s: status --json has no counters:\n%s", n.name, r.stdout)
	}
	return st.Counters
}

// delta is after - before for every key of after.
func delta(before, after map[string]uint64) map[string]uint64 {
	d := map[string]uint64{}
	for k, v := range after {
		if v != before[k] {
			d[k] = v - before[k]
		}
	}
	return d
}

// dropsTotal sums the drop_* counters.
func dropsTotal(c map[string]uint64) uint64 {
	var s uint64
	for k, v := range c {
		if strings.HasPrefix(k, "drop_") {
			s += v
		}
	}
	return s
}

// figure records one measurement for scripts/reliability.sh: when STT_FIGURES names a
// file, a JSON line is appended to it. The tests log every figure anyway.
func figure(t *testing.T, scenario string, values map[string]any) {
	t.Helper()
	values["scenario"] = scenario
	b, _ := json.Marshal(values)
	t.Logf("figure: %s", b)
	path := os.Getenv("STT_FIGURES")
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Errorf("figures file: %v", err)
		return
	}
	defer f.Close()
	figuresMu.Lock()
	defer figuresMu.Unlock()
	_, _ = f.Write(append(b, '\n'))
}

var figuresMu sync.Mutex

// startEcho runs a UDP echo service on echoPort in ns until the test ends.
func startEcho(t *testing.T, ns *nslab.NS) {
	t.Helper()
	pc, err := ns.ListenPacket("udp", fmt.Sprintf(":%d", echoPort))
	if err != nil {
		t.Fatalf("echo in %s: %v", ns, err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
}

// prober sends a small UDP probe through the tunnel every interval and records when
// each answer came back: steady traffic, and the clock of every recovery measured here.
type prober struct {
	start time.Time
	sent  atomic.Uint64
	mu    sync.Mutex
	got   []probeReply // in arrival order
}

type probeReply struct{ sentAt, recvAt time.Time }

// startProber probes the echo service at dst from ns until the test ends.
func startProber(t *testing.T, ns *nslab.NS, dst string, interval time.Duration) *prober {
	t.Helper()
	pc, err := ns.ListenPacket("udp", ":0")
	if err != nil {
		t.Fatalf("prober in %s: %v", ns, err)
	}
	to, err := net.ResolveUDPAddr("udp", fmt.Sprintf("%s:%d", dst, echoPort))
	if err != nil {
		t.Fatal(err)
	}
	p := &prober{start: time.Now()}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	t.Cleanup(func() { close(stop); pc.Close(); wg.Wait() })
	wg.Add(2)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(interval)
		defer tick.Stop()
		var msg [16]byte
		for seq := uint64(0); ; seq++ {
			encbin.BigEndian.PutUint64(msg[:], seq)
			encbin.BigEndian.PutUint64(msg[8:], uint64(time.Since(p.start)))
			if _, err := pc.WriteTo(msg[:], to); err == nil {
				p.sent.Add(1)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	go func() {
		defer wg.Done()
		buf := make([]byte, 64)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if n != 16 {
				continue
			}
			now := time.Now()
			sent := p.start.Add(time.Duration(encbin.BigEndian.Uint64(buf[8:])))
			p.mu.Lock()
			p.got = append(p.got, probeReply{sentAt: sent, recvAt: now})
			p.mu.Unlock()
		}
	}()
	return p
}

// firstAnswerSentAfter returns the arrival time of the first answer to a probe sent at
// or after since, or false.
func (p *prober) firstAnswerSentAfter(since time.Time) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.got {
		if !r.sentAt.Before(since) {
			return r.recvAt, true
		}
	}
	return time.Time{}, false
}

// waitRecovered waits until a probe sent at or after since is answered and returns how
// long after since the answer came.
func (p *prober) waitRecovered(t *testing.T, since time.Time, timeout time.Duration) time.Duration {
	t.Helper()
	rec, err := p.waitAnswerSentAfter(since, timeout)
	if err != nil {
		t.Fatalf("no probe sent after the fault ended was answered within %v (%d probes sent, %d answered)", timeout, p.sent.Load(), p.answered())
	}
	return rec
}

// waitAnswerSentAfter waits up to timeout for an answer to a probe sent at or after
// since and returns how long after since it came, or the wait's error (the duration is
// then meaningless). For tests that report a recovery time even when there was none.
func (p *prober) waitAnswerSentAfter(since time.Time, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var at time.Time
	err := nslab.WaitFor(ctx, func() bool {
		var ok bool
		at, ok = p.firstAnswerSentAfter(since)
		return ok
	})
	return at.Sub(since), err
}

func (p *prober) answered() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.got)
}

// answeredSentIn counts the answers to probes sent in [from, to).
func (p *prober) answeredSentIn(from, to time.Time) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, r := range p.got {
		if !r.sentAt.Before(from) && r.sentAt.Before(to) {
			n++
		}
	}
	return n
}

// longestSilence is the longest time between consecutive answers arriving in [from, to].
func (p *prober) longestSilence(from, to time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	times := []time.Time{from}
	for _, r := range p.got {
		if r.recvAt.After(from) && r.recvAt.Before(to) {
			times = append(times, r.recvAt)
		}
	}
	times = append(times, to)
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	var longest time.Duration
	for i := 1; i < len(times); i++ {
		longest = max(longest, times[i].Sub(times[i-1]))
	}
	return longest
}

// TestLossyUnderlay: 5% loss, reordering and duplication in both directions of the
// underlay. A TCP transfer through the tunnel arrives intact; no frame fails
// authentication; every frame the replay window refuses is one the relay duplicated
// (reordering costs nothing: it stays far inside the 8128-frame window).
func TestLossyUnderlay(t *testing.T) {
	t.Parallel()
	r := newRelayed(t, relayedOpts{})
	im := impair.Impairment{Loss: 0.05, Reorder: 0.05, ReorderDepth: 3, Duplicate: 0.05, Delay: time.Millisecond, Jitter: time.Millisecond}
	if err := r.relay.Set(im); err != nil {
		t.Fatal(err)
	}
	a0, b0 := r.a.counters(), r.b.counters()
	const size = 8 << 20
	start := time.Now()
	transfer(t, r.a.ns, r.b.ns, tunnelB, size)
	took := time.Since(start)
	da, db := delta(a0, r.a.counters()), delta(b0, r.b.counters())
	rs := r.relay.Stats()
	t.Logf("relay: %+v", rs)
	t.Logf("alpha counters: %v; beta counters: %v", da, db)
	if rs.A2B.Lost == 0 || rs.A2B.Reordered == 0 || rs.A2B.Duplicated == 0 || rs.B2A.Lost == 0 {
		t.Fatalf("the relay did not impair the transfer: %+v", rs)
	}
	for _, c := range []struct {
		node string
		d    map[string]uint64
		dups uint64
	}{{"alpha", da, rs.B2A.Duplicated}, {"beta", db, rs.A2B.Duplicated}} {
		if c.d["drop_auth"] != 0 || c.d["drop_malformed"] != 0 {
			t.Errorf("%s counted %d authentication failures and %d malformed frames on a lossy but honest path",
				c.node, c.d["drop_auth"], c.d["drop_malformed"])
		}
		if c.d["drop_replay"] > c.dups {
			t.Errorf("%s refused %d frames as replays, but the relay duplicated only %d: reordered frames were refused",
				c.node, c.d["drop_replay"], c.dups)
		}
	}
	if db["drop_replay"] == 0 {
		t.Errorf("beta refused none of the %d duplicated frames as replays", rs.A2B.Duplicated)
	}
	figure(t, "lossy", map[string]any{
		"bytes_intact": size, "seconds": took.Seconds(),
		"relay_lost": rs.A2B.Lost + rs.B2A.Lost, "relay_duplicated": rs.A2B.Duplicated + rs.B2A.Duplicated,
		"relay_reordered": rs.A2B.Reordered + rs.B2A.Reordered,
		"replay_drops":    da["drop_replay"] + db["drop_replay"], "auth_drops": da["drop_auth"] + db["drop_auth"],
	})
}

// TestCorruptedDatagrams: the relay changes one byte in 2% of the datagrams each way.
// A UDP stream whose sender turned its checksum off (SO_NO_CHECK), so that nothing but
// STT's AEAD stands between a flipped byte and the application, arrives without a
// single damaged datagram; every corrupted datagram is dropped and counted, once.
func TestCorruptedDatagrams(t *testing.T) {
	t.Parallel()
	r := newRelayed(t, relayedOpts{})
	if err := r.relay.Set(impair.Impairment{Corrupt: 0.02}); err != nil {
		t.Fatal(err)
	}
	a0, b0 := r.a.counters(), r.b.counters()
	c0 := r.relay.Stats().A2B.Corrupted
	good, bad, sent := udpStream(t, r.a.ns, r.b.ns, tunnelB, 20000, 1000, func() int {
		return int(r.relay.Stats().A2B.Corrupted - c0)
	})
	da, db := delta(a0, r.a.counters()), delta(b0, r.b.counters())
	rs := r.relay.Stats()
	t.Logf("sent %d, arrived intact %d, arrived damaged %d; relay corrupted %d a2b, %d b2a; alpha %v; beta %v",
		sent, good, bad, rs.A2B.Corrupted, rs.B2A.Corrupted, da, db)
	if bad != 0 {
		t.Errorf("%d datagrams arrived damaged: corrupted frames reached the TUN device", bad)
	}
	if rs.A2B.Corrupted == 0 {
		t.Fatal("the relay corrupted nothing; the test proves nothing")
	}
	if good < sent/2 {
		t.Errorf("only %d of %d datagrams arrived", good, sent)
	}
	// Every corrupted datagram is dropped under exactly one reason, and nothing else is.
	if got := dropsTotal(db); got != rs.A2B.Corrupted {
		t.Errorf("beta counted %d drops (%v) for %d corrupted datagrams", got, db, rs.A2B.Corrupted)
	}
	if got := dropsTotal(da); got != rs.B2A.Corrupted {
		t.Errorf("alpha counted %d drops (%v) for %d corrupted datagrams", got, da, rs.B2A.Corrupted)
	}
	if db["drop_auth"] == 0 {
		t.Errorf("beta counted no authentication failures: %v", db)
	}
	figure(t, "corrupt", map[string]any{
		"datagrams_sent": sent, "datagrams_intact": good, "datagrams_damaged": bad,
		"relay_corrupted": rs.A2B.Corrupted + rs.B2A.Corrupted, "drops_counted": dropsTotal(da) + dropsTotal(db),
		"auth_drops": da["drop_auth"] + db["drop_auth"],
	})
}

// udpStream sends count datagrams of size bytes from src to a listener in dst on host,
// with the UDP checksum off, and returns how many arrived intact and how many damaged.
// lost reports how many datagrams are known lost on the way so far; the sender keeps
// within 200 datagrams of what arrived or was lost, so that no socket buffer drops.
func udpStream(t *testing.T, src, dst *nslab.NS, host string, count, size int, lost func() int) (good, bad, sent int) {
	t.Helper()
	ln, err := dst.ListenPacket("udp4", host+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_ = ln.(*net.UDPConn).SetReadBuffer(4 << 20)
	out, err := src.ListenPacket("udp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	raw, err := out.(*net.UDPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_NO_CHECK, 1)
	}); err != nil || serr != nil {
		t.Fatalf("SO_NO_CHECK: %v %v", err, serr)
	}
	payload := func(seq uint64, b []byte) {
		encbin.BigEndian.PutUint64(b, seq)
		for i := 8; i < len(b); i++ {
			b[i] = byte(seq*31 + uint64(i)*7)
		}
	}
	var nGood, nBad atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		want := make([]byte, size)
		for {
			n, _, err := ln.ReadFrom(buf)
			if err != nil {
				return
			}
			if n != size {
				nBad.Add(1)
				continue
			}
			payload(encbin.BigEndian.Uint64(buf), want)
			if string(want) == string(buf[:n]) {
				nGood.Add(1)
			} else {
				nBad.Add(1)
			}
		}
	}()
	to := ln.LocalAddr()
	b := make([]byte, size)
	// caughtUp waits until every datagram up to n has arrived or been counted lost,
	// so that the sender never runs far ahead of the receiver's socket buffer.
	caughtUp := func(n int) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = nslab.WaitFor(ctx, func() bool { return int(nGood.Load()+nBad.Load())+lost() >= n })
	}
	const window = 200
	for seq := 0; seq < count; seq++ {
		if seq > 0 && seq%window == 0 {
			caughtUp(seq)
		}
		payload(uint64(seq), b)
		if _, err := out.WriteTo(b, to); err != nil {
			t.Fatalf("send: %v", err)
		}
	}
	caughtUp(count)
	ln.Close()
	<-done
	return int(nGood.Load()), int(nBad.Load()), count
}

// blackHoleFor is how long TestBlackHole cuts the underlay: the 30 s, which is
// longer than the dead-peer timeout (15 s), so that the node has given up on its
// session's silence and is retrying handshakes into the void when the path returns.
const blackHoleFor = 30 * time.Second

// TestBlackHole: the underlay drops everything, both ways, for 30 s while probes keep
// flowing. Afterwards traffic flows again with no action, a fresh handshake completes,
// and a transfer arrives intact.
func TestBlackHole(t *testing.T) {
	t.Parallel()
	r := newRelayed(t, relayedOpts{})
	startEcho(t, r.b.ns)
	p := startProber(t, r.a.ns, tunnelB, 100*time.Millisecond)
	p.waitRecovered(t, time.Now(), reachTimeout)
	a0 := r.a.counters()

	if err := r.relay.Set(impair.Impairment{BlackHole: true}); err != nil {
		t.Fatal(err)
	}
	holeStart := time.Now()
	time.Sleep(blackHoleFor) // the fault itself, not a synchronisation
	if err := r.relay.Set(impair.Impairment{}); err != nil {
		t.Fatal(err)
	}
	holeEnd := time.Now()
	da := delta(a0, r.a.counters())
	if da["handshakes_started"] == 0 {
		t.Errorf("alpha started no handshake during %v of silence (dead-peer timeout 15 s): %v", blackHoleFor, da)
	}
	rec := p.waitRecovered(t, holeEnd, time.Minute)
	t.Logf("black hole of %v: probes answered again %v after it ended", holeEnd.Sub(holeStart).Round(time.Millisecond), rec.Round(time.Millisecond))

	// The session is renewed too: a handshake completes without anyone asking.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var hs time.Duration
	if err := nslab.WaitFor(ctx, func() bool {
		hs = time.Since(holeEnd)
		return r.a.counters()["handshakes_completed"] > a0["handshakes_completed"]
	}); err != nil {
		t.Fatalf("no new handshake completed within 30 s after the black hole: %v", delta(a0, r.a.counters()))
	}
	const size = 4 << 20
	transfer(t, r.a.ns, r.b.ns, tunnelB, size)
	rs := r.relay.Stats()
	figure(t, "blackhole", map[string]any{
		"hole_seconds": blackHoleFor.Seconds(), "recovery_seconds": rec.Seconds(), "handshake_seconds": hs.Seconds(),
		"bytes_intact": size, "relay_blackholed": rs.A2B.BlackHoled + rs.B2A.BlackHoled,
		"handshakes_started_in_hole": da["handshakes_started"],
	})
}

// TestPeerRestart: one daemon is SIGKILLed and started again, as the systemd unit
// does (`down --leftovers`, then `up`). Probes from alpha
// resume with nothing done on the other side. When the responder (beta, which has no
// endpoint for alpha) restarts, alpha has to notice by itself that its session is dead.
func TestPeerRestart(t *testing.T) {
	for _, victim := range []string{"responder", "initiator"} {
		t.Run(victim, func(t *testing.T) {
			t.Parallel()
			r := newRelayed(t, relayedOpts{})
			startEcho(t, r.b.ns)
			p := startProber(t, r.a.ns, tunnelB, 100*time.Millisecond)
			p.waitRecovered(t, time.Now(), reachTimeout)
			n, other := r.b, r.a
			if victim == "initiator" {
				n, other = r.a, r.b
			}
			o0 := other.counters()
			if err := n.proc.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			if err := n.proc.Wait(); err == nil {
				t.Fatalf("%s exited cleanly on SIGKILL", n.name)
			}
			n.proc = nil
			killed := time.Now()
			// Restart as the systemd unit does: ExecStopPost undoes what the dead
			// daemon left behind, then ExecStart.
			n.mustStt("down", "--leftovers", linkName)
			n.startForeground()
			restarted := time.Now()
			rec := p.waitRecovered(t, restarted, time.Minute)
			t.Logf("%s restarted %v after SIGKILL; probes answered again %v after the restart",
				n.name, restarted.Sub(killed).Round(time.Millisecond), rec.Round(time.Millisecond))
			do := delta(o0, other.counters())
			if do["handshakes_completed"] == 0 {
				t.Errorf("%s completed no new handshake with the restarted %s: %v", other.name, n.name, do)
			}
			const size = 4 << 20
			transfer(t, r.a.ns, r.b.ns, tunnelB, size)
			figure(t, "restart-"+victim, map[string]any{
				"recovery_seconds": rec.Seconds(), "bytes_intact": size,
				"restarted_unknown_index_drops": n.counters()["drop_unknown_index"],
			})
		})
	}
}

// TestRoaming: the underlay address changes in the middle of a transfer, and the
// transfer completes.
//
//   - rebind: the relay's B side moves to a new address and port, as when a NAT in
//     front of alpha rebinds: beta sees alpha's frames come from somewhere new, and the
//     next authenticated one moves beta's endpoint for alpha there.
//   - readdress: alpha's own underlay address changes (a laptop changing networks): its
//     socket must stop using the old source address.
func TestRoaming(t *testing.T) {
	for _, how := range []string{"rebind", "readdress"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			r := newRelayed(t, relayedOpts{})
			startEcho(t, r.b.ns)
			p := startProber(t, r.a.ns, tunnelB, 50*time.Millisecond)
			p.waitRecovered(t, time.Now(), reachTimeout)
			const size = 16 << 20
			type res struct {
				r   nslab.TransferResult
				err error
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			// Slow the path down so that the move lands in the middle of the transfer.
			if err := r.relay.SetA2B(impair.Impairment{Rate: 4 << 20, QueueBytes: 256 << 10}); err != nil {
				t.Fatal(err)
			}
			sent0 := r.relay.Stats().A2B.SentBytes
			done := make(chan res, 1)
			go func() {
				tr, err := nslab.Transfer(ctx, r.a.ns, r.b.ns, tunnelB, size)
				done <- res{tr, err}
			}()
			wctx, wcancel := context.WithTimeout(ctx, time.Minute)
			defer wcancel()
			if err := nslab.WaitFor(wctx, func() bool { return r.relay.Stats().A2B.SentBytes-sent0 > size/4 }); err != nil {
				t.Fatalf("transfer did not get going: %+v", r.relay.Stats())
			}
			var newAlpha string // where beta should now see alpha
			switch how {
			case "rebind":
				const moved = "10.241.2.253"
				mustIn(t, r.mid, "ip", "addr", "add", moved+"/24", "dev", r.midBDev)
				newAlpha = fmt.Sprintf("%s:%d", moved, relayPort+1)
				if err := r.relay.Rebind(impair.SideB, newAlpha); err != nil {
					t.Fatal(err)
				}
			case "readdress":
				// Old address gone, then the new one (deleting a primary address
				// would take a secondary one in the same subnet with it).
				mustIn(t, r.a.ns, "ip", "addr", "del", underRelayA+"/24", "dev", r.aDev)
				mustIn(t, r.a.ns, "ip", "addr", "add", "10.241.1.2/24", "dev", r.aDev)
				newAlpha = fmt.Sprintf("%s:%d", relayB, relayPort) // the relay hides alpha's move from beta
			}
			moved := time.Now()
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("after the move: alpha %v; beta %v; relay %+v", r.a.counters(), r.b.counters(), r.relay.Stats())
				}
			})
			rec := p.waitRecovered(t, moved, time.Minute)
			var tr res
			select {
			case tr = <-done:
			case <-ctx.Done():
				t.Fatal("transfer did not finish")
			}
			if tr.err != nil || !tr.r.OK() {
				t.Fatalf("transfer across the move: %v (%v)", tr.err, tr.r)
			}
			t.Logf("transfer of %d bytes intact; probes answered %v after the move", size, rec.Round(time.Millisecond))
			if ep := r.b.mustStatus().peer(t, "alpha").Endpoint; ep != newAlpha {
				t.Errorf("beta's endpoint for alpha is %s, want %s", ep, newAlpha)
			}
			figure(t, "roaming-"+how, map[string]any{"recovery_seconds": rec.Seconds(), "bytes_intact": size})
		})
	}
}

// TestRekeyUnderLoad: with rekey_after_messages lowered to 2000, a 32 MB transfer makes
// the sender rekey a dozen times. The transfer arrives intact, the probes running
// beside it never go silent for long, and no frame is lost to a rekey: the only drops
// allowed are those the (clean) underlay would cause, which is none.
func TestRekeyUnderLoad(t *testing.T) {
	t.Parallel()
	r := newRelayed(t, relayedOpts{advanced: "rekey_after_messages = 2000"})
	startEcho(t, r.b.ns)
	p := startProber(t, r.a.ns, tunnelB, 20*time.Millisecond)
	p.waitRecovered(t, time.Now(), reachTimeout)
	a0, b0 := r.a.counters(), r.b.counters()
	const size = 32 << 20
	start := time.Now()
	transfer(t, r.a.ns, r.b.ns, tunnelB, size)
	end := time.Now()
	da, db := delta(a0, r.a.counters()), delta(b0, r.b.counters())
	rs := r.relay.Stats()
	silence := p.longestSilence(start, end)
	t.Logf("alpha %v; beta %v; longest silence of the probes %v; relay %+v", da, db, silence, rs)
	// 32 MB is about 24000 frames from alpha: a rekey every 2000 of them.
	if da["handshakes_completed"] < 6 {
		t.Errorf("alpha completed %d handshakes during the transfer, want several", da["handshakes_completed"])
	}
	if lost := rs.A2B.Lost + rs.A2B.QueueDropped + rs.B2A.Lost + rs.B2A.QueueDropped; lost != 0 {
		t.Fatalf("the clean underlay dropped %d datagrams", lost)
	}
	for _, c := range []struct {
		name string
		d    map[string]uint64
	}{{"alpha", da}, {"beta", db}} {
		if n := dropsTotal(c.d); n != 0 {
			t.Errorf("%s dropped %d frames around rekeys on a clean path: %v", c.name, n, c.d)
		}
	}
	// A stall would be a dead-peer timeout (15 s); a rekey is a round trip.
	if silence > 2*time.Second {
		t.Errorf("probes went unanswered for %v during the transfer", silence)
	}
	figure(t, "rekey", map[string]any{
		"bytes_intact": size, "seconds": end.Sub(start).Seconds(), "rekeys": da["handshakes_completed"],
		"longest_silence_seconds": silence.Seconds(), "drops": dropsTotal(da) + dropsTotal(db),
	})
}

// dropOnce returns a relay predicate that drops the n-th datagram (1-based) that match
// accepts, and only that one.
func dropOnce(n int, match func(b []byte) bool) func([]byte) bool {
	seen := 0
	return func(b []byte) bool {
		if !match(b) {
			return false
		}
		seen++
		return seen == n
	}
}

func isType(typ byte) func([]byte) bool {
	return func(b []byte) bool { return len(b) > 0 && b[0] == typ }
}

// TestHandshakeMessageLoss: exactly one message of a handshake is lost. The session
// must come up (or, for a rekey, traffic must keep flowing) about as fast as the
// handshake's retransmission allows, not after a dead-peer timeout: a lost HELLO or
// CHALLENGE by the HELLO retransmission (1 s), a lost AUTH_PROOF by the rule for
// unconfirmed sessions (2 s, docs/protocol.md 4.7), a lost FINAL by the next frame.
func TestHandshakeMessageLoss(t *testing.T) {
	const (
		typeHello, typeChallenge, typeAuthProof, typeData = 0x01, 0x02, 0x03, 0x05
	)
	for _, c := range []struct {
		name string
		dir  impair.Dir
		drop func([]byte) bool
		// within is how soon traffic must flow: the retransmission schedule, with room.
		within time.Duration
	}{
		{"hello", impair.AtoB, dropOnce(1, isType(typeHello)), 5 * time.Second},
		{"challenge", impair.BtoA, dropOnce(1, isType(typeChallenge)), 5 * time.Second},
		{"auth_proof", impair.AtoB, dropOnce(1, isType(typeAuthProof)), 5 * time.Second},
		// The first DATA frame from beta is FINAL.
		{"final", impair.BtoA, dropOnce(1, isType(typeData)), 5 * time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r := newRelayed(t, relayedOpts{manual: true})
			r.relay.SetDrop(c.dir, c.drop)
			r.b.startForeground()
			startEcho(t, r.b.ns)
			r.a.startForeground()
			start := time.Now()
			p := startProber(t, r.a.ns, tunnelB, 100*time.Millisecond)
			rec := p.waitRecovered(t, start, time.Minute)
			st := r.relay.Stats()
			if st.A2B.Filtered+st.B2A.Filtered != 1 {
				t.Fatalf("the relay dropped %d messages, want 1", st.A2B.Filtered+st.B2A.Filtered)
			}
			t.Logf("first %s lost: probes answered %v after alpha started", c.name, rec.Round(time.Millisecond))
			figure(t, "handshake-loss-"+c.name, map[string]any{"recovery_seconds": rec.Seconds()})
			if rec > c.within {
				t.Errorf("with the first %s lost, traffic flowed only %v after start, want within %v", c.name, rec.Round(time.Millisecond), c.within)
			}
		})
	}
	// A rekey's AUTH_PROOF lost while data flows: alpha moves to keys beta never got.
	t.Run("rekey_auth_proof", func(t *testing.T) {
		t.Parallel()
		r := newRelayed(t, relayedOpts{manual: true, advanced: "rekey_after = \"20s\"\nrekey_after_messages = 2000"})
		r.relay.SetDrop(impair.AtoB, dropOnce(2, isType(typeAuthProof)))
		r.b.startForeground()
		startEcho(t, r.b.ns)
		r.a.startForeground()
		waitPing(t, r.a.ns, tunnelB)
		p := startProber(t, r.a.ns, tunnelB, 50*time.Millisecond)
		p.waitRecovered(t, time.Now(), reachTimeout)
		start := time.Now()
		const size = 8 << 20
		transfer(t, r.a.ns, r.b.ns, tunnelB, size)
		end := time.Now()
		if r.relay.Stats().A2B.Filtered != 1 {
			t.Fatalf("no rekey's AUTH_PROOF was dropped: %+v", r.relay.Stats())
		}
		silence := p.longestSilence(start, end)
		t.Logf("a rekey's AUTH_PROOF lost: transfer took %v, probes silent for %v at most", end.Sub(start).Round(time.Millisecond), silence.Round(time.Millisecond))
		figure(t, "handshake-loss-rekey_auth_proof", map[string]any{"longest_silence_seconds": silence.Seconds(), "seconds": end.Sub(start).Seconds(), "bytes_intact": size})
		// Before the fix the initiator moved to keys beta never got, and beta's PINGs on
		// the old session kept alpha's dead-peer timer from firing: a 20 s stall, until
		// the next time-based rekey.
		if silence > 2*time.Second {
			t.Errorf("a rekey's lost AUTH_PROOF stalled traffic for %v", silence.Round(time.Millisecond))
		}
	})
}
