package main

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// memNet is an in-memory network of memberlist transports. Every send and every
// stream is recorded against the (sender, receiver) pair, because in stt-tun each
// distinct pair that exchanges anything needs an encrypted STT session.
type memNet struct {
	start  time.Time
	speed  float64       // simulated seconds per real second
	natTTL time.Duration // simulated lifetime of a NAT filter entry; 0 = forever
	nodes  []*memTransport
	byAddr map[string]*memTransport
}

// sim returns the simulated time elapsed since the network was created.
func (n *memNet) sim() time.Duration {
	return time.Duration(float64(time.Since(n.start)) * n.speed)
}

func nodeAddr(i int) string {
	// Loopback range: nothing is ever sent on a real network, the string only
	// has to parse as host:port for memberlist.
	return fmt.Sprintf("127.1.%d.%d:7946", i/250, i%250+1)
}

func newMemNet(n int, speed float64, natTTL time.Duration, idle time.Duration) *memNet {
	mn := &memNet{start: time.Now(), speed: speed, natTTL: natTTL, byAddr: make(map[string]*memTransport, n)}
	for i := 0; i < n; i++ {
		t := &memTransport{
			net:      mn,
			idx:      i,
			addr:     memAddr(nodeAddr(i)),
			packetCh: make(chan *memberlist.Packet, 4096),
			streamCh: make(chan net.Conn, 64),
			first:    make(map[int]time.Duration),
			last:     make(map[int]time.Duration),
			sentTo:   make(map[int]time.Duration),
			idle:     idle,
		}
		mn.nodes = append(mn.nodes, t)
		mn.byAddr[string(t.addr)] = t
	}
	return mn
}

type memAddr string

func (a memAddr) Network() string { return "mem" }
func (a memAddr) String() string  { return string(a) }

// memTransport implements memberlist.Transport over channels (packets) and
// net.Pipe (streams).
type memTransport struct {
	net      *memNet
	idx      int
	addr     memAddr
	packetCh chan *memberlist.Packet
	streamCh chan net.Conn
	nat      bool // endpoint-dependent filtering: inbound only from peers we sent to
	down     atomic.Bool

	// Counters (outbound, as the sender sees them).
	pktsOut, bytesOut       atomic.Int64
	dialsOut, streamBytes   atomic.Int64
	natDropped, chanDropped atomic.Int64 // inbound packets refused by our NAT / queue full
	dialsBlocked            atomic.Int64 // our dials refused by the peer's NAT

	mu       sync.Mutex
	first    map[int]time.Duration // peer -> simulated time of first exchange
	rest     map[int]time.Duration // peer -> first exchange after the rest mark
	restAt   time.Duration         // rest mark; rest is nil before it is set
	last     map[int]time.Duration // peer -> simulated time of last exchange
	sentTo   map[int]time.Duration // NAT filter: peer -> last time we sent to it
	idle     time.Duration         // session idle timeout used to count handshakes
	sessOpen int64                 // sessions (re)opened under the idle timeout
}

// contact records an exchange with peer at simulated time now. out marks our own
// sends, which open our NAT filter for that peer.
func (t *memTransport) contact(peer int, now time.Duration, out bool) {
	t.mu.Lock()
	if _, ok := t.first[peer]; !ok {
		t.first[peer] = now
	}
	if t.rest != nil {
		if _, ok := t.rest[peer]; !ok {
			t.rest[peer] = now
		}
	}
	if l, ok := t.last[peer]; !ok || now-l > t.idle {
		t.sessOpen++
	}
	t.last[peer] = now
	if out {
		t.sentTo[peer] = now
	}
	t.mu.Unlock()
}

// admits reports whether an inbound exchange from peer passes our NAT filter.
func (t *memTransport) admits(peer int, now time.Duration) bool {
	if !t.nat {
		return true
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.sentTo[peer]
	if !ok {
		return false
	}
	return t.net.natTTL == 0 || now-s <= t.net.natTTL
}

func (t *memTransport) FinalAdvertiseAddr(string, int) (net.IP, int, error) {
	host, _, err := net.SplitHostPort(string(t.addr))
	if err != nil {
		return nil, 0, err
	}
	return net.ParseIP(host), 7946, nil
}

func (t *memTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	dst, ok := t.net.byAddr[addr]
	if !ok {
		return time.Time{}, fmt.Errorf("no route to %s", addr)
	}
	now := time.Now()
	sim := t.net.sim()
	t.pktsOut.Add(1)
	t.bytesOut.Add(int64(len(b)))
	t.contact(dst.idx, sim, true)
	if dst.down.Load() {
		return now, nil
	}
	if !dst.admits(t.idx, sim) {
		dst.natDropped.Add(1)
		return now, nil // UDP: silently lost
	}
	dst.contact(t.idx, sim, false)
	buf := make([]byte, len(b))
	copy(buf, b)
	select {
	case dst.packetCh <- &memberlist.Packet{Buf: buf, From: t.addr, Timestamp: now}:
	default:
		dst.chanDropped.Add(1)
	}
	return now, nil
}

func (t *memTransport) PacketCh() <-chan *memberlist.Packet { return t.packetCh }

func (t *memTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	dst, ok := t.net.byAddr[addr]
	if !ok {
		return nil, fmt.Errorf("no route to %s", addr)
	}
	sim := t.net.sim()
	t.dialsOut.Add(1)
	t.contact(dst.idx, sim, true)
	if dst.down.Load() || !dst.admits(t.idx, sim) {
		// A filtered SYN/handshake is not answered: the dial hangs until it times out.
		t.dialsBlocked.Add(1)
		time.Sleep(timeout)
		return nil, errors.New("dial timeout (filtered)")
	}
	dst.contact(t.idx, sim, false)
	a, b := net.Pipe()
	ours := &countConn{Conn: a, owner: t, local: t.addr, remote: dst.addr}
	theirs := &countConn{Conn: b, owner: dst, local: dst.addr, remote: t.addr}
	select {
	case dst.streamCh <- theirs:
		return ours, nil
	case <-time.After(timeout):
		_ = a.Close()
		_ = b.Close()
		return nil, errors.New("dial timeout (accept queue)")
	}
}

func (t *memTransport) StreamCh() <-chan net.Conn { return t.streamCh }

func (t *memTransport) Shutdown() error {
	t.down.Store(true)
	return nil
}

// countConn counts the bytes each end writes and reports the in-memory addresses.
type countConn struct {
	net.Conn
	owner         *memTransport
	local, remote memAddr
}

func (c *countConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.owner.streamBytes.Add(int64(n))
	return n, err
}

func (c *countConn) LocalAddr() net.Addr  { return c.local }
func (c *countConn) RemoteAddr() net.Addr { return c.remote }
