package tunnel

// The packet pump, both ways: readLoop carries packets from the TUN device to peers
// (Peer.Send), Deliver writes what peers sent to the TUN device; with the per-packet
// helpers they use (addresses, flow hash, the routing-loop check), so that a packet
// crosses one file of the engine each way (docs/architecture.md).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/stt-tun/stt-tun/internal/offheap"
	"github.com/stt-tun/stt-tun/stt"
	"github.com/stt-tun/stt-tun/stt/wire"
	"github.com/stt-tun/stt-tun/tun"
)

// readLoop carries packets from the TUN device to peers until the device closes.
func (t *Tunnel) readLoop() {
	defer t.pumpsDone.Done()
	batch := t.dev.BatchSize()
	// Off the Go heap, as the node's receive buffers (internal/offheap); a packet
	// that outlives its batch (a queue, a fragment) is copied first.
	bufs, release := offheap.Buffers(batch, stt.BufferSize)
	defer release()
	sizes := make([]int, batch)
	pkts := make([][]byte, 0, batch)
	flows := make([]uint16, 0, batch)
	var fails int
	var cur *peer
	var o outState
	// flush sends the batch gathered for cur; the fragments' arena is free again.
	flush := func() {
		if len(pkts) > 0 {
			_ = cur.sp.Send(pkts, flows)
			pkts, flows = pkts[:0], flows[:0]
		}
		o.used = 0
	}
	for {
		n, err := t.dev.Read(bufs, sizes, stt.Headroom)
		if err != nil && !errors.Is(err, tun.ErrTooManySegments) {
			if errors.Is(err, os.ErrClosed) || t.closing() {
				return
			}
			fails++
			t.tunErrors.Add(1)
			if fails > 50 {
				t.fail(fmt.Errorf("read from tun: %w", err))
				return
			}
			time.Sleep(10 * time.Millisecond) // a failing device must not spin the CPU
			continue
		}
		fails = 0
		table := t.table.Load()
		clamp := t.mssClamp.Load()
		cur = nil
		for i := 0; i < n; i++ {
			pkt := bufs[i][stt.Headroom : stt.Headroom+sizes[i]]
			dst, ok := dstAddr(pkt)
			if !ok {
				t.malformed.Add(1)
				continue
			}
			p, ok := table.Lookup(dst)
			if !ok {
				if linkScoped(dst) {
					t.linkScoped.Add(1)
				} else {
					t.noRoute.Add(1)
				}
				continue
			}
			if p != cur {
				flush()
			}
			if t.loopsBack(pkt, p) {
				t.routingLoop(p, pkt)
				continue
			}
			cur = p
			flow := flowHash(pkt)
			m := p.sp.PathMTU()
			if m > 0 && len(pkt) > m && !t.tooLarge(&o, pkt, m, flow, &pkts, &flows, flush) {
				continue
			}
			if clamp {
				t.clampSYN(pkt, p.sp, m)
			}
			pkts = append(pkts, bufs[i][stt.Headroom-wire.HeaderLen:stt.Headroom+sizes[i]])
			flows = append(flows, flow)
		}
		flush()
		if offheap.Poisoning {
			// Nothing may read a packet of the batch once it is sent (offheap.Poison).
			for i := range n {
				offheap.Poison(bufs[i][:min(len(bufs[i]), stt.Headroom+sizes[i]+wire.TagLen)])
			}
		}
	}
}

func (t *Tunnel) closing() bool {
	select {
	case <-t.done:
		return true
	default:
		return false
	}
}

// Deliver writes authenticated packets to the TUN device, after checking that each
// one's source address is inside the prefixes its peer may send from. Each buffer's
// capacity is cut to tun.MaxWriteCap, so that the device's coalescing cannot build a
// packet longer than IP allows.
func (t *Tunnel) Deliver(in *stt.Inbound) {
	table := t.table.Load()
	clamp := t.mssClamp.Load()
	out := in.Scratch[:0]
	for i := 0; i < in.N; i++ {
		end := stt.Headroom + in.Sizes[i]
		pkt := in.Bufs[i][stt.Headroom:end]
		src, ok := srcAddr(pkt)
		if !ok {
			t.malformed.Add(1)
			continue
		}
		p, ok := table.Lookup(src)
		if !ok || p.sp != in.Peers[i] {
			t.srcDenied.Add(1)
			if from, _ := in.Peers[i].Tag().(*peer); from != nil {
				from.srcDenied.Add(1)
			}
			continue
		}
		if clamp {
			// The SYN-ACK (or SYN) of a connection the peer's end opened or answers:
			// this side's segments must fit the peer's path too.
			t.clampSYN(pkt, in.Peers[i], in.Peers[i].PathMTU())
		}
		out = append(out, in.Bufs[i][:end:min(cap(in.Bufs[i]), tun.MaxWriteCap(stt.Headroom))])
	}
	if len(out) == 0 {
		return
	}
	if _, err := t.dev.Write(out, stt.Headroom); err != nil {
		t.tunErrors.Add(1)
		t.log.Debug("write to tun", "err", err)
	}
}

const (
	protoTCP = 6
	protoUDP = 17
)

// dstAddr returns the destination of an IPv4 or IPv6 packet.
func dstAddr(pkt []byte) (netip.Addr, bool) { return packetAddr(pkt, 16, 24) }

// srcAddr returns the source of an IPv4 or IPv6 packet.
func srcAddr(pkt []byte) (netip.Addr, bool) { return packetAddr(pkt, 12, 8) }

// packetAddr reads the address at offset v4 of an IPv4 header or v6 of an IPv6 header.
func packetAddr(pkt []byte, v4, v6 int) (netip.Addr, bool) {
	if len(pkt) == 0 {
		return netip.Addr{}, false
	}
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < 20 {
			return netip.Addr{}, false
		}
		return netip.AddrFrom4([4]byte(pkt[v4 : v4+4])), true
	case 6:
		if len(pkt) < 40 {
			return netip.Addr{}, false
		}
		return netip.AddrFrom16([16]byte(pkt[v6 : v6+16])), true
	}
	return netip.Addr{}, false
}

// linkScoped reports whether dst is an address a packet never leaves its link for:
// link-local unicast and multicast, interface-local multicast, and the IPv4 limited
// broadcast. The kernel sends such packets on every interface it brings up (IPv6
// router solicitations and MLD reports), so when no peer's prefixes cover them they are
// housekeeping, not traffic that went astray, and are counted apart from no_route.
func linkScoped(dst netip.Addr) bool {
	return dst.IsLinkLocalUnicast() || dst.IsLinkLocalMulticast() || dst.IsInterfaceLocalMulticast() ||
		dst == netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// flowHash maps a packet's flow (addresses, protocol and, for TCP and UDP, ports) to a
// number, so that every packet of one flow goes on the same stream.
func flowHash(pkt []byte) uint16 {
	const (
		offset = 2166136261
		prime  = 16777619
	)
	h := uint32(offset)
	mix := func(b []byte) {
		for _, c := range b {
			h = (h ^ uint32(c)) * prime
		}
	}
	switch pkt[0] >> 4 {
	case 4:
		ihl := int(pkt[0]&0x0f) * 4
		proto := pkt[9]
		mix(pkt[12:20])
		mix(pkt[9:10])
		fragOff := binary.BigEndian.Uint16(pkt[6:8]) & 0x1fff
		if (proto == protoTCP || proto == protoUDP) && fragOff == 0 && ihl >= 20 && len(pkt) >= ihl+4 {
			mix(pkt[ihl : ihl+4])
		}
	case 6:
		proto := pkt[6]
		mix(pkt[8:40])
		mix(pkt[6:7])
		if (proto == protoTCP || proto == protoUDP) && len(pkt) >= 44 {
			mix(pkt[40:44])
		}
	}
	return uint16(h ^ h>>16)
}

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
// of p's WebSocket connection or to its ws_url's host (an IP address, or what its name
// resolved to) when a prefix narrower than /0 covers it. It reads a few
// atomic pointers (and, for such TCP only, looks the prefix up): no lock, no allocation.
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
		if w := p.ws.Load(); (w == nil || !w.has(to)) && to != p.sp.WSEndpoint() {
			return false
		}
		// The node's own TCP is marked, and the full tunnel's rules keep it out of the
		// exit peer's /0: TCP that reaches the tunnel by that /0 is the users' (a web
		// site on the server that also carries the WebSocket), and goes through. Only
		// a narrower prefix over the host draws the node's own TCP in.
		lpm, _, ok := t.table.Load().LookupPrefixLPM(netip.PrefixFrom(dst, dst.BitLen()))
		return ok && lpm.Bits() > 0
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

// wsTarget is a peer's ws_url as the packet pump sees it: the addresses its TCP goes
// to. For a host name they are those of its lookup, once it has answered.
type wsTarget struct {
	url    string
	addrs  [2]netip.AddrPort // the first IPv4 and the first IPv6 address; zero: none
	looked chan struct{}     // closed once addrs are final (at once for an IP address)
}

// has reports whether to, a valid address, is one of w's.
func (w *wsTarget) has(to netip.AddrPort) bool { return w.addrs[0] == to || w.addrs[1] == to }
