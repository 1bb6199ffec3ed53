//go:build e2e

// The NAT lab: members of one mesh behind Linux NAT routers, all in network namespaces.
//
//	                   inet (forwards; 198.18.N.1 on link N)
//	    ┌────────────────┼──────────────────┬──── …
//	boot 198.18.1.2   gw-a 198.18.A.2      gw-b 198.18.B.2     (routers, nftables)
//	(public member,      │ 10.A.0.0/24        │ 10.B.0.0/24
//	 UDP + ws:// 8080)   a 10.A.0.2           b 10.B.0.2       (members behind them)
//
// nslab.NATRouter builds each router with nftables rules in its own namespace
// (research notes: /work/shared/research/mesh-anchors.md §3.7):
//
//   - easy               `masquerade`: endpoint-independent mapping, port kept when free;
//   - hard-random        `masquerade to :40000-49999 random`: a new port per destination;
//   - hard-fully-random  the same with `fully-random`;
//   - firewall           no translation, the member has a public 198.19.N.2, but inbound
//     traffic passes only as a reply to a flow the member started;
//   - udp-blocked        easy, and every forwarded UDP packet dropped (only WebSocket out).
//
// Filtering is address-and-port dependent under every kind (conntrack), and each NAT
// router drops unsolicited input on its internet side (see nslab.natRules for why that
// matters to punching). The members are configured with the seed, their key and the
// bootstrap member only ([discovery] bootstrap = its UDP address, and in the matrix its
// ws:// URL too). Expected once hole punching and relays exist (issue 14, research §3.7):
//
//	A \ B      public  easy    hard    firewall  udp-blocked
//	public     direct  direct  direct  direct    ws
//	easy               direct  relay   direct    relay (ws)
//	hard                       relay   relay     relay (ws)
//	firewall                           direct    relay (ws)
//
// ("direct" between easy, firewall, and easy needs both sides to send at once: a
// punch.) Seen today, with neither punching nor relays, when the matrix makes both
// members of a pair ping each other at the same moment (a crude simultaneous open):
//
//	A \ B              easy   hard-random  hard-fully-random  firewall  udp-blocked
//	easy               both   none         none               both      none
//	hard-random               none         none               none      none
//	hard-fully-random                      none               none      none
//	firewall                                                  both      none
//	udp-blocked                                                         none
//
// and every member, the UDP-blocked ones over WebSocket, reaches boot and knows every
// other member's record. TestNATLab asserts only what works — each NATed member reaches
// the public one, learns the other's record, and sees a reflected address that is its
// router's public address and mapped port (read from the router's conntrack table) —
// and logs whether the two NATed members reach each other. TestNATLabMatrix (only with
// STT_NATLAB_MATRIX=1; it runs eleven daemons, about a minute) builds two members of
// every kind and logs the matrix above.
package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/internal/nslab"
)

// natPingTimeout bounds each attempt of the matrix to ping between two NATed members.
const natPingTimeout = 8 * time.Second

// natBootWS is the bootstrap member's WebSocket listener.
const natBootWS = "198.18.1.2:8080"

// natMember is one member behind a router.
type natMember struct {
	name string
	kind nslab.NATKind
	site *nslab.NATSite
	nd   *node
	mesh string // its mesh address, once known
}

// natLab is a meshLab whose first member, boot, is public and whose other members sit
// behind routers.
type natLab struct {
	*meshLab
	boot    *node
	members []*natMember
}

// newNATLab builds the public bootstrap member and one member behind a router of each
// of kinds, writes their configurations and starts all of them. The members' bootstrap
// is boot's UDP address, and with withWS its ws:// URL too.
func newNATLab(t *testing.T, withWS bool, kinds ...nslab.NATKind) *natLab {
	m := newMeshLab(t)
	boot, _ := m.add("boot", "")
	boot.writeConfig(nodeConf{addresses: []string{overlay4(1) + "/24"}, seedFile: m.seed,
		ws:    wsConf{listen: natBootWS},
		extra: "\n[discovery]\naccept_prefixes = [\"10.77.0.0/24\"]\n"})
	nl := &natLab{meshLab: m, boot: boot}
	boots := []string{underlay(1) + fmt.Sprintf(":%d", port)}
	if withWS {
		boots = append(boots, "ws://"+natBootWS+"/stt")
	}
	bootstrap := discovery(boots...)
	for i, kind := range kinds {
		idx := i + 2
		name := fmt.Sprintf("n%d", idx)
		site := m.lab.NATRouter(m.router, name, kind, 10+idx)
		nd := newNode(t, site.Host, name)
		nd.writeConfig(nodeConf{addresses: []string{overlay4(idx) + "/24"}, seedFile: m.seed, extra: bootstrap})
		m.nodes[name] = nd
		nl.members = append(nl.members, &natMember{name: name, kind: kind, site: site, nd: nd})
	}
	boot.upDaemon()
	for _, mb := range nl.members {
		mb.nd.upDaemon()
	}
	return nl
}

// reflectedByBoot returns the address boot reflected to mb over UDP, if any.
func reflectedByBoot(st meshStatusJSON) (netip.AddrPort, bool) {
	for _, r := range st.Mesh.Reflected {
		if r.By == "boot" && r.Transport == "udp" {
			if ap, err := netip.ParseAddrPort(r.Address); err == nil {
				return ap, true
			}
		}
	}
	return netip.AddrPort{}, false
}

// waitReflected waits until boot has reflected mb's address over UDP. Under load a
// member's session to boot may start on WebSocket (UDP unanswered for fallback_after)
// and come back to UDP at the next probe; the WebSocket reflection replaces the UDP one
// meanwhile (one per observer).
func (mb *natMember) waitReflected(timeout time.Duration) (meshStatusJSON, netip.AddrPort, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var st meshStatusJSON
	var got netip.AddrPort
	var ok bool
	_ = nslab.WaitFor(ctx, func() bool {
		var err error
		if st, err = mb.nd.meshStatus(); err != nil {
			return false
		}
		got, ok = reflectedByBoot(st)
		return ok
	})
	return st, got, ok
}

// routerMapping returns the address mb's router put on mb's UDP flow to boot.
func (mb *natMember) routerMapping() (netip.AddrPort, error) {
	ms, err := mb.site.UDPMappings()
	if err != nil {
		return netip.AddrPort{}, err
	}
	want := netip.AddrPortFrom(netip.MustParseAddr(underlay(1)), port)
	for _, x := range ms {
		if x.Inside == netip.AddrPortFrom(mb.site.HostAddr, port) && x.Remote == want {
			return x.Outside, nil
		}
	}
	return netip.AddrPort{}, fmt.Errorf("no conntrack entry %s:%d → %s in %s: %+v", mb.site.HostAddr, port, want, mb.site.Router, ms)
}

// mappingsBetween describes the UDP translations a's and b's routers hold between
// them (the ends of a hole punch).
func mappingsBetween(a, b *natMember) string {
	var out []string
	for _, x := range [][2]*natMember{{a, b}, {b, a}} {
		ms, err := x[0].site.UDPMappings()
		if err != nil {
			out = append(out, err.Error())
			continue
		}
		for _, m := range ms {
			if m.Remote.Addr() == x[1].site.Public || m.Remote.Addr() == x[1].site.HostAddr ||
				m.Inside.Addr() == x[1].site.Public {
				out = append(out, fmt.Sprintf("%s router: %s→%s as %s", x[0].name, m.Inside, m.Remote, m.Outside))
			}
		}
	}
	return "conntrack: " + strings.Join(out, "; ")
}

// pathTo describes from's peer entry for the member named to.
func pathTo(from *node, to string) string {
	st, err := from.meshStatus()
	if err != nil {
		return err.Error()
	}
	for _, p := range st.Peers {
		if p.Name == to {
			return fmt.Sprintf("path=%q endpoint=%q candidates=%v", p.Path, p.Endpoint, p.Candidates)
		}
	}
	return "no peer " + to
}

// tryPing pings addr from ns until a reply comes or natPingTimeout passes.
func tryPing(ns *nslab.NS, addr string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), natPingTimeout)
	defer cancel()
	return nslab.WaitFor(ctx, func() bool { return ns.Ping(addr) == nil }) == nil
}

// TestNATLab: a member behind an easy NAT and one behind a hard NAT, with only the
// public member as bootstrap, both reach it, know each other's record, and learn from
// it the address their router maps them to. Whether they reach each other is logged:
// without hole punching or relays it is not expected.
func TestNATLab(t *testing.T) {
	nl := newNATLab(t, false, nslab.NATEasy, nslab.NATHardRandom)
	bootSt, err := nl.boot.meshStatus()
	if err != nil {
		t.Fatal(err)
	}
	for _, mb := range nl.members {
		st := waitMembers(t, mb.nd, len(nl.members))
		mb.mesh = st.Mesh.Address
		waitPing(t, mb.nd.ns, bootSt.Mesh.Address)
		st, got, ok := mb.waitReflected(meshTimeout)
		if !ok {
			t.Fatalf("%s (%s): boot reflected no UDP address: %+v", mb.name, mb.kind, st.Mesh.Reflected)
		}
		mapped, err := mb.routerMapping()
		if err != nil {
			t.Fatal(err)
		}
		if got != mapped || got.Addr() != mb.site.Public {
			t.Errorf("%s (%s): reflected %s, but its router maps it to %s (public address %s)", mb.name, mb.kind, got, mapped, mb.site.Public)
		}
		t.Logf("%s behind %s: own %s:%d, router maps to %s, boot reflected %s", mb.name, mb.kind, mb.site.HostAddr, port, mapped, got)
	}
	// The kinds are what they say: an easy NAT kept the port, a hard one did not.
	if m, _ := nl.members[0].routerMapping(); m.Port() != port {
		t.Errorf("easy NAT mapped port %d to %d, want it kept", port, m.Port())
	}
	if m, _ := nl.members[1].routerMapping(); m.Port() < 40000 || m.Port() > 49999 {
		t.Errorf("hard NAT mapped port %d to %d, want one in 40000-49999", port, m.Port())
	}
	a, b := nl.members[0], nl.members[1]
	var wg sync.WaitGroup
	var ab, ba bool
	wg.Add(2)
	go func() { defer wg.Done(); ab = tryPing(a.nd.ns, b.mesh) }()
	go func() { defer wg.Done(); ba = tryPing(b.nd.ns, a.mesh) }()
	wg.Wait()
	t.Logf("REPORT %s(%s) → %s(%s): %v; %s", a.name, a.kind, b.name, b.kind, ab, pathTo(a.nd, b.name))
	t.Logf("REPORT %s(%s) → %s(%s): %v; %s", b.name, b.kind, a.name, a.kind, ba, pathTo(b.nd, a.name))
}

// TestNATLabMatrix logs, for every pair of router kinds, whether two members behind
// them ping each other on their mesh addresses. It asserts only what works without
// hole punching: every member but the UDP-blocked ones reaches the public member over
// UDP and learns its router's mapping from it.
func TestNATLabMatrix(t *testing.T) {
	if os.Getenv("STT_NATLAB_MATRIX") != "1" {
		t.Skip("set STT_NATLAB_MATRIX=1 to run the NAT matrix (eleven daemons)")
	}
	var kinds []nslab.NATKind
	for _, k := range nslab.NATKinds {
		kinds = append(kinds, k, k)
	}
	nl := newNATLab(t, true, kinds...)
	bootSt, err := nl.boot.meshStatus()
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, mb := range nl.members {
		wg.Add(1)
		go func(mb *natMember) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), meshTimeout)
			defer cancel()
			var st meshStatusJSON
			_ = nslab.WaitFor(ctx, func() bool {
				var err error
				st, err = mb.nd.meshStatus()
				return err == nil && st.Mesh.Address != "" && st.Mesh.Members >= len(nl.members)
			})
			reachesBoot := tryPing(mb.nd.ns, bootSt.Mesh.Address)
			got, byBoot := netip.AddrPort{}, false
			if mb.kind != nslab.NATUDPBlocked {
				st, got, byBoot = mb.waitReflected(10 * time.Second)
			} else {
				st, _ = mb.nd.meshStatus()
			}
			mapped, merr := mb.routerMapping()
			mu.Lock()
			defer mu.Unlock()
			mb.mesh = st.Mesh.Address
			t.Logf("%s %-17s members=%d reaches boot=%v router mapping toward boot=%s %v; reflected %+v; boot sees %s",
				mb.name, mb.kind, st.Mesh.Members, reachesBoot, mapped, merr, st.Mesh.Reflected, pathTo(nl.boot, mb.name))
			if !reachesBoot || st.Mesh.Members < len(nl.members) {
				t.Errorf("%s (%s): reaches boot %v, knows %d of %d members", mb.name, mb.kind, reachesBoot, st.Mesh.Members, len(nl.members))
			}
			if mb.kind == nslab.NATUDPBlocked {
				return
			}
			// Not asserted here: with both of boot's addresses as bootstrap, a member's
			// session to boot may start on WebSocket under the load of eleven daemons
			// and stay there, and then boot reflects nothing over UDP (TestNATLab, with
			// the UDP address only, asserts the reflection).
			if !byBoot || got != mapped {
				t.Logf("NOTE %s (%s): boot reflected %s over UDP (%v), router mapping toward boot %s (%v)", mb.name, mb.kind, got, byBoot, mapped, merr)
			}
			// Every UDP reflection there is names the router's address.
			want := mb.site.Public
			if mb.kind == nslab.NATFirewall {
				want = mb.site.HostAddr
			}
			for _, r := range st.Mesh.Reflected {
				if ap, err := netip.ParseAddrPort(r.Address); r.Transport == "udp" && (err != nil || ap.Addr() != want) {
					t.Errorf("%s (%s): %s reflected %s, want %s:…", mb.name, mb.kind, r.By, r.Address, want)
				}
			}
		}(mb)
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	// For kinds i ≤ j: the first member of kind i and the second of kind j ping each
	// other at once (both have traffic, as a punch would arrange).
	type cell struct{ ab, ba bool }
	res := map[[2]int]*cell{}
	for i := range nslab.NATKinds {
		for j := i; j < len(nslab.NATKinds); j++ {
			a, b := nl.members[2*i], nl.members[2*j+1]
			c := &cell{}
			res[[2]int{i, j}] = c
			wg.Add(2)
			go func() { defer wg.Done(); c.ab = tryPing(a.nd.ns, b.mesh) }()
			go func() { defer wg.Done(); c.ba = tryPing(b.nd.ns, a.mesh) }()
		}
	}
	wg.Wait()
	for i := range nslab.NATKinds {
		for j := i; j < len(nslab.NATKinds); j++ {
			a, b := nl.members[2*i], nl.members[2*j+1]
			t.Logf("%s(%s) ↔ %s(%s): a→b %v, b→a %v; a sees %s; %s", a.name, a.kind, b.name, b.kind,
				res[[2]int{i, j}].ab, res[[2]int{i, j}].ba, pathTo(a.nd, b.name), mappingsBetween(a, b))
		}
	}
	var tb strings.Builder
	fmt.Fprintf(&tb, "\n%-18s", "A \\ B")
	for _, k := range nslab.NATKinds {
		fmt.Fprintf(&tb, "%-19s", k)
	}
	for i, ki := range nslab.NATKinds {
		fmt.Fprintf(&tb, "\n%-18s", ki)
		for j := range nslab.NATKinds {
			c, ok := res[[2]int{i, j}]
			s := ""
			switch {
			case !ok:
			case c.ab && c.ba:
				s = "both"
			case c.ab:
				s = "A→B only"
			case c.ba:
				s = "B→A only"
			default:
				s = "none"
			}
			fmt.Fprintf(&tb, "%-19s", s)
		}
	}
	t.Logf("ping between NATed members (A = first of its kind, B = second):%s", tb.String())
}
