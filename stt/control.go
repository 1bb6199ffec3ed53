package stt

import (
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/stt-tun/stt-tun/stt/wire"
)

// Reliable control limits (docs/protocol.md 6.1).
const (
	reliableWindow   = 32
	reliableQueueMax = 256
	reliableRTOMin   = 200 * time.Millisecond
	reliableRTOMax   = 5 * time.Second
)

// ErrReliableQueueFull reports that 256 reliable control messages already wait.
var ErrReliableQueueFull = errors.New("reliable control queue full")

// handleControl processes the control messages of one authenticated stream-0 payload.
func (n *Node) handleControl(p *Peer, s *session, payload []byte, from conn.Endpoint) {
	it := wire.NewControlIter(payload)
	var reply []byte
	for {
		m, ok := it.Next()
		if !ok {
			break
		}
		if err := wire.CheckControlBody(m); err != nil {
			n.drop(DropControl)
			continue
		}
		if m.Type == wire.CtlProbe {
			// Answered here, where the frame's length is known; never inside RELIABLE.
			reply = answerProbe(reply, m.Body, len(payload))
			continue
		}
		if m.Type == wire.CtlReliable {
			seq, inner := wire.ParseReliable(m.Body)
			deliver, ack := s.rel.receive(seq)
			reply = wire.AppendControl(reply, wire.CtlAck, binary.LittleEndian.AppendUint32(nil, ack))
			if !deliver {
				continue
			}
			p.times.lastReliable.Store(p.mono(time.Now())) // the session is in use (IdleTimeout)
			m = inner
			if err := wire.CheckControlBody(m); err != nil || m.Type == wire.CtlReliable {
				n.drop(DropControl)
				continue
			}
		} else if m.Type >= wire.CtlExtensionMin {
			// An extension message sent unreliably (SendUnreliable) is use too.
			p.times.lastReliable.Store(p.mono(time.Now()))
		}
		reply = n.handleControlMsg(p, s, m, reply, from)
	}
	if it.Err() != nil {
		n.drop(DropControl)
	}
	if reply != nil {
		p.sendControlVia(s, reply, from)
	}
}

// handleControlMsg acts on one control message and appends any answer to reply.
func (n *Node) handleControlMsg(p *Peer, s *session, m wire.ControlMsg, reply []byte, from conn.Endpoint) []byte {
	switch m.Type {
	case wire.CtlFinal:
		// Confirmation is recorded for every authenticated frame; nothing more to do.
	case wire.CtlPing:
		reply = wire.AppendControl(reply, wire.CtlPong, m.Body)
	case wire.CtlPong:
		seq := binary.LittleEndian.Uint32(m.Body)
		sent := int64(binary.LittleEndian.Uint64(m.Body[4:]))
		rtt := time.Duration(p.mono(time.Now()) - sent)
		if rtt < 0 || rtt > time.Minute {
			n.drop(DropControl)
			break
		}
		old := p.counters.rtt.Load()
		if old == 0 {
			p.counters.rtt.Store(int64(rtt))
		} else {
			p.counters.rtt.Store(old - old/8 + int64(rtt)/8)
		}
		p.mu.Lock()
		ch := p.ping.waiting[seq]
		delete(p.ping.waiting, seq)
		p.mu.Unlock()
		if ch != nil {
			ch <- rtt
		}
	case wire.CtlClose:
		// The peer is going away, or closes an idle session: stop sending on this
		// session so the next datagram starts a handshake instead of vanishing. Reliable
		// messages it did not acknowledge wait for that next session.
		p.mu.Lock()
		if p.keys.current.CompareAndSwap(s, nil) {
			n.index.remove(s)
			p.rescueReliableLocked(s)
		}
		p.mu.Unlock()
	case wire.CtlError:
		n.log.Debug("peer reported an error", "peer", p.cfg.Name, "code", binary.LittleEndian.Uint16(m.Body))
	case wire.CtlAck:
		s.rel.ack(binary.LittleEndian.Uint32(m.Body), time.Now())
	case wire.CtlRekey:
		p.Rekey()
	case wire.CtlProbeAck:
		p.probeAcked(m.Body, time.Now())
	case wire.CtlStreamOpen, wire.CtlStreamClose:
		// Data streams need no setup; the messages are announcements for extensions.
		if n.cfg.Extension != nil {
			n.extension(p, m, from)
		}
	default:
		if m.Type >= wire.CtlExtensionMin && n.cfg.Extension != nil {
			n.extension(p, m, from)
		} else {
			n.drop(DropControl)
		}
	}
	return reply
}

// extension hands m to Config.Extension with where its frame came from.
func (n *Node) extension(p *Peer, m wire.ControlMsg, from conn.Endpoint) {
	var ap netip.AddrPort
	if _, relayed := from.(*relayEndpoint); from != nil && !relayed {
		ap = addrPortOf(from)
	}
	_, viaWS := from.(*wsEndpoint)
	n.cfg.Extension(p, m.Type, m.Body, ap, viaWS)
}

// reliableState is one session's side of the reliable control channel (RELIABLE and
// ACK, docs/protocol.md 6.1): a queue of unacknowledged messages with retransmission,
// and the next sequence it expects. The mesh carries its member records on it.
type reliableState struct {
	mu       sync.Mutex
	nextSend uint32
	queue    []relMsg // ascending seq; the first reliableWindow are in flight
	nextRecv uint32
	rto      time.Duration
	lastTx   time.Time
}

type relMsg struct {
	seq  uint32
	typ  byte
	body []byte
	sent bool
}

func (r *reliableState) encode(b []byte, m relMsg) []byte {
	inner := wire.AppendControl(binary.LittleEndian.AppendUint32(nil, m.seq), m.typ, m.body)
	return wire.AppendControl(b, wire.CtlReliable, inner)
}

// enqueue adds a message and returns the payload to send now, if the window allows.
func (r *reliableState) enqueue(typ byte, body []byte, now time.Time) ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.queue) >= reliableQueueMax {
		return nil, ErrReliableQueueFull
	}
	m := relMsg{seq: r.nextSend, typ: typ, body: append([]byte(nil), body...)}
	r.nextSend++
	r.queue = append(r.queue, m)
	if len(r.queue) > reliableWindow {
		return nil, nil
	}
	r.queue[len(r.queue)-1].sent = true
	if r.rto == 0 {
		r.rto = reliableRTOMin
	}
	r.lastTx = now
	return r.encode(nil, m), nil
}

// receive decides whether a RELIABLE message is the next in order, and the ACK to send.
func (r *reliableState) receive(seq uint32) (deliver bool, ack uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if seq == r.nextRecv {
		r.nextRecv++
		return true, r.nextRecv
	}
	return false, r.nextRecv
}

// ack drops every message the peer has received.
func (r *reliableState) ack(next uint32, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	i := 0
	for i < len(r.queue) && int32(next-r.queue[i].seq) > 0 {
		i++
	}
	if i > 0 {
		r.queue = append(r.queue[:0], r.queue[i:]...)
		r.rto = reliableRTOMin
		r.lastTx = now
	}
}

// appendDue appends retransmissions and newly admitted messages to b, in order, as
// long as b stays within budget bytes (the first message goes whatever its size): the
// sockets never fragment (pmtu.go), and a payload larger than the path is lost whole,
// its retransmissions with it. What did not fit goes in later payloads.
func (r *reliableState) appendDue(b []byte, now time.Time, srtt time.Duration, budget int) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.queue) == 0 {
		return b
	}
	base := max(reliableRTOMin, 2*srtt)
	if r.rto < base {
		r.rto = base
	}
	w := min(len(r.queue), reliableWindow)
	resend := now.Sub(r.lastTx) >= r.rto
	added := false
	for i := 0; i < w; i++ {
		if !r.queue[i].sent || resend {
			m := r.queue[i]
			if added && len(b)+2*wire.ControlHeaderLen+wire.ReliableHdrLen+len(m.body) > budget {
				break
			}
			b = r.encode(b, m)
			r.queue[i].sent, added = true, true
		}
	}
	if resend {
		r.rto = min(2*r.rto, reliableRTOMax)
		r.lastTx = now
	}
	return b
}

// inherit moves unacknowledged messages from the state of a replaced session,
// renumbering them for the new one.
func (r *reliableState) inherit(old *reliableState) {
	r.adopt(old.take())
}

// take empties the queue and returns what it held.
func (r *reliableState) take() []relMsg {
	r.mu.Lock()
	defer r.mu.Unlock()
	q := r.queue
	r.queue = nil
	return q
}

// backlog is how many messages the queue holds, sent but unacknowledged or not sent yet.
func (r *reliableState) backlog() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.queue)
}

// adopt appends messages to send, numbering them from nextSend, as far as the queue
// bound allows.
func (r *reliableState) adopt(q []relMsg) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range q {
		if len(r.queue) >= reliableQueueMax {
			break
		}
		m.seq, m.sent = r.nextSend, false
		r.nextSend++
		r.queue = append(r.queue, m)
	}
}

// pingPayloadLocked builds a PING whose answer reports to ch (may be nil).
func (p *Peer) pingPayloadLocked(now time.Time, ch chan time.Duration) []byte {
	p.ping.seq++
	p.ping.last = now
	if ch != nil {
		if p.ping.waiting == nil {
			p.ping.waiting = make(map[uint32]chan time.Duration)
		}
		if len(p.ping.waiting) >= 64 {
			clear(p.ping.waiting)
		}
		p.ping.waiting[p.ping.seq] = ch
	}
	var body [wire.PingBodyLen]byte
	binary.LittleEndian.PutUint32(body[:4], p.ping.seq)
	binary.LittleEndian.PutUint64(body[4:], uint64(p.mono(now)))
	return wire.AppendControl(nil, wire.CtlPing, body[:])
}

// Ping sends an STT-level echo over the current session and waits for the answer.
func (p *Peer) Ping(ctx context.Context) (time.Duration, error) {
	s := p.keys.current.Load()
	if s == nil || s.expired(time.Now(), &p.node.limits) {
		p.mu.Lock()
		p.handshake.want = true
		p.mu.Unlock()
		p.node.kick()
		return 0, ErrNoSession
	}
	ch := make(chan time.Duration, 1)
	p.mu.Lock()
	payload := p.pingPayloadLocked(time.Now(), ch)
	seq := p.ping.seq
	p.mu.Unlock()
	p.sendControl(s, payload)
	select {
	case d := <-ch:
		return d, nil
	case <-ctx.Done():
		p.mu.Lock()
		delete(p.ping.waiting, seq)
		p.mu.Unlock()
		return 0, ctx.Err()
	}
}

// SendReliable queues a control message (a STREAM_OPEN, STREAM_CLOSE or extension) for
// reliable, in-order delivery on stream 0. Without a session it is kept (at most
// reliableQueueMax messages, as a session's queue) and a handshake starts; the session
// sends it. A wildcard peer carries nothing: ErrWildcardPeer.
func (p *Peer) SendReliable(typ byte, body []byte) error {
	if p.cfg.AnyName {
		return ErrWildcardPeer
	}
	now := time.Now()
	p.times.lastReliable.Store(p.mono(now))
	s := p.keys.current.Load()
	if s == nil || s.expired(now, &p.node.limits) {
		return p.queueReliable(typ, body, now)
	}
	payload, err := s.rel.enqueue(typ, body, now)
	if err != nil {
		return err
	}
	if payload != nil {
		p.sendControl(s, payload)
	}
	if p.keys.current.Load() != s {
		// The session was replaced or closed while the message went into it: make
		// sure it is not left behind there.
		p.mu.Lock()
		p.rescueReliableLocked(s)
		p.mu.Unlock()
	}
	return nil
}

// SendUnreliable sends an extension control message (type 0x80 or above) once on the
// current session, not inside RELIABLE: nothing acknowledges it and nothing sends it
// again. It is for messages whose loss something else repairs, and whose
// acknowledgement would cost the receiver as much as the message (the mesh's periodic
// SUMMARY, its record pushes). Like a reliable message it marks the session in use
// (IdleTimeout). Without a usable session it is dropped: ErrNoSession, and no handshake
// starts. A frame larger than the local interface allows is dropped alone and counted
// (DropSendError); nothing waits for it.
func (p *Peer) SendUnreliable(typ byte, body []byte) error {
	if p.cfg.AnyName {
		return ErrWildcardPeer
	}
	if typ < wire.CtlExtensionMin || len(body) > 0xFFFF {
		return errUnreliableType
	}
	now := time.Now()
	s := p.keys.current.Load()
	if s == nil || s.expired(now, &p.node.limits) {
		return ErrNoSession
	}
	p.times.lastReliable.Store(p.mono(now))
	p.sendControl(s, wire.AppendControl(make([]byte, 0, wire.ControlHeaderLen+len(body)), typ, body))
	return nil
}

var errUnreliableType = errors.New("stt: SendUnreliable takes an extension message (type 0x80 or above)")

// ReliableBacklog is how many reliable control messages the peer holds for sending:
// unacknowledged or waiting in its current session, or waiting for the next one. The
// mesh keeps it small for each member, so that members which acknowledge nothing do not
// make the node hold everything it floods.
func (p *Peer) ReliableBacklog() int {
	n := 0
	if s := p.keys.current.Load(); s != nil {
		n += s.rel.backlog()
	}
	p.mu.Lock()
	n += len(p.relQueue)
	p.mu.Unlock()
	return n
}

// queueReliable keeps a reliable control message for the next session and asks for a
// handshake.
func (p *Peer) queueReliable(typ byte, body []byte, now time.Time) error {
	p.mu.Lock()
	if s := p.keys.current.Load(); s != nil && !s.expired(now, &p.node.limits) {
		// A session came up meanwhile; sessions are installed under p.mu, so it
		// stays while the message goes into it.
		payload, err := s.rel.enqueue(typ, body, now)
		p.mu.Unlock()
		if err == nil && payload != nil {
			p.sendControl(s, payload)
		}
		return err
	}
	defer p.mu.Unlock()
	if p.removed {
		return ErrPeerRemoved
	}
	if len(p.relQueue) >= reliableQueueMax {
		return ErrReliableQueueFull
	}
	p.relQueue = append(p.relQueue, relMsg{typ: typ, body: append([]byte(nil), body...)})
	p.handshake.want = true
	p.node.kick()
	return nil
}

// rescueReliableLocked moves the reliable messages old holds unacknowledged, a session
// that is no longer current, to the current one, or to the peer's queue for the next
// session (and asks for one). Called with p.mu held.
func (p *Peer) rescueReliableLocked(old *session) {
	cur := p.keys.current.Load()
	if cur == old {
		return
	}
	q := old.rel.take()
	if len(q) == 0 {
		return
	}
	if cur != nil && !cur.expired(time.Now(), &p.node.limits) {
		cur.rel.adopt(q)
		return
	}
	for _, m := range q {
		if len(p.relQueue) >= reliableQueueMax {
			break
		}
		p.relQueue = append(p.relQueue, m)
	}
	p.handshake.want = true
	p.node.kick()
}
