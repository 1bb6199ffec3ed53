//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/internal/nslab"
)

// natShort names the members of the matrix: two of every kind.
var natShort = map[nslab.NATKind]string{
	nslab.NATPublic: "pu", nslab.NATEasy: "ea", nslab.NATHardRandom: "hr",
	nslab.NATHardFullyRandom: "hf", nslab.NATFirewall: "fw", nslab.NATUDPBlocked: "ub",
}

// short is a path as the matrix prints it: "direct udp", "direct ws", "relay via
// relay", "none", with the reason when there is one.
func (p natPeerView) short() string {
	s := p.Path
	switch p.Path {
	case "udp", "ws":
		s = "direct " + p.Path
	case "relay":
		s = "relay via " + p.RelayVia
	}
	if p.Reason != "" {
		s += " (" + p.Reason + ")"
	}
	return s
}

// natCell is one pair of the matrix.
type natCell struct {
	a, b         *natMember
	reached      bool
	took         time.Duration // from a's first ping to the first reply
	xfer         string        // "ok, 123 MB/s", "FAILED: …", "not tried: …"
	ab, ba       natPeerView
	natA, natB   string
	pathErr      error
	wantPath     string
	transferFail bool
}

// TestNATLabMatrix (only with STT_NATLAB_MATRIX=1; scripts/nat-matrix.sh runs it) builds
// boot, relay and two members of every router kind, fourteen daemons, and for every
// pair of kinds (the first member of one, the second of the other) lets the first reach
// the second, sends 20 MiB from it with SHA-256 compared, and reads the path each end
// reports for the other and the NAT type each reports for itself. It prints the table
// (and writes it to $STT_NATLAB_TABLE when set), then asserts every cell: the transfer
// intact, the path natExpected says at both ends, the NAT type natExpectedNAT says.
func TestNATLabMatrix(t *testing.T) {
	if os.Getenv("STT_NATLAB_MATRIX") != "1" {
		t.Skip("set STT_NATLAB_MATRIX=1 to run the NAT matrix (fourteen daemons, a few minutes; scripts/nat-matrix.sh)")
	}
	started := time.Now()
	nl := newNATLab(t)
	first := map[nslab.NATKind]*natMember{}
	second := map[nslab.NATKind]*natMember{}
	for _, k := range nslab.NATKinds {
		first[k] = nl.add(natShort[k]+"1", k, 1)
		second[k] = nl.add(natShort[k]+"2", k, 1)
	}
	nl.start(nl.members...)
	all := append([]*natMember{nl.boot, nl.relay}, nl.members...)
	nl.waitKnown(len(all)-1, all...)

	var cells []*natCell
	kinds := nslab.NATKinds
	for i := range kinds {
		for j := i; j < len(kinds); j++ {
			path, _ := natExpected(kinds[i], kinds[j])
			cells = append(cells, &natCell{a: first[kinds[i]], b: second[kinds[j]], wantPath: path})
		}
	}
	// Reach, all pairs at once: as a member wanting several others at a time would.
	var wg sync.WaitGroup
	for _, c := range cells {
		wg.Add(1)
		go func(c *natCell) {
			defer wg.Done()
			took, err := natReachTimed(c.a, c.b)
			c.reached, c.took = err == nil, took
		}(c)
	}
	wg.Wait()
	// Transfer, one pair at a time, and read the paths after it.
	for _, c := range cells {
		if c.reached {
			rate, err := natTransfer(c.a, c.b, nil)
			if err != nil {
				c.xfer, c.transferFail = "FAILED: "+err.Error(), true
			} else {
				c.xfer = fmt.Sprintf("ok, %.0f MB/s", rate)
			}
		} else {
			c.xfer, c.transferFail = "not tried: no ping answered", true
		}
		c.ab, c.ba = pathTo(c.a.nd, c.b.name), pathTo(c.b.nd, c.a.name)
		for _, x := range []struct {
			mb  *natMember
			out *string
		}{{c.a, &c.natA}, {c.b, &c.natB}} {
			v, err := x.mb.nd.natView()
			*x.out = v.NAT
			if err != nil {
				*x.out = "error: " + err.Error()
			}
		}
		c.pathErr = checkNATPath(nl, c.a, c.b)
	}

	var tb strings.Builder
	fmt.Fprintf(&tb, "Traffic: one-sided, only A sends first. %d MiB from A to B per pair, SHA-256 compared. %s.\n\n", natXferSize>>20, time.Since(started).Round(time.Second))
	tb.WriteString("| A | B | expected | A's path to B | B's path to A | first reply | 20 MiB A → B | NAT reported (A / B) | as expected |\n")
	tb.WriteString("|---|---|---|---|---|---|---|---|---|\n")
	for _, c := range cells {
		want := c.wantPath
		if want == "udp" {
			want = "direct udp"
		} else if c.a.kind == nslab.NATUDPBlocked || c.b.kind == nslab.NATUDPBlocked {
			want = "relay (ws leg)"
		}
		verdict := "yes"
		if c.transferFail || c.pathErr != nil {
			verdict = "no"
		}
		xfer := c.xfer
		if len(xfer) > 60 {
			xfer = xfer[:60] + "…"
		}
		took := "-"
		if c.reached {
			took = c.took.Round(time.Millisecond).String()
		}
		fmt.Fprintf(&tb, "| %s (%s) | %s (%s) | %s | %s | %s | %s | %s | %s / %s | %s |\n",
			c.a.name, c.a.kind, c.b.name, c.b.kind, want, c.ab.short(), c.ba.short(), took, xfer, c.natA, c.natB, verdict)
	}
	t.Logf("NAT matrix:\n%s", tb.String())
	if f := os.Getenv("STT_NATLAB_TABLE"); f != "" {
		if err := os.WriteFile(f, []byte(tb.String()), 0o644); err != nil {
			t.Error(err)
		}
	}
	for _, c := range cells {
		if c.transferFail {
			t.Errorf("%s (%s) → %s (%s): %s", c.a.name, c.a.kind, c.b.name, c.b.kind, c.xfer)
		}
		if c.pathErr != nil {
			t.Errorf("%s (%s) ↔ %s (%s): %v", c.a.name, c.a.kind, c.b.name, c.b.kind, c.pathErr)
		}
	}
	for _, mb := range nl.members {
		if err := checkNAT(mb); err != nil {
			t.Error(err)
		}
	}
}
