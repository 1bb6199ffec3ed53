package main

import (
	"net"
	"net/netip"

	"golang.zx2c4.com/wireguard/conn"
)

// loopBind is a conn.Bind on one UDP socket bound to one loopback address, so that
// each of the peers process's nodes has a source address of its own (the engine
// limits handshakes per source address, as a responder should: a thousand peers behind
// one address are a case of their own, measured with -one-source).
type loopBind struct {
	addr netip.Addr
	c    *net.UDPConn
}

func (b *loopBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(b.addr, port)))
	if err != nil {
		return nil, 0, err
	}
	b.c = c
	recv := func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		n, ap, err := c.ReadFromUDPAddrPort(bufs[0])
		if err != nil {
			return 0, err
		}
		sizes[0] = n
		eps[0] = &conn.StdNetEndpoint{AddrPort: ap}
		return 1, nil
	}
	return []conn.ReceiveFunc{recv}, uint16(c.LocalAddr().(*net.UDPAddr).Port), nil
}

func (b *loopBind) Close() error {
	if b.c == nil {
		return nil
	}
	return b.c.Close()
}

func (b *loopBind) SetMark(uint32) error { return nil }

func (b *loopBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	ap := netip.MustParseAddrPort(ep.DstToString())
	for _, buf := range bufs {
		if _, err := b.c.WriteToUDPAddrPort(buf, ap); err != nil {
			return err
		}
	}
	return nil
}

func (b *loopBind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, err
	}
	return &conn.StdNetEndpoint{AddrPort: ap}, nil
}

func (b *loopBind) BatchSize() int { return 1 }
