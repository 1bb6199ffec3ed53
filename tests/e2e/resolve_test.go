//go:build e2e

package e2e

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/internal/nslab"
)

// TestUnresolvablePeerStopsNoOther: alpha has a peer whose endpoint name does not
// resolve. up still brings the interface up, the working peer carries traffic, and
// status shows the other without an address and why; the log says so once. A reload
// that adds another such peer is applied, not refused.
func TestUnresolvablePeerStopsNoOther(t *testing.T) {
	t.Parallel()
	_, a, b, seed := pair(t)
	ghost, beta := startBetaWithGhost(a, b, seed)

	start := time.Now()
	a.upDaemon()
	t.Logf("up took %v", time.Since(start).Round(time.Millisecond))
	waitPing(t, a.ns, "10.99.0.2")
	st := a.mustStatus()
	if st.State != "up" {
		t.Errorf("state %q after up, want up", st.State)
	}
	if g := st.peer(t, "ghost"); g.Endpoint != "" || g.EndpointError == "" {
		t.Errorf("ghost: endpoint %q, endpoint_error %q; want no address, and why", g.Endpoint, g.EndpointError)
	}
	if text := a.mustStt("status", linkName); !strings.Contains(text, "peer ghost: endpoint does not resolve") {
		t.Errorf("status text does not say ghost's endpoint does not resolve:\n%s", text)
	}
	if log := a.daemonLog(); strings.Count(log, "endpoint name does not resolve") != 1 {
		t.Errorf("the daemon logged the unresolvable name %d times, want once:\n%s",
			strings.Count(log, "endpoint name does not resolve"), log)
	}

	ghost2 := peerConf{name: "ghost2", endpoint: "ghost2.stt-tun.invalid:51900", allowed: []string{"10.99.0.8/32"}}
	a.writeConfig(nodeConf{addresses: tunA, seedFile: seed, peers: []peerConf{ghost, beta, ghost2}})
	if out := a.mustStt("reload", linkName); !strings.Contains(out, `peer "ghost2" added`) {
		t.Errorf("reload with a peer whose name does not resolve:\n%s", out)
	}
	waitPing(t, a.ns, "10.99.0.2")
	a.down()
}

// silentDNS makes the processes `ip netns exec` starts in ns use a DNS server that
// never answers: a UDP socket in server that reads nothing. `ip netns exec` mounts
// /etc/netns/<ns>/resolv.conf over /etc/resolv.conf; the file is removed at cleanup.
func silentDNS(t *testing.T, ns, server *nslab.NS, addr string) {
	t.Helper()
	pc, err := server.ListenPacket("udp", net.JoinHostPort(addr, "53"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	dir := filepath.Join("/etc/netns", ns.Name())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.RemoveAll(dir)
		os.Remove("/etc/netns") // only if no one else uses it
	})
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte("nameserver "+addr+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestSilentDNSHoldsUpNoPeer: with a DNS server that never answers, a peer's endpoint
// name used to make up fail for the whole interface after some ten seconds. Now up
// brings the interface up, the peer with an IP address works, and the other one waits
// for its name in the background.
func TestSilentDNSHoldsUpNoPeer(t *testing.T) {
	t.Parallel()
	_, a, b, seed := pair(t)
	silentDNS(t, a.ns, b.ns, "10.231.0.2")
	startBetaWithGhost(a, b, seed)

	start := time.Now()
	a.upDaemon()
	t.Logf("up took %v with a silent DNS server", time.Since(start).Round(time.Millisecond))
	waitPing(t, a.ns, "10.99.0.2")
	if g := a.mustStatus().peer(t, "ghost"); g.Endpoint != "" {
		t.Errorf("ghost has endpoint %q without an answer from DNS", g.Endpoint)
	}
	a.down()
}
