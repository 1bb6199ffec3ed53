package stt

import (
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/internal/nslab"
	"github.com/stt-tun/stt-tun/stt/udp"
	"github.com/stt-tun/stt-tun/stt/wire"
)

// TestPathMTUThroughANarrowRouter runs two nodes in network namespaces on the real
// UDP transport (Don't Fragment sockets, the route's MTU read from the kernel),
// joined by a router whose link toward b has MTU 1400, with the ICMP that would tell
// of it dropped (a black hole) or let through. a's estimate settles at the router's
// 1400 (an inner packet of 1400-28-32), whatever ICMP does; b's at its own link's;
// and when the router's link narrows to 1300 while a sends large packets, a's
// estimate follows.
func TestPathMTUThroughANarrowRouter(t *testing.T) {
	for _, icmp := range []bool{false, true} {
		name := map[bool]string{false: "icmp dropped", true: "icmp allowed"}[icmp]
		t.Run(name, func(t *testing.T) {
			lab := nslab.New(t)
			na, nr, nb := lab.NS("a"), lab.NS("r"), lab.NS("b")
			lab.Link(na, []string{"10.77.1.1/24"}, nr, []string{"10.77.1.2/24"})
			_, rb := lab.Link(nr, []string{"10.77.2.2/24"}, nb, []string{"10.77.2.1/24"})
			na.MustRun(t, "ip", "route", "add", "default", "via", "10.77.1.2")
			nb.MustRun(t, "ip", "route", "add", "default", "via", "10.77.2.2")
			nr.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
			nr.MustRun(t, "ip", "link", "set", "dev", rb, "mtu", "1400")
			nb.MustRun(t, "ip", "link", "set", "dev", rb, "mtu", "1400")
			if !icmp {
				rules := filepath.Join(t.TempDir(), "blackhole.nft")
				if err := os.WriteFile(rules, []byte(`table inet blackhole {
	chain forward_icmp { type filter hook forward priority 0; icmp type destination-unreachable drop; }
	chain output_icmp { type filter hook output priority 0; icmp type destination-unreachable drop; }
}
`), 0o600); err != nil {
					t.Fatal(err)
				}
				nr.MustRun(t, "nft", "-f", rules)
			}
			seed := randKey(t)
			inNS := func(ns *nslab.NS, name string, changes *mtuChanges) *testNode {
				var n *testNode
				err := ns.Do(func() error {
					n = startNode(t, nodeOpts{seed: seed, name: name, config: func(c *Config) {
						c.Bind = nil // the node's own: udp.NewPMTUProbe
						c.routeMTU = func(a netip.Addr) (mtu int) {
							_ = ns.Do(func() (err error) { mtu, err = udp.RouteMTU(a, 0); return err })
							return mtu
						}
						if changes != nil {
							c.PathMTUChanged = changes.add
						}
					}})
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				return n
			}
			var changes mtuChanges
			a := inNS(na, "a", &changes)
			b := inNS(nb, "b", nil)
			if _, err := b.AddPeer(PeerConfig{Name: "a"}); err != nil {
				t.Fatal(err)
			}
			if _, err := a.AddPeer(PeerConfig{Name: "b", Endpoint: netip.AddrPortFrom(netip.MustParseAddr("10.77.2.1"), b.Port()).String()}); err != nil {
				t.Fatal(err)
			}
			established(t, a, b)
			p := a.Peer("b")
			took := waitPMTU(t, p, 1400-28-wire.Overhead, 10*time.Second)
			t.Logf("%s: session up to confirmed path MTU %d: %v", name, p.PathMTU(), took.Round(time.Millisecond))
			waitPMTU(t, b.Peer("a"), 1400-28-wire.Overhead, 10*time.Second)

			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go bulk(t, p, 1300, stop, &wg)
			defer func() { close(stop); wg.Wait() }()
			nr.MustRun(t, "ip", "link", "set", "dev", rb, "mtu", "1300")
			took = waitPMTU(t, p, 1300-28-wire.Overhead, 15*time.Second)
			t.Logf("%s: router link narrowed to lowered estimate: %v (black holes counted %d)", name, took.Round(time.Millisecond), p.Stats().PMTU.BlackHoles)
		})
	}
}
