// The outbound path, in the order a datagram takes it: Peer.Send → sealBatch (counters
// and keys: session.go; the header: stt/wire) → transmit to the peer's target (the
// choice of path; path.go keeps the rest of the path) → Node.send → the transport
// (stt/udp, or a connection of stt/ws). Then the queues that hold datagrams while no
// session or no path can carry them, and the sending of control frames.

package stt

import (
	"errors"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/stt-tun/stt-tun/stt/udp"
	"github.com/stt-tun/stt-tun/stt/wire"
)

// Send seals and sends a batch of datagrams to the peer. pkts[i] holds wire.HeaderLen
// bytes of headroom followed by the payload, and must have wire.TagLen bytes of spare
// capacity; it is sealed in place and pkts[i] is extended to the frame. flows[i] keeps
// datagrams of one flow on one stream. Without a session the datagrams are copied into a
// bounded queue and a handshake starts.
func (p *Peer) Send(pkts [][]byte, flows []uint16) error {
	n := p.node
	now := time.Now()
	s := p.sendSession(now)
	if s == nil {
		return p.enqueue(pkts, flows, nil, now)
	}
	if p.path.holding.Load() && p.hold(pkts) {
		return nil
	}
	first, ok := s.reserve(len(pkts), n.limits.RejectAfterMessages)
	if !ok {
		return p.enqueue(pkts, flows, s, now)
	}
	bytes := p.sealBatch(s, pkts, flows, first)
	if first+uint64(len(pkts)) >= n.limits.RekeyAfterMessages {
		n.kick()
	}
	return p.transmit(pkts, now, bytes, true)
}

// sendSession is the session data goes out on: the current one, or while it is not
// yet confirmed the one it replaces; nil when neither can seal.
func (p *Peer) sendSession(now time.Time) *session {
	s := p.keys.current.Load()
	if s != nil && !s.confirmed.Load() {
		if sb := p.keys.standby.Load(); sb != nil && !sb.expired(now, &p.node.limits) {
			s = sb
		}
	}
	if s == nil || s.expired(now, &p.node.limits) {
		return nil
	}
	return s
}

// sealBatch seals pkts in place on s, with the counters reserved from first on, each
// on the stream of flows[i], or all on the stream of flow 0 when flows is nil. It
// returns the payload bytes sealed.
func (p *Peer) sealBatch(s *session, pkts [][]byte, flows []uint16, first uint64) uint64 {
	nonce := p.node.getNonce()
	var bytes uint64
	stream := s.streamFor(0)
	for i := range pkts {
		bytes += uint64(len(pkts[i]) - wire.HeaderLen)
		if flows != nil {
			stream = s.streamFor(flows[i])
		}
		pkts[i] = s.seal(pkts[i], stream, first+uint64(i), nonce)
	}
	p.node.putNonce(nonce)
	return bytes
}

// transmit sends sealed frames to the current endpoint and accounts for them.
func (p *Peer) transmit(frames [][]byte, now time.Time, payloadBytes uint64, data bool) error {
	ep := p.target()
	if ep == nil {
		p.drop(DropSendError, uint64(len(frames)))
		return errNoEndpoint
	}
	err := p.node.send(frames, ep)
	if big := tooBig(err); big > 0 {
		// Frames larger than the local interface allows (no local fragmentation:
		// pmtu.go) were lost alone; the batch's others went out, counted below.
		p.drop(DropSendError, uint64(big))
	} else if err != nil {
		p.drop(DropSendError, uint64(len(frames)))
		if data {
			// A path that refuses sends (a local firewall answers EPERM) is as dead
			// as one that drops them: start the same clock.
			p.times.firstUnanswered.CompareAndSwap(0, p.mono(now))
		}
		return err
	}
	t := p.mono(now)
	p.times.lastSent.Store(t)
	if data {
		p.counters.txPackets.Add(uint64(len(frames)))
		p.counters.txBytes.Add(payloadBytes)
		// Set once per silence: a failing CompareAndSwap would still take the cache
		// line, which the receive path reads, on every batch while the peer is quiet.
		if p.times.firstUnanswered.Load() == 0 {
			p.times.firstUnanswered.CompareAndSwap(0, t)
		}
		if isUDP(ep) && (p.chooser() || p.relayChooser()) {
			// Only a node that may move the path away from UDP needs the count.
			p.path.sentUnanswered.Add(uint64(len(frames)))
			if p.path.on.Load() != onUDP {
				// The move came between choosing UDP and counting: it may have
				// taken the count before this batch was in it.
				p.countFallbackLost()
			}
		}
	}
	return nil
}

// tooBig is how many frames a send error says were larger than the local interface
// allows, the others sent (udp.MessageTooBigError); 0 for any other error.
func tooBig(err error) int {
	var tb *udp.MessageTooBigError
	if errors.As(err, &tb) {
		return tb.Dropped
	}
	return 0
}

// target is where frames for the peer go now: the WebSocket or the relay while the
// peer's traffic is on it, else UDP, else a WebSocket or a relay this node asked for
// (a chooser's) as the only way.
func (p *Peer) target() conn.Endpoint {
	switch p.path.on.Load() {
	case onWS:
		if we := p.path.ws.Load(); we != nil {
			return we
		}
	case onRelay:
		if re := p.path.relay.Load(); re != nil {
			return re
		}
	}
	if !p.node.cfg.DisableUDP {
		if ep := p.path.udp.Load(); ep != nil {
			return *ep
		}
	}
	if we := p.path.ws.Load(); we != nil {
		return we
	}
	if re := p.path.relay.Load(); re != nil && re.choose {
		// Only a relay this node asked for: a follower's path carries the traffic
		// once a frame of the peer's came through it (follow), never before.
		return re
	}
	return nil
}

// isUDP reports whether ep is a UDP address (not a WebSocket connection nor a relay).
func isUDP(ep conn.Endpoint) bool {
	switch ep.(type) {
	case *wsEndpoint, *relayEndpoint:
		return false
	}
	return true
}

// chooser reports whether this node holds the peer's WebSocket URL: then it may dial
// the peer over WebSocket, and it chooses the peer's path itself (follow).
func (p *Peer) chooser() bool {
	c := p.path.wsConf.Load()
	return c != nil && c.URL != ""
}

// send hands frames to ep's transport: its WebSocket connection, a relay (wrapped in
// RELAY messages), or the UDP bind.
func (n *Node) send(frames [][]byte, ep conn.Endpoint) error {
	switch e := ep.(type) {
	case *wsEndpoint:
		return e.c.Send(frames)
	case *relayEndpoint:
		return n.sendRelay(frames, e)
	}
	if n.cfg.DisableUDP {
		return errNoEndpoint
	}
	return n.bind.Send(frames, ep)
}

var errNoEndpoint = errors.New("peer has no known endpoint")

func (n *Node) getNonce() *[12]byte { return n.noncePool.Get().(*[12]byte) }

func (n *Node) putNonce(b *[12]byte) { n.noncePool.Put(b) }

// hold queues datagrams while the path is being switched, and reports whether it did
// (false: the switch ended meanwhile, send them normally). When the queue is full the
// oldest goes, counted under DropFallback.
func (p *Peer) hold(pkts [][]byte) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.path.holding.Load() {
		return false
	}
	p.queueLocked(pkts, DropFallback)
	return true
}

// enqueue copies datagrams into the handshake queue, dropping the oldest when full. A
// wildcard peer carries nothing: they are dropped (ErrWildcardPeer). seen is the
// session Send found unable to carry them (nil: none); a session installed since,
// which has already flushed the queue, carries them at once instead.
func (p *Peer) enqueue(pkts [][]byte, flows []uint16, seen *session, now time.Time) error {
	if p.cfg.AnyName {
		p.drop(DropNoSession, uint64(len(pkts)))
		return ErrWildcardPeer
	}
	p.mu.Lock()
	if p.refusedLocked(time.Now()) {
		// The peer refused us: nothing would carry these before the back-off ends.
		// Remember that there is traffic, so that a handshake starts when it does.
		p.drop(DropRefused, uint64(len(pkts)))
		p.handshake.want = true
		p.mu.Unlock()
		return nil
	}
	if s := p.sendSession(now); s != nil && s != seen {
		// The handshake completed between Send's look and this lock: its install
		// flushed the queue and cleared the want. Queued now, these would wait for
		// another handshake, which this want would start for nothing.
		if p.path.holding.Load() {
			p.queueLocked(pkts, DropFallback) // as hold: the release sends them
			p.mu.Unlock()
			return nil
		}
		if first, ok := s.reserve(len(pkts), p.node.limits.RejectAfterMessages); ok {
			bytes := p.sealBatch(s, pkts, flows, first)
			err := p.transmit(pkts, now, bytes, true)
			p.mu.Unlock()
			return err
		}
	}
	p.queueLocked(pkts, DropNoSession)
	p.handshake.want = true
	p.mu.Unlock()
	p.node.kick()
	return nil
}

// queueLocked copies datagrams into the peer's queue, bounded by MaxQueued: when it is
// full the oldest goes, counted under r. Called with p.mu held.
func (p *Peer) queueLocked(pkts [][]byte, r DropReason) {
	for _, pkt := range pkts {
		if len(p.queue) >= MaxQueued {
			p.queue[0] = nil
			p.queue = p.queue[1:]
			p.drop(r, 1)
		}
		b := make([]byte, len(pkt), len(pkt)+wire.TagLen)
		copy(b, pkt)
		p.queue = append(p.queue, b)
	}
}

// dropQueueLocked empties the peer's queue, counting what it held under r. Called with
// p.mu held.
func (p *Peer) dropQueueLocked(r DropReason) {
	if len(p.queue) > 0 {
		p.drop(r, uint64(len(p.queue)))
	}
	p.queue = nil
}

// flushQueueLocked sends what waited for a session. Called with p.mu held.
func (p *Peer) flushQueueLocked(s *session) {
	if len(p.queue) == 0 {
		return
	}
	q := p.queue
	p.queue = nil
	first, ok := s.reserve(len(q), p.node.limits.RejectAfterMessages)
	if !ok {
		// The session may not seal that many (only with a REJECT_AFTER_MESSAGES
		// lowered below the queue's length): the datagrams are lost, and counted as
		// those a full queue pushes out are.
		p.drop(DropNoSession, uint64(len(q)))
		return
	}
	// Queued datagrams lost their flow numbers; one stream keeps them in order.
	bytes := p.sealBatch(s, q, nil, first)
	_ = p.transmit(q, time.Now(), bytes, true)
}

// sendControl seals one stream-0 payload on s and sends it on the current path.
func (p *Peer) sendControl(s *session, payload []byte) {
	p.sendControlVia(s, payload, nil)
}

// sendControlVia seals one stream-0 payload on s and sends it to ep, or on the
// current path when ep is nil. Answers to probes go back the way the probe came.
func (p *Peer) sendControlVia(s *session, payload []byte, ep conn.Endpoint) {
	if s.expired(time.Now(), &p.node.limits) {
		return // the timer has not taken it away yet, but it seals nothing more
	}
	first, ok := s.reserve(1, p.node.limits.RejectAfterMessages)
	if !ok {
		return
	}
	frame := make([]byte, wire.HeaderLen, wire.HeaderLen+len(payload)+wire.TagLen)
	frame = append(frame, payload...)
	nonce := p.node.getNonce()
	frame = s.seal(frame, wire.ControlStream, first, nonce)
	p.node.putNonce(nonce)
	k, n := controlKind(payload), len(frame)
	if ep == nil {
		if p.transmit([][]byte{frame}, time.Now(), 0, false) == nil {
			p.node.countTx(k, 1, n)
		}
		return
	}
	if err := p.node.send([][]byte{frame}, ep); err != nil {
		p.node.drop(DropSendError)
	} else {
		p.node.countTx(k, 1, n)
	}
}

// sendHandshake sends one handshake message (or refusal) to ep and counts it.
func (n *Node) sendHandshake(frame []byte, ep conn.Endpoint) error {
	err := n.send([][]byte{frame}, ep)
	if err == nil {
		n.countTx(TxHandshake, 1, len(frame))
	}
	return err
}

// sendClose tells the peer that s is closed because this side shuts it down.
func (p *Peer) sendClose(s *session) { p.sendCloseCode(s, wire.CodeShutdown) }

// sendCloseCode tells the peer that s is closed, for the reason code (wire.Code*).
func (p *Peer) sendCloseCode(s *session, code byte) {
	p.sendControl(s, wire.AppendControl(nil, wire.CtlClose, []byte{code, 0}))
}
