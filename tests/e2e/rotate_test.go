//go:build e2e

package e2e

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

// rotationJSON is what the seed rotation shows in `status --json`, decoded on its own so
// that a renamed field fails here.
type rotationJSON struct {
	Seed *struct {
		ID     string    `json:"id"`
		NextID string    `json:"next_id"`
		From   time.Time `json:"from"`
		Until  time.Time `json:"until"`
	} `json:"seed"`
	Peers []struct {
		Name      string `json:"name"`
		PublicKey string `json:"public_key"`
		Path      string `json:"path"`
		Seed      string `json:"seed"`
	} `json:"peers"`
	Mesh *struct {
		Connected int `json:"connected"`
	} `json:"mesh"`
	Counters map[string]uint64 `json:"counters"`
}

func (n *node) rotationStatus() (rotationJSON, error) {
	var st rotationJSON
	r := n.stt("status", "--json", linkName)
	if r.err != nil {
		return st, fmt.Errorf("status: %v: %s", r.err, strings.TrimSpace(r.stderr))
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		return st, fmt.Errorf("status --json: %v in %q", err, r.stdout)
	}
	return st, nil
}

// rotLab is a mesh lab whose members each have their own copy of the seed file (a
// rotation rewrites it) and obey the admin key adminPub.
type rotLab struct {
	*meshLab
	adminKey string // the admin's key file, on m1
	adminPub string
}

func newRotLab(t *testing.T, admins bool) *rotLab {
	m := &rotLab{meshLab: newMeshLab(t)}
	m.adminKey = filepath.Join(t.TempDir(), "admin.key")
	key := cli(t, "", "admin", "genkey")
	writeSecret(t, m.adminKey, key+"\n")
	if admins {
		m.adminPub = cli(t, key+"\n", "admin", "pubkey")
	}
	return m
}

// add creates member name with its own seed file, a copy of the network's.
func (m *rotLab) add(name string, bootstrap ...string) *node {
	disc := discovery(bootstrap...)
	if len(bootstrap) == 0 {
		disc = "\n[discovery]\naccept_prefixes = [\"10.77.0.0/24\"]\n"
	}
	if m.adminPub != "" {
		disc += fmt.Sprintf("\n[membership]\nadmins = [%q]\n", m.adminPub)
	}
	nd, i := m.meshLab.add(name, disc)
	seed, err := os.ReadFile(m.seed)
	if err != nil {
		m.t.Fatal(err)
	}
	own := filepath.Join(nd.dir, "seed")
	writeSecret(m.t, own, string(seed))
	nd.writeConfig(nodeConf{addresses: []string{overlay4(i) + "/24"}, seedFile: own, extra: disc})
	return nd
}

// waitAll polls cond on every node until it holds for all, or fails with what.
func waitAll(t *testing.T, what string, d time.Duration, nodes []*node, cond func(*node, rotationJSON) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var last map[string]rotationJSON
	if err := nslab.WaitFor(ctx, func() bool {
		last = map[string]rotationJSON{}
		ok := true
		for _, nd := range nodes {
			st, err := nd.rotationStatus()
			last[nd.name] = st
			if err != nil || !cond(nd, st) {
				ok = false
			}
		}
		return ok
	}); err != nil {
		t.Fatalf("%s: not within %v: %+v", what, d, last)
	}
}

// hasSessionWith says whether st shows a session with the member whose key is key.
func hasSessionWith(st rotationJSON, key string) bool {
	for _, p := range st.Peers {
		if p.PublicKey == key && p.Path != "none" && p.Path != "" {
			return true
		}
	}
	return false
}

// TestSeedRotationExcludesTheRevokedWithoutTeardown is issue 15's story: five members
// and an admin key; one member is revoked, then the seed is rotated excluding it while
// a 20 MB TCP transfer runs between two others. The transfer arrives intact, no session
// among the remaining members is torn down (none is closed for its seed, none comes up
// fresh), every remaining member ends on the new seed, and the revoked node, back with a
// fresh key and the old seed, cannot join.
func TestSeedRotationExcludesTheRevokedWithoutTeardown(t *testing.T) {
	t.Parallel() // mostly waiting (convergence, overlaps): runs beside the other long labs
	m := newRotLab(t, true)
	m1 := m.add("m1")
	boot := underlay(1) + fmt.Sprintf(":%d", port)
	nodes := []*node{m1}
	for i := 2; i <= 5; i++ {
		nodes = append(nodes, m.add(fmt.Sprintf("m%d", i), boot))
	}
	for _, nd := range nodes {
		nd.upDaemon()
	}
	for _, nd := range nodes {
		waitMembers(t, nd, len(nodes)-1)
	}
	m2, m3, m5 := nodes[1], nodes[2], nodes[4]
	remaining := nodes[:4]
	m5Key := m5.publicKey()

	// Revoke m5: within a minute no member has a session with it.
	m1.mustStt("revoke", "--admin-key", m.adminKey, "-I", linkName, "m5")
	waitAll(t, "no member has a session with the revoked m5", 60*time.Second, remaining, func(_ *node, st rotationJSON) bool {
		return !hasSessionWith(st, m5Key)
	})

	// The transfer, paced over 25 s so that it is in flight during the switch; the
	// rotation starts once it runs.
	before := map[string]rotationJSON{}
	for _, nd := range remaining {
		st, err := nd.rotationStatus()
		if err != nil {
			t.Fatal(err)
		}
		before[nd.name] = st
	}
	type transferResult struct {
		res nslab.TransferResult
		err error
	}
	done := make(chan transferResult, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		res, err := pacedTransfer(ctx, m2.ns, m3.ns, overlay4(3), 20<<20, 25*time.Second)
		done <- transferResult{res, err}
	}()
	out := m1.mustStt("seed", "rotate", "--admin-key", m.adminKey, "-I", linkName, "--exclude", "m5", "--from", "+3s", "--overlap", "45s")
	if !strings.Contains(out, "excluded: m5") {
		t.Errorf("seed rotate does not say it excluded m5:\n%s", out)
	}
	// Every remaining member stages the next seed (the node that rotated, at once).
	rotated := time.Now()
	var nextID string
	waitAll(t, "every remaining member stages the next seed", 15*time.Second, remaining, func(nd *node, st rotationJSON) bool {
		if st.Seed == nil || st.Seed.NextID == "" {
			return false
		}
		if nd == m1 {
			nextID = st.Seed.NextID
		}
		return nextID == "" || st.Seed.NextID == nextID
	})
	t.Logf("every remaining member staged the next seed within %v of seed rotate returning", time.Since(rotated).Round(time.Millisecond))
	// m5 is not given it.
	if st, err := m5.rotationStatus(); err == nil && st.Seed != nil && st.Seed.NextID != "" {
		t.Errorf("the excluded m5 staged a next seed: %+v", st.Seed)
	}

	r := <-done
	if r.err != nil || !r.res.OK() {
		t.Fatalf("transfer m2 → m3 during the rotation: %v %v", r.res, r.err)
	}
	// After until, every remaining member is on the next seed alone.
	waitAll(t, "every remaining member is on the next seed", 45*time.Second, remaining, func(_ *node, st rotationJSON) bool {
		return st.Seed != nil && st.Seed.ID == nextID && time.Now().After(st.Seed.Until)
	})
	for _, nd := range remaining {
		for _, other := range remaining {
			if nd != other {
				waitPing(t, nd.ns, overlay4(indexOf(nodes, other)+1))
			}
		}
	}
	// No session among them was torn down for the rotation: the sessions moved to the
	// next seed by rekeys, none was closed for its seed, and m2's session with m3 (the
	// transfer's) is under the next seed.
	var rekeys uint64
	for _, nd := range remaining {
		st, err := nd.rotationStatus()
		if err != nil {
			t.Fatal(err)
		}
		if n := st.Counters["seed_sessions_closed"]; n != 0 {
			t.Errorf("%s closed %d sessions for their seed: a teardown, not a move", nd.name, n)
		}
		rekeys += st.Counters["seed_rekeys"]
		if nd == m2 {
			for _, p := range st.Peers {
				if p.Name == "m3" && p.Seed != nextID {
					t.Errorf("m2's session with m3 is under seed %q, want the next %q", p.Seed, nextID)
				}
			}
		}
	}
	if rekeys == 0 {
		t.Error("no session was rekeyed to the next seed: the rotation moved nothing")
	}

	// The revoked node comes back with a fresh key and the old seed: it cannot join. Its
	// handshakes die at mac1 on the members (drop_bad_mac1), and no one has a session
	// with it.
	m5.down()
	writeSecret(t, m5.keyPath, cli(t, "", "genkey")+"\n")
	freshKey := m5.publicKey()
	bad := map[string]uint64{}
	for _, nd := range remaining {
		st, _ := nd.rotationStatus()
		bad[nd.name] = st.Counters["drop_bad_mac1"]
	}
	m5.upDaemon()
	waitAll(t, "m1 drops the fresh key's handshakes at mac1", 30*time.Second, []*node{m1}, func(nd *node, st rotationJSON) bool {
		return st.Counters["drop_bad_mac1"] > bad[nd.name]
	})
	for _, nd := range remaining {
		st, err := nd.rotationStatus()
		if err != nil {
			t.Fatal(err)
		}
		if hasSessionWith(st, freshKey) {
			t.Errorf("%s has a session with the revoked node under its fresh key", nd.name)
		}
	}
	if st, err := m5.rotationStatus(); err != nil || st.Mesh == nil || st.Mesh.Connected != 0 {
		t.Errorf("the revoked node, back with a fresh key, is connected: %+v %v", st.Mesh, err)
	}
}

// TestSeedRotateRefusedWithoutAdmins: on a network whose members list no admins,
// `seed rotate` and `revoke` are refused with one line each, and nothing changes.
func TestSeedRotateRefusedWithoutAdmins(t *testing.T) {
	m := newRotLab(t, false)
	m1 := m.add("m1")
	m2 := m.add("m2", underlay(1)+fmt.Sprintf(":%d", port))
	m1.upDaemon()
	m2.upDaemon()
	waitMembers(t, m1, 1)
	for _, args := range [][]string{
		{"seed", "rotate", "--admin-key", m.adminKey, "-I", linkName},
		{"revoke", "--admin-key", m.adminKey, "-I", linkName, "m2"},
	} {
		r := m1.stt(args...)
		if r.err == nil {
			t.Fatalf("stt-tun %s succeeded without admins:\n%s", strings.Join(args, " "), r.stdout)
		}
		line := strings.TrimSpace(r.stderr)
		if strings.Count(line, "\n") != 0 || !strings.Contains(line, "no [membership] admins") {
			t.Errorf("stt-tun %s: stderr %q, want one line saying there are no admins", args[0], r.stderr)
		}
	}
	st, err := m1.rotationStatus()
	if err != nil || st.Seed == nil || st.Seed.NextID != "" {
		t.Errorf("m1 staged a next seed without admins: %+v %v", st.Seed, err)
	}
}

func indexOf(nodes []*node, nd *node) int {
	for i, n := range nodes {
		if n == nd {
			return i
		}
	}
	return -1
}
