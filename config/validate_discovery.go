// Validation of [discovery], which turns the mesh on: bootstrap addresses, the
// prefixes discovered members may claim and this node announces, extra endpoints, and
// the rules it changes elsewhere (mtu with mesh_ipv6, [websocket] public_url).

package config

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Defaults and limits of [discovery], documented in docs/configuration.md.
const (
	// DefaultIdleTimeout is how long a discovered member's session may be idle
	// before it is closed.
	DefaultIdleTimeout = 5 * time.Minute
	// DefaultNATKeepalive holds a NAT mapping open: under the 30 s that many UDP NAT
	// timeouts are.
	DefaultNATKeepalive = 25 * time.Second
	// MaxBootstrap is the most bootstrap entries.
	MaxBootstrap = 16
	// MaxAcceptPrefixes is the most accept_prefixes.
	MaxAcceptPrefixes = 64
	// MaxAnnouncePrefixes is the most announce_prefixes: a member record carries at
	// most 16 prefixes.
	MaxAnnouncePrefixes = 16
	// MaxDiscoveryEndpoints is the most configured endpoints: a member record carries
	// at most 8 endpoints, and the interface's and observed addresses need room too.
	MaxDiscoveryEndpoints = 4
	// MaxRecordAddresses is the most interface addresses a member record carries,
	// the key-derived one (mesh_ipv6) included.
	MaxRecordAddresses = 8
)

// maxRecordAddresses is the most [interface] addresses a node with [discovery] may
// have.
func maxRecordAddresses(meshIPv6 bool) int {
	if meshIPv6 {
		return MaxRecordAddresses - 1
	}
	return MaxRecordAddresses
}

// Discovery is the [discovery] section. Its presence turns the mesh on: members find
// each other through signed member records gossiped over their sessions.
type Discovery struct {
	// Enabled is set when the file has a [discovery] section; the other fields are
	// only filled in then.
	Enabled bool
	// Bootstrap are members to contact first: UDP HOST:PORT (a host name is resolved
	// later) or ws:// / wss:// URLs, as written.
	Bootstrap []string
	// AcceptPrefixes are the prefixes a discovered member's addresses and announced
	// prefixes must each fall inside; none by default.
	AcceptPrefixes []netip.Prefix
	// AnnouncePrefixes are the prefixes this node serves besides its addresses.
	AnnouncePrefixes []netip.Prefix
	// Endpoints are extra UDP addresses this node announces, such as port forwards.
	Endpoints []netip.AddrPort
	// IdleTimeout closes a discovered member's session after that long without data
	// or control traffic; 0 never does.
	IdleTimeout time.Duration
	// MeshIPv6 assigns the key-derived IPv6 address to the link and routes the
	// members' ones.
	MeshIPv6 bool
	// Relay makes this node forward STT messages between members that cannot reach
	// each other (announced in its record).
	Relay bool
	// NATKeepalive is the keepalive on member sessions while this node is behind NAT,
	// so that its router keeps the mapping; 0 sends none.
	NATKeepalive time.Duration
}

// ErrLegacyKey is matched (errors.Is) by the error of CheckKeyForDiscovery.
var ErrLegacyKey = errors.New("key file in the legacy format")

type legacyKeyError struct{ path string }

func (e *legacyKeyError) Error() string {
	return fmt.Sprintf("key file %s holds a legacy X25519 key, and [discovery] needs a key in the ed25519 format; convert it with: stt-tun key-upgrade %s (the node's public key changes: update the peers that pin it)",
		e.path, shellQuote(e.path))
}

func (e *legacyKeyError) Is(target error) bool { return target == ErrLegacyKey }

// CheckKeyForDiscovery returns an error, one line naming `stt-tun key-upgrade FILE`,
// when [discovery] is on and k, read from the configuration's key_file, is a legacy
// key: the mesh signs member records with the Ed25519 key a legacy file lacks.
func (c *Config) CheckKeyForDiscovery(k NodeKey) error {
	if !c.Discovery.Enabled || !k.Legacy {
		return nil
	}
	return &legacyKeyError{path: c.Interface.KeyFile}
}

func (v *validator) discovery(r *rawDiscovery, in *Interface) Discovery {
	if r == nil {
		return Discovery{}
	}
	d := Discovery{Enabled: true, IdleTimeout: DefaultIdleTimeout, MeshIPv6: true, NATKeepalive: DefaultNATKeepalive}
	udpLine := v.pos.line("interface.udp")

	seen := make(map[string]int)
	for i, s := range r.Bootstrap {
		path := "discovery.bootstrap." + strconv.Itoa(i)
		if i == MaxBootstrap {
			v.errAt(path, "discovery: bootstrap has %d entries; the limit is %d", len(r.Bootstrap), MaxBootstrap)
			break
		}
		key, err := checkBootstrap(s)
		switch {
		case err != nil:
			v.errAt(path, "discovery: bootstrap %q %v", redactURL(s), err)
			continue
		case in.DisableUDP && !strings.Contains(s, "://"):
			v.errAt(path, "discovery: bootstrap %q is a UDP address, and this node has udp = false (line %d); give a ws:// or wss:// URL", s, udpLine)
			continue
		}
		if j, dup := seen[key]; dup {
			v.errAt(path, "discovery: bootstrap %q is listed twice (also at line %d)", s, v.pos.line("discovery.bootstrap."+strconv.Itoa(j)))
			continue
		}
		seen[key] = i
		d.Bootstrap = append(d.Bootstrap, s)
	}

	d.AcceptPrefixes = v.prefixSet(r.AcceptPrefixes, "accept_prefixes", MaxAcceptPrefixes,
		"would let any member claim every address")
	d.AnnouncePrefixes = v.prefixSet(r.AnnouncePrefixes, "announce_prefixes", MaxAnnouncePrefixes,
		"would claim every address; an exit node is a [[peer]] that others name in exit_peer")

	if len(r.Endpoints) > 0 && in.DisableUDP {
		v.errAt("discovery.endpoints", "discovery: endpoints are UDP addresses, and this node has udp = false (line %d); remove them", udpLine)
	} else {
		eps := make(map[netip.AddrPort]int)
		for i, s := range r.Endpoints {
			path := "discovery.endpoints." + strconv.Itoa(i)
			if i == MaxDiscoveryEndpoints {
				v.errAt(path, "discovery: endpoints has %d entries; the limit is %d", len(r.Endpoints), MaxDiscoveryEndpoints)
				break
			}
			ap, err := parseAnnouncedEndpoint(s)
			if err != nil {
				v.errAt(path, "discovery: endpoints: %q %v", s, err)
				continue
			}
			if j, dup := eps[ap]; dup {
				v.errAt(path, "discovery: endpoints: %s is listed twice (also at line %d)", ap, v.pos.line("discovery.endpoints."+strconv.Itoa(j)))
				continue
			}
			eps[ap] = i
			d.Endpoints = append(d.Endpoints, ap)
		}
	}

	if r.IdleTimeout != nil {
		t, err := parseDuration(*r.IdleTimeout)
		if err != nil {
			v.errAt("discovery.idle_timeout", "discovery: idle_timeout = %q %v", *r.IdleTimeout, err)
		} else {
			d.IdleTimeout = t
		}
	}
	if r.MeshIPv6 != nil {
		d.MeshIPv6 = *r.MeshIPv6
	}
	if r.Relay != nil {
		d.Relay = *r.Relay
	}
	if r.NATKeepalive != nil {
		t, err := parseDuration(*r.NATKeepalive)
		switch {
		case err != nil:
			v.errAt("discovery.nat_keepalive", "discovery: nat_keepalive = %q %v", *r.NATKeepalive, err)
		case t != 0 && (t < time.Second || t > time.Hour):
			v.errAt("discovery.nat_keepalive", "discovery: nat_keepalive = %q is out of range: 0s (none) or 1s to 1h; NAT routers commonly forget a UDP mapping after 30 s", *r.NATKeepalive)
		default:
			d.NATKeepalive = t
		}
	}
	if limit := maxRecordAddresses(d.MeshIPv6); len(in.Addresses) > limit {
		why := ""
		if d.MeshIPv6 {
			why = ", one of which mesh_ipv6 takes"
		}
		v.errAt("interface.addresses."+strconv.Itoa(limit), "interface: addresses has %d entries; with [discovery] the limit is %d (a member record carries %d addresses%s)",
			len(in.Addresses), limit, MaxRecordAddresses, why)
	}
	if d.MeshIPv6 && in.MTU < MinMTU {
		v.errAt("interface.mtu", "interface: mtu = %d is too small for [discovery] mesh_ipv6, which gives the link an IPv6 address: the minimum is %d; raise mtu or set mesh_ipv6 = false", in.MTU, MinMTU)
	}
	return d
}

// prefixSet checks a list of canonical prefixes: no host bits, no /0, no duplicates,
// none inside another, at most limit.
func (v *validator) prefixSet(raws []string, key string, limit int, whyNoDefault string) []netip.Prefix {
	var out []netip.Prefix
	var lines []string
	for i, s := range raws {
		path := "discovery." + key + "." + strconv.Itoa(i)
		if i == limit {
			v.errAt(path, "discovery: %s has %d entries; the limit is %d", key, len(raws), limit)
			break
		}
		p, err := parseAllowedPrefix(s)
		if err != nil {
			v.errAt(path, "discovery: %s: %v", key, err)
			continue
		}
		if p.Bits() == 0 {
			v.errAt(path, "discovery: %s: %s %s", key, p, whyNoDefault)
			continue
		}
		bad := false
		for j, q := range out {
			if !q.Overlaps(p) {
				continue
			}
			bad = true
			if q == p {
				v.errAt(path, "discovery: %s: %s is listed twice (also at line %d)", key, p, v.pos.line(lines[j]))
			} else {
				outer, inner := q, p
				if inner.Bits() < outer.Bits() {
					outer, inner = inner, outer
				}
				v.errAt(path, "discovery: %s: %s is already covered by %s (line %d); list only %s", key, inner, outer, v.pos.line(lines[j]), outer)
			}
			break
		}
		if !bad {
			out = append(out, p)
			lines = append(lines, path)
		}
	}
	return out
}

// announcedOverlaps refuses announce_prefixes that this node routes to a [[peer]]:
// it cannot serve an address it sends to someone else.
func (v *validator) announcedOverlaps(cfg *Config) {
announced:
	for i, a := range cfg.Discovery.AnnouncePrefixes {
		for pi := range cfg.Peers {
			p := &cfg.Peers[pi]
			for _, q := range p.AllowedPrefixes {
				if q.Bits() == 0 || !q.Overlaps(a) {
					continue
				}
				v.errAt("discovery.announce_prefixes."+strconv.Itoa(i),
					"discovery: announce_prefixes: %s overlaps %s of peer %q (line %d); this node cannot serve addresses it routes to a peer",
					a, q, p.Name, v.pos.line("peer."+strconv.Itoa(pi)+".allowed_prefixes"))
				continue announced
			}
		}
	}
}

// checkBootstrap accepts HOST:PORT (UDP) or a ws:// or wss:// URL, and returns the
// form that two entries naming the same place share.
func checkBootstrap(s string) (string, error) {
	if s == "" {
		return "", errors.New("is empty; write HOST:PORT or a ws:// or wss:// URL")
	}
	if strings.Contains(s, "://") {
		if _, err := checkWSURL(s); err != nil {
			return "", err
		}
		return s, nil
	}
	if err := checkEndpoint(s); err != nil {
		return "", err
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.String(), nil
	}
	return strings.ToLower(s), nil
}

// redactURL hides the password of a URL in a message.
func redactURL(s string) string {
	shown, _ := checkWSURL(s)
	if strings.Contains(s, "://") {
		return shown
	}
	return s
}

// parseAnnouncedEndpoint accepts IP:PORT, an address others can send to.
func parseAnnouncedEndpoint(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		if checkEndpoint(s) == nil {
			return ap, errors.New("is not IP:PORT; endpoints are announced as addresses, not host names, e.g. \"203.0.113.5:51900\"")
		}
		return ap, errors.New("is not IP:PORT, e.g. \"203.0.113.5:51900\" or \"[2001:db8::5]:51900\"")
	}
	a := ap.Addr()
	switch {
	case ap.Port() == 0:
		return ap, errors.New("has port 0; want a number from 1 to 65535")
	case a.Zone() != "":
		return ap, errors.New("has a zone; an announced address must be reachable from other hosts")
	case a.Is4In6():
		return ap, errors.New("is an IPv4-mapped IPv6 address; write the IPv4 address")
	case a.IsUnspecified() || a.IsMulticast() || a.IsLoopback():
		return ap, fmt.Errorf("has address %s, which other nodes cannot send to", a)
	}
	return ap, nil
}
