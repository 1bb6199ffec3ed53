//go:build e2e

package e2e

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/internal/ctl"
	"github.com/stt-tun/stt-tun/internal/nslab"
	"github.com/stt-tun/stt-tun/stt/mesh"
)

// obeyTimeout is the target of issue 15: every online member obeys a revocation
// within a minute.
const obeyTimeout = 60 * time.Second

// revocationJSON is the part of `status --json` a revocation shows in.
type revocationJSON struct {
	Mesh *struct {
		NetworkID string   `json:"network_id"`
		Admins    []string `json:"admins"`
		Revoked   []struct {
			Key    string `json:"key"`
			Name   string `json:"name"`
			By     string `json:"by"`
			Issued string `json:"issued"`
		} `json:"revoked"`
		Statements int `json:"statements"`
	} `json:"mesh"`
	Peers []struct {
		Name      string `json:"name"`
		PublicKey string `json:"public_key"`
		Path      string `json:"path"`
	} `json:"peers"`
	Counters map[string]uint64 `json:"counters"`
}

func (n *node) revocationStatus() (revocationJSON, error) {
	var st revocationJSON
	r := n.stt("status", "--json", linkName)
	if r.err != nil {
		return st, fmt.Errorf("status: %v: %s", r.err, strings.TrimSpace(r.stderr))
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || st.Mesh == nil {
		return st, fmt.Errorf("status --json: %v in %q", err, r.stdout)
	}
	return st, nil
}

// obeys reports whether nd holds a revocation of key and has no peer (so no session)
// with that key.
func (n *node) obeys(key string) bool {
	st, err := n.revocationStatus()
	if err != nil {
		return false
	}
	revoked := false
	for _, r := range st.Mesh.Revoked {
		revoked = revoked || r.Key == key
	}
	for _, p := range st.Peers {
		if p.PublicKey == key && p.Path != "none" {
			return false
		}
	}
	return revoked
}

// adminLab is a mesh lab whose members list one admin key; the admin key file is
// written next to the first member's files, as an administrator working on it would.
type adminLab struct {
	*meshLab
	adminKey  string // the key file
	adminPub  string
	adminPriv ed25519.PrivateKey
}

func newAdminLab(t *testing.T) *adminLab {
	m := newMeshLab(t)
	key := filepath.Join(t.TempDir(), "admin.key")
	writeSecret(t, key, cli(t, "", "admin", "genkey")+"\n")
	text, err := os.ReadFile(key)
	if err != nil {
		t.Fatal(err)
	}
	nk, err := config.DecodeNodeKey(string(text))
	if err != nil {
		t.Fatal(err)
	}
	return &adminLab{meshLab: m, adminKey: key, adminPub: cli(t, string(text), "admin", "pubkey"),
		adminPriv: ed25519.NewKeyFromSeed(nk.Ed25519Seed[:])}
}

func (a *adminLab) membership() string {
	return fmt.Sprintf("\n[membership]\nadmins = [%q]\n", a.adminPub)
}

// members starts n members, m1 the bootstrap of the others, all listing the admin key,
// and waits until each knows all the others.
func (a *adminLab) members(n int) []*node {
	a.t.Helper()
	boot, _ := a.add("m1", "\n[discovery]\naccept_prefixes = [\"10.77.0.0/24\"]\n"+a.membership())
	bootAddr := underlay(1) + fmt.Sprintf(":%d", port)
	nodes := []*node{boot}
	for i := 2; i <= n; i++ {
		nd, _ := a.add(fmt.Sprintf("m%d", i), discovery(bootAddr)+a.membership())
		nodes = append(nodes, nd)
	}
	var wg sync.WaitGroup
	for _, nd := range nodes {
		nd.upDaemon()
	}
	for _, nd := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			waitMembersQuiet(a.t, nd, n-1)
		}()
	}
	wg.Wait()
	if a.t.Failed() {
		a.t.FailNow()
	}
	return nodes
}

// waitMembersQuiet is waitMembers for a goroutine: it reports with Errorf.
func waitMembersQuiet(t *testing.T, nd *node, want int) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*meshTimeout)
	defer cancel()
	if err := nslab.WaitFor(ctx, func() bool {
		st, err := nd.meshStatus()
		return err == nil && st.Mesh.Members >= want
	}); err != nil {
		st, _ := nd.meshStatus()
		t.Errorf("%s: does not know %d members: %+v", nd.name, want, st.Mesh)
	}
}

// waitObeyed waits until every node of others obeys the revocation of key and returns
// how long the slowest took after start.
func waitObeyed(t *testing.T, others []*node, key string, start time.Time) time.Duration {
	t.Helper()
	var mu sync.Mutex
	var slowest time.Duration
	var wg sync.WaitGroup
	for _, nd := range others {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithDeadline(context.Background(), start.Add(obeyTimeout))
			defer cancel()
			if err := nslab.WaitFor(ctx, func() bool { return nd.obeys(key) }); err != nil {
				st, _ := nd.revocationStatus()
				t.Errorf("%s does not obey the revocation within %v: %+v %+v", nd.name, obeyTimeout, st.Mesh, st.Peers)
				return
			}
			mu.Lock()
			slowest = max(slowest, time.Since(start))
			mu.Unlock()
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	return slowest
}

var pingSummaryRE = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// TestRevocationLocksOutAMember: five members and an admin. The admin revokes m5 with
// `stt-tun revoke` on m1 while m1..m4 ping each other: within a minute no member has a
// session with m5 and each ping stream loses at most one echo; m5's traffic is refused
// and counted; a restarted member still refuses m5 from the start; statements signed
// by a key that is not an admin, replayed or older are dropped and counted, and not
// passed on.
func TestRevocationLocksOutAMember(t *testing.T) {
	a := newAdminLab(t)
	nodes := a.members(5)
	victim := nodes[4]
	others := nodes[:4]
	victimKey := victim.publicKey()
	// Sessions between everyone and the victim first: it is a member in good standing.
	for i, nd := range others {
		waitPing(t, nd.ns, overlay4(5))
		waitPing(t, victim.ns, overlay4(i+1))
	}

	// Each of m1..m4 pings the next one, 30 s at 5 a second, across the revocation.
	type stream struct {
		from, to string
		out      string
	}
	streams := make([]*stream, len(others))
	var wg sync.WaitGroup
	for i, nd := range others {
		j := (i + 1) % len(others)
		s := &stream{from: nd.name, to: others[j].name}
		streams[i] = s
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.out, _ = nd.ns.Run("ping", "-n", "-q", "-c", "150", "-i", "0.2", "-W", "1", overlay4(j+1))
		}()
	}
	// Let the streams run before the revocation.
	settle, cancelSettle := context.WithTimeout(context.Background(), 3*time.Second)
	<-settle.Done()
	cancelSettle()

	start := time.Now()
	out := others[0].mustStt("revoke", "--admin-key", a.adminKey, "m5")
	if !strings.Contains(out, "revoked m5 ("+victimKey+")") {
		t.Fatalf("revoke printed %q", out)
	}
	took := waitObeyed(t, others, victimKey, start)
	t.Logf("time to obey (5 members): %v", took.Round(10*time.Millisecond))

	wg.Wait()
	for _, s := range streams {
		m := pingSummaryRE.FindStringSubmatch(s.out)
		if m == nil {
			t.Fatalf("ping %s → %s: no summary in %q", s.from, s.to, s.out)
		}
		sent, _ := strconv.Atoi(m[1])
		got, _ := strconv.Atoi(m[2])
		if sent-got > 1 {
			t.Errorf("ping %s → %s lost %d of %d echoes across the revocation", s.from, s.to, sent-got, sent)
		}
	}

	// m5 is refused: its traffic gets no session, and the members count its tries.
	if err := victim.ns.Ping(overlay4(2)); err == nil {
		t.Fatal("the revoked member still reaches m2")
	}
	refusals, cancelRefusals := context.WithTimeout(context.Background(), reachTimeout)
	var total uint64
	err := nslab.WaitFor(refusals, func() bool {
		total = 0
		for _, nd := range others {
			st, _ := nd.revocationStatus()
			total += st.Counters["drop_revoked"]
		}
		return total > 0
	})
	cancelRefusals()
	if err != nil {
		t.Fatal("no member counted a handshake of the revoked member as revoked")
	}

	// A restarted member refuses m5 from its first packet, from its saved statements:
	// it comes up cut off from every member (no default route), so that nobody can
	// tell it again.
	m3 := nodes[2]
	m3.down()
	m3.ns.MustRun(t, "ip", "route", "del", "default")
	m3.upDaemon()
	if !m3.obeys(victimKey) {
		st, _ := m3.revocationStatus()
		t.Fatalf("m3 does not hold the revocation right after a restart: %+v", st.Mesh)
	}
	m3.ns.MustRun(t, "ip", "route", "add", "default", "via", "198.18.3.1")
	if err := victim.ns.Ping(overlay4(3)); err == nil {
		t.Fatal("the revoked member reaches m3 after its restart")
	}
	if !m3.obeys(victimKey) {
		t.Fatal("m3 let m5 in after a restart")
	}

	// Statements that are forged, replayed or older: dropped, counted, not passed on.
	st, err := nodes[0].revocationStatus()
	if err != nil {
		t.Fatal(err)
	}
	idb, _ := hex.DecodeString(st.Mesh.NetworkID)
	netID := [16]byte(idb)
	target := [32]byte{0xee, 0x15}
	sign := func(priv ed25519.PrivateKey, issued time.Time) []byte {
		s := mesh.Statement{Kind: mesh.StatementRevoke, Issued: uint64(issued.UnixNano()), Revoke: &mesh.Revocation{Target: target}}
		raw, err := s.Marshal(priv, netID)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	_, notAdmin, _ := ed25519.GenerateKey(nil)
	now := time.Now()
	genuine := sign(a.adminPriv, now)
	sock := ctl.SocketPath(nodes[0].stateDir, linkName)
	for _, c := range []struct {
		raw  []byte
		want string
	}{
		{sign(notAdmin, now), mesh.ReasonUnknownAdmin},
		{genuine, mesh.ReasonAccepted},
		{genuine, mesh.ReasonStale},
		{sign(a.adminPriv, now.Add(-time.Hour)), mesh.ReasonStale},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		r, err := ctl.Statement(ctx, sock, c.raw)
		cancel()
		reason := r.Reason
		if r.Accepted {
			reason = mesh.ReasonAccepted
		}
		if err != nil || reason != c.want {
			t.Fatalf("statement to m1: %+v %v, want %s", r, err, c.want)
		}
	}
	waitCounter(t, nodes[0], "mesh_statement_unknown_admin", 1)
	waitCounter(t, nodes[0], "mesh_statement_stale", 2)
	targetKey := base64.StdEncoding.EncodeToString(target[:])
	for _, nd := range others[1:] {
		ctx, cancel := context.WithTimeout(context.Background(), obeyTimeout)
		err := nslab.WaitFor(ctx, func() bool {
			st, err := nd.revocationStatus()
			if err != nil {
				return false
			}
			for _, r := range st.Mesh.Revoked {
				if r.Key == targetKey {
					return true
				}
			}
			return false
		})
		cancel()
		if err != nil {
			t.Fatalf("%s did not get the genuine statement", nd.name)
		}
		if st, _ := nd.revocationStatus(); st.Counters["mesh_statement_unknown_admin"] != 0 {
			t.Fatalf("%s saw the forged statement: m1 passed it on", nd.name)
		}
	}
}

// waitCounter waits until nd's counter name reaches at least want.
func waitCounter(t *testing.T, nd *node, name string, want uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), reachTimeout)
	defer cancel()
	var got uint64
	if err := nslab.WaitFor(ctx, func() bool {
		st, err := nd.revocationStatus()
		got = st.Counters[name]
		return err == nil && got >= want
	}); err != nil {
		t.Fatalf("%s: counter %s is %d, want ≥ %d", nd.name, name, got, want)
	}
}

// TestRevokeRefusedWithoutAdmins: on a daemon without [membership] admins, revoke fails
// with one line and sends nothing.
func TestRevokeRefusedWithoutAdmins(t *testing.T) {
	a := newAdminLab(t)
	boot, _ := a.add("m1", "\n[discovery]\naccept_prefixes = [\"10.77.0.0/24\"]\n")
	m2, _ := a.add("m2", discovery(underlay(1)+fmt.Sprintf(":%d", port)))
	boot.upDaemon()
	m2.upDaemon()
	waitMembers(t, boot, 1)
	r := boot.stt("revoke", "--admin-key", a.adminKey, "m2")
	if r.err == nil || r.stdout != "" || strings.Count(r.stderr, "\n") != 1 ||
		!strings.Contains(r.stderr, "stt0 has no [membership] admins") {
		t.Fatalf("revoke without admins: %v\nstdout %q\nstderr %q", r.err, r.stdout, r.stderr)
	}
	st, err := boot.revocationStatus()
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range st.Counters {
		if strings.HasPrefix(k, "mesh_statement_") && v != 0 {
			t.Fatalf("something was sent: %s = %d", k, v)
		}
	}
}

// TestRevocationTimeToObeyTenNodes measures, in a lab of ten members, how long after
// `revoke` returns (run on m9, a member other than the bootstrap) every other member
// has dropped the revoked one: the figure of issue 15's note. It fails only past the
// one-minute target.
func TestRevocationTimeToObeyTenNodes(t *testing.T) {
	t.Parallel() // mostly waiting (convergence, overlaps): runs beside the other long labs
	a := newAdminLab(t)
	nodes := a.members(10)
	victim := nodes[9]
	key := victim.publicKey()
	start := time.Now()
	nodes[8].mustStt("revoke", "--admin-key", a.adminKey, key)
	took := waitObeyed(t, nodes[:9], key, start)
	t.Logf("time to obey (10 members): %v", took.Round(10*time.Millisecond))
}
