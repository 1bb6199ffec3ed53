//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/internal/nslab"
)

// seedStatus is the part of `status --json` a seed rotation changes.
type seedStatus struct {
	Seed *struct {
		ID     string    `json:"id"`
		NextID string    `json:"next_id"`
		From   time.Time `json:"from"`
		Until  time.Time `json:"until"`
	} `json:"seed"`
	Peers []struct {
		Name string `json:"name"`
		Seed string `json:"seed"`
	} `json:"peers"`
	Counters map[string]uint64 `json:"counters"`
}

func (n *node) seedStatus() seedStatus {
	n.t.Helper()
	var st seedStatus
	if err := json.Unmarshal([]byte(n.mustStt("status", "--json", linkName)), &st); err != nil {
		n.t.Fatal(err)
	}
	if st.Seed == nil {
		n.t.Fatalf("%s: status has no seed", n.name)
	}
	return st
}

func (s seedStatus) peerSeed(name string) string {
	for _, p := range s.Peers {
		if p.Name == name {
			return p.Seed
		}
	}
	return ""
}

// TestSeedRotationByHand follows configuration.md's rotation by hand: `genseed
// --next-of` plans a next seed, the file is copied to alpha and beta and each is
// reloaded while a TCP transfer between them runs and alpha pings beta every 50 ms.
// From `from` on their session moves to the next seed by a rekey: the transfer's
// SHA-256 matches, not one echo is lost, no session is closed. After `until` only the
// next seed is held, and gamma, which has the old seed alone, cannot join: its
// handshakes count as bad_mac1 at alpha.
func TestSeedRotationByHand(t *testing.T) {
	t.Parallel()
	lab := newLab(t)
	nsA, nsB, nsC := lab.NS("a"), lab.NS("b"), lab.NS("c")
	lab.Link(nsA, underA, nsB, underB)
	lab.Link(nsA, []string{"10.232.0.1/24"}, nsC, []string{"10.232.0.3/24"})
	a, b, c := newNode(t, nsA, "alpha"), newNode(t, nsB, "beta"), newNode(t, nsC, "gamma")
	// Each node has its own copy of the seed file, as on separate machines.
	orig := cli(t, "", "genseed") + "\n"
	for _, n := range []*node{a, b, c} {
		writeSecret(t, filepath.Join(n.dir, "seed"), orig)
	}
	a.writeConfig(nodeConf{addresses: tunA, seedFile: filepath.Join(a.dir, "seed"), peers: []peerConf{
		{name: "beta", endpoint: endpointB, allowed: allowB},
		{name: "gamma", endpoint: "10.232.0.3:51900", allowed: []string{"10.99.0.3/32"}},
	}})
	b.writeConfig(nodeConf{addresses: tunB, seedFile: filepath.Join(b.dir, "seed"), peers: []peerConf{{name: "alpha", allowed: allowA}}})
	c.writeConfig(nodeConf{addresses: []string{"10.99.0.3/24"}, seedFile: filepath.Join(c.dir, "seed"), peers: []peerConf{
		{name: "alpha", endpoint: "10.232.0.1:51900", allowed: allowA},
	}})
	a.startForeground()
	b.startForeground()
	waitPing(t, nsA, "10.99.0.2")
	cur := a.seedStatus().Seed.ID
	if b.seedStatus().Seed.ID != cur || a.seedStatus().peerSeed("beta") != cur {
		t.Fatalf("before the rotation: alpha %+v, beta %+v", a.seedStatus().Seed, b.seedStatus().Seed)
	}

	// The plan: the next seed from 10 s on, the old one accepted 50 s more (more than
	// the 30 s the sessions take to move).
	plan := cli(t, "", "genseed", "--next-of", filepath.Join(a.dir, "seed"), "--from", "+10s", "--overlap", "50s") + "\n"
	if !strings.Contains(plan, "\nnetwork ") || !strings.Contains(plan, "\nnext ") {
		t.Fatalf("genseed --next-of printed no network or next line")
	}

	pings := 1200 // 60 s at 50 ms
	pinger := nsA.Start("ping", "-n", "-i", "0.05", "-c", "1200", "-W", "1", "10.99.0.2")
	var next string
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := nslab.TransferMid(ctx, nsA, nsB, "10.99.0.2", 20<<20, func() error {
		for _, n := range []*node{a, b} {
			writeSecret(t, filepath.Join(n.dir, "seed"), plan)
			out := n.mustStt("reload", linkName)
			if !strings.Contains(out, "seed file: next seed ") {
				t.Errorf("%s: reload printed %q", n.name, out)
			}
		}
		st := a.seedStatus()
		next = st.Seed.NextID
		if st.Seed.ID != cur || next == "" || next == cur || time.Until(st.Seed.From) <= 0 {
			t.Errorf("after the reload, before from: %+v", st.Seed)
		}
		// While the big transfer waits here, smaller ones go the other way back to back,
		// so that TCP data is in flight at the moment of each rekey.
		stop := make(chan struct{})
		small := make(chan error, 1)
		go func() {
			n := 0
			for {
				select {
				case <-stop:
					t.Logf("%d transfers beta -> alpha across the move, sha256 ok", n)
					small <- nil
					return
				case <-time.After(250 * time.Millisecond):
				}
				r, err := nslab.Transfer(ctx, nsB, nsA, "10.99.0.1", 2<<20)
				if err != nil || !r.OK() {
					small <- fmt.Errorf("transfer %d beta -> alpha: %v (%v)", n, err, r)
					return
				}
				n++
			}
		}()
		// The sessions move within 30 s of from.
		wait, done := context.WithTimeout(ctx, 90*time.Second)
		defer done()
		err := nslab.WaitFor(wait, func() bool {
			return a.seedStatus().peerSeed("beta") == next && b.seedStatus().peerSeed("alpha") == next
		})
		close(stop)
		if serr := <-small; serr != nil {
			return serr
		}
		return err
	})
	if err != nil || !res.OK() {
		t.Fatalf("transfer across the rotation: %v (%v)", err, res)
	}
	if err := pinger.Wait(); err != nil {
		t.Fatalf("ping across the rotation: %v\n%s", err, pinger.Output())
	}
	if m := regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`).FindStringSubmatch(pinger.Output()); m == nil || m[2] != m[1] {
		t.Errorf("echoes lost across the rotation (%d sent):\n%s", pings, reloadTail(pinger.Output(), 400))
	}
	for _, n := range []*node{a, b} {
		st := n.seedStatus()
		if st.Counters["seed_sessions_closed"] != 0 || st.Counters["drop_no_session"] != 0 {
			t.Errorf("%s: the rotation closed a session: %v closed, %v packets without a session",
				n.name, st.Counters["seed_sessions_closed"], st.Counters["drop_no_session"])
		}
	}
	if a.seedStatus().Counters["seed_rekeys"]+b.seedStatus().Counters["seed_rekeys"] == 0 {
		t.Error("no seed rekey: the sessions moved another way")
	}

	// After until: the next seed alone.
	wait, done := context.WithTimeout(context.Background(), 90*time.Second)
	defer done()
	if err := nslab.WaitFor(wait, func() bool { s := a.seedStatus().Seed; return s.NextID == "" && s.ID == next }); err != nil {
		t.Fatalf("alpha still in the rotation after until: %+v", a.seedStatus().Seed)
	}
	waitPing(t, nsA, "10.99.0.2")
	if out := a.mustStt("status", linkName); !strings.Contains(out, "  seed: "+next+"\n") {
		t.Errorf("status after the rotation:\n%s", out)
	}

	// gamma, with the old seed only, cannot join: its HELLOs fail mac1 at alpha.
	bad := a.seedStatus().Counters["drop_bad_mac1"]
	c.startForeground()
	pingC := nsC.Start("ping", "-n", "-i", "0.5", "-c", "20", "-W", "1", "10.99.0.1")
	wait2, done2 := context.WithTimeout(context.Background(), 30*time.Second)
	defer done2()
	if err := nslab.WaitFor(wait2, func() bool { return a.seedStatus().Counters["drop_bad_mac1"] >= bad+2 }); err != nil {
		t.Fatalf("gamma's handshakes not counted as bad_mac1 at alpha: %d, was %d", a.seedStatus().Counters["drop_bad_mac1"], bad)
	}
	_ = pingC.Wait()
	if m := regexp.MustCompile(`(\d+) received`).FindStringSubmatch(pingC.Output()); m == nil || m[1] != "0" {
		t.Errorf("gamma, holding the old seed alone, reached alpha:\n%s", pingC.Output())
	}
	if s := c.seedStatus().peerSeed("alpha"); s != "" {
		t.Errorf("gamma has a session with alpha under %s", s)
	}
	// gamma's file still names the old seed: nothing about it changed.
	if b, _ := os.ReadFile(filepath.Join(c.dir, "seed")); string(b) != orig {
		t.Error("gamma's seed file changed")
	}
}
