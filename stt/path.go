package stt

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/stt-tun/stt-tun/stt/wire"
	"github.com/stt-tun/stt-tun/stt/ws"
)

// wsEndpoint is a WebSocket connection seen as a conn.Endpoint, so that the receive
// path and the handshake treat both transports alike.
type wsEndpoint struct {
	c    *ws.Conn
	addr netip.AddrPort
}

func newWSEndpoint(c *ws.Conn) *wsEndpoint { return &wsEndpoint{c: c, addr: c.RemoteAddr()} }

func (e *wsEndpoint) ClearSrc()             {}
func (e *wsEndpoint) SrcToString() string   { return "" }
func (e *wsEndpoint) DstToString() string   { return e.addr.String() }
func (e *wsEndpoint) DstToBytes() []byte    { b, _ := e.addr.MarshalBinary(); return b }
func (e *wsEndpoint) DstIP() netip.Addr     { return e.addr.Addr() }
func (e *wsEndpoint) SrcIP() netip.Addr     { return netip.Addr{} }
func (e *wsEndpoint) String() string        { return e.c.String() }
func (e *wsEndpoint) send(f [][]byte) error { return e.c.Send(f) }

// Path names for status.
const (
	PathNone = "none"
	PathUDP  = "udp"
	PathWS   = "ws"
)

// sendEndpoint is where frames for the peer go now: the WebSocket while the peer's
// traffic is on it, else UDP, else a WebSocket as the only way.
func (p *Peer) sendEndpoint() conn.Endpoint {
	we := p.wsEP.Load()
	if we != nil && p.onWS.Load() {
		return we
	}
	if !p.node.cfg.DisableUDP {
		if ep := p.udpEP.Load(); ep != nil {
			return *ep
		}
	}
	if we != nil {
		return we
	}
	return nil
}

// Path reports the transport the peer's traffic uses: "udp", "ws" or "none".
func (p *Peer) Path() string {
	switch p.sendEndpoint().(type) {
	case nil:
		return PathNone
	case *wsEndpoint:
		return PathWS
	default:
		return PathUDP
	}
}

// learnEndpoint records where an authenticated frame came from: the peer roams to a
// new UDP address, and its traffic follows the peer's (see follow), unless the frame was
// a probe. s and ctr name the frame: its session and counter; a handshake message, which
// makes s, passes ctr = handshakeCtr.
//
// It reports whether the peer's traffic just moved back to UDP, so that the caller can
// tell the peer with a frame over UDP.
func (p *Peer) learnEndpoint(ep conn.Endpoint, probe bool, s *session, ctr uint64) (movedToUDP bool) {
	if we, ok := ep.(*wsEndpoint); ok {
		if p.wsEP.Load() != we {
			p.wsEP.Store(we)
		}
		we.c.MarkAuthenticated()
		if !probe && !p.onWS.Load() {
			p.follow(true, s, ctr)
		}
		return false
	}
	// The endpoint carries the peer's address and the local address it sent to, which
	// replies leave from (a multi-homed host): keep the latest of both. Only a change
	// costs an allocation.
	if cur := p.udpEP.Load(); cur == nil || addrPortOf(*cur) != addrPortOf(ep) || (*cur).SrcIP() != ep.SrcIP() {
		e := ep
		p.storeUDP(e)
	}
	if !probe && p.onWS.Load() {
		return p.follow(false, s, ctr)
	}
	return false
}

// handshakeCtr is the counter learnEndpoint is given for a handshake message: it
// comes before every frame of the session it makes.
const handshakeCtr = ^uint64(0)

// pathMove is the frame that last moved the peer's traffic: its session's number and
// its counter plus one (0 for a handshake message).
type pathMove struct{ gen, next uint64 }

// follow moves the peer's traffic to WebSocket (ws) or back to UDP on a frame that came
// over the other transport, and reports whether it did.
//
// The node that holds the peer's WebSocket URL decides its path itself (tickPathLocked):
// it moves to WebSocket only when UDP does not answer, and back on any frame over UDP;
// it never follows the peer to WebSocket, since the peer is there only by following it,
// and frames the peer sent before it saw a return to UDP keep coming over WebSocket for a
// while (a queue, a TCP stream, perhaps a proxy: no time bound).
//
// The other node follows, but only frames the peer sent after the frame of the last move:
// a later counter in the same session, or a later session. The peer seals each frame
// before it reads its path, so a frame sealed after its move goes the new way; one of
// an older counter is late, and moves nothing however late it comes.
func (p *Peer) follow(ws bool, s *session, ctr uint64) bool {
	if p.chooser.Load() && p.udpUsable() {
		if ws || !p.onWS.CompareAndSwap(true, false) {
			return false
		}
		p.node.log.Info("peer path changed", "peer", p.cfg.Name, "path", PathUDP)
		return true
	}
	next := ctr + 1 // handshakeCtr + 1 == 0
	if m := p.moved.Load(); m != nil && (s.gen < m.gen || s.gen == m.gen && next <= m.next) {
		return false // sent before the last move
	}
	p.moveMu.Lock()
	defer p.moveMu.Unlock()
	if m := p.moved.Load(); p.onWS.Load() == ws || m != nil && (s.gen < m.gen || s.gen == m.gen && next <= m.next) {
		return false
	}
	p.moved.Store(&pathMove{gen: s.gen, next: next})
	p.onWS.Store(ws)
	path := PathUDP
	if ws {
		path = PathWS
	}
	p.node.log.Info("peer path changed", "peer", p.cfg.Name, "path", path)
	return !ws
}

// wantsWS says whether this side may dial the peer over WebSocket.
func (p *Peer) wantsWS() bool { return p.cfg.WSURL != "" }

// udpUsable says whether UDP to the peer is possible at all.
func (p *Peer) udpUsable() bool { return !p.node.cfg.DisableUDP && p.udpEP.Load() != nil }

// dialWSLocked starts dialing the peer's WebSocket URL in the background unless a dial
// is running or recently failed, and reports whether it started one. Called with p.mu
// held.
func (p *Peer) dialWSLocked() bool {
	if p.wsDialing || !p.wantsWS() || p.wsEP.Load() != nil {
		return false
	}
	if time.Since(p.wsDialFailed) < p.wsDialBackoff() {
		return false
	}
	p.wsDialing = true
	n := p.node
	// The settings are read here, under p.mu: Update may change them during the dial.
	dc := ws.DialConfig{
		URL:                p.cfg.WSURL,
		Proxy:              p.cfg.WSProxy,
		CAFile:             p.cfg.WSCAFile,
		InsecureSkipVerify: p.cfg.WSInsecure,
		FwMark:             n.cfg.FwMark,
		Offset:             recvBase,
		BufSize:            BufferSize,
		Receive:            n.wsReceive,
		Logger:             n.log,
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		ctx, cancel := context.WithTimeout(n.ctx, 10*time.Second)
		c, err := ws.Dial(ctx, dc)
		cancel()
		p.mu.Lock()
		p.wsDialing = false
		if err != nil {
			p.wsDialFailed = time.Now()
			p.wsDialFails++
			fails := p.wsDialFails
			p.mu.Unlock()
			// The error names the URL and the address dialed: peer addresses are
			// logged at debug level only. One line at info per run of failures.
			if fails == 1 {
				n.log.Info("websocket dial failed; retrying with backoff (debug level logs why)", "peer", p.cfg.Name)
			}
			p.mu.Lock()
			p.dropHeldLocked()
			p.mu.Unlock()
			n.log.Debug("websocket dial failed", "peer", p.cfg.Name, "attempt", fails, "err", err)
			return
		}
		p.wsDialFails = 0
		if p.removed || n.ctx.Err() != nil || !p.wsDialMatches(dc) {
			p.dropHeldLocked()
			p.mu.Unlock()
			_ = c.Close()
			return
		}
		p.wsEP.Store(n.wsEndpointFor(c))
		p.mu.Unlock()
		n.log.Info("websocket connected", "peer", p.cfg.Name)
		n.log.Debug("websocket connected", "peer", p.cfg.Name, "url", c.String())
		n.kick()
	}()
	return true
}

// countFallbackLost counts the data datagrams sent over UDP since it last answered as
// lost to the move away from it (DropFallback). Some may have arrived, if only the way
// back failed; no answer says which.
func (p *Peer) countFallbackLost() {
	if lost := p.sentUnanswered.Swap(0); lost > 0 {
		p.drops.Add(lost)
		p.node.ctr.drops[DropFallback].Add(lost)
		p.node.log.Debug("datagrams sent over UDP after its last answer presumed lost", "peer", p.cfg.Name, "count", lost)
	}
}

// hold queues datagrams while the path is being switched, and reports whether it did
// (false: the switch ended meanwhile, send them normally). When the queue is full the
// oldest goes, counted under DropFallback.
func (p *Peer) hold(pkts [][]byte) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.holding.Load() {
		return false
	}
	for _, pkt := range pkts {
		if len(p.queue) >= MaxQueued {
			p.queue[0] = nil
			p.queue = p.queue[1:]
			p.drops.Add(1)
			p.node.ctr.drops[DropFallback].Add(1)
		}
		b := make([]byte, len(pkt), len(pkt)+wire.TagLen)
		copy(b, pkt)
		p.queue = append(p.queue, b)
	}
	return true
}

// releaseHeldLocked ends a hold: the datagrams that waited go out on s over the path
// now chosen. Called with p.mu held.
func (p *Peer) releaseHeldLocked(s *session) {
	// Load first: this runs on every tick, and a write would contend with Send's read.
	if !p.holding.Load() || !p.holding.Swap(false) {
		return
	}
	if s == nil || s.expired(time.Now(), &p.node.timers) {
		// The session went meanwhile: the queue waits for the next, as any would.
		if len(p.queue) > 0 {
			p.wantHandshake = true
		}
		return
	}
	p.flushQueueLocked(s)
}

// dropHeldLocked ends a hold whose move cannot be made (the dial failed): what waited is
// counted under DropFallback rather than sent into the path that stopped answering.
// Called with p.mu held.
func (p *Peer) dropHeldLocked() {
	if !p.holding.Swap(false) {
		return
	}
	if l := uint64(len(p.queue)); l > 0 {
		p.drops.Add(l)
		p.node.ctr.drops[DropFallback].Add(l)
		p.queue = nil
	}
}

// tickPathLocked moves the peer between UDP and WebSocket: to WebSocket when UDP does
// not answer (a handshake or data for longer than FallbackAfter), and back when a UDP
// probe is answered. Called with p.mu held.
func (p *Peer) tickPathLocked(now time.Time, cur *session) {
	n := p.node
	t := &n.timers
	if !p.wantsWS() {
		return
	}
	if !p.udpUsable() {
		// WebSocket is the only way: keep a connection while there is anything to do.
		if p.wsEP.Load() == nil && (p.init != nil || p.wantHandshake || cur != nil || p.cfg.PersistentKeepalive > 0) {
			p.dialWSLocked()
		}
		if p.wsEP.Load() != nil {
			// UDP went away (a reload) during a move: the WebSocket is the way now.
			p.releaseHeldLocked(cur)
		}
		return
	}
	if !p.onWS.Load() {
		stuck := p.init != nil && now.Sub(p.init.firstSent) >= t.FallbackAfter
		if fu := p.firstUnanswered.Load(); cur != nil && fu != 0 && p.mono(now)-fu >= int64(t.FallbackAfter) {
			stuck = true
		}
		if !stuck {
			// UDP answered after all: what waited for a move goes the way it was going.
			p.releaseHeldLocked(cur)
			return
		}
		if p.wsEP.Load() == nil {
			dialing := p.dialWSLocked() || p.wsDialing
			if dialing && cur != nil && cur.confirmed.Load() {
				// Until the WebSocket carries, datagrams wait rather than go into UDP.
				p.holding.Store(true)
			}
			return
		}
		n.log.Info("UDP does not answer; moving to WebSocket", "peer", p.cfg.Name)
		p.onWS.Store(true)
		p.firstUnanswered.Store(0)
		// What went over UDP since it last answered is presumed lost: count it.
		p.countFallbackLost()
		if cur != nil && cur.confirmed.Load() {
			// Tell the peer at once, so that its traffic follows; what waited for the
			// move follows the keepalive on the same stream.
			p.sendControl(cur, nil)
			p.releaseHeldLocked(cur)
		} else {
			p.startHandshakeLocked(now)
		}
		return
	}
	// On WebSocket: probe UDP now and then; a PONG over UDP moves us back.
	if cur != nil && now.Sub(p.lastProbe) >= t.ProbeInterval {
		p.lastProbe = now
		if ep := p.udpEP.Load(); ep != nil {
			p.sendControlVia(cur, p.pingPayloadLocked(now, nil), *ep)
		}
	}
}

// wsRecvState is the per-call scratch of the WebSocket receive path.
type wsRecvState struct {
	rx    [][]byte
	eps   []conn.Endpoint
	in    *Inbound
	nonce *[12]byte
	hsOut []byte
}

// wsReceive is the WebSocket transports' receive function: one batch of records
// from one connection.
func (n *Node) wsReceive(c *ws.Conn, bufs [][]byte, sizes []int) {
	st := n.wsStates.Get().(*wsRecvState)
	defer n.wsStates.Put(st)
	if cap(st.rx) < len(bufs) {
		st.rx = make([][]byte, len(bufs))
		st.eps = make([]conn.Endpoint, len(bufs))
		st.in = &Inbound{
			Bufs: make([][]byte, len(bufs)), Sizes: make([]int, len(bufs)),
			Peers: make([]*Peer, len(bufs)), Streams: make([]uint16, len(bufs)),
			Scratch: make([][]byte, 0, len(bufs)),
		}
	}
	we := n.wsEndpointFor(c)
	rx := st.rx[:len(bufs)]
	eps := st.eps[:len(bufs)]
	for i := range bufs {
		rx[i] = bufs[i][recvBase:]
		eps[i] = we
	}
	n.receiveBatch(bufs, rx, sizes, eps, st.in, st.nonce, st.hsOut[:0])
}

// wsEndpoints remembers one endpoint per connection, so that a peer's endpoint is the
// same value for every frame of a connection.
type wsEndpoints struct {
	mu sync.Mutex
	m  map[*ws.Conn]*wsEndpoint
}

func (n *Node) wsEndpointFor(c *ws.Conn) *wsEndpoint {
	n.wsEPs.mu.Lock()
	defer n.wsEPs.mu.Unlock()
	if e, ok := n.wsEPs.m[c]; ok {
		return e
	}
	e := newWSEndpoint(c)
	if n.wsEPs.m == nil {
		n.wsEPs.m = make(map[*ws.Conn]*wsEndpoint)
	}
	n.wsEPs.m[c] = e
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		select {
		case <-c.Done():
		case <-n.ctx.Done():
		}
		n.wsEPs.mu.Lock()
		delete(n.wsEPs.m, c)
		n.wsEPs.mu.Unlock()
		_ = c.Close()
		for _, p := range n.Peers() {
			if p.wsEP.CompareAndSwap(e, nil) {
				p.onWS.Store(false)
				n.log.Info("websocket closed", "peer", p.cfg.Name)
			}
		}
		n.kick()
	}()
	return e
}

// startWS opens the WebSocket listener when one is configured.
func (n *Node) startWS() error {
	if n.cfg.WSListen == "" {
		return nil
	}
	srv, err := ws.Listen(ws.ServerConfig{
		Addr:     n.cfg.WSListen,
		Path:     n.cfg.WSPath,
		CertFile: n.cfg.WSCertFile,
		KeyFile:  n.cfg.WSKeyFile,

		MaxPending:          n.cfg.WSMaxPending,
		MaxPendingPerSource: n.cfg.WSMaxPendingPerSource,
		Offset:              recvBase,
		BufSize:             BufferSize,
		Receive:             n.wsReceive,
		Logger:              n.log,
	})
	if err != nil {
		return fmt.Errorf("stt: websocket listener: %w", err)
	}
	n.wsServer = srv
	return nil
}

// WSAddr is the WebSocket listener's address, or "" without one.
func (n *Node) WSAddr() string {
	if n.wsServer == nil {
		return ""
	}
	return n.wsServer.Addr().String()
}

// WSStats returns the WebSocket listener's counters.
func (n *Node) WSStats() (ws.ServerStats, bool) {
	if n.wsServer == nil {
		return ws.ServerStats{}, false
	}
	return n.wsServer.Stats(), true
}

// maxWSDialBackoff caps the wait between WebSocket dial attempts.
const maxWSDialBackoff = 30 * time.Second

// wsDialBackoff is how long to wait after a failed dial: HandshakeRetry doubling per
// consecutive failure up to maxWSDialBackoff. Called with p.mu held.
func (p *Peer) wsDialBackoff() time.Duration {
	d := p.node.timers.HandshakeRetry << min(p.wsDialFails, 10)
	if d <= 0 || d > maxWSDialBackoff {
		d = maxWSDialBackoff
	}
	return d
}
