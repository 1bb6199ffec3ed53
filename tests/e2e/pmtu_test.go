//go:build e2e

package e2e

// The path MTU lab (issue 17): alpha and beta on either side of a router whose link to
// beta has MTU 1280, so that a default tunnel's full-size frames (1420 inside, 1480 or
// 1500 on the wire) never reach the other side whole.
//
//	alpha 10.232.1.2 ── 10.232.1.1 router 10.232.2.1 ══ 10.232.2.2 beta
//	 fd00:232:1::2        fd00:232:1::1  fd00:232:2::1    fd00:232:2::2
//	                                     (MTU 1280)
//
// With an IPv6 underlay and the router dropping the ICMP errors, that is a black hole:
// IPv6 routers never fragment, the nodes' kernels never learn of the narrow link, and
// TCP through the tunnel stalls after its handshake. (An IPv4 underlay is no black hole
// for the tunnel without path MTU discovery: its UDP socket sets DF only on datagrams it
// sends one at a time — a GSO batch larger than the route's MTU goes without DF, the
// kernel's rule for IP_PMTUDISC_WANT — so a router fragments most of its traffic.) With
// path MTU discovery, the ICMP the tunnel writes into its own interface and MSS
// clamping, 20 MB go through both ways, IPv4 and IPv6 inside. The IPv4 underlay, with
// ICMP let through, is the other test.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/internal/nslab"
)

const (
	// pmtuNarrow is the router's link MTU toward beta.
	pmtuNarrow = 1280
	// pmtuSlack: from beta the path may carry 4 bytes more, for a veth lets in what
	// exceeds its MTU by no more than a VLAN tag.
	pmtuSlack = 4
	// pmtuSize is the size of each transfer through the narrow path.
	pmtuSize = 20 << 20
	// pmtuStall bounds a transfer that is expected to stall.
	pmtuStall = 5 * time.Second
)

// pmtuLab is the lab above: the nodes, not yet configured, and the router.
type pmtuLab struct {
	t        *testing.T
	a, b     *node
	router   *nslab.NS
	narrow   string // the router's device on the 1280 link
	seed     string
	v6       bool   // the underlay is IPv6
	epA, epB string // the nodes' endpoints
	inner    int    // the largest inner packet that fits the narrow link
	noPing   bool   // up sends nothing through the tunnel: the next packet starts its session
}

// newPMTULab builds the lab on an IPv6 underlay (v6) or an IPv4 one, the router
// dropping ICMP errors (dropICMP) or not.
func newPMTULab(t *testing.T, v6, dropICMP bool) *pmtuLab {
	t.Helper()
	return newPMTULabMTU(t, v6, dropICMP, pmtuNarrow)
}

// newPMTULabMTU is newPMTULab with the narrow link's MTU narrow.
func newPMTULabMTU(t *testing.T, v6, dropICMP bool, narrow int) *pmtuLab {
	t.Helper()
	lab := newLab(t)
	nsA, nsR, nsB := lab.NS("a"), lab.NS("r"), lab.NS("b")
	l := &pmtuLab{t: t, router: nsR, seed: seedFile(t), v6: v6}
	if v6 {
		lab.Link(nsA, []string{"fd00:232:1::2/64"}, nsR, []string{"fd00:232:1::1/64"})
		l.narrow, _ = lab.Link(nsR, []string{"fd00:232:2::1/64"}, nsB, []string{"fd00:232:2::2/64"})
		nsA.MustRun(t, "ip", "-6", "route", "add", "fd00:232:2::/64", "via", "fd00:232:1::1")
		nsB.MustRun(t, "ip", "-6", "route", "add", "fd00:232:1::/64", "via", "fd00:232:2::1")
		nsR.MustRun(t, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
		l.epA, l.epB, l.inner = "[fd00:232:1::2]:51900", "[fd00:232:2::2]:51900", narrow-40-8-32
	} else {
		lab.Link(nsA, []string{"10.232.1.2/24"}, nsR, []string{"10.232.1.1/24"})
		l.narrow, _ = lab.Link(nsR, []string{"10.232.2.1/24"}, nsB, []string{"10.232.2.2/24"})
		nsA.MustRun(t, "ip", "route", "add", "10.232.2.0/24", "via", "10.232.1.1")
		nsB.MustRun(t, "ip", "route", "add", "10.232.1.0/24", "via", "10.232.2.1")
		nsR.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		l.epA, l.epB, l.inner = "10.232.1.2:51900", "10.232.2.2:51900", narrow-20-8-32
	}
	// Only the router's end is narrow: beta's end still says 1500, so neither node's
	// kernel knows of the limit. A veth drops what is larger than its receiving end's
	// MTU, so the path is narrow both ways.
	nsR.MustRun(t, "ip", "link", "set", "dev", l.narrow, "mtu", fmt.Sprint(narrow))
	l.a, l.b = newNode(t, nsA, "alpha"), newNode(t, nsB, "beta")
	if dropICMP {
		// No ICMP through the router, and no ICMP error from it (the Packet Too Big or
		// Fragmentation Needed it sends for a packet too large for the narrow link is
		// its own): only neighbour discovery, which the router needs to work at all.
		rules := "table inet mtulab {\n" +
			"\tchain forward { type filter hook forward priority 0; policy accept; meta l4proto { icmp, ipv6-icmp } counter drop; }\n" +
			"\tchain output { type filter hook output priority 0; policy accept; meta l4proto icmp counter drop;\n" +
			"\t\ticmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem } counter drop; }\n}\n"
		file := filepath.Join(t.TempDir(), "noicmp.nft")
		if err := os.WriteFile(file, []byte(rules), 0o600); err != nil {
			t.Fatal(err)
		}
		nsR.MustRun(t, "nft", "-f", file)
	}
	return l
}

// up configures and starts both nodes; advanced is the body of an [advanced] section
// (may be empty) and clamp the value of mss_clamp ("" = the default).
func (l *pmtuLab) up(advanced, clamp string) {
	l.t.Helper()
	extra := ""
	if advanced != "" {
		extra = "\n[advanced]\n" + advanced + "\n"
	}
	l.a.writeConfig(nodeConf{addresses: tunA, seedFile: l.seed, mssClamp: clamp, extra: extra, peers: []peerConf{
		{name: "beta", endpoint: l.epB, allowed: allowB},
	}})
	l.b.writeConfig(nodeConf{addresses: tunB, seedFile: l.seed, mssClamp: clamp, extra: extra, peers: []peerConf{
		{name: "alpha", endpoint: l.epA, allowed: allowA},
	}})
	l.b.upDaemon()
	l.a.upDaemon()
	if l.noPing {
		return
	}
	waitPing(l.t, l.a.ns, "10.99.0.2")
	waitPing(l.t, l.a.ns, "fd99::2")
}

// down stops both nodes.
func (l *pmtuLab) down() {
	l.t.Helper()
	l.a.down()
	l.b.down()
}

// pmtuTransfer sends size bytes over TCP from src to host in dst within limit and
// returns how long it took, or an error saying how far it got.
func pmtuTransfer(src, dst *nslab.NS, host string, size int64, limit time.Duration, mid func() error) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	start := time.Now()
	res, err := nslab.TransferMid(ctx, src, dst, host, size, mid)
	d := time.Since(start)
	if err != nil {
		return d, fmt.Errorf("%v after %v: %v", err, d.Round(time.Millisecond), res)
	}
	if !res.OK() {
		return d, fmt.Errorf("corrupted: %v", res)
	}
	return d, nil
}

// pmtuPeer is the path MTU part of a peer's `status --json` entry.
type pmtuPeer struct {
	Name         string `json:"name"`
	PathMTU      int    `json:"path_mtu"`
	PathMTUState string `json:"path_mtu_state"`
}

// pathMTU reads n's status for its one peer's path MTU.
func (n *node) pathMTU() (pmtuPeer, error) {
	r := n.stt("status", "--json", linkName)
	if r.err != nil {
		return pmtuPeer{}, fmt.Errorf("status: %v: %s", r.err, r.stderr)
	}
	var st struct {
		Peers []pmtuPeer `json:"peers"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || len(st.Peers) != 1 {
		return pmtuPeer{}, fmt.Errorf("status --json: %v, %d peers", err, len(st.Peers))
	}
	return st.Peers[0], nil
}

// transfersBothWays runs the four 20 MB transfers, IPv4 and IPv6 inside, each way, and
// fails the test on any that does not complete intact within its bound.
func (l *pmtuLab) transfersBothWays(what string) {
	l.t.Helper()
	for _, tr := range []struct {
		from, to *node
		host     string
	}{
		{l.a, l.b, "10.99.0.2"}, {l.b, l.a, "10.99.0.1"},
		{l.a, l.b, "fd99::2"}, {l.b, l.a, "fd99::1"},
	} {
		d, err := pmtuTransfer(tr.from.ns, tr.to.ns, tr.host, pmtuSize, 40*time.Second, nil)
		if err != nil {
			l.t.Fatalf("%s: %s -> %s (%s): %v\n%s's log:\n%s", what, tr.from.name, tr.to.name, tr.host, err, tr.from.name, tr.from.daemonLog())
		}
		l.t.Logf("%s: %s -> %s (%s): %d MB in %v (%.0f Mbit/s), sha256 ok", what, tr.from.name, tr.to.name, tr.host,
			pmtuSize>>20, d.Round(time.Millisecond), float64(pmtuSize)*8/d.Seconds()/1e6)
	}
}

// checkPathMTU asserts that both nodes' status shows the narrow path's inner MTU (the
// search may stop a little below it) and that each logged the change.
func (l *pmtuLab) checkPathMTU() {
	l.t.Helper()
	for _, n := range []*node{l.a, l.b} {
		p, err := n.pathMTU()
		if err != nil {
			l.t.Fatalf("%s: %v", n.name, err)
		}
		if p.PathMTU > l.inner+pmtuSlack || p.PathMTU < l.inner-32 {
			l.t.Errorf("%s: status shows path_mtu %d (%s) for %s, want %d or a little less", n.name, p.PathMTU, p.PathMTUState, p.Name, l.inner)
		}
		l.t.Logf("%s: status: peer %s path_mtu %d (%s)", n.name, p.Name, p.PathMTU, p.PathMTUState)
		if !strings.Contains(n.daemonLog(), "path MTU") {
			l.t.Errorf("%s: no log line about the path MTU:\n%s", n.name, n.daemonLog())
		}
	}
}

// checkTooBig asserts what a sender sees of packets larger than the path, with pings
// from alpha before anything else went through (so that its kernel has learnt nothing
// yet): an IPv4 ping without DF goes through in fragments, and its reply comes back the
// same way; an IPv4 ping with DF is answered with Fragmentation Needed naming the path's
// MTU, from the address it was sent to, and the kernel keeps to it; an IPv6 one with
// Packet Too Big naming 1280 (no smaller value is allowed).
func (l *pmtuLab) checkTooBig() {
	l.t.Helper()
	for _, n := range []*node{l.a, l.b} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := nslab.WaitFor(ctx, func() bool { return strings.Contains(n.daemonLog(), `msg="path MTU"`) })
		cancel()
		if err != nil {
			l.t.Fatalf("%s found no path MTU:\n%s", n.name, n.daemonLog())
		}
	}
	r := runIn(l.a.ns, "ping", "-c", "2", "-i", "0.2", "-W", "2", "-M", "dont", "-s", "3000", "10.99.0.2")
	if r.err != nil || !strings.Contains(r.stdout, "2 received") {
		l.t.Errorf("IPv4 ping without DF larger than the path did not get through in fragments:\n%s%s", r.stdout, r.stderr)
	}
	r = runIn(l.a.ns, "ping", "-c", "2", "-i", "0.2", "-W", "1", "-M", "do", "-s", "1300", "10.99.0.2")
	if want := fmt.Sprintf("From 10.99.0.2 icmp_seq=1 Frag needed and DF set (mtu = %d)", l.inner); !strings.Contains(r.stdout, want) ||
		!strings.Contains(r.stderr+r.stdout, fmt.Sprintf("message too long, mtu=%d", l.inner)) {
		l.t.Errorf("IPv4 ping with DF larger than the path: want %q, then the kernel keeping to it, in\n%s%s", want, r.stdout, r.stderr)
	}
	route := mustIn(l.t, l.a.ns, "ip", "route", "get", "10.99.0.2")
	if !strings.Contains(route, fmt.Sprintf(" mtu %d", l.inner)) {
		l.t.Errorf("alpha's kernel did not keep the path MTU for 10.99.0.2:\n%s", route)
	}
	l.t.Logf("alpha: ip route get 10.99.0.2:\n%s", route)
	r = runIn(l.a.ns, "ping", "-6", "-c", "2", "-i", "0.2", "-W", "1", "-M", "do", "-s", "1300", "fd99::2")
	if !strings.Contains(r.stdout, "Packet too big: mtu=1280") {
		l.t.Errorf("IPv6 ping larger than the path: want a Packet Too Big for 1280 in\n%s%s", r.stdout, r.stderr)
	}
	ca, cb := l.a.mustStatus().Counters, l.b.mustStatus().Counters
	if ca["too_big_icmp_sent"] < 2 || ca["tunnel_too_big"] < 2 || ca["fragmented"] < 2 || cb["fragmented"] < 2 {
		l.t.Errorf("counters: alpha %v, beta fragmented %d", ca, cb["fragmented"])
	}
	l.t.Logf("alpha: too_big %d, icmp sent %d, fragmented %d (%d fragments), mss clamped %d; beta fragmented %d",
		ca["tunnel_too_big"], ca["too_big_icmp_sent"], ca["fragmented"], ca["fragments_sent"], ca["mss_clamped"], cb["fragmented"])
}

// TestPathMTUBlackHole: the narrow path on an IPv6 underlay with the router's ICMP
// errors dropped. Without discovery and clamping a transfer stalls (the lab is a black
// hole); with them, senders learn the path from the tunnel, the four transfers complete
// intact, status shows the path MTU, and when the narrow link is widened during a
// transfer the estimate rises at the next probe.
func TestPathMTUBlackHole(t *testing.T) {
	t.Parallel()
	l := newPMTULab(t, true, true)

	// Before: the tunnel sends what its MTU allows and the path loses it.
	l.up("pmtu_discovery = false", "false")
	d, err := pmtuTransfer(l.a.ns, l.b.ns, "10.99.0.2", pmtuSize, pmtuStall, nil)
	if err == nil {
		t.Fatalf("without discovery and clamping a transfer through the black hole completed in %v: the lab does not narrow the path", d)
	}
	t.Logf("before (pmtu_discovery = false, mss_clamp = false): alpha -> beta stalled: %v", err)
	l.down()

	// After: the defaults, and a short re-probe interval for the widening below.
	l.up(`pmtu_reprobe_interval = "2s"`, "")
	l.checkTooBig()
	l.transfersBothWays("black hole")
	l.checkPathMTU()
	if c := l.a.mustStatus().Counters; c["mss_clamped"] == 0 {
		t.Errorf("alpha clamped no SYN: %v", c)
	}
	t.Logf("alpha: stt-tun status:\n%s", l.a.mustStt("status", linkName))

	// Widen the narrow link under a running transfer: the estimate rises.
	widen := func() error {
		if out, err := l.router.Run("ip", "link", "set", "dev", l.narrow, "mtu", "1500"); err != nil {
			return fmt.Errorf("widen: %v: %s", err, out)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		var last pmtuPeer
		if err := nslab.WaitFor(ctx, func() bool {
			last, _ = l.a.pathMTU()
			return last.PathMTU > l.inner+pmtuSlack
		}); err != nil {
			return fmt.Errorf("path MTU did not rise after the link was widened: %+v", last)
		}
		t.Logf("widened: alpha's path MTU to beta rose to %d (%s)", last.PathMTU, last.PathMTUState)
		return nil
	}
	if d, err := pmtuTransfer(l.a.ns, l.b.ns, "10.99.0.2", pmtuSize, 40*time.Second, widen); err != nil {
		t.Fatalf("transfer while widening: %v", err)
	} else {
		t.Logf("transfer while widening: %v", d.Round(time.Millisecond))
	}
}

// hostsDropTunnelICMP makes both nodes' firewalls drop, or let in again, the ICMP
// errors that come in on the tunnel interface (Fragmentation Needed, Packet Too Big), as
// some hosts' do.
func (l *pmtuLab) hostsDropTunnelICMP(drop bool) {
	l.t.Helper()
	for _, n := range []*node{l.a, l.b} {
		if !drop {
			mustIn(l.t, n.ns, "nft", "delete", "table", "inet", "hostfw")
			continue
		}
		file := filepath.Join(n.dir, "hostfw.nft")
		rules := "table inet hostfw {\n\tchain input { type filter hook input priority 0; policy accept;\n" +
			"\t\tiifname \"" + linkName + "\" icmp type destination-unreachable counter drop\n" +
			"\t\tiifname \"" + linkName + "\" icmpv6 type packet-too-big counter drop\n\t}\n}\n"
		if err := os.WriteFile(file, []byte(rules), 0o600); err != nil {
			l.t.Fatal(err)
		}
		mustIn(l.t, n.ns, "nft", "-f", file)
	}
}

// waitPathMTU waits until both nodes know their path MTU.
func (l *pmtuLab) waitPathMTU() {
	l.t.Helper()
	for _, n := range []*node{l.a, l.b} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var last pmtuPeer
		err := nslab.WaitFor(ctx, func() bool { last, _ = n.pathMTU(); return last.PathMTU > 0 })
		cancel()
		if err != nil {
			l.t.Fatalf("%s found no path MTU: %+v", n.name, last)
		}
	}
}

// TestPathMTUWithICMP: the same narrow path on an IPv4 underlay, the router's ICMP let
// through. First the nodes' own firewalls drop the ICMP errors coming in on the tunnel:
// MSS clamping alone carries TCP. Then, those let in, what the senders see, and TCP
// again.
func TestPathMTUWithICMP(t *testing.T) {
	t.Parallel()
	l := newPMTULab(t, false, false)
	l.up("", "")
	l.waitPathMTU()
	l.hostsDropTunnelICMP(true)
	l.transfersBothWays("MSS clamping alone")
	l.hostsDropTunnelICMP(false)
	l.checkTooBig()
	l.transfersBothWays("ICMP allowed")
	l.checkPathMTU()
}

// TestPathMTUFirstConnectionOfASession: a TCP connection whose SYN starts the session
// (the first after the daemons came up, or after an idle peer's session ended) goes
// through the black hole before any probe was answered. Its SYN and SYN-ACK must still
// be clamped, or its segments are sized for the interface: over IPv6 inside, on a
// path narrower than 1280 inside, no Packet Too Big can ever bring them down far
// enough, and the connection stalls for good.
func TestPathMTUFirstConnectionOfASession(t *testing.T) {
	t.Parallel()
	l := newPMTULab(t, true, true)
	l.noPing = true
	l.up("", "")
	d, err := pmtuTransfer(l.a.ns, l.b.ns, "fd99::2", pmtuSize, 40*time.Second, nil)
	if err != nil {
		t.Fatalf("the first connection of a session, IPv6 inside: %v\nalpha's log:\n%s", err, l.a.daemonLog())
	}
	t.Logf("the first connection of a session, IPv6 inside: %d MB in %v", pmtuSize>>20, d.Round(time.Millisecond))
}

// TestPathMTUBelow1280OnIPv4: an IPv4 underlay whose narrow link carries 1000 bytes,
// below the 1280 the search starts from, and no ICMP: the nodes find it, and TCP goes
// through both ways, IPv4 and IPv6 inside (the IPv6 hosts' segments sized by the clamped
// MSS: no Packet Too Big may say less than 1280).
func TestPathMTUBelow1280OnIPv4(t *testing.T) {
	t.Parallel()
	l := newPMTULabMTU(t, false, true, 1000)
	l.up("", "")
	l.waitPathMTU()
	l.transfersBothWays("a 1000-byte IPv4 path")
	l.checkPathMTU()
}

// TestPathMTUNarrowedDuringATransfer: an IPv4 underlay without ICMP whose link narrows
// from 1500 to 1280 in the middle of a transfer, IPv4 inside: the node finds the black
// hole, lowers the estimate, and the sender, told by the tunnel's Fragmentation Needed,
// finishes the transfer.
func TestPathMTUNarrowedDuringATransfer(t *testing.T) {
	t.Parallel()
	l := newPMTULabMTU(t, false, true, 1500)
	l.up("", "")
	l.waitPathMTU()
	narrow := func() error {
		if out, err := l.router.Run("ip", "link", "set", "dev", l.narrow, "mtu", "1280"); err != nil {
			return fmt.Errorf("narrow: %v: %s", err, out)
		}
		return nil
	}
	d, err := pmtuTransfer(l.a.ns, l.b.ns, "10.99.0.2", pmtuSize, 40*time.Second, narrow)
	if err != nil {
		t.Fatalf("transfer while narrowing: %v\nalpha's log:\n%s", err, l.a.daemonLog())
	}
	p, _ := l.a.pathMTU()
	t.Logf("transfer while narrowing: %v; alpha's path MTU to beta now %d (%s)", d.Round(time.Millisecond), p.PathMTU, p.PathMTUState)
	if p.PathMTU > 1280-20-8-32+pmtuSlack {
		t.Errorf("path MTU %d after the link narrowed to 1280", p.PathMTU)
	}
}
