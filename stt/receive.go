// The inbound path, in the order a frame takes it: a transport's batch (receiveLoop for
// UDP, wsReceive for WebSocket) → receiveBatch: length and type (stt/wire) → index
// lookup and expiry (session.go) → open → replay check → the per-peer run: roaming
// (learnEndpoint, which calls follow in path.go only when the path moves), clocks and
// counters → the Handler (tunnel.Deliver). Handshake messages branch off to
// handshake_peer.go, control messages (stream 0) to control.go.

package stt

import (
	"errors"
	"net"
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/stt-tun/stt-tun/internal/offheap"
	"github.com/stt-tun/stt-tun/stt/wire"
	"github.com/stt-tun/stt-tun/stt/ws"
)

// Handler receives what the node delivers. Deliver is called from the node's receive
// goroutines, possibly concurrently, and must not keep references to the batch after it
// returns.
type Handler interface {
	Deliver(in *Inbound)
}

// Inbound is one batch of authenticated datagrams. Datagram i is
// Bufs[i][Headroom:Headroom+Sizes[i]], from Peers[i]. Scratch is free for the handler
// to use during Deliver (capacity: the batch size).
type Inbound struct {
	Bufs    [][]byte
	Sizes   []int
	Peers   []*Peer
	N       int
	Scratch [][]byte
}

// receiveLoop reads batches from one transport receive function until the node closes.
func (n *Node) receiveLoop(fn conn.ReceiveFunc) {
	defer n.wg.Done()
	batch := n.bind.BatchSize()
	// Off the Go heap: a batch of 64 KiB buffers would otherwise set the garbage
	// collector's pace (internal/offheap). Nothing keeps a buffer past receiveBatch.
	bufs, release := offheap.Buffers(batch, BufferSize)
	defer release()
	rx := make([][]byte, batch)
	sizes := make([]int, batch)
	eps := make([]conn.Endpoint, batch)
	for i := range bufs {
		rx[i] = bufs[i][recvBase:]
	}
	in := &Inbound{
		Bufs:    make([][]byte, batch),
		Sizes:   make([]int, batch),
		Peers:   make([]*Peer, batch),
		Scratch: make([][]byte, 0, batch),
	}
	nonce := new([12]byte)
	hsOut := make([]byte, 0, 256)
	fw := &relayFwd{frames: make([][]byte, 0, batch)}
	var errs int
	for {
		k, err := fn(rx, sizes, eps)
		if err != nil {
			if n.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			errs++
			n.log.Debug("transport receive error", "err", err)
			if errs > 100 {
				// A socket that fails every time would spin; back off, but stay alive.
				select {
				case <-n.ctx.Done():
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
			continue
		}
		errs = 0
		n.receiveBatch(bufs, rx, sizes[:k], eps, in, nonce, hsOut, fw)
		if offheap.Poisoning {
			poisonBatch(bufs, sizes[:k])
		}
	}
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
			Peers:   make([]*Peer, len(bufs)),
			Scratch: make([][]byte, 0, len(bufs)),
		}
		st.fw = &relayFwd{frames: make([][]byte, 0, len(bufs))}
	}
	we := n.wsEndpointFor(c)
	rx := st.rx[:len(bufs)]
	eps := st.eps[:len(bufs)]
	for i := range bufs {
		rx[i] = bufs[i][recvBase:]
		eps[i] = we
	}
	n.receiveBatch(bufs, rx, sizes, eps, st.in, st.nonce, st.hsOut[:0], st.fw)
	if offheap.Poisoning {
		poisonBatch(bufs, sizes)
	}
}

// poisonBatch overwrites the bytes of a received batch (offheap.Poison) in a build with
// the offheap_poison tag: nothing may read them once receiveBatch has returned.
func poisonBatch(bufs [][]byte, sizes []int) {
	for i, size := range sizes {
		offheap.Poison(bufs[i][:min(len(bufs[i]), recvBase+size)])
	}
}

// wsRecvState is the per-call scratch of the WebSocket receive path.
type wsRecvState struct {
	rx    [][]byte
	eps   []conn.Endpoint
	in    *Inbound
	nonce *[12]byte
	hsOut []byte
	fw    *relayFwd
}

// receiveBatch authenticates a batch of frames, handles handshakes and control
// messages inline, forwards RELAY messages it relays (in one send per run of messages to
// the same endpoint, fw) and delivers data datagrams to the Handler in one call. The
// inner message of a RELAY message for a relay path of this node is handled as if it had
// come from that path's endpoint.
func (n *Node) receiveBatch(bufs, rx [][]byte, sizes []int, eps []conn.Endpoint, in *Inbound, nonce *[12]byte, hsOut []byte, fw *relayFwd) {
	now := time.Now()
	in.N = 0
	var run recvRun
	var locked *session
	unlock := func() {
		if locked != nil {
			locked.replayMu.Unlock()
			locked = nil
		}
	}
	for i, size := range sizes {
		msg := rx[i][:size]
		buf, ep := bufs[i], eps[i]
		typ, err := wire.CheckLength(msg)
		if err != nil {
			if errors.Is(err, wire.ErrVersion) {
				n.dropVersion(msg[1], ep)
			} else {
				n.drop(DropMalformed)
			}
			continue
		}
		var via *relayEndpoint
		if typ == wire.TypeRelay {
			inner, e, ok := n.relayIn(msg, ep, fw, now)
			if !ok {
				continue // forwarded, or dropped
			}
			// The inner message starts RelayHeaderLen further into the buffer: so
			// does the buffer handed on, so that its payload is at Headroom.
			msg, buf, ep, via, typ = inner, buf[wire.RelayHeaderLen:], e, e, inner[0]
		}
		if typ != wire.TypeData {
			unlock()
			n.handleHandshake(msg, ep, hsOut[:0])
			continue
		}
		h, _ := wire.ParseHeader(msg)
		s := n.index.lookup(h.Receiver)
		if s == nil {
			n.drop(DropUnknownIndex)
			continue
		}
		if via != nil && s.peer != via.peer {
			// A frame of another peer's session through this peer's relay path: the
			// relay misroutes it. It would open, but must move nothing.
			n.drop(DropRelayWrongSource)
			continue
		}
		if s.expired(now, &n.limits) {
			n.drop(DropExpired)
			continue
		}
		pt, err := s.open(msg, h.Counter, nonce)
		if err != nil {
			n.drop(DropAuth)
			continue
		}
		if locked != s {
			unlock()
			s.replayMu.Lock()
			locked = s
		}
		if !s.replay.ValidateCounter(h.Counter, n.limits.RejectAfterMessages) {
			n.drop(DropReplay)
			continue
		}
		p := s.peer
		if h.Stream == wire.ControlStream && s.initiator && !s.confirmed.Load() {
			if code, ok := wire.RefusalCode(pt); ok {
				// The responder verified our AUTH_PROOF and refused us: it confirms
				// nothing and moves no path (section 4.8).
				unlock()
				run.flush(now)
				p.refusedBy(s, code, now)
				continue
			}
		}
		// Path MTU probes and their answers (the answer goes the way the probe came)
		// move no path either; nor does a PONG that came other than over UDP: it
		// answers this node's own PING, the way that went (through the relay while
		// this node was on it), and says nothing of the way the peer chose. A
		// follower moved back to UDP was taken back to the relay by the PONG of a
		// PING in flight, for good if nothing more was sent. Over UDP a PONG shows
		// that UDP works, and moves the traffic back.
		ctl := h.Stream == wire.ControlStream && len(pt) > 0
		probe := ctl && (pt[0] == wire.CtlPing || pt[0] == wire.CtlProbe || pt[0] == wire.CtlProbeAck ||
			pt[0] == wire.CtlPong && !isUDP(ep))
		run.add(s, h.Counter, ep, now, len(msg), h.Stream != wire.ControlStream, probe)
		if h.Stream == wire.ControlStream {
			unlock()
			run.flush(now) // control handling reads the peer's state
			n.handleControl(p, s, pt, ep)
			continue
		}
		in.Bufs[in.N] = buf
		in.Sizes[in.N] = len(pt)
		in.Peers[in.N] = p
		in.N++
	}
	unlock()
	run.flush(now)
	fw.flush(n)
	if in.N > 0 {
		in.Scratch = in.Scratch[:0]
		n.cfg.Handler.Deliver(in)
		clear(in.Peers[:in.N])
	}
	clear(eps[:len(sizes)])
}

// recvRun accumulates what a run of frames from one peer in a receive batch did to
// the peer, so that the shared counters and clocks are written once per run rather
// than once per frame (they share cache lines with the sending goroutine).
type recvRun struct {
	p         *Peer
	packets   uint64
	bytes     uint64
	any, data bool
	// answer: a frame of the run was not a probe (see add), so the peer answered what
	// was sent before it.
	answer      bool
	unconfirmed *session
}

// add records one authenticated frame of s, switching runs when the peer changes.
// The path and roaming are updated per frame: a probe (a lone PING, or a path MTU
// PROBE or PROBE_ACK) moves no path, it is answered the way it came.
func (r *recvRun) add(s *session, ctr uint64, ep conn.Endpoint, now time.Time, size int, data, probe bool) {
	p := s.peer
	if p != r.p {
		r.flush(now)
		r.p = p
	}
	if p.learnEndpoint(ep, probe, s, ctr) {
		// Tell the peer over UDP at once, so that its traffic follows ours back.
		p.sendControl(s, nil)
	}
	r.any = true
	r.answer = r.answer || !probe
	if !s.confirmed.Load() {
		r.unconfirmed = s
	}
	if data {
		r.data = true
		r.packets++
		r.bytes += uint64(size - wire.Overhead)
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
	switch e := ep.(type) {
	case *wsEndpoint:
		if p.path.ws.Load() != e {
			p.path.ws.Store(e)
		}
		e.c.MarkAuthenticated()
		if !probe && p.path.on.Load() != onWS {
			p.follow(onWS, s, ctr)
		}
		return false
	case *relayEndpoint:
		// Only the peer's current relay path moves it; the frame itself counts.
		if !probe && e.peer == p && p.path.relay.Load() == e && p.path.on.Load() != onRelay {
			p.follow(onRelay, s, ctr)
		}
		return false
	}
	// The endpoint carries the peer's address and the local address it sent to, which
	// replies leave from (a multi-homed host): keep the latest of both. Only a change
	// costs an allocation.
	if cur := p.path.udp.Load(); cur == nil || addrPortOf(*cur) != addrPortOf(ep) || (*cur).SrcIP() != ep.SrcIP() {
		e := ep
		p.storeUDP(e)
	}
	if !probe && p.path.on.Load() != onUDP {
		return p.follow(onUDP, s, ctr)
	}
	return false
}

// handshakeCtr is the counter learnEndpoint is given for a handshake message: it
// comes before every frame of the session it makes.
const handshakeCtr = ^uint64(0)

// addrPortOf is an endpoint's address: from its AddrPort method where it has one
// (stt/udp's endpoints do), from StdNetBind's field, else parsed from its text.
func addrPortOf(ep conn.Endpoint) netip.AddrPort {
	switch e := ep.(type) {
	case interface{ AddrPort() netip.AddrPort }:
		return e.AddrPort()
	case *conn.StdNetEndpoint:
		return e.AddrPort
	}
	ap, _ := netip.ParseAddrPort(ep.DstToString())
	return ap
}

// flush writes the run's effects to its peer.
func (r *recvRun) flush(now time.Time) {
	p := r.p
	if p == nil || !r.any {
		*r = recvRun{}
		return
	}
	t := p.mono(now)
	p.times.lastRecv.Store(t)
	if p.times.firstUnanswered.Load() != 0 {
		p.times.firstUnanswered.Store(0)
	}
	// A probe is the peer's own request (an RTT PING, a path MTU PROBE) or the answer
	// to one of ours (PROBE_ACK): it says nothing of the datagrams sent since. Sent
	// just before UDP died and read just after, it would clear the count of datagrams
	// already lost into the dead path, which the fallback then never counts.
	if r.answer && p.path.sentUnanswered.Load() != 0 {
		p.path.sentUnanswered.Store(0)
	}
	if r.unconfirmed != nil && !r.unconfirmed.confirmed.Load() {
		p.confirmedSession(r.unconfirmed, now)
	}
	if r.data {
		p.times.lastRecvData.Store(t)
		p.counters.rxPackets.Add(r.packets)
		p.counters.rxBytes.Add(r.bytes)
	}
	*r = recvRun{}
}
