// Validation of [[peer]] sections: names, endpoints, allowed prefixes and their
// overlaps, keys, a peer's WebSocket keys, and whether each peer can be reached at all.

package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// maxKeepalive bounds persistent_keepalive, as docs/configuration.md documents.
const maxKeepalive = 65535 * time.Second

// owner records which peer claimed a prefix, for overlap messages.
type owner struct {
	prefix netip.Prefix
	peer   int
	path   string
}

// With discovery on, a peer may leave out allowed_prefixes: its prefixes can then
// come from its member record.
func (v *validator) peers(raws []rawPeer, nodeName string, discovery bool) []Peer {
	peers := make([]Peer, 0, len(raws))
	names := make(map[string]int)
	var claimed []owner
	for i := range raws {
		r := &raws[i]
		base := "peer." + strconv.Itoa(i)
		p := Peer{Route: true}
		label := fmt.Sprintf("peer #%d", i+1)

		if r.Name == nil {
			v.errAt(base, "%s: name is required", label)
		} else {
			p.Name = *r.Name
			if err := checkName(p.Name); err != nil {
				v.errAt(base+".name", "%s: name %q %v", label, p.Name, err)
			} else {
				label = fmt.Sprintf("peer %q", p.Name)
				if j, dup := names[p.Name]; dup {
					v.errAt(base+".name", "%s: name is used twice (first at line %d); peer names must be unique", label,
						v.pos.line("peer."+strconv.Itoa(j)+".name"))
				} else {
					names[p.Name] = i
				}
				if p.Name == nodeName {
					v.errAt(base+".name", "%s: name is this node's own node_name; a node is not its own peer (set node_name in [interface] if the host name is wrong)", label)
				}
			}
		}

		if r.Endpoint != nil && *r.Endpoint != "" {
			if err := checkEndpoint(*r.Endpoint); err != nil {
				v.errAt(base+".endpoint", "%s: endpoint %q %v", label, *r.Endpoint, err)
			} else {
				p.Endpoint = *r.Endpoint
			}
		}

		if len(r.AllowedPrefixes) == 0 && !discovery {
			where := base + ".allowed_prefixes"
			if !v.pos.has(where) {
				where = base
			}
			v.errAt(where, "%s: allowed_prefixes is required and must list at least one prefix, e.g. allowed_prefixes = [\"10.99.0.2/32\"]", label)
		}
		for j, s := range r.AllowedPrefixes {
			path := base + ".allowed_prefixes." + strconv.Itoa(j)
			pf, err := parseAllowedPrefix(s)
			if err != nil {
				v.errAt(path, "%s: allowed_prefixes: %v", label, err)
				continue
			}
			if msg := v.overlap(claimed, pf, i, peers, label); msg != "" {
				v.errAt(path, "%s", msg)
				continue
			}
			claimed = append(claimed, owner{prefix: pf, peer: i, path: path})
			p.AllowedPrefixes = append(p.AllowedPrefixes, pf)
		}

		if r.PublicKey != nil {
			k, err := DecodeKey(*r.PublicKey)
			if err != nil {
				// The value is not echoed: a private key pasted here by mistake
				// must not end up in logs.
				v.errAt(base+".public_key", "%s: public_key: %v", label, err)
			} else {
				p.PublicKey = &k
			}
		}

		if r.PersistentKeepalive != nil {
			d, err := parseDuration(*r.PersistentKeepalive)
			switch {
			case err != nil:
				v.errAt(base+".persistent_keepalive", "%s: persistent_keepalive = %q %v", label, *r.PersistentKeepalive, err)
			case d != 0 && (d < time.Second || d > maxKeepalive):
				v.errAt(base+".persistent_keepalive", "%s: persistent_keepalive = %q must be \"0s\" (off) or between 1s and %s", label, *r.PersistentKeepalive, maxKeepalive)
			default:
				p.PersistentKeepalive = d
			}
		}
		if r.Route != nil {
			p.Route = *r.Route
		}
		v.peerWS(r, &p, base, label)
		peers = append(peers, p)
	}
	return peers
}

// overlap checks a new prefix against those already claimed. Prefixes of different
// peers may not overlap, except that a default route (/0) coexists with more
// specific prefixes: longest-prefix match makes that unambiguous. Within one peer,
// a prefix inside another (other than a /0) is redundant and refused.
func (v *validator) overlap(claimed []owner, pf netip.Prefix, peer int, peers []Peer, label string) string {
	for _, c := range claimed {
		if !c.prefix.Overlaps(pf) {
			continue
		}
		if c.peer == peer {
			if c.prefix == pf {
				return fmt.Sprintf("%s: allowed_prefixes: %s is listed twice (also at line %d)", label, pf, v.pos.line(c.path))
			}
			if c.prefix.Bits() == 0 || pf.Bits() == 0 {
				continue
			}
			outer, inner := c.prefix, pf
			if inner.Bits() < outer.Bits() {
				outer, inner = inner, outer
			}
			return fmt.Sprintf("%s: allowed_prefixes: %s is already covered by %s (line %d); list only %s", label, inner, outer, v.pos.line(c.path), outer)
		}
		if (c.prefix.Bits() == 0) != (pf.Bits() == 0) {
			continue
		}
		other := fmt.Sprintf("peer #%d", c.peer+1)
		if c.peer < len(peers) && peers[c.peer].Name != "" {
			other = fmt.Sprintf("peer %q", peers[c.peer].Name)
		}
		return fmt.Sprintf("%s: allowed_prefixes: %s overlaps %s of %s (line %d); a packet must have exactly one peer to go to",
			label, pf, c.prefix, other, v.pos.line(c.path))
	}
	return ""
}

// peerWS checks a peer's WebSocket keys.
func (v *validator) peerWS(r *rawPeer, p *Peer, base, label string) {
	scheme := ""
	if r.WSURL != nil && *r.WSURL != "" {
		u, err := checkWSURL(*r.WSURL)
		if err != nil {
			v.errAt(base+".ws_url", "%s: ws_url %q %v", label, u, err)
		} else {
			p.WSURL = *r.WSURL
			scheme = strings.SplitN(p.WSURL, ":", 2)[0]
		}
	}
	hasURL := r.WSURL != nil && *r.WSURL != ""
	if r.WSProxy != nil && *r.WSProxy != "" {
		shown, err := checkProxy(*r.WSProxy)
		switch {
		case err != nil:
			v.errAt(base+".ws_proxy", "%s: ws_proxy %q %v", label, shown, err)
		case !hasURL:
			v.errAt(base+".ws_proxy", "%s: ws_proxy has no use without ws_url", label)
		default:
			p.WSProxy = *r.WSProxy
		}
	}
	tlsOnly := func(key string) bool {
		switch {
		case !hasURL:
			v.errAt(base+"."+key, "%s: %s has no use without a wss:// ws_url", label, key)
		case scheme == "ws":
			v.errAt(base+"."+key, "%s: %s applies to wss:// only, and ws_url (line %d) is ws://", label, key, v.pos.line(base+".ws_url"))
		default:
			return true
		}
		return false
	}
	if r.WSCAFile != nil && *r.WSCAFile != "" {
		f := v.optionalFile(r.WSCAFile, base+".ws_ca_file", label+": ws_ca_file")
		if f != "" && tlsOnly("ws_ca_file") {
			p.WSCAFile = f
		}
	}
	if r.WSInsecure != nil && *r.WSInsecure {
		switch {
		case r.WSCAFile != nil && *r.WSCAFile != "":
			v.errAt(base+".ws_insecure", "%s: ws_insecure = true skips the certificate check that ws_ca_file (line %d) is for; keep one of them", label, v.pos.line(base+".ws_ca_file"))
		case tlsOnly("ws_insecure"):
			p.WSInsecure = true
		}
	}
}

// reachable checks that a node without UDP can still reach, or be reached by, each peer.
func (v *validator) reachable(cfg *Config, raws []rawPeer) {
	if !cfg.Interface.DisableUDP {
		return
	}
	udpLine := v.pos.line("interface.udp")
	for i := range raws {
		r := &raws[i]
		if i >= len(cfg.Peers) {
			break
		}
		p := &cfg.Peers[i]
		base := "peer." + strconv.Itoa(i)
		label := fmt.Sprintf("peer #%d", i+1)
		if p.Name != "" {
			label = fmt.Sprintf("peer %q", p.Name)
		}
		hasURL := r.WSURL != nil && *r.WSURL != ""
		switch {
		case r.Endpoint != nil && *r.Endpoint != "" && hasURL:
			v.errAt(base+".endpoint", "%s: endpoint is a UDP address, and this node has udp = false (line %d); remove it, ws_url reaches the peer", label, udpLine)
		case r.Endpoint != nil && *r.Endpoint != "":
			v.errAt(base+".endpoint", "%s: endpoint is a UDP address, and this node has udp = false (line %d), so the peer could never be reached; give it a ws_url instead", label, udpLine)
		case !hasURL && cfg.WebSocket.Listen == "":
			v.errAt(base, "%s could never be reached: this node has udp = false (line %d) and no [websocket] listen for the peer to connect to; give the peer a ws_url, or set listen", label, udpLine)
		}
	}
}

// parseAllowedPrefix parses a routed prefix, which must not have host bits set.
func parseAllowedPrefix(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
			return netip.Prefix{}, fmt.Errorf("%s has no prefix length; did you mean %s?", s, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	p, err := parsePrefix(s, "10.99.0.2/32")
	if err != nil {
		return p, err
	}
	if m := p.Masked(); m != p {
		return p, fmt.Errorf("%s has host bits set; did you mean %s?", s, m)
	}
	return p, nil
}

// checkEndpoint accepts HOST:PORT where HOST is an IP address (IPv6 in brackets)
// or a DNS name, resolved later by the engine.
func checkEndpoint(s string) error {
	if strings.Contains(s, "://") {
		return errors.New("is a URL; write HOST:PORT, e.g. 192.0.2.2:51900")
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		if a, aerr := netip.ParseAddr(s); aerr == nil {
			if a.Is6() {
				return fmt.Errorf("has no port; IPv6 endpoints are written in brackets: [%s]:%d", a, DefaultListenPort)
			}
			return fmt.Errorf("has no port; write e.g. %s:%d", a, DefaultListenPort)
		}
		if !strings.Contains(s, ":") {
			return fmt.Errorf("has no port; write HOST:PORT, e.g. %s:%d", s, DefaultListenPort)
		}
		return errors.New("is not HOST:PORT (IPv6 addresses go in brackets: [2001:db8::1]:51900)")
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return fmt.Errorf("has port %q; want a number from 1 to 65535", port)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.IsUnspecified() || a.IsMulticast() {
			return fmt.Errorf("has address %s, which cannot be a peer's address", a)
		}
		return nil
	}
	if strings.Contains(host, ":") {
		return fmt.Errorf("has host %q, which is not an IPv6 address", host)
	}
	return checkHostName(host)
}

// checkWSURL accepts ws://HOST[:PORT][/PATH] and wss://…; it returns the value to
// show in a message.
func checkWSURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return s, errors.New("is not a URL; write e.g. \"wss://vpn.example.net:443/stt\"")
	}
	shown := s
	if u.User != nil {
		shown = u.Redacted()
	}
	switch {
	case u.Scheme == "https" || u.Scheme == "http":
		return shown, fmt.Errorf("is an %s:// URL; WebSocket URLs start with ws:// or wss:// (the TLS form)", u.Scheme)
	case u.Scheme != "ws" && u.Scheme != "wss":
		return shown, errors.New("must start with ws:// or wss://, e.g. \"wss://vpn.example.net/stt\"")
	case u.Opaque != "" || u.Host == "" || u.Hostname() == "":
		return shown, errors.New("has no host; write e.g. \"wss://vpn.example.net/stt\"")
	case u.User != nil:
		return shown, errors.New("may not contain a user name or password")
	case u.Fragment != "" || strings.Contains(s, "#"):
		return shown, errors.New("may not contain a #fragment")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
			return shown, fmt.Errorf("has port %q; want a number from 1 to 65535", p)
		}
	}
	if a, err := netip.ParseAddr(u.Hostname()); err == nil {
		if a.IsUnspecified() || a.IsMulticast() {
			return shown, fmt.Errorf("has address %s, which cannot be a peer's address", a)
		}
		return shown, nil
	}
	if err := checkHostName(u.Hostname()); err != nil {
		return shown, err
	}
	return shown, nil
}

// checkProxy accepts "none" or http://[USER:PASSWORD@]HOST[:PORT]; it returns the
// value to show in a message, without a password.
func checkProxy(s string) (string, error) {
	if s == "none" {
		return s, nil
	}
	u, err := url.Parse(s)
	if err != nil || !strings.Contains(s, "://") {
		return s, errors.New("is not \"none\" or a proxy URL; write e.g. \"http://proxy.example.net:3128\"")
	}
	shown := u.Redacted()
	switch {
	case u.Scheme == "https":
		return shown, errors.New("is an https:// proxy; only http:// proxies are supported (the WebSocket's own TLS runs inside the CONNECT tunnel)")
	case u.Scheme != "http":
		return shown, errors.New("must be \"none\" or an http:// URL, e.g. \"http://proxy.example.net:3128\"")
	case u.Hostname() == "":
		return shown, errors.New("has no host")
	case (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "":
		return shown, errors.New("must be http://HOST:PORT, without a path")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
			return shown, fmt.Errorf("has port %q; want a number from 1 to 65535", p)
		}
	}
	if _, err := netip.ParseAddr(u.Hostname()); err == nil {
		return shown, nil
	}
	return shown, checkHostName(u.Hostname())
}
