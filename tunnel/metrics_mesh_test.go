package tunnel

import (
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/stt/mesh"
)

// meshTrio is three mesh members on loopback: a, which b and c name as their
// bootstrap address; b also has a [[peer]] x that never answers, accepts claims in
// 10.9.1.0/24 only (so c's address, 10.8.0.3, is refused) and serves metrics. It
// returns b once it knows a (through the bootstrap) and c (by gossip, or by c's
// handshake), and c's record has reached it.
func meshTrio(t *testing.T) (b *memNode) {
	t.Helper()
	seed, _ := config.GenerateSeed()
	seedFile := writeSecret(t, t.TempDir(), "seed", seed)
	start := func(name, addr string, mod func(*config.Config)) *memNode {
		cfg := &config.Config{
			Interface: config.Interface{
				Name: "mem-" + name, NodeName: name,
				Addresses: []netip.Prefix{netip.MustParsePrefix(addr)},
				MTU:       1420, SeedFile: seedFile,
				// A key file that does not exist yet is created in the Ed25519 format.
				KeyFile: filepath.Join(t.TempDir(), name+".key"),
			},
			Discovery: config.Discovery{Enabled: true, MeshIPv6: true, IdleTimeout: time.Minute},
		}
		mod(cfg)
		return startCfg(t, cfg)
	}
	a := start("a", "10.9.1.1/24", func(*config.Config) {})
	boot := []string{endpointOf(a)}
	b = start("b", "10.9.1.2/24", func(c *config.Config) {
		c.Discovery.Bootstrap = boot
		c.Discovery.AcceptPrefixes = []netip.Prefix{netip.MustParsePrefix("10.9.1.0/24")}
		c.Metrics.Listen = "127.0.0.1:0"
		c.Peers = []config.Peer{{Name: "x", AllowedPrefixes: []netip.Prefix{netip.MustParsePrefix("10.9.9.9/32")}}}
	})
	start("c", "10.8.0.3/24", func(c *config.Config) { c.Discovery.Bootstrap = boot })

	deadline := time.Now().Add(30 * time.Second)
	for {
		st := b.t.Status()
		src := map[string]string{}
		var candidates int
		for _, p := range st.Peers {
			src[p.Name] = p.Source
			if p.Name == "c" {
				candidates = len(p.Candidates)
			}
		}
		if src["a"] == sourceBootstrap && src["c"] != "" && candidates > 0 && st.Mesh.Members == 2 {
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("b did not learn the mesh: %+v %+v", st.Peers, st.Mesh)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sample is one series of a scrape: its labels and its value.
type sample struct {
	labels map[string]string
	v      float64
}

// scrapeSamples parses a tunnel's metrics with Prometheus' strict parser and returns
// the body and the series by family.
func scrapeSamples(t *testing.T, n *memNode) (string, map[string][]sample) {
	t.Helper()
	rec := httptest.NewRecorder()
	n.t.metricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", MetricsPath, nil))
	body := rec.Body.String()
	parser := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("the exposition does not parse: %v\n%s", err, body)
	}
	out := make(map[string][]sample, len(fams))
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			// A sample is a counter or a gauge; the other's getter gives 0.
			s := sample{labels: map[string]string{}, v: m.GetCounter().GetValue() + m.GetGauge().GetValue()}
			for _, l := range m.GetLabel() {
				s.labels[l.GetName()] = l.GetValue()
			}
			out[name] = append(out[name], s)
		}
	}
	return body, out
}

// TestMetricsPerPeerIncludeDiscoveredMembers: the per-peer families have a series for
// every discovered member as well as for the [[peer]]s, and stt_peer_mesh_info says
// how each was learned.
func TestMetricsPerPeerIncludeDiscoveredMembers(t *testing.T) {
	b := meshTrio(t)
	_, fams := scrapeSamples(t, b)
	for _, fam := range []string{
		"stt_peer_info", "stt_peer_session_up", "stt_peer_tx_bytes_total", "stt_peer_rx_bytes_total",
		"stt_peer_tx_packets_total", "stt_peer_rx_packets_total", "stt_peer_drops_total", "stt_peer_mesh_info",
	} {
		peers := map[string]bool{}
		for _, m := range fams[fam] {
			peers[m.labels["peer"]] = true
		}
		if len(peers) != 3 || !peers["a"] || !peers["c"] || !peers["x"] {
			t.Errorf("%s has series for %v; want a, c (members) and x ([[peer]])", fam, peers)
		}
	}
	src := map[string]string{}
	for _, m := range fams["stt_peer_mesh_info"] {
		src[m.labels["peer"]] = m.labels["source"]
		if m.v != 1 || len(m.labels) != 2 {
			t.Errorf("stt_peer_mesh_info%v = %v", m.labels, m.v)
		}
	}
	if src["a"] != "bootstrap" || src["x"] != "config" || (src["c"] != "gossip" && src["c"] != "handshake") {
		t.Errorf("stt_peer_mesh_info sources: %v; want a bootstrap, x config, c gossip or handshake", src)
	}
	for _, m := range fams["stt_peer_session_up"] {
		if m.labels["peer"] == "a" && m.v != 1 {
			t.Errorf("stt_peer_session_up{peer=\"a\"} = %v; b's bootstrap session with a is up", m.v)
		}
	}
}

// TestMetricsMeshFamilies: the mesh's own families carry what the mesh did.
func TestMetricsMeshFamilies(t *testing.T) {
	b := meshTrio(t)
	_, fams := scrapeSamples(t, b)
	single := func(name string) float64 {
		if len(fams[name]) != 1 {
			t.Errorf("%s: %v", name, fams[name])
			return -1
		}
		return fams[name][0].v
	}
	if v := single("stt_mesh_members"); v != 2 {
		t.Errorf("stt_mesh_members = %v, want 2 (a and c)", v)
	}
	if v := single("stt_mesh_connected_members"); v < 1 || v > 2 {
		t.Errorf("stt_mesh_connected_members = %v, want 1 or 2", v)
	}
	// c's record claims 10.8.0.3/32, outside b's accept_prefixes.
	if v := single("stt_mesh_claims_refused_total"); v < 1 {
		t.Errorf("stt_mesh_claims_refused_total = %v, want ≥ 1", v)
	}
	if v := single("stt_mesh_names_refused_total"); v != 0 {
		t.Errorf("stt_mesh_names_refused_total = %v, want 0", v)
	}
	outcomes := map[string]float64{}
	for _, m := range fams["stt_mesh_records_total"] {
		outcomes[m.labels["outcome"]] = m.v
	}
	if len(outcomes) != 11 || outcomes["accepted"] < 2 {
		t.Errorf("stt_mesh_records_total by outcome: %v; want all 11 outcomes and ≥ 2 accepted", outcomes)
	}
	results := map[string]float64{}
	for _, m := range fams["stt_mesh_statements_total"] {
		results[m.labels["result"]] = m.v
	}
	if len(results) != len(mesh.StatementReasons) {
		t.Errorf("stt_mesh_statements_total by result: %v; want one series per result", results)
	}
	for _, fam := range []string{"stt_mesh_gossip_bytes_total", "stt_mesh_gossip_messages_total"} {
		dir := map[string]float64{}
		for _, m := range fams[fam] {
			dir[m.labels["direction"]] = m.v
		}
		if len(dir) != 2 || dir["in"] <= 0 || dir["out"] <= 0 {
			t.Errorf("%s by direction: %v; want in and out above 0", fam, dir)
		}
	}
}

// TestMetricsWithoutMeshHaveNoMeshFamilies: without [discovery] no mesh family is
// written, not even empty.
func TestMetricsWithoutMeshHaveNoMeshFamilies(t *testing.T) {
	a, _ := metricsPair(t)
	body, _ := scrapeSamples(t, a)
	if strings.Contains(body, "stt_mesh_") || strings.Contains(body, "stt_peer_mesh_info") {
		t.Errorf("mesh metrics without [discovery]:\n%s", body)
	}
}
