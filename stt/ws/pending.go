package ws

import (
	"context"
	"crypto/tls"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Bounds on the connections a server has accepted and not yet upgraded.
const (
	// DefaultMaxPending is the most connections not yet upgraded, from every source.
	DefaultMaxPending = 2 * DefaultMaxConns
	// DefaultMaxPendingPerSource is the most connections not yet upgraded from one
	// source: an IPv4 address, or an IPv6 /64.
	DefaultMaxPendingPerSource = 32
	// PendingDeadline is how long a connection may stay not upgraded, from its accept:
	// TLS handshake, request and answer together. It does not restart.
	PendingDeadline = ReadHeaderTimeout
)

// pendingSet holds the connections a server accepted that are not yet upgraded: in their
// TLS handshake, sending their request or being answered. It bounds them in total and
// per source, and closes each one PendingDeadline after its accept.
//
// A connection leaves the set exactly once, under mu: when it is closed (by net/http,
// the handler or the WebSocket library), when the upgrade takes it over (promote),
// when it is evicted, or when its deadline passes. Whichever comes first removes it;
// the others find it gone and do nothing.
type pendingSet struct {
	max, perSource int
	deadline       time.Duration

	mu         sync.Mutex
	closed     bool
	n          int
	bySource   map[netip.Addr]int
	head, tail *pendingConn // oldest first

	refusedSource, evicted, expired atomic.Uint64
}

func newPendingSet(max, perSource int, deadline time.Duration) *pendingSet {
	return &pendingSet{max: max, perSource: perSource, deadline: deadline, bySource: make(map[netip.Addr]int)}
}

// pendingConn is a connection in a pendingSet until it leaves it.
type pendingConn struct {
	net.Conn
	set    *pendingSet
	source netip.Addr

	// Guarded by set.mu.
	listed     bool
	prev, next *pendingConn
	timer      *time.Timer
}

// sourceOf is the key a connection from addr counts under: the IPv4 address, or the
// IPv6 address's /64, since one host commonly holds a whole /64.
func sourceOf(addr net.Addr) netip.Addr {
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return netip.Addr{}
	}
	a := ap.Addr().Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		a = p.Addr()
	}
	return a
}

// admit adds nc to the set, or refuses it (false) when its source holds perSource
// connections already or the set is closed. When max connections are pending, the
// oldest is evicted: admit returns it, out of the set, for the caller to close.
func (s *pendingSet) admit(nc net.Conn) (pc, victim *pendingConn, ok bool) {
	src := sourceOf(nc.RemoteAddr())
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, nil, false
	}
	if s.bySource[src] >= s.perSource {
		s.refusedSource.Add(1)
		return nil, nil, false
	}
	if s.n >= s.max {
		victim = s.head
		s.removeLocked(victim)
		s.evicted.Add(1)
	}
	pc = &pendingConn{Conn: nc, set: s, source: src}
	pc.listed = true
	pc.prev = s.tail
	if s.tail != nil {
		s.tail.next = pc
	} else {
		s.head = pc
	}
	s.tail = pc
	s.n++
	s.bySource[src]++
	pc.timer = time.AfterFunc(s.deadline, pc.expire)
	return pc, victim, true
}

// removeLocked takes c out of the set if it is still there, and reports whether it was.
func (s *pendingSet) removeLocked(c *pendingConn) bool {
	if !c.listed {
		return false
	}
	c.listed = false
	if c.prev != nil {
		c.prev.next = c.next
	} else {
		s.head = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	} else {
		s.tail = c.prev
	}
	c.prev, c.next = nil, nil
	s.n--
	if k := s.bySource[c.source] - 1; k > 0 {
		s.bySource[c.source] = k
	} else {
		delete(s.bySource, c.source)
	}
	c.timer.Stop()
	return true
}

// leave takes c out of the set; it reports whether c was still there.
func (c *pendingConn) leave() bool {
	c.set.mu.Lock()
	defer c.set.mu.Unlock()
	return c.set.removeLocked(c)
}

// expire closes c if it is still pending when its deadline passes.
func (c *pendingConn) expire() {
	if c.leave() {
		c.set.expired.Add(1)
		_ = c.Conn.Close()
	}
}

// promote takes c out of the set once the upgrade has taken it over; false if it had
// left already (evicted or expired, so closed).
func (c *pendingConn) promote() bool { return c.leave() }

// Close closes the connection, which leaves the set if it had not.
func (c *pendingConn) Close() error {
	c.leave()
	return c.Conn.Close()
}

// len is the number of connections pending now.
func (s *pendingSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// shut closes every pending connection and refuses new ones.
func (s *pendingSet) shut() {
	s.mu.Lock()
	s.closed = true
	var all []*pendingConn
	for c := s.head; c != nil; c = s.head {
		s.removeLocked(c)
		all = append(all, c)
	}
	s.mu.Unlock()
	for _, c := range all {
		_ = c.Conn.Close()
	}
}

// pendingListener admits every connection it accepts into a pendingSet, closing at once
// those the set refuses and those it evicts.
type pendingListener struct {
	net.Listener
	set *pendingSet
}

func (l pendingListener) Accept() (net.Conn, error) {
	for {
		nc, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		pc, victim, ok := l.set.admit(nc)
		if victim != nil {
			_ = victim.Conn.Close()
		}
		if !ok {
			_ = nc.Close()
			continue
		}
		return pc, nil
	}
}

type pendingKey struct{}

// withPending is part of the HTTP server's ConnContext: it keeps the request's
// pendingConn, under TLS and the cork if there are, where the upgrade handler finds it
// with pendingOf.
func withPending(ctx context.Context, nc net.Conn) context.Context {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	if cc, ok := nc.(*corkConn); ok {
		nc = cc.Conn
	}
	if pc, ok := nc.(*pendingConn); ok {
		return context.WithValue(ctx, pendingKey{}, pc)
	}
	return ctx
}

// pendingOf returns the pendingConn withPending kept, or nil.
func pendingOf(ctx context.Context) *pendingConn {
	pc, _ := ctx.Value(pendingKey{}).(*pendingConn)
	return pc
}
