package udp

import (
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

const (
	// maxSegments is how many datagrams one UDP_SEGMENT send may carry: the kernel's
	// UDP_MAX_SEGMENTS, 64 before Linux 6.9 (128 since).
	maxSegments = 64

	// maxGSOBytes bounds the payload of one UDP_SEGMENT send: the largest UDP payload
	// over IPv4 (65535 - 20 - 8), also kept for IPv6 for simplicity.
	maxGSOBytes = 65507

	// txOOBWords is the room for one message's control messages, in 8-byte words:
	// IPV6_PKTINFO (40 bytes) and UDP_SEGMENT (24).
	txOOBWords = 8
)

// sender is the scratch of one Send: message headers, one iovec per datagram (a
// coalesced message points at several of the caller's buffers, nothing is copied),
// control messages and the destination. Sends take one from the socket's free list and
// put it back, so that a Send allocates nothing in steady state.
type sender struct {
	s     *socket
	msgs  [BatchSize]unix.Mmsghdr
	iovs  [BatchSize]unix.Iovec
	oob   [BatchSize][txOOBWords]uint64
	first [BatchSize]int // index in bufs of message i's first datagram
	name  unix.RawSockaddrInet6
	write func(fd uintptr) bool // t.writeSome, bound once

	// The sendmmsg in progress: messages [sent:m].
	m, sent int
	errno   unix.Errno
}

func (s *socket) getSender() *sender {
	select {
	case t := <-s.tx:
		return t
	default:
	}
	t := &sender{s: s}
	t.write = t.writeSome
	return t
}

func (s *socket) putSender(t *sender) {
	select {
	case s.tx <- t:
	default:
	}
}

// Send sends bufs, one datagram each, to ep. With GSO, runs of datagrams of one size
// (the last of a run may be shorter) go out as one message with a UDP_SEGMENT control
// message, which the kernel (or the NIC) cuts into the same datagrams.
func (b *Bind) Send(bufs [][]byte, ep conn.Endpoint) error {
	var e *Endpoint
	switch v := ep.(type) {
	case *Endpoint:
		e = v
	default:
		var err error
		if e, err = parseEndpoint(ep.DstToString()); err != nil {
			return conn.ErrWrongEndpointType
		}
	}
	s := b.v4.Load()
	if e.dst.Addr().Is6() {
		s = b.v6.Load()
	}
	if s == nil {
		if b.v4.Load() == nil && b.v6.Load() == nil {
			return net.ErrClosed
		}
		return unix.EAFNOSUPPORT
	}
	t := s.getSender()
	defer s.putSender(t)
	t.setDest(e)
	for len(bufs) > 0 {
		chunk := bufs[:min(len(bufs), BatchSize)]
		if err := t.send(chunk, e); err != nil {
			return err
		}
		bufs = bufs[len(chunk):]
	}
	return nil
}

// send sends up to BatchSize datagrams, and handles what the kernel refuses:
//
//   - EIO or EINVAL on a coalesced message: the device or the kernel refuses GSO (EIO
//     means the device has no checksum offload, which UDP_SEGMENT needs). GSO is turned
//     off for the socket and the datagrams are sent again without it.
//   - EMSGSIZE on a coalesced message: a segment is larger than the path MTU, which the
//     kernel fragments for a plain datagram but not for GSO; this call sends the rest
//     without GSO.
//   - EINVAL, ENETUNREACH or EADDRNOTAVAIL with a sticky source: the host may no longer
//     have that address (the kernel says EINVAL or ENETUNREACH, depending on version
//     and family). The datagrams are sent again from the address routing picks, and
//     if that goes through, the endpoint forgets its source (ClearSrc).
//
// Where an error has two possible causes, the retry drops one of them for this call
// only, and the change becomes lasting only if the retry goes through: EINVAL on a
// coalesced message with a sticky source is retried without GSO first.
func (t *sender) send(bufs [][]byte, e *Endpoint) error {
	gso := t.s.gso.Load()
	src := e.SrcIP()
	// The first message of the current attempt is a retry without the source
	// (srcProbe) of one that failed.
	srcProbe := false
	tooBig := 0
	t.build(bufs, gso, src, e.SrcIfidx())
	for t.sent < t.m {
		if err := t.s.rc.Write(t.write); err != nil {
			return err // closed
		}
		if t.errno == 0 {
			if srcProbe {
				e.ClearSrc()
			}
			if gso && t.s.gsoEINVAL.Load() != 0 {
				t.s.gsoEINVAL.Store(0)
			}
			srcProbe = false
			continue
		}
		coalesced := t.msgs[t.sent].Hdr.Iovlen > 1
		errno := t.errno
		switch {
		case coalesced && errno == unix.EIO:
			// The device or route cannot segment (an IPsec route, say): stop trying.
			t.s.gso.Store(false)
			gso = false
		case coalesced && (errno == unix.EINVAL || errno == unix.EMSGSIZE):
			// A segment larger than this destination's path MTU: EMSGSIZE since Linux
			// 6.14, EINVAL before. It says nothing about other destinations, so this
			// call goes on without GSO and the socket keeps it, unless EINVAL keeps
			// coming while plain sends work: then the kernel refuses GSO itself.
			gso = false
			if errno == unix.EINVAL && t.s.gsoEINVAL.Add(1) >= gsoEINVALLimit {
				t.s.gso.Store(false)
			}
		case !coalesced && errno == unix.EMSGSIZE:
			// One datagram larger than the interface's MTU (or than UDP allows): with
			// PMTUDISC_PROBE the kernel never fragments it. It alone is lost; the
			// rest of the call goes out.
			tooBig++
			if t.sent+1 >= t.m {
				return &MessageTooBigError{Dropped: tooBig}
			}
			bufs = bufs[t.first[t.sent+1]:]
			t.build(bufs, gso, src, e.SrcIfidx())
			continue
		case src.IsValid() && (errno == unix.EINVAL || errno == unix.ENETUNREACH || errno == unix.EADDRNOTAVAIL):
			src, srcProbe = netip.Addr{}, true
			gso = t.s.gso.Load()
		default:
			return os.NewSyscallError("sendmmsg", errno)
		}
		bufs = bufs[t.first[t.sent]:]
		t.build(bufs, gso, src, e.SrcIfidx())
	}
	if tooBig > 0 {
		return &MessageTooBigError{Dropped: tooBig}
	}
	return nil
}

// writeSome is the RawConn.Write callback: one sendmmsg of messages [sent:m]. It asks
// to wait for the socket (returns false) when the send buffer is full.
func (t *sender) writeSome(fd uintptr) bool {
	for {
		n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&t.msgs[t.sent])), uintptr(t.m-t.sent), 0, 0, 0)
		switch errno {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		case 0:
			for i := t.sent; i < t.sent+int(n); i++ {
				if t.msgs[i].Hdr.Iovlen > 1 {
					t.s.gsoMsgs.Add(1)
				}
			}
			t.sent += int(n)
		}
		t.errno = errno
		return true
	}
}

// setDest writes ep's address into the sockaddr every message of the Send uses.
func (t *sender) setDest(e *Endpoint) {
	a := e.dst.Addr()
	var port [2]byte
	binary.BigEndian.PutUint16(port[:], e.dst.Port())
	if a.Is4() {
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&t.name))
		*sa = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: a.As4()}
		sa.Port = *(*uint16)(unsafe.Pointer(&port))
		return
	}
	t.name = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: a.As16(), Scope_id: e.scope}
	t.name.Port = *(*uint16)(unsafe.Pointer(&port))
}

// build lays out bufs as messages [0:m]: runs of equal-sized datagrams coalesced when
// gso is set, each message with the sticky source when src is valid.
func (t *sender) build(bufs [][]byte, gso bool, src netip.Addr, ifidx int32) {
	nameLen := uint32(unix.SizeofSockaddrInet4)
	if t.name.Family == unix.AF_INET6 {
		nameLen = unix.SizeofSockaddrInet6
	}
	for i, b := range bufs {
		t.iovs[i].Base = unsafe.SliceData(b)
		t.iovs[i].SetLen(len(b))
	}
	m := 0
	for i := 0; i < len(bufs); {
		start, size := i, len(bufs[i])
		total := size
		i++
		if gso && size > 0 {
			for i < len(bufs) && i-start < maxSegments {
				l := len(bufs[i])
				if l == 0 || l > size || total+l > maxGSOBytes {
					break
				}
				total += l
				i++
				if l < size {
					break // a shorter datagram ends the run
				}
			}
		}
		h := &t.msgs[m].Hdr
		*h = unix.Msghdr{
			Name:    (*byte)(unsafe.Pointer(&t.name)),
			Namelen: nameLen,
			Iov:     &t.iovs[start],
		}
		h.SetIovlen(i - start)
		oob := unsafe.Slice((*byte)(unsafe.Pointer(&t.oob[m][0])), txOOBWords*8)
		n := 0
		if src.IsValid() {
			n += putPktinfo(oob, src, ifidx)
		}
		if i-start > 1 {
			n += putSegment(oob[n:], size)
		}
		if n > 0 {
			h.Control = &oob[0]
			h.SetControllen(n)
		}
		t.first[m] = start
		m++
	}
	t.m, t.sent, t.errno = m, 0, 0
}

// putPktinfo writes an IP_PKTINFO or IPV6_PKTINFO control message that makes the
// datagram leave from src. Only the address is given, so routing still picks the
// interface; the interface is kept for a link-local IPv6 source, whose address means
// nothing without it.
func putPktinfo(oob []byte, src netip.Addr, ifidx int32) int {
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	data := unsafe.Pointer(&oob[unix.CmsgLen(0)])
	if src.Is4() {
		h.Level, h.Type = unix.IPPROTO_IP, unix.IP_PKTINFO
		h.SetLen(unix.CmsgLen(unix.SizeofInet4Pktinfo))
		*(*unix.Inet4Pktinfo)(data) = unix.Inet4Pktinfo{Spec_dst: src.As4()}
		return unix.CmsgSpace(unix.SizeofInet4Pktinfo)
	}
	h.Level, h.Type = unix.IPPROTO_IPV6, unix.IPV6_PKTINFO
	h.SetLen(unix.CmsgLen(unix.SizeofInet6Pktinfo))
	pi := unix.Inet6Pktinfo{Addr: src.As16()}
	if src.IsLinkLocalUnicast() {
		pi.Ifindex = uint32(ifidx)
	}
	*(*unix.Inet6Pktinfo)(data) = pi
	return unix.CmsgSpace(unix.SizeofInet6Pktinfo)
}

// putSegment writes a UDP_SEGMENT control message: the kernel cuts the message into
// datagrams of size bytes (the last one may be shorter).
func putSegment(oob []byte, size int) int {
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	*(*uint16)(unsafe.Pointer(&oob[unix.CmsgLen(0)])) = uint16(size)
	return unix.CmsgSpace(2)
}
