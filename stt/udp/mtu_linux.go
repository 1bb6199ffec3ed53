package udp

import (
	"encoding/binary"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// RouteMTU is the MTU of the interface the routing table sends datagrams for dst out
// of (with SO_MARK mark, when not 0): the largest IP packet worth probing toward dst.
// It asks the kernel for the route with a connected socket that sends nothing, and
// reads the interface's MTU rather than the route's cached path MTU, which ICMP (forged
// or not) may have lowered: probes find the path's.
func RouteMTU(dst netip.Addr, mark uint32) (int, error) {
	dst = dst.Unmap()
	if !dst.IsValid() {
		return 0, unix.EDESTADDRREQ
	}
	fam := unix.AF_INET6
	var sa unix.Sockaddr = &unix.SockaddrInet6{Port: 9, Addr: dst.As16()}
	if dst.Is4() {
		fam = unix.AF_INET
		sa = &unix.SockaddrInet4{Port: 9, Addr: dst.As4()}
	}
	fd, err := unix.Socket(fam, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	if mark != 0 {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark))
	}
	if err := unix.Connect(fd, sa); err != nil {
		return 0, err
	}
	var src netip.Addr
	if l, err := unix.Getsockname(fd); err == nil {
		switch v := l.(type) {
		case *unix.SockaddrInet4:
			src = netip.AddrFrom4(v.Addr)
		case *unix.SockaddrInet6:
			src = netip.AddrFrom16(v.Addr)
		}
	}
	if src.IsValid() {
		if mtu := ifaceMTU(src); mtu > 0 {
			return mtu, nil
		}
	}
	// The source address is on no interface listed (or none could be read): the
	// route's MTU, which may include a path MTU learnt from ICMP.
	if dst.Is6() {
		return unix.GetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MTU)
	}
	return unix.GetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU)
}

// ifaceMTU is the MTU of the interface that holds the address a, 0 if none does. One
// dump of the addresses finds the interface's index, one of the links its MTU: asking
// each interface for its addresses (net.Interface.Addrs) dumps them all every time,
// 0.6 s with 1000 interfaces, with the peer's lock held in the node's timer loop.
func ifaceMTU(a netip.Addr) int {
	idx := addrIndex(a)
	if idx <= 0 {
		return 0
	}
	ifc, err := net.InterfaceByIndex(idx)
	if err != nil {
		return 0
	}
	return ifc.MTU
}

// addrIndex is the index of the interface that holds the address a, 0 if none does.
func addrIndex(a netip.Addr) int {
	tab, err := syscall.NetlinkRIB(syscall.RTM_GETADDR, syscall.AF_UNSPEC)
	if err != nil {
		return 0
	}
	msgs, err := syscall.ParseNetlinkMessage(tab)
	if err != nil {
		return 0
	}
	for i := range msgs {
		m := &msgs[i]
		if m.Header.Type == syscall.NLMSG_DONE {
			break
		}
		if m.Header.Type != syscall.RTM_NEWADDR || len(m.Data) < syscall.SizeofIfAddrmsg {
			continue
		}
		attrs, err := syscall.ParseNetlinkRouteAttr(m)
		if err != nil {
			continue
		}
		for _, at := range attrs {
			if at.Attr.Type != syscall.IFA_LOCAL && at.Attr.Type != syscall.IFA_ADDRESS {
				continue
			}
			if ip, ok := netip.AddrFromSlice(at.Value); ok && ip.Unmap() == a {
				// struct ifaddrmsg: family, prefixlen, flags, scope (1 byte each), index (u32).
				return int(binary.NativeEndian.Uint32(m.Data[4:8]))
			}
		}
	}
	return 0
}
