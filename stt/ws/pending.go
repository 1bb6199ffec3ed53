package ws

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// A server's connections that have not been upgraded yet are "pending": every TCP
// connection its listener accepts is pending from the accept until the WebSocket
// handshake hijacks it from net/http or it closes. At most MaxPending are; a new one
// evicts the oldest (see the package documentation).

// Where a pending connection is in its HTTP request (one per connection: keep-alives
// are off), as net/http's ConnState hook and the handler report it; read when it closes,
// to tell why. net/http reports a request active once it has read it, or failed to.
const (
	phaseIdle    int32 = iota // no request read yet: TLS handshake, or waiting for or reading the request
	phaseRequest              // net/http read bytes of a request that has not reached Server.handle
	phaseHandled              // the request reached Server.handle
)

// serverConn is a connection the server accepted: corked directly on the TCP
// connection, under TLS if there is TLS, and tracked in the server's pendingSet until
// it is upgraded or closed.
type serverConn struct {
	corkConn // directly on the TCP connection
	set      *pendingSet

	read  atomic.Bool  // the client has sent something
	phase atomic.Int32 // phaseIdle, phaseRequest or phaseHandled

	// Guarded by pendingSet.mu: the links of the set's FIFO.
	prev, next *serverConn
	listed     bool
}

// Read reads from the TCP connection and notes that the client sent something (which
// tells a failed TLS handshake from a client that sent nothing).
func (c *serverConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && !c.read.Load() {
		c.read.Store(true)
		c.set.notify()
	}
	return n, err
}

// serverConnOf returns the serverConn under the connection net/http serves, or nil.
func serverConnOf(nc net.Conn) *serverConn {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	sc, _ := nc.(*serverConn)
	return sc
}

type serverConnKey struct{}

// withServerConn is the HTTP server's ConnContext: it keeps the serverConn under the
// connection, where the upgrade handler finds it with serverConnFrom.
func withServerConn(ctx context.Context, nc net.Conn) context.Context {
	if sc := serverConnOf(nc); sc != nil {
		return context.WithValue(ctx, serverConnKey{}, sc)
	}
	return ctx
}

// serverConnFrom returns the serverConn withServerConn kept, or nil.
func serverConnFrom(ctx context.Context) *serverConn {
	sc, _ := ctx.Value(serverConnKey{}).(*serverConn)
	return sc
}

// pendingSet is a server's pending connections, oldest first: an intrusive FIFO linked
// through serverConn.prev and next.
type pendingSet struct {
	max    int           // MaxPending
	events chan struct{} // signalled after every change to the set or its counters, and a connection's first bytes, for tests

	mu         sync.Mutex
	head, tail *serverConn // head is the oldest
	n          int
	closed     bool          // the server is closing: removals are not counted as refusals
	drained    chan struct{} // if not nil, closed (and set to nil) when n drops to 0

	// Every connection added is removed exactly once, by one of the last three.
	added, hijacked, ended, evicted uint64
}

func newPendingSet(maxPending int) *pendingSet {
	return &pendingSet{max: maxPending, events: make(chan struct{}, 1)}
}

// add lists c, the newest connection. If MaxPending are listed already it unlists the
// oldest and returns it as victim, for the caller to close. After shut it still lists
// c, so that its close is accounted as usual, and reports closeNow: the caller must
// close it too.
func (p *pendingSet) add(c *serverConn) (victim *serverConn, closeNow bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n >= p.max {
		victim = p.head
		p.unlinkLocked(victim)
		p.evicted++
	}
	c.listed = true
	c.prev, c.next = p.tail, nil
	if p.tail != nil {
		p.tail.next = c
	} else {
		p.head = c
	}
	p.tail = c
	p.n++
	p.added++
	return victim, p.closed
}

// remove unlists c if it is listed, counting it in *count, and reports whether it was
// and whether the server is closing.
func (p *pendingSet) remove(c *serverConn, count *uint64) (removed, closing bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !c.listed {
		return false, p.closed
	}
	p.unlinkLocked(c)
	*count++
	if p.n == 0 && p.drained != nil {
		close(p.drained)
		p.drained = nil
	}
	return true, p.closed
}

func (p *pendingSet) unlinkLocked(c *serverConn) {
	if c.prev != nil {
		c.prev.next = c.next
	} else {
		p.head = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	} else {
		p.tail = c.prev
	}
	c.prev, c.next, c.listed = nil, nil, false
	p.n--
}

// shut marks the server closing: removals are no longer refusals.
func (p *pendingSet) shut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
}

// waitEmpty waits until no connection is listed, or for timeout, and reports whether
// none is. Nothing may be added meanwhile.
func (p *pendingSet) waitEmpty(timeout time.Duration) bool {
	p.mu.Lock()
	if p.n == 0 {
		p.mu.Unlock()
		return true
	}
	drained := make(chan struct{})
	p.drained = drained
	p.mu.Unlock()
	select {
	case <-drained:
		return true
	case <-time.After(timeout):
		return false
	}
}

// list returns the connections listed now, oldest first.
func (p *pendingSet) list() []*serverConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*serverConn, 0, p.n)
	for c := p.head; c != nil; c = c.next {
		out = append(out, c)
	}
	return out
}

// len returns the number of pending connections.
func (p *pendingSet) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

// notify signals a change to whoever waits on events.
func (p *pendingSet) notify() {
	select {
	case p.events <- struct{}{}:
	default:
	}
}

// pendingListener makes every accepted TCP connection a serverConn and lists it as
// pending, evicting the oldest pending connection when MaxPending are listed.
type pendingListener struct {
	net.Listener
	s *Server
}

func (l pendingListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	c := &serverConn{corkConn: corkConn{Conn: nc}, set: l.s.pending}
	victim, closeNow := l.s.pending.add(c)
	if victim != nil {
		// Its serve goroutine sees the close and ends; its StateClosed finds it
		// unlisted, so it is counted once, here.
		_ = victim.Conn.Close()
		l.s.pendingEvicted.Add(1)
	}
	if closeNow {
		_ = c.Conn.Close()
	}
	l.s.pending.notify()
	return c, nil
}

// connState is the HTTP server's ConnState hook: it follows a pending connection
// through its request, unlists it when it is upgraded or closes, and then counts a
// close that refused it. Close's closes are not refusals.
func (s *Server) connState(nc net.Conn, state http.ConnState) {
	c := serverConnOf(nc)
	if c == nil {
		return
	}
	switch state {
	case http.StateActive: // bytes of a request were read
		c.phase.Store(phaseRequest)
	case http.StateIdle: // not with keep-alives off; a request was answered
		c.phase.Store(phaseIdle)
	case http.StateHijacked: // upgraded
		s.pending.remove(c, &s.pending.hijacked)
	case http.StateClosed:
		removed, closing := s.pending.remove(c, &s.pending.ended)
		if removed && !closing {
			s.countRefusal(nc, c)
		}
	}
	s.pending.notify()
}

// countRefusal counts a pending connection net/http closed, if the close refused it:
//   - a request net/http read bytes of but did not pass to the handler: it answered
//     400 (not HTTP), 431 (headers over MaxHeaderBytes), 501 or another 4xx itself, or
//     the request was not complete within ReadHeaderTimeout or the client hung up in
//     the middle of it (RejectedBadRequest);
//   - a TLS handshake that did not complete although the client sent something: not
//     TLS (plain HTTP gets a 400), no common version or cipher, the client refusing the
//     certificate, or too slow (RejectedTLS).
//
// A request that reached the handler was counted there, and a connection that sent
// nothing (over TLS, nothing after its handshake) and then hung up or timed out refused
// nothing.
func (s *Server) countRefusal(nc net.Conn, c *serverConn) {
	switch c.phase.Load() {
	case phaseRequest:
		s.rejectedBadRequest.Add(1)
	case phaseIdle:
		if tc, ok := nc.(*tls.Conn); ok && c.read.Load() && !tc.ConnectionState().HandshakeComplete {
			s.rejectedTLS.Add(1)
		}
	}
}
