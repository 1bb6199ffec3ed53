package nslab

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NATKind is the behaviour of a router made by Lab.NATRouter.
type NATKind string

// The kinds of router. Filtering is address-and-port dependent for every NAT kind:
// Linux conntrack lets an inbound UDP packet through only if it answers an existing
// entry, so what tells the kinds apart is how they map (see
// /work/shared/research/mesh-anchors.md §3.7 and net/netfilter/nf_nat_core.c).
const (
	// NATEasy is `masquerade`: endpoint-independent mapping (the kernel keeps the
	// source port when it is free and reuses a source's mapping for every
	// destination). Tailscale calls it "easy"; most home routers behave so.
	NATEasy NATKind = "easy"
	// NATHardRandom is `masquerade to :40000-49999 random`: every new destination gets
	// a fresh random port (endpoint-dependent mapping, "symmetric", "hard").
	NATHardRandom NATKind = "hard-random"
	// NATHardFullyRandom is `masquerade to :40000-49999 fully-random`: the same with
	// the port chosen by the kernel's full randomisation.
	NATHardFullyRandom NATKind = "hard-fully-random"
	// NATFirewall is no translation: the host behind it has a public address, but the
	// router forwards inbound traffic only when it belongs to a flow the host
	// started (a cloud security group, an IPv6 home router).
	NATFirewall NATKind = "firewall"
	// NATUDPBlocked is NATEasy that drops all forwarded UDP: only TCP (WebSocket)
	// gets out.
	NATUDPBlocked NATKind = "udp-blocked"
	// NATPublic is a plain router: no translation and no filtering, the host behind it
	// has a public address that anyone reaches (a server in a data centre). It is here
	// so that every member of a lab sits at a site of the same shape.
	NATPublic NATKind = "public"
)

// NATKinds lists every kind, in the order a matrix shows them.
var NATKinds = []NATKind{NATPublic, NATEasy, NATHardRandom, NATHardFullyRandom, NATFirewall, NATUDPBlocked}

// translates reports whether kind rewrites its hosts' source addresses.
func (k NATKind) translates() bool { return k != NATFirewall && k != NATPublic }

// hardPorts is the range the hard kinds map UDP to, so that a mapped port cannot be
// mistaken for a preserved one.
const hardPortMin, hardPortMax = 40000, 49999

// NATSite is a host namespace behind a router namespace that connects it to an
// "internet" namespace.
type NATSite struct {
	Kind NATKind
	// Router is the router's namespace; Host the namespace behind it.
	Router, Host *NS
	// Public is the router's address on the internet link: the source address the
	// internet sees for the host under every kind but NATFirewall and NATPublic.
	Public netip.Addr
	// HostAddr is the host's own address: in 10.N.0.0/24 behind a NAT, in
	// 198.19.N.0/28 (reachable from the internet, were it not filtered) behind
	// NATFirewall and NATPublic.
	HostAddr netip.Addr
	// WANDev and LANDev are the router's interfaces (LANDev: the first host's).
	WANDev, LANDev string
	// Hosts and HostAddrs list every host behind the router: Host first, then those
	// Lab.NATHost added.
	Hosts     []*NS
	HostAddrs []netip.Addr

	n int // the site's number
}

// NATRouter builds site n (1 to 250) of kind hanging off inet: the namespaces
// "<name>-gw" (the router) and "<name>" (the host), the internet link
// 198.18.N.0/24 (inet .1, router .2), the LAN 10.N.0.0/24 (router .1, host .2; for
// NATFirewall and NATPublic the public 198.19.N.0/28 instead, with 198.19.N.0/24
// routed by inet to the router), default routes, forwarding in the router, and the
// router's nftables rules. inet must forward (net.ipv4.ip_forward=1) for sites to
// reach each other. The rules live in the router's namespace only and go away with it
// at cleanup. Fails the test on error, so call it from the test goroutine.
func (l *Lab) NATRouter(inet *NS, name string, kind NATKind, n int) *NATSite {
	l.t.Helper()
	if n < 1 || n > 250 {
		l.t.Fatalf("nslab: NAT site number %d out of 1..250", n)
	}
	r := l.NS(name + "-gw")
	s := &NATSite{Kind: kind, Router: r, Public: netip.MustParseAddr(fmt.Sprintf("198.18.%d.2", n)), n: n}
	s.WANDev, _ = l.Link(inet, []string{fmt.Sprintf("198.18.%d.1/24", n)}, r, []string{s.Public.String() + "/24"})
	l.ip(r, "route", "add", "default", "via", fmt.Sprintf("198.18.%d.1", n))
	if !kind.translates() {
		l.ip(inet, "route", "add", fmt.Sprintf("198.19.%d.0/24", n), "via", s.Public.String())
	}
	s.Host = l.NATHost(s, name)
	s.HostAddr = s.HostAddrs[0]
	if _, err := r.Run("sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
		l.t.Fatalf("nslab: %v", err)
	}
	rules, err := natRules(kind, s.WANDev)
	if err != nil {
		l.t.Fatalf("nslab: %v", err)
	}
	if err := r.nft(rules); err != nil {
		l.t.Fatalf("nslab: NAT router %s (%s): %v", r.name, kind, err)
	}
	return s
}

// NATHost adds a host namespace "<name>" behind the router of s, on a LAN of its own
// that the router routes (the i-th host, from 0: 10.N.i.0/24 with the router at .1 and
// the host at .2; behind NATFirewall and NATPublic 198.19.N.16i/28, router 16i+1, host
// 16i+2). Hosts behind one router share its NAT: they reach each other at their own
// addresses through the router, untranslated, and the internet sees them all at the
// router's address. At most 16 hosts a site.
func (l *Lab) NATHost(s *NATSite, name string) *NS {
	l.t.Helper()
	i := len(s.Hosts)
	if i >= 16 {
		l.t.Fatalf("nslab: site %s has %d hosts already", s.Router.name, i)
	}
	h := l.NS(name)
	gw := fmt.Sprintf("10.%d.%d.1/24", s.n, i)
	addr := netip.MustParseAddr(fmt.Sprintf("10.%d.%d.2", s.n, i))
	if !s.Kind.translates() {
		gw = fmt.Sprintf("198.19.%d.%d/28", s.n, 16*i+1)
		addr = netip.MustParseAddr(fmt.Sprintf("198.19.%d.%d", s.n, 16*i+2))
	}
	bits := netip.MustParsePrefix(gw).Bits()
	dev, _ := l.Link(s.Router, []string{gw}, h, []string{netip.PrefixFrom(addr, bits).String()})
	if i == 0 {
		s.LANDev = dev
	}
	l.ip(h, "route", "add", "default", "via", netip.MustParsePrefix(gw).Addr().String())
	s.Hosts = append(s.Hosts, h)
	s.HostAddrs = append(s.HostAddrs, addr)
	return h
}

// natRules returns the nftables ruleset of a router of kind whose internet side is
// wan; every other interface is a LAN.
func natRules(kind NATKind, wan string) (string, error) {
	// A NAT router also drops what comes in on its internet side unasked, in its input
	// hook, as home routers do (OpenWrt's wan zone). Without that, the first packet of
	// a simultaneous open, arriving before the host's own, is addressed to the router
	// itself and leaves a conntrack entry whose reply tuple holds the host's mapped
	// port, so that the host's packet to the same peer gets a new port: an easy NAT
	// turns hard exactly when two hosts punch. A packet dropped before the end of the
	// input hook leaves no entry (conntrack confirms an entry only then).
	nat := func(stmt string) string {
		return fmt.Sprintf("table ip natlab {\n\tchain post {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\t%s\n\t}\n"+
			"\tchain input_filter {\n\t\ttype filter hook input priority filter; policy accept;\n\t\tiifname %q ct state established,related accept\n\t\tiifname %q counter drop\n\t}\n}\n", stmt, wan, wan)
	}
	filter := func(rules ...string) string {
		return fmt.Sprintf("table inet natlabfw {\n\tchain forward_filter {\n\t\ttype filter hook forward priority filter; policy drop;\n\t\t%s\n\t}\n}\n", strings.Join(rules, "\n\t\t"))
	}
	hard := func(mode string) string {
		return nat(fmt.Sprintf("oifname %q meta l4proto udp masquerade to :%d-%d %s\n\t\toifname %q masquerade", wan, hardPortMin, hardPortMax, mode, wan))
	}
	switch kind {
	case NATEasy:
		return nat(fmt.Sprintf("oifname %q masquerade", wan)), nil
	case NATHardRandom:
		return hard("random"), nil
	case NATHardFullyRandom:
		return hard("fully-random"), nil
	case NATFirewall:
		return filter("ct state established,related accept", fmt.Sprintf("iifname != %q accept", wan)), nil
	case NATUDPBlocked:
		return nat(fmt.Sprintf("oifname %q masquerade", wan)) +
			filter("meta l4proto udp drop", "ct state established,related accept", fmt.Sprintf("iifname != %q accept", wan)), nil
	case NATPublic:
		// An empty table, so that every kind has one to list.
		return "table ip natlab {\n}\n", nil
	}
	return "", fmt.Errorf("unknown NAT kind %q", kind)
}

// nft loads a ruleset into n with `nft -f -`.
func (n *NS) nft(rules string) error {
	cmd := exec.Command("ip", "netns", "exec", n.name, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft -f in %s: %w: %s\n%s", n.name, err, bytes.TrimSpace(out), rules)
	}
	return nil
}

// Mapping is one UDP translation a router holds.
type Mapping struct {
	// Inside is the host's own address and port; Remote the destination; Outside the
	// address and port the router put on the packets (what Remote sees).
	Inside, Remote, Outside netip.AddrPort
}

// UDPMappings returns the UDP translations the router's conntrack table holds (from
// /proc/net/nf_conntrack inside its namespace), including entries the router did not
// translate (Outside equals Inside then).
func (s *NATSite) UDPMappings() ([]Mapping, error) {
	out, err := s.Router.Run("cat", "/proc/net/nf_conntrack")
	if err != nil {
		return nil, err
	}
	return parseConntrack(out), nil
}

// parseConntrack reads the UDP entries of /proc/net/nf_conntrack lines like
//
//	ipv4 2 udp 17 29 src=10.2.0.2 dst=198.18.1.2 sport=51900 dport=51900 src=198.18.1.2 dst=198.18.2.2 sport=51900 dport=40123 [ASSURED] mark=0 ...
//
// where the first tuple is the original direction and the second the reply one.
func parseConntrack(text string) []Mapping {
	var ms []Mapping
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || f[2] != "udp" {
			continue
		}
		var src, dst, sport, dport []string
		for _, kv := range f {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				continue
			}
			switch k {
			case "src":
				src = append(src, v)
			case "dst":
				dst = append(dst, v)
			case "sport":
				sport = append(sport, v)
			case "dport":
				dport = append(dport, v)
			}
		}
		if len(src) != 2 || len(dst) != 2 || len(sport) != 2 || len(dport) != 2 {
			continue
		}
		ap := func(a, p string) (netip.AddrPort, bool) {
			addr, err := netip.ParseAddr(a)
			if err != nil {
				return netip.AddrPort{}, false
			}
			port, err := strconv.ParseUint(p, 10, 16)
			if err != nil {
				return netip.AddrPort{}, false
			}
			return netip.AddrPortFrom(addr, uint16(port)), true
		}
		in, ok1 := ap(src[0], sport[0])
		remote, ok2 := ap(dst[0], dport[0])
		outside, ok3 := ap(dst[1], dport[1]) // the reply goes to the translated source
		if ok1 && ok2 && ok3 {
			ms = append(ms, Mapping{Inside: in, Remote: remote, Outside: outside})
		}
	}
	return ms
}

// FlushConntrack deletes every entry of the router's connection tracking table, as a
// router reboot or `conntrack -F` does: the router forgets every mapping, drops what
// arrives for one until the host behind it sends again, and maps the host's next
// packet afresh (to a new port under the hard kinds). It returns how many IPv4 entries
// the table held just before. It talks netlink to the router's namespace directly
// (IPCTNL_MSG_CT_DELETE, the call `conntrack -F` makes), so it needs no tool on the
// machine and may run from any goroutine.
func (s *NATSite) FlushConntrack() (int, error) {
	h, err := netns.GetFromName(s.Router.name)
	if err != nil {
		return 0, fmt.Errorf("nslab: open namespace %s: %w", s.Router.name, err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h, unix.NETLINK_NETFILTER)
	if err != nil {
		return 0, fmt.Errorf("nslab: netlink in %s: %w", s.Router.name, err)
	}
	defer nl.Close()
	flows, err := nl.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
	if err != nil {
		return 0, fmt.Errorf("nslab: list conntrack in %s: %w", s.Router.name, err)
	}
	if err := nl.ConntrackTableFlush(netlink.ConntrackTable); err != nil {
		return len(flows), fmt.Errorf("nslab: flush conntrack in %s: %w", s.Router.name, err)
	}
	return len(flows), nil
}
