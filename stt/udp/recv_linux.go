package udp

import (
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/stt-tun/stt-tun/internal/offheap"
)

const (
	// slotSize is the size of a GRO read buffer: the largest UDP payload, or a whole
	// coalesced datagram (the kernel coalesces up to 64 KiB).
	slotSize = 1 << 16

	// rxOOBWords is the room for one datagram's control messages, in 8-byte words
	// (kept as words for the alignment of struct cmsghdr): IPV6_PKTINFO (40 bytes) and
	// UDP_GRO (24) with room to spare.
	rxOOBWords = 16
)

// receiver is a socket's receive path. One receive call runs at a time (mu); the state
// of the call in progress lives here so that the callback handed to RawConn.Read is a
// method value made once, not a closure per call.
type receiver struct {
	mu    sync.Mutex
	s     *socket
	msgs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6 // big enough for a sockaddr_in too
	oob   [][rxOOBWords]uint64
	cache *epCache
	read  func(fd uintptr) bool // r.readSome, bound once

	// With GRO: datagrams are read into slots, then copied into the caller's buffers
	// one segment each; what does not fit waits in pend[head:n] for the next call.
	slots [][]byte
	pend  []pending
	head  int
	n     int

	// The call in progress.
	bufs  [][]byte
	sizes []int
	eps   []conn.Endpoint
	out   int
	err   error
}

// pending is a datagram read into a GRO slot and not yet handed out in full.
type pending struct {
	slot int
	size int // bytes in the slot
	seg  int // segment size, 0 = not coalesced
	off  int // the next segment starts here
	ep   *Endpoint
}

func newReceiver(s *socket, o options) *receiver {
	n := BatchSize
	if s.gro {
		n = o.groSlots
	}
	r := &receiver{
		s:     s,
		msgs:  make([]unix.Mmsghdr, n),
		iovs:  make([]unix.Iovec, n),
		names: make([]unix.RawSockaddrInet6, n),
		oob:   make([][rxOOBWords]uint64, n),
		cache: newEPCache(o.cacheMax),
	}
	for i := range r.msgs {
		h := &r.msgs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		h.Iov = &r.iovs[i]
		h.SetIovlen(1)
		h.Control = (*byte)(unsafe.Pointer(&r.oob[i][0]))
	}
	if s.gro {
		// Off the Go heap (internal/offheap), given back once the receiver is
		// unreachable: nothing reads a slot then, not even a receive call in progress.
		var release func()
		r.slots, release = offheap.Buffers(n, slotSize)
		runtime.AddCleanup(r, func(f func()) { f() }, release)
		r.pend = make([]pending, n)
		for i := range r.slots {
			r.iovs[i].Base = &r.slots[i][0]
			r.iovs[i].SetLen(slotSize)
		}
	}
	r.read = r.readSome
	return r
}

// receiveIPv4 and receiveIPv6 are the receive functions Open returns (two names, so
// that conn.ReceiveFunc.PrettyName tells them apart).
func (r *receiver) receiveIPv4(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
	return r.receive(bufs, sizes, eps)
}

func (r *receiver) receiveIPv6(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
	return r.receive(bufs, sizes, eps)
}

// receive blocks until at least one datagram is there and fills bufs, sizes and eps
// with up to len(bufs) of them. Every size it returns is at least 1: empty and
// truncated datagrams are skipped.
func (r *receiver) receive(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.s.closed.Load() {
		return 0, net.ErrClosed
	}
	if len(bufs) == 0 {
		return 0, nil
	}
	r.bufs, r.sizes, r.eps, r.out, r.err = bufs, sizes[:len(bufs)], eps[:len(bufs)], 0, nil
	if r.s.gro {
		r.drain()
	}
	var err error
	if r.out < len(bufs) {
		err = r.s.rc.Read(r.read)
	}
	n := r.out
	r.bufs, r.sizes, r.eps = nil, nil, nil
	if r.s.closed.Load() {
		return 0, net.ErrClosed
	}
	if n > 0 {
		return n, nil
	}
	if err == nil {
		err = r.err
	}
	return 0, err
}

// readSome is the RawConn.Read callback: it reads until the caller's buffers are full
// or the socket has nothing more, and asks to wait for the socket (returns false) only
// when it has nothing to return yet.
func (r *receiver) readSome(fd uintptr) bool {
	for r.out < len(r.bufs) {
		want := len(r.msgs)
		if !r.s.gro {
			// Straight into the caller's buffers.
			want = min(want, len(r.bufs)-r.out)
			for i := range want {
				b := r.bufs[r.out+i]
				r.iovs[i].Base = unsafe.SliceData(b)
				r.iovs[i].SetLen(len(b))
			}
		}
		for i := range want {
			h := &r.msgs[i].Hdr
			h.Namelen = unix.SizeofSockaddrInet6
			h.SetControllen(rxOOBWords * 8)
			h.Flags = 0
		}
		k, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.msgs[0])), uintptr(want), 0, 0, 0)
		switch errno {
		case 0:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return r.out > 0
		default:
			if r.out == 0 {
				r.err = os.NewSyscallError("recvmmsg", errno)
			}
			return true
		}
		if r.s.gro {
			r.stage(int(k))
			r.drain()
		} else {
			r.direct(int(k))
		}
		if int(k) < want && r.out > 0 {
			return true // the socket is likely empty: deliver what there is
		}
	}
	return true
}

// direct handles k datagrams read straight into r.bufs[r.out:]: it keeps them where
// they are, moving one down only when a skipped datagram left a gap before it.
func (r *receiver) direct(k int) {
	base, w := r.out, r.out
	for i := range k {
		size := int(r.msgs[i].Len)
		// A datagram moved down into a shorter buffer than its own would be cut: skip
		// it like one the kernel truncated (the node's buffers are all one size).
		if size == 0 || r.msgs[i].Hdr.Flags&unix.MSG_TRUNC != 0 || size > len(r.bufs[w]) {
			r.s.skipped.Add(1)
			continue
		}
		var key epKey
		r.parse(i, &key)
		if w != base+i {
			copy(r.bufs[w], r.bufs[base+i][:size])
		}
		r.sizes[w] = size
		r.eps[w] = r.cache.get(&key)
		w++
	}
	r.out = w
}

// stage records k datagrams read into the GRO slots as pending. The pending list is
// empty when a read happens (drain empties it before the caller's buffers run out).
func (r *receiver) stage(k int) {
	r.head, r.n = 0, 0
	for i := range k {
		size := int(r.msgs[i].Len)
		// Without all of its control data, a coalesced datagram's segment size may be
		// missing, and its segments would be delivered as one: skip it.
		if size == 0 || r.msgs[i].Hdr.Flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
			r.s.skipped.Add(1)
			continue
		}
		var key epKey
		seg := r.parse(i, &key)
		if seg >= size {
			seg = 0
		}
		if seg > 0 {
			r.s.groMsgs.Add(1)
		}
		r.pend[r.n] = pending{slot: i, size: size, seg: seg, ep: r.cache.get(&key)}
		r.n++
	}
}

// drain copies pending segments into the caller's buffers, in order, until either
// runs out. A segment longer than the caller's buffer is skipped, like a datagram the
// kernel truncated.
func (r *receiver) drain() {
	for r.head < r.n && r.out < len(r.bufs) {
		p := &r.pend[r.head]
		end := p.size
		if p.seg > 0 {
			end = min(p.off+p.seg, p.size)
		}
		seg := r.slots[p.slot][p.off:end]
		if dst := r.bufs[r.out]; len(dst) >= len(seg) {
			copy(dst, seg)
			r.sizes[r.out] = len(seg)
			r.eps[r.out] = p.ep
			r.out++
		} else {
			r.s.skipped.Add(1)
		}
		p.off = end
		if p.off >= p.size {
			p.ep = nil
			r.head++
		}
	}
	if r.head == r.n {
		r.head, r.n = 0, 0
	}
}

// parse reads message i's source address and control messages into key and returns
// the GRO segment size, 0 when the datagram is not coalesced.
func (r *receiver) parse(i int, key *epKey) (seg int) {
	sa := &r.names[i]
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa4.Port))[:])
		key.src = netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port)
	case unix.AF_INET6:
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
		a := netip.AddrFrom16(sa.Addr)
		key.src = netip.AddrPortFrom(a, port)
		if a.IsLinkLocalUnicast() {
			key.scope = sa.Scope_id
		}
	}
	oob := unsafe.Slice((*byte)(unsafe.Pointer(&r.oob[i][0])), rxOOBWords*8)
	oob = oob[:min(int(r.msgs[i].Hdr.Controllen), len(oob))]
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(oob) {
			break
		}
		data := oob[unix.CmsgLen(0):l]
		switch {
		case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			pi := (*unix.Inet4Pktinfo)(unsafe.Pointer(&data[0]))
			key.local = netip.AddrFrom4(pi.Spec_dst)
			key.ifidx = pi.Ifindex
		case h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			pi := (*unix.Inet6Pktinfo)(unsafe.Pointer(&data[0]))
			key.local = netip.AddrFrom16(pi.Addr)
			key.ifidx = int32(pi.Ifindex)
		case h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO:
			// The kernel writes an int; read what is there.
			if len(data) >= 4 {
				seg = int(*(*int32)(unsafe.Pointer(&data[0])))
			} else if len(data) >= 2 {
				seg = int(*(*uint16)(unsafe.Pointer(&data[0])))
			}
		}
		next := unix.CmsgSpace(l - unix.CmsgLen(0))
		if next > len(oob) {
			break
		}
		oob = oob[next:]
	}
	return max(seg, 0)
}
