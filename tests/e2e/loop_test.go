//go:build e2e

package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/internal/nslab"
)

// loopDrops is the routing_loop counter of a node's status.
func loopDrops(st statusJSON) uint64 { return st.Counters["tunnel_routing_loop"] }

// waitLoopDrop waits until n counts a packet dropped as a routing loop, and fails
// showing the status if none comes.
func waitLoopDrop(t *testing.T, n *node) statusJSON {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), reachTimeout)
	defer cancel()
	var st statusJSON
	if err := nslab.WaitFor(ctx, func() bool {
		var err error
		st, err = n.status()
		return err == nil && loopDrops(st) > 0
	}); err != nil {
		t.Fatalf("%s: no routing_loop drop counted within %v; counters %v, peers %+v", n.name, reachTimeout, st.Counters, st.Peers)
	}
	return st
}

// noAmplification checks that, over a few seconds of the loop's trigger, the kernel
// hands the node's TUN device about as many packets as the trigger makes: a tunnel that
// re-encapsulates its own traffic feeds it without bound (a hundred thousand a second).
func noAmplification(t *testing.T, n *node, dev string, during func()) {
	t.Helper()
	before := linkTxPackets(t, n.ns, dev)
	during()
	sent := linkTxPackets(t, n.ns, dev) - before
	t.Logf("%s: %d packets sent on %s during the trigger", n.name, sent, dev)
	if sent > 2000 {
		t.Errorf("%s sent %d packets on %s while given a few dozen: the tunnel re-encapsulates its own traffic", n.name, sent, dev)
	}
}

// linkTxPackets reads the transmit packet counter of dev in ns.
func linkTxPackets(t *testing.T, ns *nslab.NS, dev string) uint64 {
	t.Helper()
	out := mustIn(t, ns, "cat", "/sys/class/net/"+dev+"/statistics/tx_packets")
	var v uint64
	for _, c := range strings.TrimSpace(out) {
		v = v*10 + uint64(c-'0')
	}
	return v
}

// pingFor sends pings from ns to addr for d, ignoring their outcome.
func pingFor(ns *nslab.NS, addr string, d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		_, _ = ns.Run("ping", "-c", "5", "-i", "0.2", "-W", "1", "-q", addr)
	}
}

// startBetaForLoop configures beta with alpha at alphaAt and starts it; alpha's
// configuration, with beta at betaAt and the allowed_prefixes a test varies to make
// or unmake a loop, comes from the function it returns.
func startBetaForLoop(b *node, seed, betaAt, alphaAt string) func(allowed []string) nodeConf {
	b.t.Helper()
	b.writeConfig(nodeConf{addresses: tunB, seedFile: seed, peers: []peerConf{
		{name: "alpha", endpoint: alphaAt, allowed: allowA},
	}})
	b.startForeground()
	return func(allowed []string) nodeConf {
		return nodeConf{addresses: tunA, seedFile: seed, peers: []peerConf{
			{name: "beta", endpoint: betaAt, allowed: allowed},
		}}
	}
}

// TestRoutingLoopOwnEndpointDropped: a reload gives beta allowed_prefixes that cover
// beta's own endpoint while a session is up, so alpha's routes send its UDP to beta
// into its own tunnel. reload and up warn about it; the packets that come back into the
// TUN are dropped and counted as routing_loop (status, the peer's drops), logged once,
// and not encapsulated again without end (without the guard: hundreds of thousands of
// packets a second).
func TestRoutingLoopOwnEndpointDropped(t *testing.T) {
	t.Parallel()
	_, a, b, seed := pair(t)
	confA := startBetaForLoop(b, seed, endpointB, "10.231.0.1:51900")
	a.writeConfig(confA(allowB))
	if stderr := a.upDaemon(); strings.Contains(stderr, "warning") {
		t.Errorf("up warns about a configuration without a loop:\n%s", stderr)
	}
	waitPing(t, a.ns, "10.99.0.2")

	// 10.231.0.0/25 holds beta's endpoint 10.231.0.2 and is more specific than the
	// underlay's /24.
	looping := append([]string{"10.231.0.0/25"}, allowB...)
	a.writeConfig(confA(looping))
	out := a.mustStt("reload", linkName)
	if !strings.Contains(out, `warning: peer "beta"`) || !strings.Contains(out, "10.231.0.0/25") || !strings.Contains(out, "routing_loop") {
		t.Errorf("reload does not warn that beta's allowed_prefixes cover its endpoint:\n%s", out)
	}
	if got := mustIn(t, a.ns, "ip", "route", "get", "10.231.0.2"); !strings.Contains(got, "dev "+linkName) {
		t.Fatalf("the trigger is not in place: alpha routes beta's endpoint %s", got)
	}
	noAmplification(t, a, linkName, func() { pingFor(a.ns, "10.99.0.2", 3*time.Second) })
	st := waitLoopDrop(t, a)
	if p := st.peer(t, "beta"); p.Drops < loopDrops(st) {
		t.Errorf("beta's drops %d do not include the %d routing_loop drops", p.Drops, loopDrops(st))
	}
	if text := a.mustStt("status", linkName); !strings.Contains(text, "tunnel_routing_loop") {
		t.Errorf("status text does not list the routing_loop drops:\n%s", text)
	}
	if log := a.daemonLog(); strings.Count(log, "routing loop:") != 1 {
		t.Errorf("the daemon logged the routing loop %d times, want once:\n%s", strings.Count(log, "routing loop:"), log)
	}

	// up with the looping configuration warns too, and comes up.
	a.down()
	if stderr := a.upDaemon(); !strings.Contains(stderr, `warning: peer "beta"`) || !strings.Contains(stderr, "10.231.0.0/25") {
		t.Errorf("up does not warn that beta's allowed_prefixes cover its endpoint; stderr:\n%s", stderr)
	}
	a.down()
}

// TestRoutingLoopExitPeerUplinkLost: under exit_peer, alpha's uplink loses its
// address while traffic flows, and the only default route left goes through the tunnel
// (as a network manager may leave it): the full tunnel's policy routing then sends
// alpha's own marked datagrams to beta into the tunnel. They are dropped as
// routing_loop, and alpha does not amplify its own traffic.
func TestRoutingLoopExitPeerUplinkLost(t *testing.T) {
	t.Parallel()
	lab := newLab(t)
	nsA, nsB := lab.NS("a"), lab.NS("b")
	devA, _ := lab.Link(nsA, underA, nsB, underB)
	a, b, seed := newNode(t, nsA, "alpha"), newNode(t, nsB, "beta"), seedFile(t)
	inet := lab.NS("inet")
	lab.Link(b.ns, []string{"198.51.100.1/24"}, inet, []string{"198.51.100.2/24"})
	const publicB = "10.233.0.2"
	mustIn(t, b.ns, "ip", "addr", "add", publicB+"/32", "dev", "lo")
	mustIn(t, a.ns, "ip", "route", "add", "default", "via", "10.231.0.2")
	a.writeConfig(nodeConf{addresses: tunA, seedFile: seed, exitPeer: "beta", peers: []peerConf{
		{name: "beta", endpoint: publicB + ":51900", allowed: append([]string{"0.0.0.0/0", "::/0"}, allowB...)},
	}})
	b.writeConfig(nodeConf{addresses: tunB, seedFile: seed, forwarding: true, masquerade: true, peers: []peerConf{
		{name: "alpha", allowed: allowA},
	}})
	b.startForeground()
	a.startForeground()
	if log := a.daemonLog(); strings.Contains(log, "routing_loop") {
		t.Errorf("the exit peer's /0 over its endpoint is warned about:\n%s", log)
	}
	waitPing(t, a.ns, "198.51.100.2")
	if st := a.mustStatus(); loopDrops(st) != 0 {
		t.Fatalf("routing_loop drops before the trigger: %v", st.Counters)
	}

	mustIn(t, a.ns, "ip", "addr", "flush", "dev", devA)
	mustIn(t, a.ns, "ip", "route", "replace", "default", "dev", linkName)
	if got := mustIn(t, a.ns, "ip", "route", "get", publicB, "mark", "0x5354"); !strings.Contains(got, "dev "+linkName) {
		t.Fatalf("the trigger is not in place: alpha routes its marked datagrams to beta %s", got)
	}
	noAmplification(t, a, linkName, func() { pingFor(a.ns, "198.51.100.2", 3*time.Second) })
	waitLoopDrop(t, a)
	if log := a.daemonLog(); strings.Count(log, "routing loop:") != 1 {
		t.Errorf("the daemon logged the routing loop %d times, want once:\n%s", strings.Count(log, "routing loop:"), log)
	}
}

// TestRoutingLoopLargeIPv6DatagramsDropped: as TestRoutingLoopOwnEndpointDropped, with
// beta's endpoint an IPv6 address and pings too large to fit the TUN MTU once
// encapsulated. The kernel fragments alpha's own datagrams on their way into the
// tunnel, so the UDP ports sit behind a fragment header; those must be dropped as
// routing_loop too. Without that the loop ran on its own after three pings (1 GiB in
// 10 s in a lab).
func TestRoutingLoopLargeIPv6DatagramsDropped(t *testing.T) {
	t.Parallel()
	_, a, b, seed := pair(t)
	const endpoint6B = "[fd00:231::2]:51900"
	confA := startBetaForLoop(b, seed, endpoint6B, "[fd00:231::1]:51900")
	a.writeConfig(confA(allowB))
	a.upDaemon()
	waitPing(t, a.ns, "10.99.0.2")

	a.writeConfig(confA(append([]string{"fd00:231::2/128"}, allowB...)))
	a.mustStt("reload", linkName)
	if got := mustIn(t, a.ns, "ip", "-6", "route", "get", "fd00:231::2"); !strings.Contains(got, "dev "+linkName) {
		t.Fatalf("the trigger is not in place: alpha routes beta's endpoint %s", got)
	}
	noAmplification(t, a, linkName, func() {
		_, _ = a.ns.Run("ping", "-c", "3", "-i", "0.2", "-W", "1", "-q", "-s", "1380", "10.99.0.2")
		time.Sleep(3 * time.Second) // a measuring window: how much the loop sends on its own
	})
	waitLoopDrop(t, a)
	a.down()
}
