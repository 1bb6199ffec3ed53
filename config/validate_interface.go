// Validation of [interface]: the link, the node's addresses, MTU, UDP port, key and
// seed files, and the full-tunnel keys (exit_peer, fwmark, table, kill_switch).

package config

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"unicode"
)

// Limits on [interface] values, documented in docs/configuration.md.
const (
	maxRoutingTable  = 1<<32 - 1
	reservedTableLow = 253 // 253 default, 254 main, 255 local
)

func (v *validator) iface(r *rawInterface) Interface {
	in := Interface{
		Name:       v.defaultLink,
		MTU:        DefaultMTU,
		ListenPort: DefaultListenPort,
		FwMark:     DefaultFwMark,
		Table:      DefaultTable,
		KillSwitch: true,
		MSSClamp:   true,
	}
	if r.Name != nil {
		in.Name = *r.Name
		if err := checkLinkName(in.Name); err != nil {
			v.errAt("interface.name", "interface: name %q %v", in.Name, err)
		}
	}
	if r.NodeName != nil {
		in.NodeName = *r.NodeName
		if err := checkName(in.NodeName); err != nil {
			v.errAt("interface.node_name", "interface: node_name %q %v", in.NodeName, err)
		}
	} else {
		in.NodeName = defaultNodeName()
	}

	hasV6 := false
	seen := make(map[netip.Prefix]int)
	for i, s := range r.Addresses {
		p := "interface.addresses." + strconv.Itoa(i)
		a, err := parseAddress(s)
		if err != nil {
			v.errAt(p, "interface: addresses: %v", err)
			continue
		}
		if j, dup := seen[a]; dup {
			v.errAt(p, "interface: addresses: %s is listed twice (also at line %d)", a, v.pos.line("interface.addresses."+strconv.Itoa(j)))
			continue
		}
		seen[a] = i
		if a.Addr().Is6() {
			hasV6 = true
		}
		in.Addresses = append(in.Addresses, a)
	}

	if r.MTU != nil {
		minMTU, why := MinMTUIPv4, "with IPv4 addresses only"
		if hasV6 {
			minMTU, why = MinMTU, "with IPv6 addresses"
		}
		switch m := *r.MTU; {
		case m < int64(minMTU):
			v.errAt("interface.mtu", "interface: mtu = %d is too small; the minimum is %d %s", m, minMTU, why)
		case m > MaxMTU:
			v.errAt("interface.mtu", "interface: mtu = %d is too large; the maximum is %d (a sealed frame must fit one UDP datagram)", m, MaxMTU)
		default:
			in.MTU = int(m)
		}
	}

	if r.UDP != nil {
		in.DisableUDP = !*r.UDP
	}
	if in.DisableUDP {
		in.ListenPort = 0
	}
	if r.ListenPort != nil && in.DisableUDP {
		// Refused rather than ignored: a node that looks reachable on a UDP port
		// and is not would be puzzling to debug.
		v.errAt("interface.listen_port", "interface: listen_port has no use with udp = false (line %d): this node opens no UDP socket; remove listen_port", v.pos.line("interface.udp"))
	} else if r.ListenPort != nil {
		if p := *r.ListenPort; p < 0 || p > 65535 {
			v.errAt("interface.listen_port", "interface: listen_port = %d is not a UDP port (0..65535; 0 picks a random port)", p)
		} else {
			in.ListenPort = int(p)
		}
	}

	in.SeedFile = v.filePath(r.SeedFile, "interface.seed_file", "seed_file",
		`seed_file = "/etc/stt-tun/seed" (create it with: stt-tun genseed)`)
	in.KeyFile = v.filePath(r.KeyFile, "interface.key_file", "key_file",
		`key_file = "/etc/stt-tun/`+in.Name+`.key" (it is created on first start)`)
	if in.SeedFile != "" && in.SeedFile == in.KeyFile {
		v.errAt("interface.key_file", "interface: key_file and seed_file are the same file %s; the node key and the network seed must be kept apart", in.KeyFile)
	}

	if r.ExitPeer != nil {
		in.ExitPeer = *r.ExitPeer // checked against the peers in exitPeer
	}
	if r.FwMark != nil {
		if m := *r.FwMark; m <= 0 || m > 1<<32-1 {
			v.errAt("interface.fwmark", "interface: fwmark = %d must be between 1 and 0xffffffff", m)
		} else {
			in.FwMark = uint32(m)
		}
	}
	if r.Table != nil {
		switch t := *r.Table; {
		case t <= 0 || t > maxRoutingTable:
			v.errAt("interface.table", "interface: table = %d must be between 1 and %d", t, int64(maxRoutingTable))
		case t >= reservedTableLow && t <= 255:
			v.errAt("interface.table", "interface: table = %d is reserved by the kernel (253 default, 254 main, 255 local); pick another, such as %d", t, DefaultTable)
		default:
			in.Table = int(t)
		}
	}
	if r.KillSwitch != nil {
		// Accepted without exit_peer, like fwmark and table, so that switching
		// the full tunnel on and off stays a one-line change.
		in.KillSwitch = *r.KillSwitch
	}
	if r.MSSClamp != nil {
		in.MSSClamp = *r.MSSClamp
	}
	return in
}

// filePath checks a required path key and resolves it against the config file's
// directory.
func (v *validator) filePath(s *string, path, key, example string) string {
	if s == nil {
		if v.noInterface {
			return ""
		}
		v.errAt("interface", "interface: %s is required, e.g. %s", key, example)
		return ""
	}
	p := *s
	switch {
	case p == "":
		v.errAt(path, "interface: %s is empty; e.g. %s", key, example)
		return ""
	case strings.ContainsFunc(p, unicode.IsControl):
		v.errAt(path, "interface: %s %q contains control characters", key, p)
		return ""
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(v.dir, p)
	}
	return filepath.Clean(p)
}

// exitPeer checks that exit_peer names a peer that can carry a default route.
func (v *validator) exitPeer(cfg *Config) {
	name := cfg.Interface.ExitPeer
	if name == "" {
		return
	}
	idx := -1
	for i := range cfg.Peers {
		if cfg.Peers[i].Name == name {
			idx = i
			break
		}
	}
	if idx < 0 {
		v.errAt("interface.exit_peer", "interface: exit_peer %q is not the name of any [[peer]] in this file", name)
		return
	}
	p := &cfg.Peers[idx]
	hasDefault := false
	for _, pf := range p.AllowedPrefixes {
		if pf.Bits() == 0 {
			hasDefault = true
		}
	}
	base := "peer." + strconv.Itoa(idx)
	if !hasDefault {
		v.errAt("interface.exit_peer", "interface: exit_peer %q: that peer's allowed_prefixes (line %d) include neither 0.0.0.0/0 nor ::/0; add them to send all traffic through it",
			name, v.pos.line(base+".allowed_prefixes"))
	}
	if !p.Route {
		v.errAt("interface.exit_peer", "interface: exit_peer %q has route = false (line %d); an exit peer needs its routes", name, v.pos.line(base+".route"))
	}
}

// parseAddress parses an interface address; host bits are the point here.
func parseAddress(s string) (netip.Prefix, error) {
	p, err := parsePrefix(s, "10.99.0.1/24")
	if err != nil {
		return p, err
	}
	a := p.Addr()
	switch {
	case a.IsUnspecified():
		return p, fmt.Errorf("%s is the unspecified address, not an interface address", s)
	case a.IsMulticast():
		return p, fmt.Errorf("%s is a multicast address, not an interface address", s)
	}
	return p, nil
}

// checkLinkName applies the kernel's rules for interface names.
func checkLinkName(s string) error {
	switch {
	case s == "":
		return errors.New("is empty")
	case len(s) > MaxLinkNameLen:
		return fmt.Errorf("is %d bytes long; Linux allows at most %d", len(s), MaxLinkNameLen)
	case s == "." || s == "..":
		return errors.New("is not a valid interface name")
	case strings.ContainsAny(s, "/:") || strings.ContainsFunc(s, unicode.IsSpace) || strings.ContainsFunc(s, unicode.IsControl):
		return errors.New("may not contain '/', ':', spaces or control characters")
	}
	return nil
}

// defaultLinkName derives a link name from a config file name: "/etc/stt-tun/wg9.toml"
// gives "wg9". A base name that is not a valid link name gives DefaultName.
func defaultLinkName(path string) string {
	if path == "" {
		return DefaultName
	}
	base := strings.TrimSuffix(filepath.Base(path), ".toml")
	if base == "" || base == "." || checkLinkName(base) != nil {
		return DefaultName
	}
	return base
}
