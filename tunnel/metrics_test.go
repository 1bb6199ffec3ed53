package tunnel

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/tun/tuntest"
)

const metricsDoc = "../docs/metrics.md"

// scrape GETs url and returns the body, failing the test unless it is a 200.
func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %s %v\n%s", url, resp.Status, err, body)
	}
	return string(body)
}

// metricsPair is a and b with traffic between them; a serves metrics and has a
// WebSocket listener, so that every metric has a value.
func metricsPair(t *testing.T) (a, b *memNode) {
	t.Helper()
	seed, _ := config.GenerateSeed()
	seedFile := writeSecret(t, t.TempDir(), "seed", seed)
	start := func(name, addr string, mod func(*config.Config)) *memNode {
		key, _ := config.GenerateKey()
		cfg := &config.Config{
			Interface: config.Interface{
				Name: "mem-" + name, NodeName: name,
				Addresses: []netip.Prefix{netip.MustParsePrefix(addr)},
				MTU:       1420, SeedFile: seedFile,
				KeyFile: writeSecret(t, t.TempDir(), name+".key", key),
			},
		}
		mod(cfg)
		return startCfg(t, cfg)
	}
	b = start("b", "10.9.0.2/24", func(c *config.Config) {
		c.Peers = []config.Peer{{Name: "a", AllowedPrefixes: []netip.Prefix{netip.MustParsePrefix("10.9.0.1/32")}}}
	})
	a = start("a", "10.9.0.1/24", func(c *config.Config) {
		c.Metrics.Listen = "127.0.0.1:0"
		c.WebSocket = config.WebSocket{Listen: "127.0.0.1:0", Path: "/stt"}
		c.Peers = []config.Peer{{
			Name:            "b",
			Endpoint:        fmt.Sprintf("127.0.0.1:%d", b.t.Node().Port()),
			AllowedPrefixes: []netip.Prefix{netip.MustParsePrefix("10.9.0.2/32")},
		}}
	})
	out := ipv4UDP("10.9.0.1", "10.9.0.2", 1000, 2000, []byte("counted"))
	a.dev.Inject(out)
	expectPacket(t, b.dev, out)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := a.t.Ping(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	return a, b
}

// documentedMetrics reads the metric names from the tables of docs/metrics.md.
func documentedMetrics(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(metricsDoc)
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("^\\| `((?:stt|go|process)_[a-z_]+)` \\|")
	var names []string
	for line := range strings.SplitSeq(string(data), "\n") {
		if m := row.FindStringSubmatch(line); m != nil {
			names = append(names, m[1])
		}
	}
	sort.Strings(names)
	return names
}

// exposedMetrics lists the metric families in a text exposition.
func exposedMetrics(body string) []string {
	var names []string
	for line := range strings.SplitSeq(body, "\n") {
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			names = append(names, strings.Fields(rest)[0])
		}
	}
	sort.Strings(names)
	return names
}

// TestMetricsMatchDocs scrapes the handler of a node with a WebSocket listener and of
// a mesh member and checks that the metrics and the table in docs/metrics.md name
// exactly the same metrics.
func TestMetricsMatchDocs(t *testing.T) {
	a, _ := metricsPair(t)
	var exposed []string
	for _, n := range []*memNode{a, meshTrio(t)} {
		rec := httptest.NewRecorder()
		n.t.metricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", MetricsPath, nil))
		if rec.Code != http.StatusOK {
			t.Fatalf("GET %s: %d", MetricsPath, rec.Code)
		}
		exposed = append(exposed, exposedMetrics(rec.Body.String())...)
	}
	slices.Sort(exposed)
	exposed = slices.Compact(exposed)
	documented := documentedMetrics(t)
	if len(documented) < 20 {
		t.Fatalf("found %d metrics in %s; did the table format change?", len(documented), metricsDoc)
	}
	for _, n := range documented {
		if !slices.Contains(exposed, n) {
			t.Errorf("%s is documented but not exposed", n)
		}
	}
	for _, n := range exposed {
		if !slices.Contains(documented, n) {
			t.Errorf("%s is exposed but not documented in %s", n, metricsDoc)
		}
	}
}

// TestMetricsLint parses the whole exposition with Prometheus' own strict parser, so
// that a broken escape, a family written twice or a sample without its family fails,
// and runs promtool's checks on it.
func TestMetricsLint(t *testing.T) {
	a, _ := metricsPair(t)
	for _, n := range []*memNode{a, meshTrio(t)} {
		lintScrape(t, n)
	}
}

// lintScrape parses n's exposition strictly and lints it.
func lintScrape(t *testing.T, n *memNode) {
	t.Helper()
	rec := httptest.NewRecorder()
	n.t.metricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", MetricsPath, nil))
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("Content-Type %q", ct)
	}
	body := rec.Body.String()
	parser := expfmt.NewTextParser(model.LegacyValidation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("the exposition does not parse: %v\n%s", err, body)
	}
	if len(families) < 30 {
		t.Errorf("parsed %d families; want the tunnel's, the runtime's and the process's", len(families))
	}
	problems, err := promlint.New(strings.NewReader(body)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// TestMetricsValues checks values against what the tunnel did, through the real
// listener.
func TestMetricsValues(t *testing.T) {
	a, b := metricsPair(t)
	addr := a.t.MetricsAddr()
	if addr == "" {
		t.Fatal("no metrics listener")
	}
	a.dev.Inject(ipv4UDP("10.9.0.1", "172.31.0.1", 1, 2, []byte("nowhere")))
	deadline := time.Now().Add(5 * time.Second)
	for a.t.Counters().NoRoute == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	body := scrape(t, "http://"+addr+MetricsPath)
	ep := fmt.Sprintf("127.0.0.1:%d", b.t.Node().Port())
	for _, want := range []string{
		`stt_peer_info{endpoint="` + ep + `",path="udp",peer="b"} 1`,
		`stt_peer_session_up{peer="b"} 1`,
		`stt_peer_tx_packets_total{peer="b"} 1`,
		`stt_peer_drops_total{peer="b"} 0`,
		`stt_handshakes_completed_total 1`,
		`stt_handshake_failures_total{reason="pin_mismatch"} 0`,
		`stt_drops_total{reason="replay"} 0`,
		`stt_tunnel_no_route_total 1`,
		`stt_reloads_total{result="applied"} 0`,
		`stt_websocket_connections 0`,
		`stt_interface_info{interface="mem-a",node_name="a",public_key="` + a.t.Status().PublicKey + `"} 1`,
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}
	for _, re := range []string{
		`stt_peer_rtt_seconds\{peer="b"\} [0-9.e-]+\n`,
		`stt_peer_handshake_age_seconds\{peer="b"\} [0-9.e-]+\n`,
		`stt_peer_tx_bytes_total\{peer="b"\} [1-9][0-9]*\n`,
	} {
		if !regexp.MustCompile(re).MatchString(body) {
			t.Errorf("metrics lack a line matching %s", re)
		}
	}
	if resp, err := http.Get("http://" + addr + "/other"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /other: %v %v; want 404", resp, err)
	} else {
		resp.Body.Close()
	}
	// Closing the tunnel closes the listener.
	_ = a.t.Close()
	if _, err := http.Get("http://" + addr + MetricsPath); err == nil {
		t.Error("metrics still served after Close")
	}
}

// TestMetricsListenerBusy: a metrics address in use fails Start, and Start leaves
// nothing behind.
func TestMetricsListenerBusy(t *testing.T) {
	busy, err := listenMetrics("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	seed, _ := config.GenerateSeed()
	key, _ := config.GenerateKey()
	dir := t.TempDir()
	cfg := &config.Config{
		Interface: config.Interface{
			Name: "mem-a", NodeName: "a", MTU: 1420,
			SeedFile: writeSecret(t, dir, "seed", seed), KeyFile: writeSecret(t, dir, "a.key", key),
		},
		Metrics: config.Metrics{Listen: busy.Addr().String()},
	}
	dev := tuntest.NewMem("mem-a", 1420, 16)
	if _, err := Start(context.Background(), cfg, Options{Device: dev}); err == nil || !strings.Contains(err.Error(), "metrics: listen on") {
		t.Fatalf("Start with a busy metrics port: %v", err)
	}
}
