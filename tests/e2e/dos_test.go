//go:build e2e

package e2e

import (
	encbin "encoding/binary"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/blake2s"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/internal/impair"
	"github.com/stt-tun/stt-tun/internal/nslab"
	"github.com/stt-tun/stt-tun/stt/handshake"
	"github.com/stt-tun/stt-tun/stt/wire"
)

// Denial-of-service scenarios on the handshake: what an attacker can do to keep a
// legitimate peer from getting a session, rather than to the tunnel already running.

// restartAlpha kills alpha and starts it again, as the systemd unit does, and returns
// when the new daemon is up.
func (r *relayed) restartAlpha(t *testing.T) {
	t.Helper()
	if err := r.a.proc.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = r.a.proc.Wait()
	r.a.proc = nil
	r.a.mustStt("down", "--leftovers", linkName)
	r.a.startForeground()
}

// pace sleeps until sent messages at rate per second would have been sent since
// start: the shape of the attack traffic, not synchronisation.
func pace(start time.Time, sent int, rate float64) {
	if d := time.Duration(float64(sent) / rate * float64(time.Second)); time.Since(start) < d {
		time.Sleep(d - time.Since(start))
	}
}

// TestHandshakeReplayLockout: an attacker without the seed records alpha's HELLO and
// AUTH_PROOF on the underlay, waits until beta has forgotten the HELLO (the replay
// window, shortened here to 3 s), and replays both while alpha restarts: the AUTH_PROOF
// fast enough to make beta "under load" if it counted, the HELLO to spend budgets.
//
//   - peer-address: from alpha's own address, 460 datagrams a second, about 60 of them
//     HELLOs, to spend the token bucket of alpha's address;
//   - spoofed-4300: from 4300 spoofed addresses, 5000 a second, to draw cookie replies
//     (each address has a bucket of its own) and to fill the table of buckets.
//
// The replays cost beta no public-key work, draw at most the cookie replies of the
// budgets for stale HELLOs (one address's bucket; 200 a second in all), and the
// restarted alpha gets a session within one cookie round trip plus its retransmission
// timer (here: 3 s).
//
// Before the fix, the AUTH_PROOFs counted as load and the old HELLO spent the bucket
// of alpha's address (or filled the bucket table), and alpha got no session for seconds.
func TestHandshakeReplayLockout(t *testing.T) {
	for _, v := range []struct {
		name          string
		sources, rate int
	}{{"peer-address", 0, 460}, {"spoofed-4300", 4300, 5000}} {
		t.Run(v.name, func(t *testing.T) {
			t.Parallel()
			replayLockout(t, v.name, v.sources, v.rate)
		})
	}
}

// spoofedSender sends UDP datagrams with any IPv4 source address, from a raw socket in ns.
type spoofedSender struct {
	fd  int
	dst [4]byte
	pkt []byte
}

func newSpoofedSender(t *testing.T, ns *nslab.NS, dst string) *spoofedSender {
	t.Helper()
	s := &spoofedSender{dst: [4]byte(net.ParseIP(dst).To4()), pkt: make([]byte, 0, 28+wire.HelloLen)}
	err := ns.Do(func() (err error) {
		s.fd, err = syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_RAW)
		return err
	})
	if err != nil {
		t.Fatalf("raw socket: %v", err)
	}
	t.Cleanup(func() { syscall.Close(s.fd) })
	return s
}

// send sends payload from src:sport to dst:port. The kernel fills in the IP checksum,
// length and ID; the UDP checksum is left out (zero), which IPv4 allows.
func (s *spoofedSender) send(src [4]byte, sport uint16, payload []byte) error {
	p := s.pkt[:28]
	clear(p)
	p[0], p[8], p[9] = 0x45, 64, syscall.IPPROTO_UDP
	encbin.BigEndian.PutUint16(p[2:], uint16(28+len(payload)))
	copy(p[12:], src[:])
	copy(p[16:], s.dst[:])
	encbin.BigEndian.PutUint16(p[20:], sport)
	encbin.BigEndian.PutUint16(p[22:], port)
	encbin.BigEndian.PutUint16(p[24:], uint16(8+len(payload)))
	p = append(p, payload...)
	return syscall.Sendto(s.fd, p, 0, &syscall.SockaddrInet4{Addr: s.dst})
}

// cpuTicks is the user and system time of process pid so far, in clock ticks.
func cpuTicks(t *testing.T, pid int) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The fields after the command name, which is in parentheses: utime and stime are
	// the 14th and 15th fields of the line, the 12th and 13th after ")".
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	u, _ := strconv.ParseUint(f[11], 10, 64)
	sys, _ := strconv.ParseUint(f[12], 10, 64)
	return u + sys
}

func replayLockout(t *testing.T, name string, sources, rate int) {
	const window = 3 * time.Second
	r := newRelayed(t, relayedOpts{capture: 256, advanced: fmt.Sprintf("handshake_replay_window = %q", window.String())})
	var hello, proof []byte
	for _, m := range r.relay.Captured(impair.AtoB) {
		switch {
		case len(m) == wire.HelloLen && m[0] == wire.TypeHello:
			hello = m
		case len(m) == wire.AuthProofLen && m[0] == wire.TypeAuthProof:
			proof = m
		}
	}
	if hello == nil || proof == nil {
		t.Fatal("the relay captured no HELLO or no AUTH_PROOF of alpha's handshake")
	}
	// The attacker is a namespace linked to beta. From alpha's address as beta sees it
	// (the relay's B side), which it owns too, beta answers it through its route to the
	// relay, as it would answer spoofed datagrams; the spoofed addresses are routed back
	// to the attacker, which drops what beta sends them.
	x := r.lab.NS("x")
	_, bDev := r.lab.Link(x, []string{attackerAddr + "/24", relayB + "/32"}, r.b.ns, []string{betaForX + "/24"})
	r.b.ns.MustRun(t, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf."+bDev+".rp_filter=0")
	r.b.ns.MustRun(t, "ip", "route", "add", "10.242.0.0/16", "via", attackerAddr)
	dst := &net.UDPAddr{IP: net.ParseIP(betaForX), Port: port}
	var send func(i int, m []byte) error
	if sources == 0 {
		pc, err := x.ListenPacket("udp4", fmt.Sprintf("%s:%d", relayB, relayPort))
		if err != nil {
			t.Fatal(err)
		}
		c := pc.(*net.UDPConn)
		t.Cleanup(func() { c.Close() })
		send = func(_ int, m []byte) error { _, err := c.WriteToUDP(m, dst); return err }
	} else {
		raw := newSpoofedSender(t, x, betaForX)
		send = func(i int, m []byte) error {
			k := i % sources
			return raw.send([4]byte{10, 242, byte(k >> 8), byte(k)}, uint16(40000+k%1000), m)
		}
	}

	startEcho(t, r.b.ns)
	p := startProber(t, r.a.ns, tunnelB, 100*time.Millisecond)
	p.waitRecovered(t, time.Now(), reachTimeout)

	// Wait out the replay window: the time has to pass for the attack to work.
	time.Sleep(window + time.Second)

	b0 := r.b.counters()
	pid := r.b.proc.PID()
	cpu0, t0 := cpuTicks(t, pid), time.Now()
	var stop atomic.Bool
	var sent atomic.Uint64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		start := time.Now()
		for i := 0; !stop.Load(); i++ {
			m := proof
			if i%8 == 0 || (sources > 0 && i%rate >= 400) {
				m = hello // alpha's address: about 60 a second; spoofed: all but 400 a second
			}
			if err := send(i, m); err != nil {
				return
			}
			sent.Add(1)
			pace(start, i+1, float64(rate))
		}
	}()
	stopFlood := func() { stop.Store(true); wg.Wait() }
	defer stopFlood()

	// Replay for longer than the window before the restart (a replayed HELLO the node
	// answered would be forgotten again): no public-key work for any of it.
	time.Sleep(window + 2*time.Second)
	db := delta(b0, r.b.counters())
	el := time.Since(t0)
	t.Logf("%v of replay (%d datagrams): beta %v", el.Round(time.Millisecond), sent.Load(), db)

	r.restartAlpha(t)
	up := time.Now()
	rec, err := p.waitAnswerSentAfter(up, 20*time.Second)
	flood := sent.Load()
	stopFlood()
	elAll := time.Since(t0)
	cpu := float64(cpuTicks(t, pid)-cpu0) / 100 // USER_HZ
	dAll := delta(b0, r.b.counters())
	t.Logf("alpha restarted under the replay; probes answered again after %v (err %v); %d datagrams replayed in %v; beta used %.2f s of CPU; beta %v",
		rec.Round(time.Millisecond), err, flood, elAll.Round(time.Millisecond), cpu, dAll)
	figure(t, "attack-handshake-replay-"+name, map[string]any{
		"replayed": flood, "recovery_seconds": rec.Seconds(), "recovered": err == nil,
		"dh_ops_before_restart": db["handshake_dh_ops"], "cookie_replies": dAll["cookie_replies_sent"],
		"cookie_replies_per_second": float64(dAll["cookie_replies_sent"]) / elAll.Seconds(),
		"cpu_seconds_per_second":    cpu / elAll.Seconds(),
	})
	if db["handshake_dh_ops"] != 0 {
		t.Errorf("replayed handshake messages cost beta %d DH operations", db["handshake_dh_ops"])
	}
	// At most one address's cookie bucket (a burst of 5, 20 a second), and from many
	// addresses the node-wide budget for stale HELLOs (200 at once, 200 a second).
	max := uint64(5 + 20*el.Seconds() + 20)
	if sources > 0 {
		max = uint64(handshake.DefaultLoadThreshold*(1+el.Seconds())) + 20
	}
	if db["cookie_replies_sent"] > max {
		t.Errorf("beta sent %d cookie replies in %v of replay, more than the budget (%d)", db["cookie_replies_sent"], el.Round(time.Millisecond), max)
	}
	if err != nil {
		t.Fatalf("the restarted alpha got no session within 20 s under the replay (%d probes answered)", p.answered())
	}
	// One cookie round trip, then the retransmission timer (1 s, +20%), then the
	// handshake: 3 s is the bound with room for a slow machine.
	if rec > 3*time.Second {
		t.Errorf("the restarted alpha needed %v to get a session under the replay, want at most 3 s", rec.Round(time.Millisecond))
	}
}

// floodSource is one of the member attacker's source addresses.
type floodSource struct {
	c *net.UDPConn
	// finish: answer each CHALLENGE with an AUTH_PROOF that passes mac1 and mac2 but
	// fails decryption, which ends the half-open handshake without public-key work on
	// either side: the flood's HELLOs then never find the table full.
	finish atomic.Bool
	hellos [][]byte
	inits  map[uint32]*handshake.Initiation
	cookie atomic.Pointer[[16]byte]
}

// TestMemberFloodManySources: an attacker that holds the seed floods beta from 64
// addresses, 22 HELLOs a second each, with the cookie of each address in mac2 once it
// has one. First every address ends its handshakes at once with a bad AUTH_PROOF, so
// that its HELLOs keep finding room: beta's X25519 work stays within the documented
// bound (at most 200 handshakes a second in all, each at most 4 operations). Then 40 of
// the addresses stop answering CHALLENGEs, so that their handshakes stay half-open, and
// alpha, whose key beta pins, restarts: it gets a session within 5 s.
//
// Before the fix, each address had its own budget (20 handshakes a second), so that
// beta did thousands of X25519 operations a second, the half-open table filled up, and
// alpha got no session during the flood.
func TestMemberFloodManySources(t *testing.T) {
	t.Parallel()
	const nsrc, rate = 64, 22
	r := newRelayed(t, relayedOpts{manual: true})
	r.b.writeConfig(nodeConf{addresses: tunB, seedFile: r.seed, peers: []peerConf{
		{name: "alpha", allowed: allowA, publicKey: r.a.publicKey()},
	}})
	r.b.startForeground()
	r.a.startForeground()
	waitPing(t, r.a.ns, tunnelB)

	x := r.lab.NS("x")
	addrs := []string{attackerAddr + "/24"}
	for i := range nsrc {
		addrs = append(addrs, fmt.Sprintf("10.241.3.%d/24", 10+i))
	}
	r.lab.Link(x, addrs, r.b.ns, []string{betaForX + "/24"})
	dst := &net.UDPAddr{IP: net.ParseIP(betaForX), Port: port}
	seed, err := config.LoadSeed(r.seed)
	if err != nil {
		t.Fatal(err)
	}
	e := engine(t, seed)
	mac1Key := handshake.DeriveSeedKeys(seed).MAC1
	const perSource = rate * 20 // enough fresh HELLOs for 20 s
	srcs := make([]*floodSource, nsrc)
	for i := range srcs {
		pc, err := x.ListenPacket("udp4", fmt.Sprintf("10.241.3.%d:0", 10+i))
		if err != nil {
			t.Fatal(err)
		}
		s := &floodSource{c: pc.(*net.UDPConn)}
		s.finish.Store(true)
		s.hellos, s.inits = hellos(t, e, perSource, nil)
		srcs[i] = s
	}
	startEcho(t, r.b.ns)
	p := startProber(t, r.a.ns, tunnelB, 100*time.Millisecond)
	p.waitRecovered(t, time.Now(), reachTimeout)

	var stop atomic.Bool
	var sent atomic.Uint64
	var wg sync.WaitGroup
	for _, s := range srcs {
		wg.Add(2)
		go func() { // the cookie replies
			defer wg.Done()
			buf := make([]byte, 2048)
			for {
				n, err := s.c.Read(buf)
				if err != nil {
					return
				}
				if s.finish.Load() && n == wire.ChallengeLen && buf[0] == wire.TypeChallenge {
					proof := make([]byte, wire.AuthProofLen)
					proof[0], proof[1] = wire.TypeAuthProof, wire.Version
					copy(proof[wire.AuthSenderOff:], buf[wire.ChallengeReceiverOff:wire.ChallengeReceiverOff+4])
					copy(proof[wire.AuthReceiverOff:], buf[wire.ChallengeSenderOff:wire.ChallengeSenderOff+4])
					h, _ := blake2s.New128(mac1Key[:])
					h.Write(proof[:wire.AuthMAC1Off])
					copy(proof[wire.AuthMAC1Off:], h.Sum(nil))
					if k := s.cookie.Load(); k != nil {
						h, _ := blake2s.New128(k[:])
						h.Write(proof[:wire.AuthMAC2Off])
						copy(proof[wire.AuthMAC2Off:], h.Sum(nil))
					}
					_, _ = s.c.WriteToUDP(proof, dst)
					continue
				}
				if n != wire.CookieReplyLen || buf[0] != wire.TypeCookieReply {
					continue
				}
				in := s.inits[encbin.LittleEndian.Uint32(buf[wire.CookieReceiverOff:])]
				if in == nil {
					continue
				}
				if ck, err := in.ReadCookieReply(buf[:n]); err == nil && len(ck) == 16 {
					var k [16]byte
					copy(k[:], ck)
					s.cookie.Store(&k)
				}
			}
		}()
		go func() {
			defer wg.Done()
			start := time.Now()
			for i, m := range s.hellos {
				if stop.Load() {
					return
				}
				if k := s.cookie.Load(); k != nil {
					h, _ := blake2s.New128(k[:])
					h.Write(m[:wire.HelloMAC2Off])
					copy(m[wire.HelloMAC2Off:], h.Sum(nil))
				}
				if _, err := s.c.WriteToUDP(m, dst); err != nil {
					return
				}
				sent.Add(1)
				pace(start, i+1, rate)
			}
		}()
	}
	stopFlood := func() {
		if stop.Swap(true) {
			return
		}
		for _, s := range srcs {
			s.c.Close()
		}
		wg.Wait()
	}
	defer stopFlood()

	// Phase 1: handshakes that end at once; the X25519 work beta does for them.
	b0 := r.b.counters()
	t0 := time.Now()
	time.Sleep(3 * time.Second)
	d1 := delta(b0, r.b.counters())
	el1 := time.Since(t0)
	dhRate1 := float64(d1["handshake_dh_ops"]) / el1.Seconds()
	t.Logf("phase 1: %d HELLOs in %v; beta %v (%.0f X25519/s)", sent.Load(), el1.Round(time.Millisecond), d1, dhRate1)
	if max := uint64(4 * handshake.DefaultLoadThreshold * (el1.Seconds() + 1)); d1["handshake_dh_ops"] > max {
		t.Errorf("beta did %d X25519 operations in %v under the flood, more than the bound (%d)", d1["handshake_dh_ops"], el1.Round(time.Millisecond), max)
	}
	// Phase 2: 40 addresses leave their handshakes half-open; alpha restarts.
	for _, s := range srcs[24:] {
		s.finish.Store(false)
	}
	time.Sleep(3 * time.Second)
	r.restartAlpha(t)
	up := time.Now()
	rec, err := p.waitAnswerSentAfter(up, 15*time.Second)
	db := delta(b0, r.b.counters())
	el := time.Since(t0)
	stopFlood()
	dhRate := float64(db["handshake_dh_ops"]) / el.Seconds()
	t.Logf("%d HELLOs from %d addresses in %v: beta %v (%.0f X25519/s); alpha's session after %v (err %v)",
		sent.Load(), nsrc, el.Round(time.Millisecond), db, dhRate, rec.Round(time.Millisecond), err)
	figure(t, "attack-member-many-sources", map[string]any{
		"sources": nsrc, "hellos": sent.Load(), "flood_seconds": el.Seconds(),
		"dh_ops": db["handshake_dh_ops"], "dh_ops_per_second": dhRate, "dh_ops_per_second_phase1": dhRate1,
		"cookie_replies": db["cookie_replies_sent"], "recovery_seconds": rec.Seconds(), "recovered": err == nil,
	})
	// 200 handshakes a second, 4 X25519 each, plus one second's burst.
	if max := uint64(4 * handshake.DefaultLoadThreshold * (el.Seconds() + 1)); db["handshake_dh_ops"] > max {
		t.Errorf("beta did %d X25519 operations in %v under the flood, more than the bound (%d)", db["handshake_dh_ops"], el.Round(time.Millisecond), max)
	}
	if err != nil {
		t.Fatalf("alpha got no session within 15 s of its restart under the flood (%d probes answered)", p.answered())
	}
	if rec > 5*time.Second {
		t.Errorf("alpha needed %v to get a session under the flood, want at most 5 s", rec.Round(time.Millisecond))
	}
}
