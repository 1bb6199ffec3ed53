package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/internal/status"
)

// thousandPeers is an interface with 1000 peers: every 100th (peer0099, peer0199, ...)
// has a session, over UDP but peer0499 over WebSocket; peer0500 refuses this node,
// peer0600 had a session that ended; the others never had one.
func thousandPeers() status.Status {
	st := status.Status{
		State: status.StateUp, Interface: "stt7", NodeName: "hub", ListenPort: 51900, MTU: 1420,
		Counters: map[string]uint64{"handshakes_completed": 10},
	}
	for i := range 1000 {
		p := status.Peer{Name: fmt.Sprintf("peer%04d", i), Path: "none"}
		switch {
		case i == 499:
			p.Path, p.Endpoint, p.LastHandshake = "ws", "192.0.2.1:443", sampleNow().Add(-time.Minute)
		case i%100 == 99:
			p.Path, p.Endpoint, p.LastHandshake = "udp", fmt.Sprintf("192.0.2.%d:51900", i/100), sampleNow().Add(-time.Minute)
		case i == 500:
			p.Refused = "unknown_peer"
		case i == 600:
			p.LastHandshake = sampleNow().Add(-time.Hour)
		}
		st.Peers = append(st.Peers, p)
	}
	return st
}

// peerRows is the names of the rows of the peers' table of out, in order.
func peerRows(out string) []string {
	var rows []string
	for l := range strings.SplitSeq(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 && strings.HasPrefix(f[0], "peer") && len(f[0]) == 8 {
			rows = append(rows, f[0])
		}
	}
	return rows
}

// TestStatusTextAtSizeSummarisesAndListsActivePeersFirst: with 1000 peers, `status`
// counts them by state and path on one line, lists the ten with a session first, then
// the refused one, then 31 more without a session, and says how many it left out;
// --all lists all 1000; a pattern lists the matching peers only (with a session or not).
func TestStatusTextAtSizeSummarisesAndListsActivePeersFirst(t *testing.T) {
	st := thousandPeers()
	render := func(v peerView) string {
		var b strings.Builder
		if err := renderStatusView(&b, []status.Status{st}, DefaultStateDir, sampleNow(), v); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}

	out := render(peerView{})
	if want := "  peers: 1000 total, 10 up (9 udp, 1 ws), 1 refused, 1 idle, 988 never connected\n"; !strings.Contains(out, want) {
		t.Errorf("no summary line %q:\n%s", want, out)
	}
	rows := peerRows(out)
	if len(rows) != 10+statusQuietShown {
		t.Fatalf("%d peers listed by default, want the 10 with a session and %d more:\n%s", len(rows), statusQuietShown, out)
	}
	for i, name := range rows[:10] {
		if want := fmt.Sprintf("peer%04d", i*100+99); name != want {
			t.Errorf("row %d is %s, want %s: the peers with a session first, in order", i, name, want)
		}
	}
	if rows[10] != "peer0500" {
		t.Errorf("row 10 is %s, want the refused peer0500 right after those with a session", rows[10])
	}
	if rows[11] != "peer0600" {
		t.Errorf("row 11 is %s, want the idle peer0600", rows[11])
	}
	if want := fmt.Sprintf("  ... and %d more without a session", 1000-10-statusQuietShown); !strings.Contains(out, want) {
		t.Errorf("no line %q:\n%s", want, out)
	}

	if rows := peerRows(render(peerView{all: true})); len(rows) != 1000 {
		t.Errorf("--all lists %d peers, want 1000", len(rows))
	}
	out = render(peerView{patterns: []string{"peer09*", "peer0001"}})
	rows = peerRows(out)
	if len(rows) != 101 || rows[0] != "peer0999" || rows[1] != "peer0001" {
		t.Errorf("--peer 'peer09*' --peer peer0001 lists %d peers starting %v, want 101 starting peer0999, peer0001", len(rows), rows[:min(2, len(rows))])
	}
	if strings.Contains(out, "more without a session") {
		t.Errorf("a filtered list says it left peers out:\n%s", out)
	}
	if out := render(peerView{patterns: []string{"nobody"}}); !strings.Contains(out, "  no peer matches nobody\n") {
		t.Errorf("a pattern matching nothing:\n%s", out)
	}
}

// TestStatusPeerFilterOnTheCommandLine: `status --peer PATTERN` filters the peers of
// every interface, in JSON too, where peer_counts still counts them all; `status NAME`
// with the name of a peer rather than of an interface shows that peer; a NAME that is
// neither is still "not up".
func TestStatusPeerFilterOnTheCommandLine(t *testing.T) {
	h := newHarness(t)
	serveFake(t, h.dir, thousandPeers())

	r := h.run("", "status", "--json", "--peer", "peer00*9")
	if r.code != 0 {
		t.Fatalf("status --json --peer: %+v", r)
	}
	var all []status.Status
	if err := json.Unmarshal([]byte(r.stdout), &all); err != nil || len(all) != 1 {
		t.Fatalf("status --json --peer: %v\n%s", err, r.stdout)
	}
	if n := len(all[0].Peers); n != 10 {
		t.Errorf("--peer 'peer00*9' printed %d peers, want 10", n)
	}
	if c := all[0].PeerCounts; c == nil || c.Total != 1000 || c.Up != 10 || c.UDP != 9 || c.WS != 1 || c.Never != 988 {
		t.Errorf("peer_counts with a filter: %+v, want every peer counted", c)
	}

	r = h.run("", "status", "--json", "--peer", "nobody")
	if r.code != 0 || strings.Contains(r.stdout, "null") || !strings.Contains(r.stdout, `"peers": []`) {
		t.Errorf("status --json --peer nobody: want \"peers\": [] and no null: %+v", r)
	}

	r = h.run("", "status", "peer0199")
	if r.code != 0 || len(peerRows(r.stdout)) != 1 || !strings.Contains(r.stdout, "  peer0199 ") {
		t.Errorf("status peer0199 (a peer's name): %+v", r)
	}
	if r := h.run("", "status", "stt9"); r.code != 1 || !strings.Contains(r.stderr, "stt9 is not up") {
		t.Errorf("status stt9 (neither an interface nor a peer): %+v", r)
	}
	r = h.run("", "status", "--all", "stt7")
	if r.code != 0 || len(peerRows(r.stdout)) != 1000 {
		t.Errorf("status --all stt7 lists %d peers, want 1000", len(peerRows(r.stdout)))
	}
}
