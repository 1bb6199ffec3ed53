package tunnel

import (
	"net/netip"
	"testing"

	"github.com/stt-tun/stt-tun/config"
)

// TestWebSocketOnlyNode checks that Start passes the WebSocket settings through: b has
// no UDP socket and a WebSocket listener, a reaches it by ws_url only, and status shows
// the peers on path "ws".
func TestWebSocketOnlyNode(t *testing.T) {
	seed, _ := config.GenerateSeed()
	seedFile := writeSecret(t, t.TempDir(), "seed", seed)
	start := func(name, addr string, mod func(*config.Config)) *memNode {
		t.Helper()
		key, _ := config.GenerateKey()
		cfg := &config.Config{
			Interface: config.Interface{
				Name: "mem-" + name, NodeName: name,
				Addresses: []netip.Prefix{netip.MustParsePrefix(addr)},
				MTU:       1420, SeedFile: seedFile,
				KeyFile: writeSecret(t, t.TempDir(), name+".key", key),
			},
			WebSocket: config.WebSocket{Path: config.DefaultWSPath},
			Advanced:  config.Advanced{FallbackAfter: config.DefaultFallbackAfter, ProbeInterval: config.DefaultProbeInterval},
		}
		mod(cfg)
		return startCfg(t, cfg)
	}
	b := start("b", "10.9.0.2/24", func(c *config.Config) {
		c.Interface.DisableUDP = true
		c.WebSocket.Listen = "127.0.0.1:0"
		c.WebSocket.Path = "/tunnel"
		c.Peers = []config.Peer{{Name: "a", AllowedPrefixes: []netip.Prefix{netip.MustParsePrefix("10.9.0.1/32")}}}
	})
	if b.t.Node().WSAddr() == "" || b.t.Status().ListenPort != 0 {
		t.Fatalf("b: websocket %q, UDP port %d; want a listener and no UDP", b.t.Node().WSAddr(), b.t.Status().ListenPort)
	}
	a := start("a", "10.9.0.1/24", func(c *config.Config) {
		c.Peers = []config.Peer{{
			Name:            "b",
			WSURL:           "ws://" + b.t.Node().WSAddr() + "/tunnel",
			WSProxy:         "none",
			AllowedPrefixes: []netip.Prefix{netip.MustParsePrefix("10.9.0.2/32")},
		}}
	})
	out := ipv4UDP("10.9.0.1", "10.9.0.2", 1000, 2000, []byte("over websocket"))
	a.dev.Inject(out)
	expectPacket(t, b.dev, out)
	back := ipv4UDP("10.9.0.2", "10.9.0.1", 2000, 1000, []byte("and back"))
	b.dev.Inject(back)
	expectPacket(t, a.dev, back)
	for _, n := range []*memNode{a, b} {
		st := n.t.Status()
		if len(st.Peers) != 1 || st.Peers[0].Path != "ws" || st.Peers[0].Endpoint == "" {
			t.Errorf("%s: peers %+v, want one on path ws with an endpoint", st.NodeName, st.Peers)
		}
	}
	if ep := a.t.Status().Peers[0].Endpoint; ep != b.t.Node().WSAddr() {
		t.Errorf("a's endpoint for b is %q, want the WebSocket's TCP address %s", ep, b.t.Node().WSAddr())
	}
}
