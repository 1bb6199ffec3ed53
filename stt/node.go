// Package stt implements the STT protocol (docs/protocol.md): a Node holds the
// network seed and a static key, runs seed-authenticated handshakes with its peers and
// carries datagrams to them over encrypted sessions, in batches. It knows nothing of
// TUN devices or routing.
package stt

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/cpu"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/stt-tun/stt-tun/stt/handshake"
	"github.com/stt-tun/stt-tun/stt/udp"
	"github.com/stt-tun/stt-tun/stt/wire"
	"github.com/stt-tun/stt-tun/stt/ws"
)

// Headroom is the offset at which a datagram's payload starts in the buffers the
// node hands to a Handler, and the offset a sender should read payloads to: the DATA
// header goes right in front of the payload, and the space before that is left for a
// TUN device's virtio header.
const Headroom = 32

// recvBase is where a received frame starts in a receive buffer, so that its payload
// lands at Headroom.
const recvBase = Headroom - wire.HeaderLen

// BufferSize is the size of a buffer that can hold any frame plus Headroom.
const BufferSize = recvBase + wire.MaxMessageLen

// MaxQueued bounds the datagrams held for a peer while its handshake runs.
const MaxQueued = 256

// Handler receives what the node delivers. Deliver is called from the node's receive
// goroutines, possibly concurrently, and must not keep references to the batch after it
// returns.
type Handler interface {
	Deliver(in *Inbound)
}

// ExtensionFunc handles a control message of the extension range 0x80..0xFF.
type ExtensionFunc func(p *Peer, typ byte, body []byte)

// Inbound is one batch of authenticated datagrams. Datagram i is
// Bufs[i][Headroom:Headroom+Sizes[i]], from Peers[i] on stream Streams[i]. Scratch is
// free for the handler to use during Deliver (capacity: the batch size).
type Inbound struct {
	Bufs    [][]byte
	Sizes   []int
	Peers   []*Peer
	Streams []uint16
	N       int
	Scratch [][]byte
}

// Config configures a Node.
type Config struct {
	Seed       [32]byte
	PrivateKey [32]byte
	Name       string // this node's name, sent to peers in the handshake
	ListenPort uint16 // 0 = any
	FwMark     uint32 // SO_MARK on the UDP socket, 0 = none
	Logger     *slog.Logger
	Handler    Handler
	Extension  ExtensionFunc
	Bind       conn.Bind // nil = UDP on all addresses (stt/udp)
	Timers     Timers
	// DisableAES keeps this node from offering AES-256-GCM even with hardware AES.
	DisableAES bool
	// HandshakeLoadThreshold overrides the responder's load threshold (messages/s).
	HandshakeLoadThreshold int
	// HandshakeReplayWindow overrides handshake.ReplayWindow (0 = default).
	HandshakeReplayWindow time.Duration
	// DisableUDP keeps the node off UDP entirely: WebSocket only.
	DisableUDP bool
	// WSListen is the address of the WebSocket listener ("" = none), WSPath its path
	// (default /stt); WSCertFile and WSKeyFile turn it into wss://.
	WSListen, WSPath, WSCertFile, WSKeyFile string
	// Resolver, when set, looks up endpoints given as a host name (HOST:PORT) instead
	// of the system's resolver: for tests.
	Resolver func(ctx context.Context, hostport string) (netip.AddrPort, error)
	// WSMaxPending and WSMaxPendingPerSource bound the listener's connections not yet
	// upgraded, in total and per source (0: ws's defaults).
	WSMaxPending, WSMaxPendingPerSource int
}

// Node is an STT endpoint: peers, sessions, timers and a transport.
type Node struct {
	cfg    Config
	timers Timers
	log    *slog.Logger
	hs     *handshake.Engine
	bind   conn.Bind
	index  *indexTable
	ctr    counters
	epoch  time.Time

	noncePool sync.Pool

	mu     sync.RWMutex
	peers  map[string]*Peer
	inits  map[uint32]*initiation // our handshakes in flight, by our index
	port   uint16
	closed bool

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	wake   chan struct{}

	versionLogged atomic.Int64 // unix ns of the last log line about another version
	dropLogs      [numDropReasons]dropLog
	warnLogs      [numDropReasons]dropLog // warnDrop's, apart from the debug lines

	// peerAddrs is the set of the peers' current UDP addresses, which the handshake
	// engine favours under load (handshake.Config.Priority); the timer loop keeps it.
	peerAddrs atomic.Pointer[map[netip.Addr]struct{}]
	// addrGen counts changes of the peers' UDP addresses and removals of peers;
	// addrBuilt is its value when peerAddrs was last built (timer loop only).
	addrGen   atomic.Uint64
	addrBuilt uint64

	wsServer *ws.Server
	wsStates sync.Pool // *wsRecvState
	wsEPs    wsEndpoints

	// resolver, when set (by tests), looks up endpoints given as a host name instead
	// of the system's resolver.
	resolver func(ctx context.Context, hostport string) (netip.AddrPort, error)
}

// New creates a node. Nothing is opened until Start.
func New(cfg Config) (*Node, error) {
	if cfg.Handler == nil {
		return nil, errors.New("stt: config needs a Handler")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	n := &Node{
		cfg:      cfg,
		timers:   cfg.Timers.withDefaults(),
		log:      cfg.Logger,
		index:    newIndexTable(),
		peers:    make(map[string]*Peer),
		inits:    make(map[uint32]*initiation),
		epoch:    time.Now(),
		wake:     make(chan struct{}, 1),
		resolver: cfg.Resolver,
	}
	n.noncePool.New = func() any { return new([12]byte) }
	n.wsStates.New = func() any { return &wsRecvState{nonce: new([12]byte), hsOut: make([]byte, 0, 256)} }
	var caps uint32
	if !cfg.DisableAES && hasHardwareAES() {
		caps |= wire.CapHardwareAES
	}
	hs, err := handshake.New(handshake.Config{
		Seed:          cfg.Seed,
		Static:        cfg.PrivateKey,
		Name:          cfg.Name,
		Caps:          caps,
		LoadThreshold: cfg.HandshakeLoadThreshold,
		ReplayWindow:  cfg.HandshakeReplayWindow,
		AllocIndex:    n.index.reserve,
		ReleaseIndex:  n.index.release,
		Priority:      n.isPeerAddr,
	})
	if err != nil {
		return nil, fmt.Errorf("stt: handshake: %w", err)
	}
	n.hs = hs
	n.bind = cfg.Bind
	if n.bind == nil {
		n.bind = udp.New()
	}
	return n, nil
}

func hasHardwareAES() bool {
	return (cpu.X86.HasAES && cpu.X86.HasPCLMULQDQ) || (cpu.ARM64.HasAES && cpu.ARM64.HasPMULL)
}

// PublicKey is this node's static public key.
func (n *Node) PublicKey() [32]byte { return n.hs.PublicKey() }

// Port is the UDP port the node listens on, valid after Start.
func (n *Node) Port() uint16 {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.port
}

// Start opens the transports and starts the receive and timer goroutines.
func (n *Node) Start() error {
	var fns []conn.ReceiveFunc
	if !n.cfg.DisableUDP {
		var port uint16
		var err error
		fns, port, err = n.bind.Open(n.cfg.ListenPort)
		if err != nil {
			return fmt.Errorf("stt: listen on UDP port %d: %w", n.cfg.ListenPort, err)
		}
		if n.cfg.FwMark != 0 {
			if err := n.bind.SetMark(n.cfg.FwMark); err != nil {
				_ = n.bind.Close()
				return fmt.Errorf("stt: set fwmark: %w", err)
			}
		}
		n.mu.Lock()
		n.port = port
		n.mu.Unlock()
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	if err := n.startWS(); err != nil {
		n.cancel()
		if !n.cfg.DisableUDP {
			_ = n.bind.Close()
		}
		return err
	}
	for _, fn := range fns {
		n.wg.Add(1)
		go n.receiveLoop(fn)
	}
	n.wg.Add(1)
	go n.timerLoop()
	return nil
}

// Close tells every peer with a session that this node is leaving, closes the
// transport and waits for the node's goroutines.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	peers := make([]*Peer, 0, len(n.peers))
	for _, p := range n.peers {
		peers = append(peers, p)
	}
	n.mu.Unlock()
	for _, p := range peers {
		if s := p.current.Load(); s != nil {
			p.sendClose(s)
		}
	}
	if n.cancel != nil {
		n.cancel()
	}
	var err error
	if !n.cfg.DisableUDP {
		err = n.bind.Close()
	}
	if n.wsServer != nil {
		err = errors.Join(err, n.wsServer.Close())
	}
	n.wg.Wait()
	return err
}

// PeerConfig describes a peer to AddPeer.
type PeerConfig struct {
	Name                string
	Endpoint            string    // host:port, may be empty (the peer must contact us)
	PublicKey           *[32]byte // pinned static key, nil = any holder of the seed
	PersistentKeepalive time.Duration
	Tag                 any // opaque to the node; the caller's per-peer state
	// WSURL (ws:// or wss://) lets this node reach the peer over WebSocket when UDP
	// fails, or only that way when the peer has no UDP Endpoint.
	WSURL      string
	WSProxy    string // "" = proxy from the environment, "none" = direct, else http://host:port
	WSCAFile   string // CA bundle for wss://, "" = system roots
	WSInsecure bool   // skip certificate checks (STT authenticates the peer anyway)
}

// AddPeer registers a peer. An endpoint given as a host name is looked up in the
// background (LookupDone tells when the first lookup ended): a name that does not
// resolve leaves the peer without an address, and is looked up again until it does,
// and whenever the peer goes quiet.
func (n *Node) AddPeer(pc PeerConfig) (*Peer, error) {
	if pc.Name == "" || len(pc.Name) > wire.NameLen {
		return nil, fmt.Errorf("stt: peer name %q must be 1..%d bytes", pc.Name, wire.NameLen)
	}
	p := &Peer{node: n, cfg: pc}
	p.chooser.Store(pc.WSURL != "")
	if pc.PublicKey != nil {
		p.static = *pc.PublicKey
		p.staticKnown = true
	}
	name := false
	if pc.Endpoint != "" {
		ap, err := netip.ParseAddrPort(pc.Endpoint)
		switch {
		case err == nil:
			if err := p.setEndpoint(ap); err != nil {
				return nil, fmt.Errorf("stt: peer %s: endpoint: %w", pc.Name, err)
			}
		default:
			if _, _, err := net.SplitHostPort(pc.Endpoint); err != nil {
				return nil, fmt.Errorf("stt: peer %s: endpoint %q: %w", pc.Name, pc.Endpoint, err)
			}
			name = true
		}
	}
	n.mu.Lock()
	if _, dup := n.peers[pc.Name]; dup {
		n.mu.Unlock()
		return nil, fmt.Errorf("stt: peer %s already exists", pc.Name)
	}
	n.peers[pc.Name] = p
	n.mu.Unlock()
	if name {
		p.mu.Lock()
		p.startLookupLocked()
		p.mu.Unlock()
	}
	return p, nil
}

// RemovePeer forgets a peer and its sessions.
func (n *Node) RemovePeer(name string) {
	n.mu.Lock()
	p := n.peers[name]
	delete(n.peers, name)
	n.mu.Unlock()
	if p != nil {
		p.shutdown()
	}
}

// Peer returns the named peer or nil.
func (n *Node) Peer(name string) *Peer {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.peers[name]
}

// Peers returns all peers.
func (n *Node) Peers() []*Peer {
	n.mu.RLock()
	defer n.mu.RUnlock()
	ps := make([]*Peer, 0, len(n.peers))
	for _, p := range n.peers {
		ps = append(ps, p)
	}
	return ps
}

// Stats returns a snapshot of the node's counters.
func (n *Node) Stats() Stats {
	var st Stats
	for i := range n.ctr.drops {
		v := n.ctr.drops[i].Load()
		st.Drops[i] = v
		st.DropsTotal += v
	}
	st.HandshakesDone = n.ctr.handshakesDone.Load()
	st.HandshakesStarted = n.ctr.handshakesStart.Load()
	st.CookieRepliesSent = n.ctr.cookiesSent.Load()
	st.HandshakeDHOps = n.hs.DHCount()
	st.Sessions, st.PendingHandshakes = n.index.counts()
	return st
}

func (n *Node) drop(r DropReason) { n.ctr.drops[r].Add(1) }

// resolveContext looks up a peer's endpoint, HOST:PORT, where HOST is an IP address or
// a name, for as long as ctx allows.
func (n *Node) resolveContext(ctx context.Context, hostport string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(hostport); err == nil {
		return ap, nil
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("endpoint %q: %w", hostport, err)
	}
	if n.resolver != nil {
		return n.resolver(ctx, hostport)
	}
	r := net.DefaultResolver
	pn, err := r.LookupPort(ctx, "udp", port)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("resolve endpoint %q: %w", hostport, err)
	}
	ips, err := r.LookupNetIP(ctx, "ip", host)
	if err == nil && len(ips) == 0 {
		err = errors.New("no address")
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("resolve endpoint %q: %w", hostport, err)
	}
	// As net.ResolveUDPAddr chooses: the first IPv4 address, else the first.
	ip := ips[0].Unmap()
	for _, a := range ips {
		if a.Unmap().Is4() {
			ip = a.Unmap()
			break
		}
	}
	return netip.AddrPortFrom(ip, uint16(pn)), nil
}

// kick wakes the timer loop so that a handshake starts without waiting for a tick.
func (n *Node) kick() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

func (n *Node) send(frames [][]byte, ep conn.Endpoint) error {
	if we, ok := ep.(*wsEndpoint); ok {
		return we.send(frames)
	}
	if n.cfg.DisableUDP {
		return errNoEndpoint
	}
	return n.bind.Send(frames, ep)
}

// receiveLoop reads batches from one transport receive function until the node closes.
func (n *Node) receiveLoop(fn conn.ReceiveFunc) {
	defer n.wg.Done()
	batch := n.bind.BatchSize()
	bufs := make([][]byte, batch)
	rx := make([][]byte, batch)
	sizes := make([]int, batch)
	eps := make([]conn.Endpoint, batch)
	for i := range bufs {
		bufs[i] = make([]byte, BufferSize)
		rx[i] = bufs[i][recvBase:]
	}
	in := &Inbound{
		Bufs:    make([][]byte, batch),
		Sizes:   make([]int, batch),
		Peers:   make([]*Peer, batch),
		Streams: make([]uint16, batch),
		Scratch: make([][]byte, 0, batch),
	}
	nonce := new([12]byte)
	hsOut := make([]byte, 0, 256)
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
		n.receiveBatch(bufs, rx, sizes[:k], eps, in, nonce, hsOut)
	}
}

// receiveBatch authenticates a batch of frames, handles handshakes and control
// messages inline, and delivers data datagrams to the Handler in one call.
func (n *Node) receiveBatch(bufs, rx [][]byte, sizes []int, eps []conn.Endpoint, in *Inbound, nonce *[12]byte, hsOut []byte) {
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
		typ, err := wire.CheckLength(msg)
		if err != nil {
			if errors.Is(err, wire.ErrVersion) {
				n.dropVersion(msg[1], eps[i])
			} else {
				n.drop(DropMalformed)
			}
			continue
		}
		if typ != wire.TypeData {
			unlock()
			n.handleHandshake(msg, eps[i], hsOut[:0])
			continue
		}
		h, _ := wire.ParseHeader(msg)
		s := n.index.lookup(h.Receiver)
		if s == nil {
			n.drop(DropUnknownIndex)
			continue
		}
		if s.expired(now, &n.timers) {
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
		if !s.replay.ValidateCounter(h.Counter, n.timers.RejectAfterMessages) {
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
		probe := h.Stream == wire.ControlStream && len(pt) > 0 && pt[0] == wire.CtlPing
		run.add(s, h.Counter, eps[i], now, size, h.Stream != wire.ControlStream, probe)
		if h.Stream == wire.ControlStream {
			unlock()
			run.flush(now) // control handling reads the peer's state
			n.handleControl(p, s, pt, eps[i])
			continue
		}
		in.Bufs[in.N] = bufs[i]
		in.Sizes[in.N] = len(pt)
		in.Peers[in.N] = p
		in.Streams[in.N] = h.Stream
		in.N++
	}
	unlock()
	run.flush(now)
	if in.N > 0 {
		in.Scratch = in.Scratch[:0]
		n.cfg.Handler.Deliver(in)
		clear(in.Peers[:in.N])
	}
	clear(eps[:len(sizes)])
}

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

// handleHandshake processes HELLO, CHALLENGE, AUTH_PROOF and COOKIE_REPLY.
func (n *Node) handleHandshake(msg []byte, ep conn.Endpoint, out []byte) {
	src := addrPortOf(ep)
	switch msg[0] {
	case wire.TypeHello:
		reply, err := n.hs.HandleHello(msg, src, out)
		if err != nil {
			n.dropHandshake(err, src)
		}
		if reply != nil {
			if reply[0] == wire.TypeCookieReply {
				n.ctr.cookiesSent.Add(1)
			}
			_ = n.send([][]byte{reply}, ep)
		}
	case wire.TypeAuthProof:
		res, reply, err := n.hs.HandleAuthProof(msg, src, out)
		if reply != nil {
			// Under load: the initiator must prove its address with a cookie first.
			n.ctr.cookiesSent.Add(1)
			_ = n.send([][]byte{reply}, ep)
			return
		}
		if err != nil {
			n.dropHandshake(err, src)
			return
		}
		n.completeResponder(res, ep)
	case wire.TypeChallenge:
		idx := binary.LittleEndian.Uint32(msg[wire.ChallengeReceiverOff:])
		n.mu.RLock()
		in := n.inits[idx]
		n.mu.RUnlock()
		if in == nil {
			n.drop(DropHandshake)
			return
		}
		in.peer.consumeChallenge(in, msg, ep)
	case wire.TypeCookieReply:
		idx := binary.LittleEndian.Uint32(msg[wire.CookieReceiverOff:])
		n.mu.RLock()
		in := n.inits[idx]
		n.mu.RUnlock()
		if in == nil {
			n.drop(DropHandshake)
			return
		}
		in.peer.consumeCookie(in, msg)
	}
}

// versionLogInterval bounds how often a node logs handshakes of another protocol
// version: an administrator needs to learn of an incompatible peer, but a flood of such
// messages must not become a flood of log lines.
const versionLogInterval = 10 * time.Second

// dropVersion counts a handshake message of another protocol version and logs it at
// most once per versionLogInterval, with the number of such messages since.
func (n *Node) dropVersion(v byte, ep conn.Endpoint) {
	n.drop(DropVersion)
	now := time.Now().UnixNano()
	last := n.versionLogged.Load()
	if now-last < int64(versionLogInterval) || !n.versionLogged.CompareAndSwap(last, now) {
		return
	}
	total := n.ctr.drops[DropVersion].Load()
	n.log.Info("handshake messages of an incompatible protocol version (a peer runs another stt-tun release?)",
		"version", v, "ours", wire.Version, "total", total)
	if ep != nil {
		n.log.Debug("incompatible protocol version", "version", v, "from", ep.DstToString())
	}
}

// dropLogInterval bounds how often a node writes the debug line of one drop reason: a
// flood of dropped handshakes must not become a flood of log lines. The line says how
// many drops of that reason it stands for.
const dropLogInterval = time.Second

// dropLog is the state of one reason's rate-limited debug line.
type dropLog struct {
	last       atomic.Int64 // unix ns of the last line
	suppressed atomic.Uint64
}

// logDrop writes the debug line for a dropped handshake message of reason r, at most
// once per dropLogInterval per reason, with the number of drops left unlogged since.
func (n *Node) logDrop(r DropReason, err error, name string) {
	if !n.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	l := &n.dropLogs[r]
	now := time.Now().UnixNano()
	last := l.last.Load()
	if now-last < int64(dropLogInterval) || !l.last.CompareAndSwap(last, now) {
		l.suppressed.Add(1)
		return
	}
	attrs := []any{"reason", r.String()}
	if err != nil {
		attrs = append(attrs, "err", err)
	}
	if name != "" {
		attrs = append(attrs, "name", name)
	}
	if s := l.suppressed.Swap(0); s > 0 {
		attrs = append(attrs, "suppressed", s)
	}
	n.log.Debug("handshake dropped", attrs...)
}

// warnDrop writes the warn-level line for a handshake refused for reason r, at most
// once per dropLogInterval per reason, with the number of refusals left unlogged since:
// a member can make a node refuse handshakes at its handshake budget, and each must not
// be a line in the administrator's log. The drop itself is counted by the caller.
func (n *Node) warnDrop(r DropReason, msg string, attrs ...any) {
	l := &n.warnLogs[r]
	now := time.Now().UnixNano()
	last := l.last.Load()
	if now-last < int64(dropLogInterval) || !l.last.CompareAndSwap(last, now) {
		l.suppressed.Add(1)
		return
	}
	if s := l.suppressed.Swap(0); s > 0 {
		attrs = append(attrs, "suppressed", s)
	}
	n.log.Warn(msg, attrs...)
}

// isPeerAddr reports whether a is a configured peer's current UDP address.
func (n *Node) isPeerAddr(a netip.Addr) bool {
	m := n.peerAddrs.Load()
	if m == nil {
		return false
	}
	_, ok := (*m)[a]
	return ok
}

// refreshPeerAddrs rebuilds the set isPeerAddr reads when a peer's address has changed
// or a peer has gone since it was last built (addrGen), and otherwise allocates nothing.
// Only the timer loop calls it.
func (n *Node) refreshPeerAddrs(peers []*Peer) {
	g := n.addrGen.Load() // before the addresses are read: a later change shows next time
	if n.peerAddrs.Load() != nil && g == n.addrBuilt {
		return
	}
	m := make(map[netip.Addr]struct{}, len(peers))
	for _, p := range peers {
		if a := p.udpAddr(); a.IsValid() {
			m[a] = struct{}{}
		}
	}
	n.peerAddrs.Store(&m)
	n.addrBuilt = g
}

// udpAddr is the IP address of the peer's current UDP endpoint, or the zero Addr.
func (p *Peer) udpAddr() netip.Addr {
	ep := p.udpEP.Load()
	if ep == nil || *ep == nil {
		return netip.Addr{}
	}
	return addrPortOf(*ep).Addr().Unmap()
}

func (n *Node) dropHandshake(err error, src netip.AddrPort) {
	r := DropHandshake
	switch {
	case errors.Is(err, handshake.ErrBadMAC1):
		r = DropBadMAC1
	case errors.Is(err, handshake.ErrReplay):
		r = DropHandshakeReplay
	case errors.Is(err, handshake.ErrVersion):
		var ve *handshake.VersionError
		v := byte(0)
		if errors.As(err, &ve) {
			v = ve.Version
		}
		n.dropVersion(v, nil)
		return
	case errors.Is(err, handshake.ErrUnderLoad), errors.Is(err, handshake.ErrRateLimited):
		r = DropRateLimited
	}
	n.drop(r)
	n.logDrop(r, err, "")
}

// completeResponder installs the session a verified AUTH_PROOF produced, after the
// checks that need the peer: known name, pinned key, fresh timestamp.
func (n *Node) completeResponder(res handshake.Result, ep conn.Endpoint) {
	p := n.Peer(res.PeerName)
	if p == nil {
		n.index.release(res.LocalIndex)
		n.drop(DropUnknownPeer)
		n.logDrop(DropUnknownPeer, nil, res.PeerName)
		n.refuse(res, ep, wire.CodeNotPeer)
		return
	}
	p.completeResponder(res, ep)
}

// timerLoop drives every peer's timers: handshake retransmission, rekeys,
// keepalives, dead-peer detection and session expiry.
func (n *Node) timerLoop() {
	defer n.wg.Done()
	t := time.NewTicker(n.timers.Tick)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		case <-n.wake:
		}
		now := time.Now()
		n.hs.Sweep()
		peers := n.Peers()
		n.refreshPeerAddrs(peers)
		for _, p := range peers {
			p.tick(now)
		}
	}
}

func (n *Node) getNonce() *[12]byte  { return n.noncePool.Get().(*[12]byte) }
func (n *Node) putNonce(b *[12]byte) { n.noncePool.Put(b) }
