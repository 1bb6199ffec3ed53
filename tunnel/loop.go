package tunnel

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/stt-tun/stt-tun/config"
)

// wsLookupTimeout bounds the lookup of a ws_url host name.
const wsLookupTimeout = 5 * time.Second

// setWSURL publishes the addresses of p's ws_url s: at once for an IP address; for a
// host name, once a lookup in the background answers. Without them, TCP from a new
// WebSocket connection that the system routes into the tunnel would not be recognised
// as the node's own (nothing is connected yet), and neither up nor reload could warn
// that an allowed prefix covers the host. An unchanged URL keeps what it has.
func (t *Tunnel) setWSURL(p *peer, s string) {
	if cur := p.ws.Load(); cur != nil && cur.url == s {
		return
	}
	w := &wsTarget{url: s, looked: make(chan struct{})}
	u, err := url.Parse(s)
	if err != nil || s == "" {
		close(w.looked)
		p.ws.Store(w)
		return
	}
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "wss" {
			port = "443"
		}
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		close(w.looked)
		p.ws.Store(w)
		return
	}
	if a, err := netip.ParseAddr(u.Hostname()); err == nil {
		w.addrs[0] = netip.AddrPortFrom(a.Unmap(), uint16(n))
		close(w.looked)
		p.ws.Store(w)
		return
	}
	p.ws.Store(w)
	host := u.Hostname()
	go func() {
		ctx, cancel := context.WithTimeout(t.lookupCtx, wsLookupTimeout)
		defer cancel()
		next := &wsTarget{url: s, looked: w.looked}
		next.addrs = t.lookupWS(ctx, host, uint16(n))
		if p.ws.CompareAndSwap(w, next) {
			close(w.looked)
			t.warnLateWSLoop(p, next)
		}
	}()
}

// lookupWS resolves a ws_url host name to its first IPv4 and first IPv6 address (the
// dialer may use either), with Options.Resolver in tests.
func (t *Tunnel) lookupWS(ctx context.Context, host string, port uint16) (out [2]netip.AddrPort) {
	if t.resolver != nil {
		if ap, err := t.resolver(ctx, net.JoinHostPort(host, strconv.Itoa(int(port)))); err == nil {
			out[0] = netip.AddrPortFrom(ap.Addr().Unmap(), port)
		}
		return out
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return out
	}
	for _, a := range ips {
		a = a.Unmap()
		switch {
		case a.Is4() && !out[0].IsValid():
			out[0] = netip.AddrPortFrom(a, port)
		case a.Is6() && !out[1].IsValid():
			out[1] = netip.AddrPortFrom(a, port)
		}
	}
	return out
}

// warnLateWSLoop logs, once a ws_url host name has resolved after up or reload stopped
// waiting, the warnings those would have given for its addresses.
func (t *Tunnel) warnLateWSLoop(p *peer, w *wsTarget) {
	select {
	case <-t.lookupCtx.Done():
		return
	default:
	}
	t.mu.RLock()
	cfg, name := t.cfg, p.cfg.Name
	t.mu.RUnlock()
	for _, msg := range loopWarnings(cfg, func(pc config.Peer) []netip.Addr {
		if pc.Name != name || pc.WSURL != w.url {
			return nil
		}
		return w.addrList()
	}) {
		t.log.Warn(msg)
	}
}

func (w *wsTarget) addrList() []netip.Addr {
	var out []netip.Addr
	for _, ap := range w.addrs {
		if ap.IsValid() {
			out = append(out, ap.Addr())
		}
	}
	return out
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
				if w := p.ws.Load(); w != nil && w.url == pc.WSURL {
					for _, a := range w.addrList() {
						if !slices.Contains(out, a) {
							out = append(out, a)
						}
					}
				}
			}
		}
		return out
	})
}
