// Package routing is the operating-system side of stt-tun: it configures an
// existing TUN link through netlink (MTU, state, addresses, routes, policy
// rules), sysctls and nftables, and records every change in a journal on disk
// before making it, so that `stt-tun down` can undo exactly what `up` did,
// even after the daemon was killed. It never touches packets.
//
// All work happens in the network namespace of the OS thread that calls
// Apply or UndoFromState; a Manager keeps a handle to that namespace, so its
// later methods act there whichever goroutine calls them.
package routing

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
)

const (
	// DefaultFwMark is the firewall mark used when Spec.FwMark is zero. The
	// caller sets it (SO_MARK) on its own UDP sockets so that tunnel traffic
	// escapes the full-tunnel policy rule. 0x5354 is "ST".
	DefaultFwMark uint32 = 0x5354

	// DefaultTable is the routing table used when Spec.Table is zero.
	DefaultTable = 5354

	// DefaultRulePriority is used when Spec.RulePriority is zero. It places
	// the two full-tunnel rules at 32764 and 32765, just before the kernel's
	// "lookup main" rule at 32766, as wg-quick does.
	DefaultRulePriority = 32764

	// DefaultStateDir is where journals live when Spec.StateDir is empty.
	DefaultStateDir = "/run/stt-tun"

	// Protocol is the routing protocol number stamped on every route and
	// policy rule this package creates ("proto 83" in `ip route` and
	// `ip rule`). Deletions name it, so an undo can never remove a route or
	// rule that someone else made with the same destination.
	Protocol = 83

	// KillSwitchMetric is the metric of the kill switch's unreachable
	// default route in the full-tunnel table: the largest there is, so the
	// default route via the link always wins while the link exists.
	KillSwitchMetric = 0xffffffff
)

// Special kernel routing tables that Spec.Table must not name.
const (
	tableDefault = 253
	tableMain    = 254
	tableLocal   = 255
)

// Spec describes the OS configuration for one tunnel link.
type Spec struct {
	// Link is the name of an existing TUN device that tun.Create made: Apply
	// refuses any other link, one without tun.LinkAlias included. It is never
	// created or deleted here.
	Link string

	// MTU is set on the link; zero leaves the MTU alone. With IPv6
	// addresses or routes it must be at least 1280.
	MTU int

	// Addresses are assigned to the link, IPv4 and IPv6, each with its
	// prefix length (10.7.0.1/24).
	Addresses []netip.Prefix

	// Routes are routed via the link in the main table. Prefixes must be
	// canonical (no host bits set). A /0 prefix (0.0.0.0/0, ::/0) is never a
	// main-table route: it asks for a full tunnel in its family, and is
	// accepted only together with FullTunnel.
	Routes []netip.Prefix

	// FullTunnel sends all traffic of each family that has a /0 in Routes
	// through the link, as for an exit peer: a default route via the link
	// in Table, the rules "lookup main suppress_prefixlength 0" (so the main
	// table's more specific routes, the LAN and the peers' prefixes, still
	// win) and "not fwmark FwMark lookup Table"; for IPv4 also
	// net.ipv4.conf.all.src_valid_mark=1. This is wg-quick's scheme. To keep
	// IPv6 from bypassing a full tunnel, include ::/0 too. It requires at
	// least one /0 in Routes. IPv6 parts are skipped where IPv6 is disabled.
	FullTunnel bool

	// KillSwitch, with FullTunnel, also puts an unreachable default route
	// (metric KillSwitchMetric, bound to no link) in Table for each family
	// of the full tunnel. While the link exists its own default route wins;
	// once the link is gone (the daemon was killed and the kernel deleted
	// its TUN) the unmarked traffic that the rules steer to Table is
	// refused instead of falling through to the main table's default
	// route. The route stays until the journal is undone. Traffic the main
	// table routes more specifically than /0 (the LAN) and the node's own
	// marked packets never reach Table, so they are not affected.
	KillSwitch bool

	// FwMark is the mark the node sets on its own UDP sockets (SO_MARK) so
	// that its underlay packets bypass the tunnel. Zero means DefaultFwMark.
	FwMark uint32

	// Table is the routing table that holds the full-tunnel default
	// routes. Zero means DefaultTable. 253, 254 and 255 are refused.
	Table int

	// RulePriority is the priority of the suppress_prefixlength rule; the
	// fwmark rule gets RulePriority+1. Zero means DefaultRulePriority. It
	// must leave both rules before the main rule (at most 32764).
	RulePriority int

	// Forwarding enables IPv4 and IPv6 forwarding (net.ipv4.ip_forward,
	// net.ipv6.conf.all.forwarding), for an exit or subnet-router node.
	Forwarding bool

	// Masquerade adds an nftables table (inet family, named by NFTTableName)
	// that masquerades traffic which arrived on Link and leaves by another
	// interface.
	Masquerade bool

	// StateDir holds the journal, <StateDir>/<Link>.json. Empty means
	// DefaultStateDir. It must be safe as internal/statedir says (owned by
	// root, writable by nobody else, nor its parents); a missing one is created
	// with mode 0700.
	StateDir string
}

// StatePath returns the journal path for link in stateDir; an empty
// stateDir means DefaultStateDir.
func StatePath(stateDir, link string) string {
	if stateDir == "" {
		stateDir = DefaultStateDir
	}
	return filepath.Join(stateDir, link+".json")
}

// NFTTableName returns the name of the nftables table (family inet) that
// holds the masquerade rule for link.
func NFTTableName(link string) string {
	return "stt-tun-" + link
}

// checkLinkName applies the kernel's rules for interface names, which also
// makes the name safe to use as a file name in the state directory.
func checkLinkName(name string) error {
	switch {
	case name == "":
		return errors.New("empty link name")
	case len(name) > 15:
		return fmt.Errorf("link name %q longer than 15 bytes", name)
	case name == "." || name == "..":
		return fmt.Errorf("invalid link name %q", name)
	case strings.ContainsAny(name, "/: \t\n\r\v\f\x00"):
		return fmt.Errorf("invalid link name %q", name)
	}
	return nil
}

// normalize fills in defaults and checks the spec before anything is
// changed, so that a bad spec never leaves half a configuration behind.
func (s Spec) normalize() (Spec, error) {
	if err := checkLinkName(s.Link); err != nil {
		return s, err
	}
	if s.StateDir == "" {
		s.StateDir = DefaultStateDir
	}
	if s.FwMark == 0 {
		s.FwMark = DefaultFwMark
	}
	if s.Table == 0 {
		s.Table = DefaultTable
	}
	if s.RulePriority == 0 {
		s.RulePriority = DefaultRulePriority
	}
	switch s.Table {
	case tableDefault, tableMain, tableLocal:
		return s, fmt.Errorf("table %d is reserved by the kernel", s.Table)
	}
	if s.Table < 0 || int64(s.Table) > 0xffffffff {
		return s, fmt.Errorf("table %d out of range", s.Table)
	}
	if s.RulePriority < 1 || s.RulePriority > 32764 {
		return s, fmt.Errorf("rule priority %d out of range 1..32764", s.RulePriority)
	}
	hasV6 := false
	seen := make(map[netip.Prefix]bool)
	for _, a := range s.Addresses {
		if err := checkPrefix(a); err != nil {
			return s, fmt.Errorf("address %s: %w", a, err)
		}
		if seen[a] {
			return s, fmt.Errorf("address %s listed twice", a)
		}
		seen[a] = true
		if a.Addr().Is6() {
			hasV6 = true
		}
	}
	clear(seen)
	defaults := 0
	for _, r := range s.Routes {
		if err := checkRoute(r, s.FullTunnel); err != nil {
			return s, err
		}
		if seen[r] {
			return s, fmt.Errorf("route %s listed twice", r)
		}
		seen[r] = true
		if r.Bits() == 0 {
			defaults++
		}
		if r.Addr().Is6() {
			hasV6 = true
		}
	}
	if s.FullTunnel && defaults == 0 {
		return s, errors.New("full tunnel without 0.0.0.0/0 or ::/0 in routes")
	}
	if s.MTU != 0 {
		if s.MTU < 68 || s.MTU > 65535 {
			return s, fmt.Errorf("mtu %d out of range 68..65535", s.MTU)
		}
		// Below 1280 the kernel switches IPv6 off on the link.
		if hasV6 && s.MTU < 1280 {
			return s, fmt.Errorf("mtu %d below 1280, the IPv6 minimum", s.MTU)
		}
	}
	return s, nil
}

// fullTunnel reports whether the spec asks for a full tunnel in family (4
// or 6).
func (s Spec) fullTunnel(family int) bool {
	if !s.FullTunnel {
		return false
	}
	for _, r := range s.Routes {
		if r.Bits() == 0 && r.Addr().Is4() == (family == 4) {
			return true
		}
	}
	return false
}

func checkPrefix(p netip.Prefix) error {
	if !p.IsValid() {
		return errors.New("invalid prefix")
	}
	if p.Addr().Is4In6() {
		return errors.New("IPv4-mapped IPv6 address; use the IPv4 form")
	}
	if p.Addr().Zone() != "" {
		return errors.New("zone not allowed")
	}
	return nil
}

func checkRoute(p netip.Prefix, fullTunnel bool) error {
	if err := checkPrefix(p); err != nil {
		return fmt.Errorf("route %s: %w", p, err)
	}
	if p.Masked() != p {
		return fmt.Errorf("route %s: host bits set (did you mean %s?)", p, p.Masked())
	}
	if p.Bits() == 0 && !fullTunnel {
		return fmt.Errorf("route %s: a default route needs FullTunnel", p)
	}
	return nil
}
