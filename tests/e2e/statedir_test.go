//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stt-tun/stt-tun/internal/nslab"
)

// soloNode is one node alone in its namespace, with an uplink, forwarding and
// masquerade: after a SIGKILL its sysctls and nftables table outlive the daemon.
func soloNode(t *testing.T) *node {
	t.Helper()
	lab := newLab(t)
	ns := lab.NS("solo")
	other := lab.NS("uplink")
	lab.Link(ns, underA, other, underB)
	n := newNode(t, ns, "alpha")
	n.writeConfig(nodeConf{addresses: tunA, seedFile: seedFile(t), forwarding: true, masquerade: true,
		peers: []peerConf{{name: "beta", endpoint: endpointB, allowed: allowB}}})
	return n
}

// kill SIGKILLs the node's foreground daemon and waits for it.
func (n *node) kill() {
	n.t.Helper()
	if err := n.proc.Signal(syscall.SIGKILL); err != nil {
		n.t.Fatal(err)
	}
	if err := n.proc.Wait(); err == nil {
		n.t.Fatal("daemon exited cleanly on SIGKILL?")
	}
	n.proc = nil
}

// TestStatusShowsDaemonGoneAfterSIGKILL: status lists an interface whose daemon was
// killed and left its routing behind, in text and JSON, and says how to clean up; down
// then restores the machine.
func TestStatusShowsDaemonGoneAfterSIGKILL(t *testing.T) {
	t.Parallel()
	n := soloNode(t)
	before := takeSnapshot(t, n.ns)
	n.startForeground()
	n.kill()
	if r := runIn(n.ns, "nft", "list", "table", "inet", "stt-tun-"+linkName); r.err != nil {
		t.Fatalf("the killed daemon's nftables table is gone already; nothing to show: %v", r.err)
	}

	// The lab's state directory is not the default, so the command to run names it.
	line := "stt0: daemon gone, run 'stt-tun --state-dir " + n.stateDir + " down stt0'"
	r := n.stt("status")
	if r.code != 0 || r.stdout != line+"\n" {
		t.Errorf("status after SIGKILL: exit %d, stdout %q, stderr %q; want %q", r.code, r.stdout, r.stderr, line)
	}
	r = n.stt("status", "--json")
	var all []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &all); err != nil || r.code != 0 || len(all) != 1 ||
		all[0]["interface"] != linkName || all[0]["state"] != "daemon_gone" {
		t.Errorf("status --json after SIGKILL: %q (%v), exit %d; want one daemon_gone object", r.stdout, err, r.code)
	}
	r = n.stt("status", linkName)
	if r.code != 1 || r.stderr != "stt-tun: "+line+"\n" {
		t.Errorf("status stt0 after SIGKILL: exit %d, stderr %q; want 1 and %q", r.code, r.stderr, line)
	}

	if stderr := n.down(); !strings.Contains(stderr, "journal") {
		t.Errorf("down: stderr %q does not say it undid the routing from the journal", stderr)
	}
	sameSnapshot(t, n.ns, "after SIGKILL and down", before)
	if r := n.stt("status"); r.code != 0 || r.stdout != "" {
		t.Errorf("status after down: %+v, want nothing", r)
	}
}

// TestUpRefusesExistingLink: a persistent TUN device or a veth with the interface's
// name is not adopted: up fails with one line, and neither the link, the machine nor
// the state directory changes.
func TestUpRefusesExistingLink(t *testing.T) {
	t.Parallel()
	n := soloNode(t)
	t.Cleanup(func() { // should up adopt the link after all, stop its daemon
		for _, pid := range daemonPIDs(n.stateDir) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	n.ns.MustRun(t, "ip", "tuntap", "add", "dev", linkName, "mode", "tun")
	n.ns.MustRun(t, "ip", "link", "add", "eth-net", "type", "veth", "peer", "name", "eth-peer")
	cfg, err := os.ReadFile(n.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	vethCfg := filepath.Join(n.dir, "veth.toml")
	writeSecret(t, vethCfg, strings.Replace(string(cfg), fmt.Sprintf("name = %q", linkName), `name = "eth-net"`, 1))
	before := takeSnapshot(t, n.ns)
	for _, c := range []struct{ cfg, want string }{
		{n.cfgPath, "stt-tun: a link named stt0 already exists (tun, not created by stt-tun)"},
		{vethCfg, "stt-tun: a link named eth-net already exists (veth, not created by stt-tun)"},
	} {
		for _, args := range [][]string{{"up", "-c", c.cfg}, {"up", "--foreground", "-c", c.cfg}} {
			r := n.stt(args...)
			if r.code != 1 || r.stderr != c.want+"\n" {
				t.Errorf("%v: exit %d, stderr %q; want one line %q", args, r.code, r.stderr, c.want)
			}
		}
	}
	sameSnapshot(t, n.ns, "after the refused ups", before)
	if entries, err := os.ReadDir(n.stateDir); err == nil && len(entries) > 0 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("refused ups left %v in the state directory", names)
	}
	if daemonPIDs(n.stateDir) != nil {
		t.Errorf("a daemon was started: %v", daemonPIDs(n.stateDir))
	}
}

// TestDownLeavesLinkAtOldIndexAlone: after a crash and the namespace made anew, another
// link may carry the dead tunnel's ifindex, even its name; down undoes the rules,
// sysctls and nftables table, and leaves that link's addresses, routes and MTU.
func TestDownLeavesLinkAtOldIndexAlone(t *testing.T) {
	t.Parallel()
	n := soloNode(t)
	before := takeSnapshot(t, n.ns)
	n.startForeground()
	index := strings.TrimSpace(mustIn(t, n.ns, "cat", "/sys/class/net/"+linkName+"/ifindex"))
	n.kill()
	waitUntil(t, func() bool { return runIn(n.ns, "ip", "link", "show", linkName).err != nil })
	// Not a TUN, not marked: a veth with the old index and name, set up as the tunnel was.
	mustIn(t, n.ns, "ip", "link", "add", linkName, "index", index, "mtu", "1420", "type", "veth", "peer", "name", "other")
	mustIn(t, n.ns, "ip", "link", "set", linkName, "up")
	for _, a := range tunA {
		mustIn(t, n.ns, "ip", "addr", "add", a, "dev", linkName, "nodad")
	}
	for _, p := range allowB {
		mustIn(t, n.ns, "ip", "route", "add", p, "dev", linkName, "proto", "83")
	}
	foreign := func() string {
		return mustIn(t, n.ns, "ip", "addr", "show", "dev", linkName) + mustIn(t, n.ns, "ip", "route", "show", "dev", linkName)
	}
	was := foreign()

	r := n.stt("down", linkName)
	if r.code != 0 || !strings.Contains(r.stderr, "journal") {
		t.Fatalf("down: %+v", r)
	}
	if now := foreign(); now != was {
		t.Errorf("down changed the link at the old index:\n--- before\n%s--- after\n%s", was, now)
	}
	mustIn(t, n.ns, "ip", "link", "del", linkName)
	sameSnapshot(t, n.ns, "after down and removing the other link", before)
}

// TestStateDirAttacks: what a user who can write the state directory could plant
// (links for root to follow, a journal and socket that name eth0, its address and the
// administrator's nftables table) is refused, and the machine stays as it was; a
// journal naming a table stt-tun never makes is refused even in a safe directory.
func TestStateDirAttacks(t *testing.T) {
	t.Parallel()
	n := soloNode(t)
	t.Cleanup(func() { // should up run in the unsafe directory after all, stop its daemon
		for _, pid := range daemonPIDs(n.stateDir) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	n.ns.MustRun(t, "nft", "add", "table", "inet", "filter")
	eth := strings.Fields(mustIn(t, n.ns, "sh", "-c", "ls /sys/class/net | grep -v -e lo -e "+linkName))[0]
	ethIndex := strings.TrimSpace(mustIn(t, n.ns, "cat", "/sys/class/net/"+eth+"/ifindex"))
	victim := filepath.Join(t.TempDir(), "victim")
	writeSecret(t, victim, "root's file\n")
	journal := fmt.Sprintf(`{"version":1,"link":"stt0","ifindex":%s,"changes":[
		{"link":{"old_mtu":1500,"was_up":false}},
		{"addr":%q},
		{"nft":{"family":"inet","name":"filter"}}]}`, ethIndex, underA[0])

	if err := os.MkdirAll(n.stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"stt0.log", "stt0.lock", "stt0.json.tmp"} {
		if err := os.Symlink(victim, filepath.Join(n.stateDir, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(n.stateDir, "stt1.json"), []byte(strings.ReplaceAll(journal, "stt0", "stt1")), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(n.stateDir, 0o777); err != nil {
		t.Fatal(err)
	}
	before := takeSnapshot(t, n.ns)
	for _, args := range [][]string{{"up", "-c", n.cfgPath}, {"down", "stt1"}, {"down", "--leftovers", "stt1"}, {"status"}} {
		r := n.stt(args...)
		if r.code != 1 || !strings.Contains(r.stderr, "writable by group or others") || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("%v in a world-writable state dir: exit %d, stderr %q; want one line refusing it", args, r.code, r.stderr)
		}
	}
	sameSnapshot(t, n.ns, "after commands in a world-writable state dir", before)
	if b, _ := os.ReadFile(victim); string(b) != "root's file\n" {
		t.Errorf("a planted link was followed: %q", b)
	}

	// The same journal in a private directory (as root might restore a backup): refused
	// as corrupt, nothing done.
	if err := os.RemoveAll(n.stateDir); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(n.stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(n.stateDir, "stt0.json"), []byte(journal), 0o600); err != nil {
		t.Fatal(err)
	}
	r := n.stt("down", linkName)
	if r.code != 1 || !strings.Contains(r.stderr, "journal corrupt") || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("down with a journal naming inet filter: exit %d, stderr %q; want one line, journal corrupt", r.code, r.stderr)
	}
	sameSnapshot(t, n.ns, "after down with a journal naming inet filter", before)

	// Without the table, the journal is one stt-tun could have written, but the link
	// with its ifindex is not stt-tun's: eth0 stays up, with its address.
	noTable := strings.Replace(journal, `,
		{"nft":{"family":"inet","name":"filter"}}`, "", 1)
	if err := os.WriteFile(filepath.Join(n.stateDir, "stt0.json"), []byte(noTable), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := n.stt("down", linkName); r.code != 0 {
		t.Errorf("down with a journal naming %s's ifindex: exit %d, stderr %q", eth, r.code, r.stderr)
	}
	sameSnapshot(t, n.ns, "after down with a journal naming "+eth+"'s ifindex", before)
}

// waitUntil polls cond until it holds, failing the test after readyTimeout.
func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if err := nslab.WaitFor(ctx, cond); err != nil {
		t.Fatalf("condition not met within %v", readyTimeout)
	}
}
