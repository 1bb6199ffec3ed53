package udp

import (
	"net"
	"net/netip"

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

// ifaceMTU is the MTU of the interface that holds the address a, 0 if none does.
func ifaceMTU(a netip.Addr) int {
	ifs, err := net.Interfaces()
	if err != nil {
		return 0
	}
	for _, ifc := range ifs {
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, ad := range addrs {
			if n, ok := ad.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == a {
					return ifc.MTU
				}
			}
		}
	}
	return 0
}
