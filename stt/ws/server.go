package ws

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/stt-tun/stt-tun/internal/accept"
)

// Server HTTP limits.
const (
	// ReadHeaderTimeout bounds the TLS handshake and the reading of a request's headers.
	ReadHeaderTimeout = 10 * time.Second
	// IdleTimeout would close keep-alive HTTP connections that were never upgraded;
	// the server disables keep-alives, so a connection carries one request and is
	// closed after its answer unless it is upgraded.
	IdleTimeout = 30 * time.Second
	// MaxHeaderBytes bounds a request's headers.
	MaxHeaderBytes = 16 << 10
)

// ServerConfig configures Listen. Zero values select the defaults.
type ServerConfig struct {
	// Addr is the TCP address to listen on, e.g. ":443"; port 0 picks a free port.
	Addr string
	// Path is the only HTTP path that upgrades (default DefaultPath); others get 404.
	Path string
	// CertFile and KeyFile, both set, make the server speak TLS (wss://).
	CertFile, KeyFile string

	// Offset is where a record starts in a receive buffer.
	Offset int
	// BufSize is the size of each receive buffer (default Offset+MaxRecordLen); a
	// record longer than BufSize-Offset closes the connection.
	BufSize int
	// Batch is the most records per ReceiveFunc call (default DefaultBatch).
	Batch int
	// MaxConns bounds the open connections (default DefaultMaxConns). When all are
	// taken, a new upgrade evicts the oldest connection not yet marked authenticated;
	// only when there is none does it get 503.
	MaxConns int
	// MaxPending bounds the TCP connections accepted and not yet upgraded: in their TLS
	// handshake, sending their request or being answered (default DefaultMaxPending).
	// When that many are pending, a new one closes the oldest.
	MaxPending int
	// MaxPendingPerSource bounds the connections not yet upgraded from one IPv4 address
	// or IPv6 /64 (default DefaultMaxPendingPerSource, at most MaxPending). A new one
	// beyond it is closed at once.
	MaxPendingPerSource int
	// PendingTimeout closes a connection not upgraded this long after its accept
	// (default PendingDeadline). It does not restart.
	PendingTimeout time.Duration
	// AuthTimeout closes a connection not marked authenticated within it (default
	// DefaultAuthTimeout; negative disables).
	AuthTimeout time.Duration
	// MaxMessage is the largest message read or written (default DefaultMaxMessage).
	MaxMessage int
	// SendQueue is the number of messages queued per connection (default
	// DefaultSendQueue).
	SendQueue int
	// PingInterval is the keepalive interval (default DefaultPingInterval; negative
	// disables).
	PingInterval time.Duration

	// Receive gets the records read from every connection. Required.
	Receive ReceiveFunc
	// OnConnect, if set, is called with each new connection before it reads anything.
	OnConnect func(*Conn)
	// Logger receives debug logs (default: discard).
	Logger *slog.Logger
}

// ServerStats are a server's counters.
type ServerStats struct {
	Accepted              uint64 // connections upgraded
	RejectedHTTP          uint64 // requests not upgraded: wrong path, not WebSocket, bad handshake
	RejectedFull          uint64 // upgrades refused with 503: MaxConns open, none evictable
	Pending               uint64 // TCP connections accepted and not yet upgraded or closed, now
	PendingRefusedSource  uint64 // TCP connections closed at accept: MaxPendingPerSource pending from their source
	PendingEvicted        uint64 // pending connections closed, oldest first, to admit a new one: MaxPending pending
	PendingExpired        uint64 // pending connections closed because PendingDeadline passed since their accept
	Closed                uint64 // connections closed, for any reason
	ClosedUnauthenticated uint64 // closed because AuthTimeout passed
	Evicted               uint64 // closed unauthenticated to make room for a new upgrade
	ClosedOversized       uint64 // closed for a message over MaxMessage
	ClosedBadRecord       uint64 // closed for a malformed or text message
	ClosedKeepalive       uint64 // closed because a ping went unanswered
	ClosedError           uint64 // closed for another read or write error
	QueueDrops            uint64 // messages dropped by Send on full queues
	Active                uint64 // connections open now
}

// Server accepts WebSocket connections on one path of an HTTP(S) server.
type Server struct {
	cfg    ServerConfig
	opts   options
	scheme string
	ln     net.Listener
	hs     *http.Server

	mu        sync.Mutex
	closed    bool
	conns     map[*Conn]struct{}
	unauth    unauthList // registered connections not marked authenticated, oldest first
	handlers  sync.WaitGroup
	serveDone chan struct{}

	pending *pendingSet // connections not upgraded yet

	active atomic.Int64

	accepted, rejectedHTTP, rejectedFull                atomic.Uint64
	closedAll, closedUnauth, closedOversized, closedBad atomic.Uint64
	closedKeepalive, closedError, queueDrops, evicted   atomic.Uint64
}

// unauthList is an intrusive FIFO of the connections that have not been marked
// authenticated, linked through Conn.unauthPrev and Conn.unauthNext; the Server's mu
// guards it.
type unauthList struct {
	head, tail *Conn // head is the oldest
}

// push appends c, the newest connection.
func (l *unauthList) push(c *Conn) {
	c.unauthListed = true
	c.unauthPrev, c.unauthNext = l.tail, nil
	if l.tail != nil {
		l.tail.unauthNext = c
	} else {
		l.head = c
	}
	l.tail = c
}

// remove unlinks c if it is listed.
func (l *unauthList) remove(c *Conn) {
	if !c.unauthListed {
		return
	}
	if c.unauthPrev != nil {
		c.unauthPrev.unauthNext = c.unauthNext
	} else {
		l.head = c.unauthNext
	}
	if c.unauthNext != nil {
		c.unauthNext.unauthPrev = c.unauthPrev
	} else {
		l.tail = c.unauthPrev
	}
	c.unauthPrev, c.unauthNext, c.unauthListed = nil, nil, false
}

// Listen starts a server on cfg.Addr and returns once it is listening.
func Listen(cfg ServerConfig) (*Server, error) {
	o := options{
		offset: cfg.Offset, bufSize: cfg.BufSize, batch: cfg.Batch,
		maxMessage: cfg.MaxMessage, sendQueue: cfg.SendQueue,
		pingInterval: cfg.PingInterval, recv: cfg.Receive, log: cfg.Logger,
	}
	if err := o.normalize(); err != nil {
		return nil, fmt.Errorf("ws: listen: %w", err)
	}
	if cfg.Path == "" {
		cfg.Path = DefaultPath
	}
	if !strings.HasPrefix(cfg.Path, "/") {
		return nil, fmt.Errorf("ws: listen: path %q must start with /", cfg.Path)
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.MaxConns < 1 {
		return nil, fmt.Errorf("ws: listen: MaxConns %d must be positive", cfg.MaxConns)
	}
	if cfg.MaxPending == 0 {
		cfg.MaxPending = DefaultMaxPending
	}
	if cfg.MaxPendingPerSource == 0 {
		cfg.MaxPendingPerSource = min(DefaultMaxPendingPerSource, cfg.MaxPending)
	}
	if cfg.MaxPending < 1 || cfg.MaxPendingPerSource < 1 || cfg.MaxPendingPerSource > cfg.MaxPending {
		return nil, fmt.Errorf("ws: listen: MaxPending %d and MaxPendingPerSource %d must be positive, the second at most the first",
			cfg.MaxPending, cfg.MaxPendingPerSource)
	}
	if cfg.PendingTimeout <= 0 {
		cfg.PendingTimeout = PendingDeadline
	}
	if cfg.AuthTimeout == 0 {
		cfg.AuthTimeout = DefaultAuthTimeout
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return nil, errors.New("ws: listen: CertFile and KeyFile must be set together")
	}
	cfg.Logger = o.log

	s := &Server{
		cfg: cfg, opts: o, scheme: "ws", conns: make(map[*Conn]struct{}), serveDone: make(chan struct{}),
		pending: newPendingSet(cfg.MaxPending, cfg.MaxPendingPerSource, cfg.PendingTimeout),
	}
	var tlsConf *tls.Config
	if cfg.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("ws: listen: load certificate: %w", err)
		}
		tlsConf = &tls.Config{
			Certificates: []tls.Certificate{cert},
			MinVersion:   tls.VersionTLS12,
			NextProtos:   []string{"http/1.1"}, // WebSocket upgrades need HTTP/1.1
		}
		s.scheme = "wss"
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("ws: listen on %s: %w", cfg.Addr, err)
	}
	// From the socket up: failed accepts retried (out of file descriptors, the listener
	// waits rather than stops); every connection pending, bounded, until the upgrade
	// takes it over; corked under TLS, so that a run's TLS records go out together.
	ln = pendingListener{Listener: accept.Wrap(ln, accept.WebSocket, o.log), set: s.pending}
	ln = corkListener{ln}
	if tlsConf != nil {
		ln = tls.NewListener(ln, tlsConf)
	}
	s.ln = ln
	s.hs = &http.Server{
		Handler: http.HandlerFunc(s.handle),
		ConnContext: func(ctx context.Context, nc net.Conn) context.Context {
			return withPending(withCork(ctx, nc), nc)
		},
		// No ReadTimeout or WriteTimeout: net/http leaves those deadlines on hijacked
		// connections. ReadHeaderTimeout also bounds the TLS handshake.
		ReadHeaderTimeout: ReadHeaderTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(o.log.Handler(), slog.LevelDebug),
	}
	// One request per connection: a request that is not upgraded is answered with
	// "Connection: close" and its connection closed, so no refused client keeps a
	// connection (and its file descriptor) by sending a request now and then.
	s.hs.SetKeepAlivesEnabled(false)
	go func() {
		defer close(s.serveDone)
		if err := s.hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			o.log.Error("websocket server stopped", "addr", ln.Addr(), "err", err)
		}
	}()
	return s, nil
}

// Addr returns the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// URL returns the server's URL for a client on this host, e.g. "ws://127.0.0.1:8080/stt"
// (a wildcard listen address is replaced by the loopback address).
func (s *Server) URL() string {
	host := s.ln.Addr().String()
	if ap, err := netip.ParseAddrPort(host); err == nil && ap.Addr().IsUnspecified() {
		lo := netip.AddrFrom4([4]byte{127, 0, 0, 1})
		if ap.Addr().Is6() && !ap.Addr().Is4In6() {
			lo = netip.IPv6Loopback()
		}
		host = netip.AddrPortFrom(lo, ap.Port()).String()
	}
	return s.scheme + "://" + host + s.cfg.Path
}

// Stats returns a snapshot of the server's counters.
func (s *Server) Stats() ServerStats {
	return ServerStats{
		Accepted:              s.accepted.Load(),
		RejectedHTTP:          s.rejectedHTTP.Load(),
		RejectedFull:          s.rejectedFull.Load(),
		Pending:               uint64(s.pending.len()),
		PendingRefusedSource:  s.pending.refusedSource.Load(),
		PendingEvicted:        s.pending.evicted.Load(),
		PendingExpired:        s.pending.expired.Load(),
		Closed:                s.closedAll.Load(),
		ClosedUnauthenticated: s.closedUnauth.Load(),
		Evicted:               s.evicted.Load(),
		ClosedOversized:       s.closedOversized.Load(),
		ClosedBadRecord:       s.closedBad.Load(),
		ClosedKeepalive:       s.closedKeepalive.Load(),
		ClosedError:           s.closedError.Load(),
		QueueDrops:            s.queueDrops.Load(),
		Active:                uint64(max(s.active.Load(), 0)),
	}
}

// Conns returns the open connections.
func (s *Server) Conns() []*Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Conn, 0, len(s.conns))
	for c := range s.conns {
		out = append(out, c)
	}
	return out
}

// Close stops listening, closes every connection and waits for their goroutines.
// It must not be called from a ReceiveFunc.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		<-s.serveDone
		return nil
	}
	s.closed = true
	conns := make([]*Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()

	s.pending.shut()
	err := s.hs.Close()
	s.handlers.Wait()
	for _, c := range conns {
		c.fail(reasonLocal, net.ErrClosed)
	}
	for _, c := range conns {
		<-c.Done()
	}
	<-s.serveDone
	if err != nil {
		return fmt.Errorf("ws: close server: %w", err)
	}
	return nil
}

// reserve takes a connection slot if one is free.
func (s *Server) reserve() bool {
	for {
		a := s.active.Load()
		if a >= int64(s.cfg.MaxConns) {
			return false
		}
		if s.active.CompareAndSwap(a, a+1) {
			return true
		}
	}
}

// evictForSlot makes room for a new connection when reserve failed: it takes the slot of
// the oldest connection not marked authenticated, which the caller must then close
// with reasonEvicted, or reports false if every connection holding a slot is
// authenticated (or still upgrading). The victim's slot passes to the caller, so its
// connDone does not release it. Taking the victim off the list and marking it evicted
// happen under mu, as MarkAuthenticated's check does: an authenticated connection is
// never evicted.
func (s *Server) evictForSlot() (victim *Conn, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.reserve() { // a slot came free meanwhile
		return nil, true
	}
	c := s.unauth.head
	if c == nil {
		return nil, false
	}
	s.unauth.remove(c)
	c.evicted = true
	return c, true
}

// handle serves one HTTP request: it upgrades on the configured path and rejects
// everything else.
func (s *Server) handle(w http.ResponseWriter, r *http.Request) {
	upgraded := false
	defer func() {
		if !upgraded {
			// Read nothing more of a refused request: the connection closes after the
			// answer, without waiting for a body the client announced.
			_ = http.NewResponseController(w).SetReadDeadline(time.Now())
		}
	}()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		http.Error(w, http.StatusText(http.StatusServiceUnavailable), http.StatusServiceUnavailable)
		return
	}
	s.handlers.Add(1)
	s.mu.Unlock()
	defer s.handlers.Done()

	if r.URL.Path != s.cfg.Path {
		s.rejectedHTTP.Add(1)
		http.NotFound(w, r)
		return
	}
	if !headerHasToken(r.Header, "Connection", "upgrade") || !headerHasToken(r.Header, "Upgrade", "websocket") {
		s.rejectedHTTP.Add(1)
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", "websocket")
		http.Error(w, http.StatusText(http.StatusUpgradeRequired), http.StatusUpgradeRequired)
		return
	}
	if !s.reserve() {
		victim, ok := s.evictForSlot()
		if !ok {
			s.rejectedFull.Add(1)
			w.Header().Set("Retry-After", "5")
			http.Error(w, http.StatusText(http.StatusServiceUnavailable), http.StatusServiceUnavailable)
			return
		}
		if victim != nil {
			victim.fail(reasonEvicted, ErrEvicted)
		}
	}
	wsc, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		// Origin checks guard browsers' cookies; STT authenticates on its own.
		InsecureSkipVerify: true,
		CompressionMode:    websocket.CompressionDisabled,
	})
	if err != nil {
		s.active.Add(-1)
		s.rejectedHTTP.Add(1)
		s.opts.log.Debug("websocket upgrade refused", "remote", r.RemoteAddr, "err", err)
		return // Accept wrote the response
	}
	upgraded = true // hijacked
	if pc := pendingOf(r.Context()); pc != nil && !pc.promote() {
		// Its pending deadline passed, or it was evicted, just before: it is closed.
		s.active.Add(-1)
		_ = wsc.CloseNow()
		return
	}
	remote, _ := netip.ParseAddrPort(r.RemoteAddr)
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	c := newConn(wsc, s.opts, s, remote, s.scheme+"://"+remote.String()+s.cfg.Path)
	c.cork = corkOf(r.Context())

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.active.Add(-1)
		_ = wsc.CloseNow()
		return
	}
	s.conns[c] = struct{}{}
	s.unauth.push(c)
	s.mu.Unlock()
	s.accepted.Add(1)
	if s.cfg.OnConnect != nil {
		s.cfg.OnConnect(c)
	}
	c.start(s.cfg.AuthTimeout)
}

// connDone accounts for a finished connection.
func (s *Server) connDone(c *Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.unauth.remove(c)
	handedOver := c.evicted // its slot went to the connection that evicted it
	s.mu.Unlock()
	if !handedOver {
		s.active.Add(-1)
	}
	s.closedAll.Add(1)
	c.closeMu.Lock()
	reason := c.reason
	c.closeMu.Unlock()
	switch reason {
	case reasonUnauthenticated:
		s.closedUnauth.Add(1)
	case reasonEvicted:
		s.evicted.Add(1)
	case reasonOversized:
		s.closedOversized.Add(1)
	case reasonBadRecord:
		s.closedBad.Add(1)
	case reasonKeepalive:
		s.closedKeepalive.Add(1)
	case reasonError:
		s.closedError.Add(1)
	}
}

// headerHasToken reports whether a comma-separated header contains token,
// case-insensitively.
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}
