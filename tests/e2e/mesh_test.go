//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/internal/nslab"
)

// meshTimeout bounds how long members may take to know each other.
const meshTimeout = 30 * time.Second

// meshStatusJSON is the mesh part of `status --json`, decoded on its own so that a
// renamed field fails here.
type meshStatusJSON struct {
	Mesh *struct {
		Address   string `json:"address"`
		Network   string `json:"network"`
		Members   int    `json:"members"`
		Connected int    `json:"connected"`
		Reflected []struct {
			By        string `json:"by"`
			Address   string `json:"address"`
			Transport string `json:"transport"`
		} `json:"reflected"`
		Bootstrap []struct {
			Target  string `json:"target"`
			Reached string `json:"reached"`
			Self    bool   `json:"self"`
		} `json:"bootstrap"`
	} `json:"mesh"`
	Peers []struct {
		Name            string   `json:"name"`
		Source          string   `json:"source"`
		Path            string   `json:"path"`
		Endpoint        string   `json:"endpoint"`
		MeshAddress     string   `json:"mesh_address"`
		Candidates      []string `json:"candidates"`
		AllowedPrefixes []string `json:"allowed_prefixes"`
		Refusals        []string `json:"refusals"`
	} `json:"peers"`
	Counters map[string]uint64 `json:"counters"`
}

func (n *node) meshStatus() (meshStatusJSON, error) {
	var st meshStatusJSON
	r := n.stt("status", "--json", linkName)
	if r.err != nil {
		return st, fmt.Errorf("status: %v: %s", r.err, strings.TrimSpace(r.stderr))
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		return st, fmt.Errorf("status --json: %v in %q", err, r.stdout)
	}
	if st.Mesh == nil {
		return st, fmt.Errorf("status --json has no mesh section: %s", r.stdout)
	}
	return st, nil
}

// meshLab is a router namespace ("the internet") with member namespaces hanging off
// it, each on its own /24 of 198.18.0.0/15 (benchmarking space, RFC 2544).
type meshLab struct {
	t      *testing.T
	lab    *nslab.Lab
	router *nslab.NS
	seed   string
	nodes  map[string]*node
	n      int
}

func newMeshLab(t *testing.T) *meshLab {
	lab := newLab(t)
	r := lab.NS("inet")
	r.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	seed := filepath.Join(t.TempDir(), "seed")
	writeSecret(t, seed, cli(t, "", "genseed")+"\n")
	return &meshLab{t: t, lab: lab, router: r, seed: seed, nodes: map[string]*node{}}
}

// underlay is the address of the i-th member (1-based) on its link.
func underlay(i int) string { return fmt.Sprintf("198.18.%d.2", i) }

// overlay4 is the i-th member's IPv4 address inside the tunnel.
func overlay4(i int) string { return fmt.Sprintf("10.77.0.%d", i) }

// add creates member name in its own namespace and writes its configuration: the
// seed, its key, an IPv4 address inside the tunnel and the [discovery] section.
func (m *meshLab) add(name, discovery string) (*node, int) {
	m.n++
	i := m.n
	ns := m.lab.NS(name)
	m.lab.Link(m.router, []string{fmt.Sprintf("198.18.%d.1/24", i)}, ns, []string{underlay(i) + "/24"})
	ns.MustRun(m.t, "ip", "route", "add", "default", "via", fmt.Sprintf("198.18.%d.1", i))
	nd := newNode(m.t, ns, name)
	nd.writeConfig(nodeConf{addresses: []string{overlay4(i) + "/24"}, seedFile: m.seed, extra: discovery})
	m.nodes[name] = nd
	return nd, i
}

// discovery renders a [discovery] section that accepts the members' IPv4 addresses.
func discovery(bootstrap ...string) string {
	return fmt.Sprintf("\n[discovery]\nbootstrap = %s\naccept_prefixes = [\"10.77.0.0/24\"]\n", quoteList(bootstrap))
}

// waitMembers waits until nd knows want members, each with a key-derived address.
func waitMembers(t *testing.T, nd *node, want int) meshStatusJSON {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), meshTimeout)
	defer cancel()
	var st meshStatusJSON
	var err error
	werr := nslab.WaitFor(ctx, func() bool {
		st, err = nd.meshStatus()
		if err != nil || st.Mesh.Members < want {
			return false
		}
		n := 0
		for _, p := range st.Peers {
			if p.MeshAddress != "" {
				n++
			}
		}
		return n >= want
	})
	if werr != nil {
		t.Fatalf("%s: does not know %d members with addresses within %v: %+v (%v)", nd.name, want, meshTimeout, st, err)
	}
	return st
}

// TestMeshMembersFindEachOther is the story of docs/operations.md: five nodes, four of
// which name only the first as bootstrap and have no [[peer]] at all, find each other,
// get key-derived addresses, and talk directly; a sixth joins the same way; the
// bootstrap node is killed and nothing changes for the others, and a seventh joins
// through another member; a member that goes down is forgotten at once.
func TestMeshMembersFindEachOther(t *testing.T) {
	m := newMeshLab(t)
	boot, _ := m.add("m1", "\n[discovery]\naccept_prefixes = [\"10.77.0.0/24\"]\n")
	bootAddr := underlay(1) + fmt.Sprintf(":%d", port)
	var rest []*node
	for i := 2; i <= 5; i++ {
		nd, _ := m.add(fmt.Sprintf("m%d", i), discovery(bootAddr))
		rest = append(rest, nd)
	}
	boot.upDaemon()
	for _, nd := range rest {
		nd.upDaemon()
	}
	all := append([]*node{boot}, rest...)
	addrs := map[string]string{}
	for _, nd := range all {
		st := waitMembers(t, nd, len(all)-1)
		addrs[nd.name] = st.Mesh.Address
	}

	// Every member reaches every other on its key-derived address.
	for _, from := range all {
		for _, to := range all {
			if from != to {
				waitPing(t, from.ns, addrs[to.name])
			}
		}
	}

	// Directly: m2's path to m3 goes to m3's own underlay address, not to m1's.
	st, err := m.nodes["m2"].meshStatus()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range st.Peers {
		if p.Name == "m3" {
			if p.Path != "udp" || !strings.HasPrefix(p.Endpoint, underlay(3)+":") {
				t.Fatalf("m2's path to m3 is %q via %q, want udp direct to %s", p.Path, p.Endpoint, underlay(3))
			}
			if p.Source != "gossip" && p.Source != "handshake" {
				t.Errorf("m2 learned m3 from %q, want gossip (or its handshake)", p.Source)
			}
		}
		if p.Name == "m1" && p.Source != "bootstrap" {
			t.Errorf("m2 learned m1 from %q, want bootstrap", p.Source)
		}
	}
	if len(st.Mesh.Reflected) == 0 || !strings.HasPrefix(st.Mesh.Reflected[0].Address, underlay(2)+":") {
		t.Errorf("m2's reflected addresses %+v, want %s:…", st.Mesh.Reflected, underlay(2))
	}

	// A transfer between two non-bootstrap members over their accepted IPv4 addresses.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := nslab.Transfer(ctx, m.nodes["m2"].ns, m.nodes["m3"].ns, overlay4(3), 8<<20)
	if err != nil || !res.OK() {
		t.Fatalf("transfer m2 → m3: %v %v", res, err)
	}

	// A sixth node joins with the same three lines; nobody's configuration changes.
	m6, _ := m.add("m6", discovery(bootAddr))
	m6.upDaemon()
	all = append(all, m6)
	for _, nd := range all {
		waitMembers(t, nd, len(all)-1)
	}
	st6, _ := m6.meshStatus()
	waitPing(t, m6.ns, addrs["m4"])
	waitPing(t, m.nodes["m4"].ns, st6.Mesh.Address)

	// The bootstrap node is killed: the others keep their sessions, and a new node
	// joins through any other member.
	for _, pid := range daemonPIDs(boot.stateDir) {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill m1's daemon %d: %v", pid, err)
		}
	}
	waitPing(t, m.nodes["m2"].ns, addrs["m5"])
	waitPing(t, m.nodes["m5"].ns, addrs["m3"])
	m7, _ := m.add("m7", discovery(underlay(4)+fmt.Sprintf(":%d", port)))
	m7.upDaemon()
	st7 := waitMembers(t, m7, 5) // m2..m6 (and m1's record, until it expires)
	waitPing(t, m7.ns, addrs["m3"])
	waitPing(t, m.nodes["m3"].ns, st7.Mesh.Address)

	// A member that goes down says so: the others forget it (its peer, its routes)
	// within seconds, not after its record's 30-minute lifetime.
	m6.down()
	gone, cancelGone := context.WithTimeout(context.Background(), meshTimeout)
	defer cancelGone()
	if err := nslab.WaitFor(gone, func() bool {
		st, err := m.nodes["m3"].meshStatus()
		if err != nil {
			return false
		}
		for _, p := range st.Peers {
			if p.Name == "m6" {
				return false
			}
		}
		return true
	}); err != nil {
		st, _ := m.nodes["m3"].meshStatus()
		t.Fatalf("m3 still lists m6 %v after it went down: %+v", meshTimeout, st.Peers)
	}
}

// TestMeshNonMemberGetsNothing: a node with another seed that names a member as its
// bootstrap learns nothing and gets no session.
func TestMeshNonMemberGetsNothing(t *testing.T) {
	m := newMeshLab(t)
	boot, _ := m.add("m1", "\n[discovery]\n")
	boot.upDaemon()
	other := filepath.Join(t.TempDir(), "other-seed")
	writeSecret(t, other, cli(t, "", "genseed")+"\n")
	m.seed = other
	x, _ := m.add("x", discovery(underlay(1)+fmt.Sprintf(":%d", port)))
	x.upDaemon()
	// The outsider's handshakes are dropped by the member before any public-key work
	// (bad mac1: the MAC is keyed by the seed).
	ctx, cancel := context.WithTimeout(context.Background(), meshTimeout)
	defer cancel()
	if err := nslab.WaitFor(ctx, func() bool {
		st, err := boot.meshStatus()
		return err == nil && st.Counters["drop_bad_mac1"] > 0
	}); err != nil {
		st, _ := boot.meshStatus()
		t.Fatalf("the member counted no bad_mac1 drop from the outsider: %v", st.Counters)
	}
	if bs, _ := boot.meshStatus(); bs.Counters["handshake_dh_ops"] != 0 {
		t.Errorf("the member did %d DH operations for a non-member", bs.Counters["handshake_dh_ops"])
	}
	st, err := x.meshStatus()
	if err != nil {
		t.Fatal(err)
	}
	if st.Mesh.Members != 0 || st.Mesh.Connected != 0 {
		t.Fatalf("a non-member learned %d members (%d connected): %+v", st.Mesh.Members, st.Mesh.Connected, st.Peers)
	}
	bs, _ := boot.meshStatus()
	if bs.Mesh.Members != 0 {
		t.Fatalf("the member admitted a non-member: %+v", bs.Peers)
	}
}
