//go:build e2e

package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/internal/nslab"
)

// TestRefusedPeerIsShownDown: beta refuses alpha after verifying its AUTH_PROOF, because
// it has no [[peer]] for alpha (unknown_peer) or pins another key for it
// (pin_mismatch). alpha must not show beta as up: its status has path "none", no
// handshake, no completed handshake, the refusal with its reason in JSON and in words,
// stt_peer_session_up 0 and stt_peer_refused 1; its log says so in one line however
// many refusals follow. Once beta's operator fixes its configuration, the tunnel comes
// up by itself after the back-off, and the refusal goes.
func TestRefusedPeerIsShownDown(t *testing.T) {
	for _, tc := range []struct{ name, words string }{
		{"unknown_peer", "not a configured peer"},
		{"pin_mismatch", "our key is not the public_key it pins for us"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, a, b, seed := pair(t)
			const metricsAddr = "127.0.0.1:9586"
			a.writeConfig(nodeConf{addresses: tunA, seedFile: seed,
				peers: []peerConf{{name: "beta", endpoint: endpointB, allowed: allowB}},
				extra: "\n[metrics]\nlisten = \"" + metricsAddr + "\"\n"})
			var betaPeers []peerConf
			if tc.name == "pin_mismatch" {
				// beta's own key is as good a wrong key for alpha as any.
				betaPeers = []peerConf{{name: "alpha", allowed: allowA, publicKey: b.publicKey()}}
			}
			b.writeConfig(nodeConf{addresses: tunB, seedFile: seed, peers: betaPeers})
			b.startForeground()
			a.startForeground()

			// Traffic for beta starts handshakes; each is refused.
			_ = a.ns.Ping("10.99.0.2")
			ctx, cancel := context.WithTimeout(context.Background(), reachTimeout)
			defer cancel()
			var st statusJSON
			if err := nslab.WaitFor(ctx, func() bool {
				var err error
				st, err = a.status()
				return err == nil && st.peer(t, "beta").Refused != ""
			}); err != nil {
				t.Fatalf("alpha never showed beta's refusal: %+v", st.Peers)
			}
			p := st.peer(t, "beta")
			if p.Refused != tc.name || p.Path != "none" || !p.LastHandshake.IsZero() || st.Counters["handshakes_completed"] != 0 {
				t.Errorf("refused beta in alpha's status: refused %q, path %q, last handshake %v, %d completed; want %s, none, never, 0",
					p.Refused, p.Path, p.LastHandshake, st.Counters["handshakes_completed"], tc.name)
			}
			if n := b.mustStatus().Counters["drop_"+tc.name]; n == 0 {
				t.Errorf("beta counted no drop_%s", tc.name)
			}
			text := a.mustStt("status", linkName)
			if !strings.Contains(text, "refused by beta: "+tc.words+"\n") {
				t.Errorf("alpha's status does not say why beta refuses it:\n%s", text)
			}
			m, err := scrapeIn(a.ns, metricsAddr)
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{
				`stt_peer_session_up{peer="beta"} 0`,
				`stt_peer_refused{peer="beta",reason="` + tc.name + `"} 1`,
			} {
				if !strings.Contains(m, want+"\n") {
					t.Errorf("metrics lack %q:\n%s", want, grepLines(m, "stt_peer_"))
				}
			}
			// `stt-tun ping` says why at once instead of timing out.
			if r := a.stt("ping", "-c", "1", "-W", "5s", "beta"); r.err == nil || !strings.Contains(r.stdout+r.stderr, "refused by beta: "+tc.words) {
				t.Errorf("stt-tun ping of a refusing peer: %v\nstdout: %s\nstderr: %s", r.err, r.stdout, r.stderr)
			}
			// More traffic during the back-off: counted, and not logged again.
			_ = a.ns.Ping("10.99.0.2")
			if st := a.mustStatus(); st.Counters["drop_refused"] == 0 {
				t.Error("packets for a refusing peer were not counted under drop_refused")
			}

			// beta's operator fixes it: the tunnel comes up once the back-off (1 s doubling)
			// has passed, without anything done on alpha.
			b.writeConfig(nodeConf{addresses: tunB, seedFile: seed,
				peers: []peerConf{{name: "alpha", allowed: allowA, publicKey: a.publicKey()}}})
			b.mustStt("reload", linkName)
			ctx2, cancel2 := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel2()
			if err := nslab.WaitFor(ctx2, func() bool { return a.ns.Ping("10.99.0.2") == nil }); err != nil {
				t.Fatal("no ping through the tunnel after beta accepted alpha")
			}
			if p := a.mustStatus().peer(t, "beta"); p.Refused != "" || p.Path != "udp" {
				t.Errorf("after acceptance: refused %q, path %q; want none, udp", p.Refused, p.Path)
			}
			log := a.proc.Output()
			if n := strings.Count(log, "peer refused our handshake"); n != 1 {
				t.Errorf("%d log lines about the refusal, want 1:\n%s", n, log)
			}
			if !strings.Contains(log, "peer accepts our handshake again") {
				t.Errorf("no log line about the acceptance:\n%s", log)
			}
		})
	}
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
