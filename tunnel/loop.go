package tunnel

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strconv"

	"github.com/stt-tun/stt-tun/config"
)

// A routing loop: the OS routes the node's own underlay traffic to a peer (UDP
// datagrams, or the TCP of a WebSocket) into the tunnel interface, because an allowed
// prefix covers the peer's endpoint, or because under exit_peer the uplink lost its
// route and the default route goes through the tunnel. Encapsulated again, each such
// packet would come back at once, and the tunnel would spin on its own traffic. The
// packet pump drops these packets (counted as routing_loop), as WireGuard does.

// loopsBack reports whether pkt, read from the TUN device and bound for p, is the
// node's own underlay traffic: a UDP datagram to p's UDP endpoint, or one sent from the
// node's listen port by one of the interface's own addresses (the source the OS picks
// when it routes the node's socket into the tunnel), or a TCP segment to the far end
// of p's WebSocket connection or to its ws_url given as an IP address. It reads two
// atomic pointers at most: no lock, no allocation.
func (t *Tunnel) loopsBack(pkt []byte, p *peer) bool {
	var proto byte
	var l4 []byte
	var src, dst netip.Addr
	switch pkt[0] >> 4 {
	case 4:
		ihl := int(pkt[0]&0x0f) * 4
		if ihl < 20 || len(pkt) < ihl+4 || binary.BigEndian.Uint16(pkt[6:8])&0x1fff != 0 {
			return false // not the first fragment: no ports
		}
		proto, l4 = pkt[9], pkt[ihl:]
		src, dst = netip.AddrFrom4([4]byte(pkt[12:16])), netip.AddrFrom4([4]byte(pkt[16:20]))
	case 6:
		if len(pkt) < 44 {
			return false
		}
		var ok bool
		if proto, l4, ok = ipv6Upper(pkt); !ok {
			return false
		}
		src, dst = netip.AddrFrom16([16]byte(pkt[8:24])), netip.AddrFrom16([16]byte(pkt[24:40]))
	default:
		return false
	}
	to := netip.AddrPortFrom(dst, binary.BigEndian.Uint16(l4[2:4]))
	switch proto {
	case protoUDP:
		if t.port != 0 && binary.BigEndian.Uint16(l4[0:2]) == t.port && slices.Contains(t.ownAddrs, src) {
			return true
		}
		return to == p.sp.UDPEndpoint()
	case protoTCP:
		if u := p.wsURL.Load(); u != nil && *u == to {
			return true
		}
		return to == p.sp.WSEndpoint()
	}
	return false
}

// maxExtHeaders bounds the IPv6 extension headers ipv6Upper steps over.
const maxExtHeaders = 4

// ipv6Upper finds the upper-layer protocol of an IPv6 packet and its header (at least
// the 4 bytes of ports), stepping over hop-by-hop, routing, destination options and
// fragment headers. The node's own UDP datagrams, routed into the TUN device with its
// MTU, come as fragments when they are larger than it: the first fragment carries
// the ports behind a fragment header, and missing it would let the loop spin on
// (each large datagram, re-encapsulated, is fragmented again). ok is false for a
// fragment other than the first (it has no ports) and for what cannot be parsed.
func ipv6Upper(pkt []byte) (proto byte, l4 []byte, ok bool) {
	proto, off := pkt[6], 40
	for range maxExtHeaders {
		switch proto {
		case 0, 43, 60: // hop-by-hop, routing, destination options: length in 8 bytes, less 1
			if len(pkt) < off+8 {
				return 0, nil, false
			}
			proto, off = pkt[off], off+(int(pkt[off+1])+1)*8
		case 44: // fragment: 8 bytes; offset in the upper 13 bits of bytes 2-3
			if len(pkt) < off+8 || binary.BigEndian.Uint16(pkt[off+2:off+4])>>3 != 0 {
				return 0, nil, false
			}
			proto, off = pkt[off], off+8
		default:
			if len(pkt) < off+4 {
				return 0, nil, false
			}
			return proto, pkt[off:], true
		}
	}
	return 0, nil, false
}

// setWSURL publishes the address of a ws_url whose host is an IP address (nil for a
// name, or no URL).
func (p *peer) setWSURL(s string) {
	var ap *netip.AddrPort
	if u, err := url.Parse(s); err == nil && s != "" {
		port := u.Port()
		if port == "" {
			port = "80"
			if u.Scheme == "wss" {
				port = "443"
			}
		}
		if a, err := netip.ParseAddr(u.Hostname()); err == nil {
			if n, err := strconv.ParseUint(port, 10, 16); err == nil {
				v := netip.AddrPortFrom(a.Unmap(), uint16(n))
				ap = &v
			}
		}
	}
	p.wsURL.Store(ap)
}

// routingLoop counts a packet that loopsBack found, and the first time for p logs at
// warn what to fix (the address only at debug, as peer addresses always are).
func (t *Tunnel) routingLoop(p *peer, pkt []byte) {
	t.loops.Add(1)
	p.loops.Add(1)
	if p.loopLogged.Load() || !p.loopLogged.CompareAndSwap(false, true) {
		return
	}
	dst, _ := dstAddr(pkt)
	t.log.Warn("routing loop: the system routes this node's own traffic to the peer into the tunnel; "+
		"dropping it (routing_loop). Keep the peer's endpoint out of allowed_prefixes, and give the uplink "+
		"a route to it (under exit_peer: the uplink has no address or route of its own)",
		"peer", p.cfg.Name)
	t.log.Debug("routing loop", "peer", p.cfg.Name, "dst", dst)
}

// loopWarnings lists the peers whose endpoint an allowed prefix other than a /0 covers:
// the system would route the node's traffic to that endpoint into the tunnel. A /0 is
// left out: the exit peer covers its own endpoint by design, and routing keeps the
// node's own packets out of it. addrOf gives a peer's endpoint address, if known (an
// IP address in the configuration, or what its name resolved to).
func loopWarnings(cfg *config.Config, addrOf func(config.Peer) []netip.Addr) []string {
	var out []string
	for _, ep := range cfg.Peers {
		for _, a := range addrOf(ep) {
			for _, pc := range cfg.Peers {
				for _, pfx := range pc.AllowedPrefixes {
					if pfx.Bits() == 0 || !pfx.Contains(a) {
						continue
					}
					owner := "its own"
					if pc.Name != ep.Name {
						owner = fmt.Sprintf("peer %q's", pc.Name)
					}
					out = append(out, fmt.Sprintf("peer %q: %s allowed_prefixes %s cover its endpoint; the node's own packets to it "+
						"would loop into the tunnel and are dropped (routing_loop). Exclude the endpoint from allowed_prefixes",
						ep.Name, owner, pfx))
				}
			}
		}
	}
	return out
}

// ConfigLoopWarnings is loopWarnings for what a configuration file alone tells: the
// endpoints and WebSocket URLs given as IP addresses. `up` prints them before it
// starts the daemon, which warns again once names are resolved.
func ConfigLoopWarnings(cfg *config.Config) []string {
	return loopWarnings(cfg, literalAddrs)
}

// literalAddrs are the underlay addresses of a peer that its configuration gives as IP
// addresses.
func literalAddrs(pc config.Peer) []netip.Addr {
	var out []netip.Addr
	if ap, err := netip.ParseAddrPort(pc.Endpoint); err == nil {
		out = append(out, ap.Addr().Unmap())
	}
	if u, err := url.Parse(pc.WSURL); err == nil && pc.WSURL != "" {
		if a, err := netip.ParseAddr(u.Hostname()); err == nil {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// runningLoopWarnings is loopWarnings for cfg with the running peers' resolved UDP
// endpoints.
func (t *Tunnel) runningLoopWarnings(cfg *config.Config, peers []*peer) []string {
	return loopWarnings(cfg, func(pc config.Peer) []netip.Addr {
		out := literalAddrs(pc)
		for _, p := range peers {
			if p.cfg.Name == pc.Name && p.sp != nil {
				if ap := p.sp.UDPEndpoint(); ap.IsValid() && !slices.Contains(out, ap.Addr().Unmap()) {
					out = append(out, ap.Addr().Unmap())
				}
			}
		}
		return out
	})
}
