package udp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

const (
	// socketBuffer is the send and receive buffer asked for on each socket: room for a
	// burst of about 2800 full-size frames, or 64 GRO-coalesced super-datagrams. The
	// kernel doubles it for its bookkeeping.
	socketBuffer = 4 << 20

	// cacheMax bounds each socket's endpoint cache.
	cacheMax = 4096

	// groSlots is the number of 64 KiB buffers a socket with UDP_GRO reads into: one
	// recvmmsg takes up to this many (possibly coalesced) datagrams.
	groSlots = 16

	// openTries bounds the search for a port free on both families when the caller
	// lets the kernel pick.
	openTries = 100
)

// options are knobs for tests; New uses the zero value.
type options struct {
	noFilter bool // attach no socket filter
	noGRO    bool // leave UDP_GRO off
	noGSO    bool // never send with UDP_SEGMENT
	noV6     bool // IPv4 only
	cacheMax int  // 0 = cacheMax
	groSlots int  // 0 = groSlots

	// pmtuProbe sets IP_MTU_DISCOVER / IPV6_MTU_DISCOVER to PMTUDISC_PROBE: Don't
	// Fragment on every datagram, no local fragmentation, and sends up to the
	// interface's MTU whatever path MTU the kernel learnt from ICMP (NewPMTUProbe).
	pmtuProbe bool
}

// Bind is the Linux UDP transport; see the package documentation.
type Bind struct {
	opts options

	mu   sync.Mutex // serialises Open, Close and SetMark
	mark uint32
	v4   atomic.Pointer[socket]
	v6   atomic.Pointer[socket]
}

var _ conn.Bind = (*Bind)(nil)

// New returns a closed Bind; Open opens it.
func New() conn.Bind { return newBind(options{}) }

// NewPMTUProbe returns a closed Bind whose sockets send every datagram with Don't
// Fragment and never fragment one locally, up to the interface's MTU whatever the
// kernel learnt from ICMP (IP_PMTUDISC_PROBE): for a node that finds the path MTU by
// probing itself (stt's path MTU discovery). A datagram larger than the interface's MTU
// fails with EMSGSIZE.
func NewPMTUProbe() conn.Bind { return newBind(options{pmtuProbe: true}) }

func newBind(o options) *Bind {
	if o.cacheMax <= 0 {
		o.cacheMax = cacheMax
	}
	if o.groSlots <= 0 {
		o.groSlots = groSlots
	}
	return &Bind{opts: o}
}

// socket is one UDP socket of a Bind, with its receive state and send scratch.
type socket struct {
	conn *net.UDPConn
	rc   syscall.RawConn
	is6  bool
	gro  bool        // UDP_GRO is on: datagrams may arrive coalesced
	gso  atomic.Bool // UDP_SEGMENT may be used; turned off when the kernel refuses it
	// gsoEINVAL counts coalesced sends refused with EINVAL since the last coalesced
	// send that went through; at gsoEINVALLimit GSO is turned off.
	gsoEINVAL atomic.Int32
	rx        *receiver
	tx        chan *sender // free send scratch

	closed atomic.Bool

	// Counters for tests: what the offloads did.
	groMsgs atomic.Uint64 // coalesced datagrams received
	gsoMsgs atomic.Uint64 // coalesced datagrams sent
	skipped atomic.Uint64 // datagrams received and not delivered (empty or truncated)
}

// BatchSize is the number of buffers a receive function fills at most.
func (b *Bind) BatchSize() int { return BatchSize }

// ParseEndpoint parses "ip:port" (IPv6 in brackets, with an optional zone).
func (b *Bind) ParseEndpoint(s string) (conn.Endpoint, error) {
	e, err := parseEndpoint(s)
	if err != nil {
		return nil, err
	}
	return e, nil
}

// Open opens an IPv4 socket and, where the host has IPv6, an IPv6-only socket on the
// same port, and returns one receive function per socket. Port 0 lets the kernel pick
// a port free on both.
func (b *Bind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.v4.Load() != nil || b.v6.Load() != nil {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	var s4, s6 *socket
	for try := 0; ; try++ {
		var err error
		var got uint16
		s4, got, err = b.listen(false, port)
		if err != nil {
			return nil, 0, fmt.Errorf("udp4: %w", err)
		}
		if b.opts.noV6 {
			port = got
			break
		}
		s6, _, err = b.listen(true, got)
		if err == nil || ipv6Unavailable(err) {
			// Without IPv6 on the host (s6 is nil then), IPv4 alone.
			port = got
			break
		}
		s4.close()
		if port == 0 && errors.Is(err, unix.EADDRINUSE) && try < openTries {
			continue // the kernel's pick for IPv4 is taken on IPv6: pick again
		}
		return nil, 0, fmt.Errorf("udp6: %w", err)
	}
	fns := []conn.ReceiveFunc{s4.rx.receiveIPv4}
	socks := []*socket{s4}
	if s6 != nil {
		fns = append(fns, s6.rx.receiveIPv6)
		socks = append(socks, s6)
	}
	if b.mark != 0 {
		for _, s := range socks {
			if err := s.setMark(b.mark); err != nil {
				for _, s := range socks {
					s.close()
				}
				return nil, 0, err
			}
		}
	}
	b.v4.Store(s4)
	if s6 != nil {
		b.v6.Store(s6)
	}
	return fns, port, nil
}

// ipv6Unavailable says whether an error opening the IPv6 socket means the host has no
// usable IPv6 (kernel without it, ipv6.disable=1, no address family support).
func ipv6Unavailable(err error) bool {
	return errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EPROTONOSUPPORT) ||
		errors.Is(err, unix.EADDRNOTAVAIL)
}

// gsoEINVALLimit is how many coalesced sends in a row may fail with EINVAL (and go
// out without GSO) before GSO is turned off for the socket.
const gsoEINVALLimit = 16

// listen opens one socket, with the options set before bind, and detects the
// offloads.
func (b *Bind) listen(is6 bool, port uint16) (*socket, uint16, error) {
	network, addr := "udp4", "0.0.0.0:"+strconv.Itoa(int(port))
	if is6 {
		network, addr = "udp6", "[::]:"+strconv.Itoa(int(port))
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		if cerr := c.Control(func(fd uintptr) { err = b.presetSocket(int(fd), is6) }); cerr != nil {
			return cerr
		}
		return err
	}}
	pc, err := lc.ListenPacket(context.Background(), network, addr)
	if err != nil {
		return nil, 0, err
	}
	uc := pc.(*net.UDPConn)
	rc, err := uc.SyscallConn()
	if err != nil {
		uc.Close()
		return nil, 0, err
	}
	s := &socket{conn: uc, rc: rc, is6: is6, tx: make(chan *sender, 32)}
	var gro, gso bool
	if err := rc.Control(func(fd uintptr) { gro, gso = b.offloads(int(fd)) }); err != nil {
		uc.Close()
		return nil, 0, err
	}
	s.gro = gro
	s.gso.Store(gso)
	s.rx = newReceiver(s, b.opts)
	return s, uint16(uc.LocalAddr().(*net.UDPAddr).Port), nil
}

// presetSocket sets what must be in place before the socket is bound (so that no
// datagram is queued without it): buffers, packet info, IPv6-only, the filter.
func (b *Bind) presetSocket(fd int, is6 bool) error {
	// Beyond net.core.rmem_max/wmem_max with CAP_NET_ADMIN, else up to them.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, socketBuffer) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, socketBuffer)
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, socketBuffer) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, socketBuffer)
	}
	if is6 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return fmt.Errorf("IPV6_V6ONLY: %w", err)
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1); err != nil {
			return fmt.Errorf("IPV6_RECVPKTINFO: %w", err)
		}
	} else if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_PKTINFO, 1); err != nil {
		return fmt.Errorf("IP_PKTINFO: %w", err)
	}
	if b.opts.pmtuProbe {
		if is6 {
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_PROBE); err != nil {
				return fmt.Errorf("IPV6_MTU_DISCOVER: %w", err)
			}
		} else if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_PROBE); err != nil {
			return fmt.Errorf("IP_MTU_DISCOVER: %w", err)
		}
	}
	if !b.opts.noFilter {
		if err := attachFilter(fd, minPayload); err != nil {
			return fmt.Errorf("SO_ATTACH_FILTER: %w", err)
		}
	}
	return nil
}

// offloads turns UDP_GRO on where the kernel supports it and says whether it is on,
// and whether the kernel supports UDP_SEGMENT.
//
// GRO counts as supported only where UDP_GRO can be read back (Linux 5.12 and later):
// the kernels before that have the option but had bugs in it, and wireguard-go does
// the same. Without UDP_GRO on the socket the kernel splits coalesced datagrams itself.
func (b *Bind) offloads(fd int) (gro, gso bool) {
	if !b.opts.noGRO && unix.SetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_GRO, 1) == nil {
		v, err := unix.GetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_GRO)
		gro = err == nil && v == 1
		if !gro {
			_ = unix.SetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_GRO, 0)
		}
	}
	if !b.opts.noGSO {
		_, err := unix.GetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_SEGMENT)
		gso = err == nil
	}
	return gro, gso
}

func (s *socket) setMark(mark uint32) error {
	var err error
	if cerr := s.rc.Control(func(fd uintptr) {
		err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
	}); cerr != nil {
		return cerr
	}
	if err != nil {
		return fmt.Errorf("SO_MARK: %w", err)
	}
	return nil
}

func (s *socket) close() error {
	s.closed.Store(true)
	return s.conn.Close()
}

// SetMark sets SO_MARK on the sockets, and on those a later Open makes.
func (b *Bind) SetMark(mark uint32) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.mark = mark
	for _, s := range []*socket{b.v4.Load(), b.v6.Load()} {
		if s == nil {
			continue
		}
		if err := s.setMark(mark); err != nil {
			return err
		}
	}
	return nil
}

// Close closes the sockets; the receive functions return net.ErrClosed from then on,
// including those blocked in a read.
func (b *Bind) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var err error
	for _, p := range []*atomic.Pointer[socket]{&b.v4, &b.v6} {
		if s := p.Swap(nil); s != nil {
			err = errors.Join(err, s.close())
		}
	}
	return err
}
