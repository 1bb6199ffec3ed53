//go:build e2e

package e2e

import (
	"regexp"
	"strings"
	"testing"
)

// TestPingCommand: `stt-tun ping` echoes through the session (making it when there is
// none), prints the path and endpoint that answered and a summary, picks the interface
// by itself, and exits 1 when the peer does not answer.
func TestPingCommand(t *testing.T) {
	t.Parallel()
	_, a, b, seed := pair(t)
	a.writeConfig(nodeConf{addresses: tunA, seedFile: seed, peers: []peerConf{
		{name: "beta", endpoint: endpointB, allowed: allowB},
	}})
	b.writeConfig(nodeConf{addresses: tunB, seedFile: seed, peers: []peerConf{
		{name: "alpha", allowed: allowA},
	}})
	b.startForeground()
	a.startForeground()

	// No packet has crossed the tunnel yet: the first echo waits for the handshake.
	out := a.mustStt("ping", "-c", "3", "-i", "100ms", "-W", "10s", "beta")
	reply := regexp.MustCompile(`(?m)^reply from beta via udp ` + regexp.QuoteMeta(endpointB) + `: seq=[123] time=[0-9]+\.[0-9]{3} ms$`)
	if n := len(reply.FindAllString(out, -1)); n != 3 {
		t.Errorf("want 3 replies via udp %s:\n%s", endpointB, out)
	}
	if !strings.HasPrefix(out, "PING beta on "+linkName+": ") ||
		!regexp.MustCompile(`\n--- beta ping statistics ---\n3 sent, 3 received, 0% loss, rtt min/avg/max = [0-9.]+/[0-9.]+/[0-9.]+ ms\n$`).MatchString(out) {
		t.Errorf("ping output:\n%s", out)
	}

	// beta has no endpoint for alpha; it answers over the session alpha made.
	out = b.mustStt("ping", "-c", "1", "-I", linkName, "alpha")
	if !strings.Contains(out, "reply from alpha via udp 10.231.0.1:51900: seq=1 time=") {
		t.Errorf("ping from beta:\n%s", out)
	}

	r := a.stt("ping", "-c", "1", "zeta")
	if r.code != 1 || !strings.Contains(r.stderr, `no running interface has a peer named "zeta"`) {
		t.Errorf("ping an unknown peer: exit %d, stderr %q", r.code, r.stderr)
	}

	b.down()
	r = a.stt("ping", "-c", "2", "-i", "100ms", "-W", "300ms", "beta")
	if r.code != 1 || r.stderr != "stt-tun: no reply from beta\n" || !strings.Contains(r.stdout, "2 sent, 0 received, 100% loss\n") {
		t.Errorf("ping a peer that is down: exit %d\nstdout:\n%s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
}
