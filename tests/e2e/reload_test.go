//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/internal/nslab"
)

// reloadStatus is the part of `status --json` the reload test compares.
type reloadStatus struct {
	Peers []struct {
		Name            string    `json:"name"`
		AllowedPrefixes []string  `json:"allowed_prefixes"`
		LastHandshake   time.Time `json:"last_handshake"`
	} `json:"peers"`
}

func (n *node) reloadStatus() reloadStatus {
	n.t.Helper()
	var st reloadStatus
	if err := json.Unmarshal([]byte(n.mustStt("status", "--json", linkName)), &st); err != nil {
		n.t.Fatal(err)
	}
	return st
}

// tunnelRoutes lists the destinations of the routes stt-tun made (proto 83) in ns's
// main tables, IPv4 and IPv6.
func tunnelRoutes(t *testing.T, n *node) string {
	t.Helper()
	var dsts []string
	for _, fam := range []string{"-4", "-6"} {
		out := mustIn(t, n.ns, "ip", fam, "route", "show", "proto", "83")
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if f := strings.Fields(l); len(f) > 0 {
				dsts = append(dsts, f[0])
			}
		}
	}
	sort.Strings(dsts)
	return strings.Join(dsts, " ")
}

// TestReloadWithoutDrops: while alpha pings beta every 20 ms, `stt-tun reload` adds
// gamma (who becomes reachable), removes delta and their routes follow; not one echo
// to beta is lost and beta's session is the one from before. Invalid and restart-only
// changes are refused with the interface untouched, SIGHUP reloads too (here turning
// the metrics on), and down undoes the routes the reloads added.
func TestReloadWithoutDrops(t *testing.T) {
	t.Parallel()
	lab := newLab(t)
	nsA, nsB, nsC := lab.NS("a"), lab.NS("b"), lab.NS("c")
	lab.Link(nsA, underA, nsB, underB)
	lab.Link(nsA, []string{"10.232.0.1/24"}, nsC, []string{"10.232.0.3/24"})
	seed := seedFile(t)
	a, b, c := newNode(t, nsA, "alpha"), newNode(t, nsB, "beta"), newNode(t, nsC, "gamma")

	beta := peerConf{name: "beta", endpoint: endpointB, allowed: allowB, publicKey: b.publicKey()}
	delta := peerConf{name: "delta", allowed: []string{"10.99.0.4/32", "10.98.4.0/24"}}
	gamma := peerConf{name: "gamma", endpoint: "10.232.0.3:51900", allowed: []string{"10.99.0.3/32", "10.98.3.0/24"}}
	before := nodeConf{addresses: tunA, seedFile: seed, peers: []peerConf{beta, delta}}
	after := nodeConf{addresses: tunA, seedFile: seed, peers: []peerConf{beta, gamma}}
	a.writeConfig(before)
	b.writeConfig(nodeConf{addresses: tunB, seedFile: seed, peers: []peerConf{{name: "alpha", allowed: allowA}}})
	c.writeConfig(nodeConf{addresses: []string{"10.99.0.3/24"}, seedFile: seed, peers: []peerConf{{name: "alpha", allowed: allowA}}})
	snapA := takeSnapshot(t, nsA)

	b.startForeground()
	c.startForeground()
	a.upDaemon() // a daemon of its own, for SIGHUP
	waitPing(t, nsA, "10.99.0.2")
	if got, want := tunnelRoutes(t, a), "10.98.4.0/24 10.99.0.2 10.99.0.4 fd99::2"; got != want {
		t.Errorf("routes before the reload: %q, want %q", got, want)
	}
	if r := runIn(nsA, "ping", "-n", "-c", "1", "-W", "1", "10.99.0.3"); r.err == nil {
		t.Fatal("gamma answers before alpha knows it")
	}
	betaHandshake := a.reloadStatus().Peers[0].LastHandshake

	// 400 echoes 20 ms apart: 8 s of traffic with the reloads in the middle.
	pinger := nsA.Start("ping", "-n", "-i", "0.02", "-c", "400", "-W", "1", "10.99.0.2")
	time.Sleep(time.Second)

	a.writeConfig(after)
	out := a.mustStt("reload", linkName)
	want := linkName + ": reloaded\n" +
		"  peer \"gamma\" added\n" +
		"  peer \"delta\" removed\n" +
		"  route 10.99.0.3/32 added\n" +
		"  route 10.98.3.0/24 added\n" +
		"  route 10.99.0.4/32 deleted\n" +
		"  route 10.98.4.0/24 deleted\n"
	if out != want {
		t.Errorf("reload printed:\n%s\nwant:\n%s", out, want)
	}
	if got, want := tunnelRoutes(t, a), "10.98.3.0/24 10.99.0.2 10.99.0.3 fd99::2"; got != want {
		t.Errorf("routes after the reload: %q, want %q", got, want)
	}
	waitPing(t, nsA, "10.99.0.3")
	waitPing(t, nsC, "10.99.0.1")
	if out := a.mustStt("ping", "-c", "1", "gamma"); !strings.Contains(out, "reply from gamma via udp 10.232.0.3:51900") {
		t.Errorf("stt-tun ping gamma:\n%s", out)
	}

	// Refused: a file that does not parse, and a change that needs a restart.
	good, err := os.ReadFile(a.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	writeSecret(t, a.cfgPath, string(good)+"bogus = 1\n")
	r := a.stt("reload", linkName)
	if r.code != 1 || !strings.Contains(r.stderr, "reload "+linkName+" refused, still running as before:\n"+a.cfgPath+":") ||
		!strings.Contains(r.stderr, `unknown key "bogus"`) {
		t.Errorf("reload of a broken file: exit %d, stderr %q", r.code, r.stderr)
	}
	writeSecret(t, a.cfgPath, strings.Replace(string(good), "[interface]\n", "[interface]\nmtu = 1400\n", 1))
	r = a.stt("reload", linkName)
	if r.code != 1 || !strings.Contains(r.stderr, "restart needed: interface.mtu changed from 1420 to 1400") {
		t.Errorf("reload with a new mtu: exit %d, stderr %q", r.code, r.stderr)
	}
	if got := strings.TrimSpace(mustIn(t, nsA, "cat", "/sys/class/net/"+linkName+"/mtu")); got != "1420" {
		t.Errorf("mtu %s after a refused reload", got)
	}

	if err := pinger.Wait(); err != nil {
		t.Fatalf("ping to beta across the reloads: %v\n%s", err, pinger.Output())
	}
	if m := regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`).FindStringSubmatch(pinger.Output()); m == nil || m[1] != "400" || m[2] != "400" {
		t.Errorf("echoes to beta lost across the reloads:\n%s", reloadTail(pinger.Output(), 400))
	}
	st := a.reloadStatus()
	if len(st.Peers) != 2 || st.Peers[0].Name != "beta" || st.Peers[1].Name != "gamma" {
		t.Fatalf("peers after the reloads: %+v", st.Peers)
	}
	if !st.Peers[0].LastHandshake.Equal(betaHandshake) {
		t.Errorf("beta's handshake moved from %v to %v: the reload replaced its session", betaHandshake, st.Peers[0].LastHandshake)
	}

	// SIGHUP: the daemon reads the file again; this one turns the metrics on.
	writeSecret(t, a.cfgPath, string(good)+"\n[metrics]\nlisten = \"127.0.0.1:9586\"\n")
	pids := daemonPIDs(a.stateDir)
	if len(pids) != 1 {
		t.Fatalf("alpha's daemon: pids %v", pids)
	}
	if err := syscall.Kill(pids[0], syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	var body string
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if err := nslab.WaitFor(ctx, func() bool { body, err = scrapeIn(nsA, "127.0.0.1:9586"); return err == nil }); err != nil {
		t.Fatalf("no metrics after SIGHUP: %v", err)
	}
	for _, want := range []string{
		`stt_peer_info{endpoint="` + endpointB + `",path="udp",peer="beta"} 1`,
		`stt_peer_session_up{peer="gamma"} 1`,
		`stt_reloads_total{result="applied"} 2`,
		`stt_reloads_total{result="refused"} 2`,
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}

	a.down()
	sameSnapshot(t, nsA, "alpha after down", snapA)
}

// scrapeIn fetches the metrics at addr from inside ns.
func scrapeIn(ns *nslab.NS, addr string) (string, error) {
	client := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, a string) (net.Conn, error) { return ns.Dial(ctx, network, a) },
		},
	}
	resp, err := client.Get("http://" + addr + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /metrics: %s %v", resp.Status, err)
	}
	return string(b), nil
}

func reloadTail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}
