package ws

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// Defaults and limits shared by servers and clients.
const (
	// DefaultPath is the HTTP path a server upgrades when ServerConfig.Path is empty.
	DefaultPath = "/stt"
	// DefaultBatch is the number of records handed to one ReceiveFunc call.
	DefaultBatch = 128
	// PreAuthBatch caps the records per ReceiveFunc call, and so the receive buffers a
	// connection holds, until it is marked authenticated.
	PreAuthBatch = 4
	// DefaultMaxMessage is the largest WebSocket message read or written.
	DefaultMaxMessage = 1 << 20
	// MaxMaxMessage is the largest MaxMessage accepted in a configuration.
	MaxMaxMessage = 16 << 20
	// DefaultSendQueue is the number of messages a connection queues for its writer.
	DefaultSendQueue = 64
	// DefaultPingInterval is the keepalive interval; a ping not answered within the
	// interval closes the connection.
	DefaultPingInterval = 20 * time.Second
	// DefaultMaxConns is the number of connections a server holds at once.
	DefaultMaxConns = 256
	// DefaultAuthTimeout is how long a server keeps a connection that has not been
	// marked authenticated.
	DefaultAuthTimeout = 15 * time.Second
)

// ErrQueueFull is returned by Send when the connection's send queue is full and a
// message was dropped.
var ErrQueueFull = errors.New("ws: send queue full, message dropped")

// ErrFrameSize is returned by Send for a frame that is empty or too large for a record
// or a message.
var ErrFrameSize = errors.New("ws: frame size out of range")

// ErrAuthTimeout is the reason a server closes a connection that was not marked
// authenticated within AuthTimeout.
var ErrAuthTimeout = errors.New("ws: connection not authenticated in time")

// ErrEvicted is the reason a server closes a connection not marked authenticated to
// make room for a new one when MaxConns connections are open.
var ErrEvicted = errors.New("ws: unauthenticated connection evicted for a new one, all connection slots taken")

// ReceiveFunc gets a batch of records read from one connection: record i is
// bufs[i][offset:offset+sizes[i]], where offset is the configured Offset, and every
// bufs[i] has the configured BufSize. The buffers are reused after it returns. It is
// called from the connection's reader goroutine, one call at a time per connection, and
// should return quickly: while it runs the connection reads nothing (not even pongs).
// It may call any method of c, including Close.
type ReceiveFunc func(c *Conn, bufs [][]byte, sizes []int)

// ConnStats are one connection's counters.
type ConnStats struct {
	MessagesIn  uint64 // WebSocket messages read completely
	RecordsIn   uint64 // records handed to the ReceiveFunc
	BytesIn     uint64 // record bytes handed to the ReceiveFunc
	MessagesOut uint64 // messages written
	RecordsOut  uint64 // records written
	BytesOut    uint64 // record bytes written (without length prefixes)
	QueueDrops  uint64 // messages dropped by Send because the queue was full
}

// closeReason says why a connection closed; the first reason recorded wins.
type closeReason int32

const (
	reasonNone            closeReason = iota
	reasonLocal                       // Close, or the server closing
	reasonPeer                        // the peer closed or hung up
	reasonUnauthenticated             // AuthTimeout passed
	reasonEvicted                     // not authenticated, evicted for a new connection
	reasonOversized                   // a message over MaxMessage
	reasonBadRecord                   // a malformed message or a text message
	reasonKeepalive                   // a ping went unanswered
	reasonError                       // any other read or write error
)

// readBufSize is the size of a connection's read-ahead buffer.
const readBufSize = 16 << 10

// options are the normalized settings of one connection.
type options struct {
	offset, bufSize, batch, maxMessage, sendQueue int
	pingInterval                                  time.Duration
	recv                                          ReceiveFunc
	log                                           *slog.Logger
}

// normalize applies defaults and checks limits.
func (o *options) normalize() error {
	if o.recv == nil {
		return errors.New("ws: Receive is required")
	}
	if o.offset < 0 || o.offset > 1<<16 {
		return fmt.Errorf("ws: Offset %d out of range", o.offset)
	}
	if o.bufSize == 0 {
		o.bufSize = o.offset + MaxRecordLen
	}
	if o.bufSize <= o.offset || o.bufSize > o.offset+MaxRecordLen {
		return fmt.Errorf("ws: BufSize %d must be in (Offset, Offset+%d]", o.bufSize, MaxRecordLen)
	}
	if o.batch == 0 {
		o.batch = DefaultBatch
	}
	if o.batch < 1 || o.batch > 4096 {
		return fmt.Errorf("ws: Batch %d out of range [1, 4096]", o.batch)
	}
	if o.maxMessage == 0 {
		o.maxMessage = DefaultMaxMessage
	}
	if o.maxMessage < recordHeaderLen+1 || o.maxMessage > MaxMaxMessage {
		return fmt.Errorf("ws: MaxMessage %d out of range [%d, %d]", o.maxMessage, recordHeaderLen+1, MaxMaxMessage)
	}
	if o.sendQueue == 0 {
		o.sendQueue = DefaultSendQueue
	}
	if o.sendQueue < 1 || o.sendQueue > 1<<16 {
		return fmt.Errorf("ws: SendQueue %d out of range [1, 65536]", o.sendQueue)
	}
	if o.pingInterval == 0 {
		o.pingInterval = DefaultPingInterval
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	return nil
}

// outMsg is one queued outgoing message.
type outMsg struct {
	b       []byte
	records int
}

var msgPool = sync.Pool{New: func() any { return &outMsg{b: make([]byte, 0, 16<<10)} }}

func getMsg() *outMsg { return msgPool.Get().(*outMsg) }

func putMsg(m *outMsg) {
	m.b = m.b[:0]
	m.records = 0
	msgPool.Put(m)
}

// Conn is one WebSocket connection carrying STT frames, from Listen (server side) or
// Dial (client side). Its methods are safe for concurrent use.
type Conn struct {
	ws     *websocket.Conn
	cork   *corkConn // gathers a run of messages into one write; nil if not ours
	srv    *Server   // nil on the client side
	opts   options
	remote netip.AddrPort
	name   string

	rr    *recordReader
	flush func(int) // c.deliver, bound once

	sendq     chan *outMsg
	authed    atomic.Bool
	authTimer *time.Timer

	// Server side, guarded by srv.mu: the links of srv.unauth, and whether the server
	// evicted this connection (then MarkAuthenticated has no effect and its slot went
	// to the newcomer).
	unauthPrev, unauthNext *Conn
	unauthListed, evicted  bool

	stop    chan struct{} // closed when the connection starts closing
	done    chan struct{} // closed when all goroutines have exited
	running atomic.Int32

	closeMu sync.Mutex
	reason  closeReason
	err     error

	messagesIn, recordsIn, bytesIn    atomic.Uint64
	messagesOut, recordsOut, bytesOut atomic.Uint64
	queueDrops                        atomic.Uint64
}

func newConn(wsc *websocket.Conn, o options, srv *Server, remote netip.AddrPort, name string) *Conn {
	c := &Conn{
		ws:     wsc,
		srv:    srv,
		opts:   o,
		remote: remote,
		name:   name,
		rr:     newRecordReader(o.batch, o.offset, o.bufSize),
		sendq:  make(chan *outMsg, o.sendQueue),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	c.flush = c.deliver
	wsc.SetReadLimit(int64(o.maxMessage))
	return c
}

// start launches the connection's goroutines and, if authTimeout > 0, its
// authentication deadline.
func (c *Conn) start(authTimeout time.Duration) {
	n := int32(2)
	if c.opts.pingInterval > 0 {
		n++
	}
	c.running.Store(n)
	c.closeMu.Lock()
	if authTimeout > 0 && c.reason == reasonNone && !c.authed.Load() {
		c.authTimer = time.AfterFunc(authTimeout, func() {
			if !c.authed.Load() {
				c.fail(reasonUnauthenticated, ErrAuthTimeout)
			}
		})
	}
	c.closeMu.Unlock()
	go c.readLoop()
	go c.writeLoop()
	if c.opts.pingInterval > 0 {
		go c.pingLoop()
	}
}

// MarkAuthenticated records that the node saw an authenticated STT frame on c: the
// server's AuthTimeout no longer applies, the server will not evict c to make room for
// a new connection, and receive batches grow to Batch records. On a connection the
// server has already evicted it has no effect.
func (c *Conn) MarkAuthenticated() {
	if c.authed.Load() { // the common case: called for every authenticated frame
		return
	}
	if s := c.srv; s != nil {
		// Under srv.mu, so that an eviction either happened before (and wins) or finds
		// c off the list.
		s.mu.Lock()
		if c.evicted || c.authed.Load() {
			s.mu.Unlock()
			return
		}
		c.authed.Store(true)
		s.unauth.remove(c)
		s.mu.Unlock()
	} else if c.authed.Swap(true) {
		return
	}
	c.closeMu.Lock()
	t := c.authTimer
	c.closeMu.Unlock()
	if t != nil {
		t.Stop()
	}
}

// Authenticated reports whether MarkAuthenticated was called.
func (c *Conn) Authenticated() bool { return c.authed.Load() }

// RemoteAddr returns the TCP peer of a server-side connection (a reverse proxy's address
// when behind one). For a client-side connection it is the server's address, or, through
// an HTTP proxy, the server's address if the URL names an IP literal and the proxy's
// address otherwise.
func (c *Conn) RemoteAddr() netip.AddrPort { return c.remote }

// String describes the connection, e.g. "ws://192.0.2.1:443/stt".
func (c *Conn) String() string { return c.name }

// Done returns a channel closed once the connection is closed and its goroutines have
// exited.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err returns why the connection closed (net.ErrClosed after Close), or nil while it is
// open.
func (c *Conn) Err() error {
	c.closeMu.Lock()
	defer c.closeMu.Unlock()
	return c.err
}

// Close closes the connection without a closing handshake and returns at once; the
// goroutines exit shortly after, then Done is closed. It is idempotent and may be
// called from the ReceiveFunc.
func (c *Conn) Close() error {
	c.fail(reasonLocal, net.ErrClosed)
	return nil
}

// Stats returns a snapshot of the connection's counters.
func (c *Conn) Stats() ConnStats {
	return ConnStats{
		MessagesIn:  c.messagesIn.Load(),
		RecordsIn:   c.recordsIn.Load(),
		BytesIn:     c.bytesIn.Load(),
		MessagesOut: c.messagesOut.Load(),
		RecordsOut:  c.recordsOut.Load(),
		BytesOut:    c.bytesOut.Load(),
		QueueDrops:  c.queueDrops.Load(),
	}
}

// Send copies frames, in order, as records into one binary message (several if they
// exceed MaxMessage) and queues it for the writer goroutine. It never blocks: if the
// queue is full the message is dropped and Send returns ErrQueueFull. It returns an
// error wrapping ErrFrameSize, sending nothing, if a frame is empty or longer than
// min(MaxRecordLen, MaxMessage-2), and net.ErrClosed once the connection is closing.
func (c *Conn) Send(frames [][]byte) error {
	if len(frames) == 0 {
		return nil
	}
	select {
	case <-c.stop:
		return fmt.Errorf("ws: send on %s: %w", c.name, net.ErrClosed)
	default:
	}
	maxFrame := min(MaxRecordLen, c.opts.maxMessage-recordHeaderLen)
	left := 0 // bytes of records still to copy
	for i, f := range frames {
		if len(f) == 0 || len(f) > maxFrame {
			return fmt.Errorf("%w: frame %d has %d bytes, limit %d", ErrFrameSize, i, len(f), maxFrame)
		}
		left += recordHeaderLen + len(f)
	}
	var err error
	m := getMsg()
	m.b = slices.Grow(m.b, min(left, c.opts.maxMessage))
	for _, f := range frames {
		if m.records > 0 && len(m.b)+recordHeaderLen+len(f) > c.opts.maxMessage {
			if e := c.enqueue(m); e != nil {
				err = e
			}
			m = getMsg()
			m.b = slices.Grow(m.b, min(left, c.opts.maxMessage))
		}
		left -= recordHeaderLen + len(f)
		m.b = appendRecord(m.b, f)
		m.records++
	}
	if e := c.enqueue(m); e != nil {
		err = e
	}
	return err
}

// enqueue hands m to the writer or drops it.
func (c *Conn) enqueue(m *outMsg) error {
	select {
	case c.sendq <- m:
		return nil
	default:
	}
	putMsg(m)
	c.queueDrops.Add(1)
	if c.srv != nil {
		c.srv.queueDrops.Add(1)
	}
	return ErrQueueFull
}

// fail starts closing the connection for reason; only the first call has an effect.
func (c *Conn) fail(reason closeReason, err error) {
	c.closeMu.Lock()
	if c.reason != reasonNone {
		c.closeMu.Unlock()
		return
	}
	c.reason, c.err = reason, err
	close(c.stop)
	t := c.authTimer
	c.closeMu.Unlock()
	if t != nil {
		t.Stop()
	}
	if s := c.srv; s != nil {
		// A closing connection is no candidate for eviction.
		s.mu.Lock()
		s.unauth.remove(c)
		s.mu.Unlock()
	}
	if reason != reasonLocal && reason != reasonPeer {
		c.opts.log.Debug("websocket connection closed", "conn", c.name, "err", err)
	}
	_ = c.ws.CloseNow()
}

// exit is deferred by each goroutine; the last one out finishes the connection.
func (c *Conn) exit() {
	if c.running.Add(-1) != 0 {
		return
	}
	if c.srv != nil {
		c.srv.connDone(c)
	}
	close(c.done)
}

// deliver hands the first n records of the record reader to the ReceiveFunc.
func (c *Conn) deliver(n int) {
	var bytes int
	for _, s := range c.rr.sizes[:n] {
		bytes += s
	}
	c.recordsIn.Add(uint64(n))
	c.bytesIn.Add(uint64(bytes))
	c.opts.recv(c, c.rr.bufs[:n], c.rr.sizes[:n])
}

// readLoop reads messages until the connection fails.
func (c *Conn) readLoop() {
	defer c.exit()
	// context.Background: no per-read timer; Close unblocks reads by closing the socket.
	ctx := context.Background()
	// Every Read of the library's message reader takes its locks; reading through a
	// buffer makes small records cheap. Reads of at least readBufSize bytes into an
	// empty buffer bypass it, so large records still land in bufs without a copy.
	br := bufio.NewReaderSize(nil, readBufSize)
	for {
		typ, r, err := c.ws.Reader(ctx)
		if err != nil {
			c.fail(classify(err), fmt.Errorf("ws: read from %s: %w", c.name, err))
			return
		}
		if typ != websocket.MessageBinary {
			c.fail(reasonBadRecord, fmt.Errorf("%w: text message from %s", ErrBadRecord, c.name))
			return
		}
		limit := c.opts.batch
		if !c.authed.Load() {
			limit = min(limit, PreAuthBatch)
		}
		br.Reset(r)
		if _, err := c.rr.readMessage(br, limit, c.flush); err != nil {
			c.fail(classify(err), fmt.Errorf("ws: read from %s: %w", c.name, err))
			return
		}
		c.messagesIn.Add(1)
	}
}

// classify maps a read error to a close reason.
func classify(err error) closeReason {
	switch {
	case errors.Is(err, ErrBadRecord):
		return reasonBadRecord
	case errors.Is(err, websocket.ErrMessageTooBig):
		return reasonOversized
	case websocket.CloseStatus(err) != -1, errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return reasonPeer
	default:
		return reasonError
	}
}

// writeLoop writes queued messages until the connection closes.
func (c *Conn) writeLoop() {
	defer c.exit()
	defer c.drain()
	ctx := context.Background()
	for {
		select {
		case <-c.stop:
			return
		case m := <-c.sendq:
			// Write what is queued as one run: corked, the run leaves in one write
			// instead of one or more per message (see corkConn).
			if c.cork != nil {
				c.cork.cork()
			}
			for m != nil {
				err := c.ws.Write(ctx, websocket.MessageBinary, m.b)
				if err != nil {
					putMsg(m)
					c.fail(reasonError, fmt.Errorf("ws: write to %s: %w", c.name, err))
					return
				}
				c.messagesOut.Add(1)
				c.recordsOut.Add(uint64(m.records))
				c.bytesOut.Add(uint64(len(m.b) - recordHeaderLen*m.records))
				putMsg(m)
				m = nil
				if c.cork != nil {
					select {
					case m = <-c.sendq:
					default:
					}
				}
			}
			if c.cork != nil {
				if err := c.cork.uncork(); err != nil {
					c.fail(reasonError, fmt.Errorf("ws: write to %s: %w", c.name, err))
					return
				}
			}
		}
	}
}

// drain returns queued buffers to the pool.
func (c *Conn) drain() {
	for {
		select {
		case m := <-c.sendq:
			putMsg(m)
		default:
			return
		}
	}
}

// pingLoop sends a keepalive ping every PingInterval and closes the connection when one
// is not answered within PingInterval.
func (c *Conn) pingLoop() {
	defer c.exit()
	t := time.NewTimer(c.opts.pingInterval)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), c.opts.pingInterval)
		err := c.ws.Ping(ctx)
		cancel()
		if err != nil {
			c.fail(reasonKeepalive, fmt.Errorf("ws: keepalive ping to %s: %w", c.name, err))
			return
		}
		t.Reset(c.opts.pingInterval)
	}
}
