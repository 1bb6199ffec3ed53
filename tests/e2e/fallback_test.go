//go:build e2e

package e2e

import (
	"regexp"
	"strconv"
	"testing"
)

var pingReceivedRE = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// TestFallbackPingsDeliveredOrCounted: the walkthrough of docs/operations.md ("Why is
// this peer on WebSocket?"): pings once a second while UDP stops getting through. Every
// ping is either answered or counted by alpha under drop_fallback (and in beta's drops
// as alpha sees them); none vanishes with "dropped: none".
func TestFallbackPingsDeliveredOrCounted(t *testing.T) {
	t.Parallel()
	lab := newLab(t)
	nsA, nsB := lab.NS("a"), lab.NS("b")
	_, devB := lab.Link(nsA, underA, nsB, underB)
	a, b := newNode(t, nsA, "alpha"), newNode(t, nsB, "beta")
	seed := seedFile(t)
	a.writeConfig(nodeConf{addresses: tunA, seedFile: seed, fallbackAfter: fallbackAfter.String(), peers: []peerConf{
		{name: "beta", endpoint: endpointB, wsURL: wsURLB, allowed: allowB},
	}})
	b.writeConfig(nodeConf{addresses: tunB, seedFile: seed, ws: wsConf{listen: wsListenB},
		peers: []peerConf{{name: "alpha", allowed: allowA}}})
	b.startForeground()
	a.startForeground()
	waitPing(t, a.ns, "10.99.0.2")
	before := a.mustStatus()

	blockUDP(t, nsB, devB)
	const count = 8
	r := runIn(a.ns, "ping", "-n", "-c", strconv.Itoa(count), "-i", "1", "-W", "1", "10.99.0.2")
	m := pingReceivedRE.FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("ping output: %s %s", r.stdout, r.stderr)
	}
	received, _ := strconv.Atoi(m[2])
	after := a.mustStatus()
	if p := after.peer(t, "beta"); p.Path != "ws" {
		t.Fatalf("alpha's path to beta is %q after the block, want ws", p.Path)
	}
	lost := after.Counters["drop_fallback"] - before.Counters["drop_fallback"]
	drops := after.peer(t, "beta").Drops - before.peer(t, "beta").Drops
	t.Logf("%d pings: %d answered, %d counted under fallback", count, received, lost)
	if uint64(received)+lost != count {
		t.Errorf("%d pings sent, %d answered, %d counted under drop_fallback: %d vanished uncounted",
			count, received, lost, count-received-int(lost))
	}
	if drops != lost {
		t.Errorf("beta's drops grew by %d, drop_fallback by %d", drops, lost)
	}
}
