//go:build e2e

package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// unitCapabilities turns the CapabilityBoundingSet of scripts/stt-tun@.service into a
// setpriv --bounding-set argument, so that the test follows the unit.
func unitCapabilities(t *testing.T) string {
	t.Helper()
	f, err := os.Open("../../scripts/stt-tun@.service")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		caps, ok := strings.CutPrefix(sc.Text(), "CapabilityBoundingSet=")
		if !ok {
			continue
		}
		set := "-all"
		for _, c := range strings.Fields(caps) {
			set += ",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
		}
		return set
	}
	t.Fatal("no CapabilityBoundingSet in the unit")
	return ""
}

// TestUnitCapabilities runs both daemons with no more capabilities than the systemd
// unit leaves them: alpha a full tunnel with a WebSocket listener on port 443, beta a
// forwarding, masquerading exit. Then alpha is killed; the unit's ExecStopPost,
// `down --leftovers`, keeps its kill switch, and `down` undoes its routing, both
// under the same limits.
func TestUnitCapabilities(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("no setpriv (util-linux)")
	}
	lab, a, b, seed := pair(t)
	inet := lab.NS("inet")
	lab.Link(b.ns, []string{"198.51.100.1/24"}, inet, []string{"198.51.100.2/24"})
	const publicB = "10.233.0.2"
	mustIn(t, b.ns, "ip", "addr", "add", publicB+"/32", "dev", "lo")
	mustIn(t, a.ns, "ip", "route", "add", "default", "via", "10.231.0.2")

	a.writeConfig(nodeConf{addresses: tunA, seedFile: seed, exitPeer: "beta", ws: wsConf{listen: "0.0.0.0:443"},
		peers: []peerConf{{name: "beta", endpoint: publicB + ":51900", allowed: append([]string{"0.0.0.0/0", "::/0"}, allowB...)}}})
	b.writeConfig(nodeConf{addresses: tunB, seedFile: seed, forwarding: true, masquerade: true,
		peers: []peerConf{{name: "alpha", allowed: allowA}}})
	beforeA, beforeB := takeSnapshot(t, a.ns), takeSnapshot(t, b.ns)

	limited := []string{"setpriv", "--bounding-set=" + unitCapabilities(t), "--inh-caps=-all", "--no-new-privs"}
	start := func(n *node) {
		n.proc = n.ns.Start(append(limited, binary(t), "--state-dir", n.stateDir, "up", "--foreground", "-c", n.cfgPath)...)
		n.waitUp()
	}
	start(b)
	start(a)
	waitPing(t, a.ns, "198.51.100.2") // through the tunnel and beta's masquerade
	if got := mustIn(t, a.ns, "ip", "route", "get", "198.51.100.2"); !strings.Contains(got, "dev "+linkName) {
		t.Errorf("alpha routes the internet outside the tunnel: %s", got)
	}
	if got := mustIn(t, a.ns, "ss", "-Htln", "sport = :443"); !strings.Contains(got, ":443") {
		t.Errorf("alpha does not listen on port 443: %q", got)
	}
	if st, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(a.proc.PID()), "status")); err == nil {
		for _, line := range strings.Split(string(st), "\n") {
			if strings.HasPrefix(line, "CapEff:") || strings.HasPrefix(line, "CapBnd:") {
				t.Logf("alpha's daemon %s", line)
			}
		}
	}

	if err := a.proc.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	a.proc.Wait()
	a.proc = nil
	// The full tunnel's kill switch outlives the daemon: --leftovers keeps it (and
	// the journal) for the restart; a plain down undoes it, under the same limits.
	r := runIn(a.ns, append(limited, binary(t), "--state-dir", a.stateDir, "down", "--leftovers", linkName)...)
	if r.err != nil || !strings.Contains(r.stderr, "kill switch") {
		t.Fatalf("down --leftovers after SIGKILL: %v\nstdout: %s\nstderr: %s", r.err, r.stdout, r.stderr)
	}
	if got := mustIn(t, a.ns, "ip", "route", "show", "table", "5354"); !strings.Contains(got, "unreachable default") {
		t.Errorf("down --leftovers removed the kill switch:\n%s", got)
	}
	r = runIn(a.ns, append(limited, binary(t), "--state-dir", a.stateDir, "down", linkName)...)
	if r.err != nil || !strings.Contains(r.stderr, "journal") {
		t.Fatalf("down after SIGKILL: %v\nstdout: %s\nstderr: %s", r.err, r.stdout, r.stderr)
	}
	sameSnapshot(t, a.ns, "alpha after SIGKILL and down", beforeA)
	// After a clean stop there is nothing left to do, and it says nothing.
	if r := runIn(a.ns, append(limited, binary(t), "--state-dir", a.stateDir, "down", "--leftovers", linkName)...); r.err != nil || r.stderr != "" {
		t.Errorf("down --leftovers with nothing left: %v, stderr %q", r.err, r.stderr)
	}

	b.down()
	sameSnapshot(t, b.ns, "beta after down", beforeB)
}

// TestLeftoversAfterConfigBroken: after a crash the systemd unit runs `down --leftovers
// NAME`; it undoes the killed daemon's routing although NAME.toml was edited meanwhile
// into a file that does not parse and names another interface.
func TestLeftoversAfterConfigBroken(t *testing.T) {
	t.Parallel()
	_, a, _, seed := pair(t)
	a.writeConfig(nodeConf{addresses: tunA, seedFile: seed, peers: []peerConf{
		{name: "beta", endpoint: endpointB, allowed: allowB},
	}})
	before := takeSnapshot(t, a.ns)
	byName := []string{binary(t), "--state-dir", a.stateDir, "--config-dir", filepath.Dir(a.cfgPath)}
	a.proc = a.ns.Start(append(byName, "up", "--foreground", "alpha")...)
	a.waitUp()
	if err := a.proc.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	a.proc.Wait()
	a.proc = nil
	writeSecret(t, a.cfgPath, "[interface]\nname = \"stt9\"\nbogus =\n")
	r := runIn(a.ns, append(byName, "down", "--leftovers", "alpha")...)
	if r.err != nil || r.stderr != "stt-tun: "+linkName+": the daemon was gone (killed?); undid its routing from the journal\n" {
		t.Fatalf("down --leftovers alpha after SIGKILL and a broken alpha.toml: %v\nstdout: %s\nstderr: %s", r.err, r.stdout, r.stderr)
	}
	sameSnapshot(t, a.ns, "alpha after SIGKILL and down --leftovers", before)
	if _, err := os.Lstat(filepath.Join(a.stateDir, linkName+".json")); !os.IsNotExist(err) {
		t.Errorf("journal left: %v", err)
	}
}
