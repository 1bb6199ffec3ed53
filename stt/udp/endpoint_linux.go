package udp

import (
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/conn"
)

// Endpoint is a peer's UDP address as this Bind sees it: where to send, and the local
// address the peer's datagram came in on (its "sticky" source), so that a reply leaves
// from the address the peer talked to.
//
// An Endpoint handed out by a receive function is shared: the receive path interns
// endpoints by (source, local address) and returns the same one for every datagram of
// that pair, and the node keeps it. So it never changes after it is made, except that
// ClearSrc, once called, makes it forget its source for every holder; the receive path
// then makes a new endpoint for the next datagram of the pair.
type Endpoint struct {
	dst   netip.AddrPort
	scope uint32     // IPv6 scope (interface index) of a link-local dst, 0 = none
	src   netip.Addr // local address the peer's datagram was sent to; invalid = none
	srcIf int32      // interface the datagram came in on
	noSrc atomic.Bool
}

var _ conn.Endpoint = (*Endpoint)(nil)

// AddrPort is the peer's address and port.
func (e *Endpoint) AddrPort() netip.AddrPort { return e.dst }

// ClearSrc forgets the sticky source: datagrams to the peer leave from whatever
// address the kernel's routing picks.
func (e *Endpoint) ClearSrc() { e.noSrc.Store(true) }

// SrcIP is the local address replies leave from, or the zero Addr when the kernel picks.
func (e *Endpoint) SrcIP() netip.Addr {
	if e.noSrc.Load() {
		return netip.Addr{}
	}
	return e.src
}

// SrcIfidx is the interface the peer's datagram came in on, 0 when unknown.
func (e *Endpoint) SrcIfidx() int32 {
	if e.noSrc.Load() {
		return 0
	}
	return e.srcIf
}

// SrcToString is SrcIP as text, "" when there is none.
func (e *Endpoint) SrcToString() string {
	if a := e.SrcIP(); a.IsValid() {
		return a.String()
	}
	return ""
}

// DstToString is the peer's address as "ip:port".
func (e *Endpoint) DstToString() string { return e.dst.String() }

// DstToBytes is the peer's address in netip.AddrPort's binary form.
func (e *Endpoint) DstToBytes() []byte {
	b, _ := e.dst.MarshalBinary()
	return b
}

// DstIP is the peer's IP address.
func (e *Endpoint) DstIP() netip.Addr { return e.dst.Addr() }

// parseEndpoint parses "ip:port". An IPv4-mapped IPv6 address becomes IPv4, so that
// it goes out of the IPv4 socket (the IPv6 one is IPv6-only); a zone names the scope of
// a link-local IPv6 address, by interface name or number.
func parseEndpoint(s string) (*Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, err
	}
	a := ap.Addr()
	if a.Is4In6() {
		a = a.Unmap()
		ap = netip.AddrPortFrom(a, ap.Port())
	}
	e := &Endpoint{dst: ap}
	if z := a.Zone(); z != "" {
		if n, err := strconv.ParseUint(z, 10, 32); err == nil {
			e.scope = uint32(n)
		} else if ifi, err := net.InterfaceByName(z); err == nil {
			e.scope = uint32(ifi.Index)
		} else {
			return nil, err
		}
		// The zone as a number, as received endpoints carry it, so that the two compare
		// equal (a configured "fe80::1%eth0" and the peer's datagrams from it).
		e.dst = netip.AddrPortFrom(a.WithZone(strconv.FormatUint(uint64(e.scope), 10)), ap.Port())
	}
	return e, nil
}

// epKey identifies the endpoints the receive path interns: the peer's address, its
// scope, and where its datagram arrived.
type epKey struct {
	src   netip.AddrPort // without zone
	scope uint32
	local netip.Addr
	ifidx int32
}

func (k *epKey) endpoint() *Endpoint {
	e := &Endpoint{dst: k.src, scope: k.scope, src: k.local, srcIf: k.ifidx}
	if k.scope != 0 {
		// A link-local peer is only reachable through its interface: keep it in the
		// address, as the number ParseEndpoint reads back.
		e.dst = netip.AddrPortFrom(k.src.Addr().WithZone(strconv.FormatUint(uint64(k.scope), 10)), k.src.Port())
	}
	return e
}

// epCache interns endpoints so that the receive path allocates only for a pair it has
// not seen lately. It is bounded: when full it is emptied (the map keeps its memory, so
// a flood of datagrams from random sources costs at most max entries and one endpoint
// per datagram, which the garbage collector takes back once the node drops it). Not
// safe for concurrent use; each socket's receiver owns one.
type epCache struct {
	m   map[epKey]*Endpoint
	max int
}

func newEPCache(max int) *epCache {
	return &epCache{m: make(map[epKey]*Endpoint), max: max}
}

func (c *epCache) get(k *epKey) *Endpoint {
	e, ok := c.m[*k]
	if ok && !e.noSrc.Load() {
		return e
	}
	if !ok && len(c.m) >= c.max {
		clear(c.m)
	}
	e = k.endpoint()
	c.m[*k] = e
	return e
}
