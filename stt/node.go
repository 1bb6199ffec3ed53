// Package stt implements the STT protocol (docs/protocol.md): a Node holds the
// network seed and a static key, runs seed-authenticated handshakes with its peers and
// carries datagrams to them over encrypted sessions, in batches. It knows nothing of
// TUN devices or routing.
package stt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
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

// ExtensionFunc handles a control message of the extension range 0x80..0xFF, and the
// STREAM_OPEN and STREAM_CLOSE announcements: the hook by which the mesh receives the
// member records it sends with SendReliable. from is the address the frame carrying it
// came from (on WebSocket, the TCP address at the other end of the connection: the peer
// or a proxy before it; the zero AddrPort when it came through a relay, which saw the
// peer's address and this node did not), viaWS whether it came over WebSocket. It is called on a receive
// goroutine and must not block. body lies in the receive loop's batch, which the next
// batch overwrites and which is unmapped when the loop ends (internal/offheap): it is
// valid during the call only, and what is kept of it must be copied.
type ExtensionFunc func(p *Peer, typ byte, body []byte, from netip.AddrPort, viaWS bool)

// AdmitFunc decides about a node that completed an authenticated handshake (it holds the
// seed; static is its key) under a name this node has no peer for. It may add the peer
// (AddPeer) and return it, or refuse with an error. It is called with no lock held, on a
// receive goroutine, one call at a time, and must not block.
type AdmitFunc func(name string, static [32]byte) (*Peer, error)

// Config configures a Node.
type Config struct {
	// Seed is the network seed the node starts with; SetSeeds replaces it by the
	// seeds of a rotation (seeds.go).
	Seed       [32]byte
	PrivateKey [32]byte
	Name       string // this node's name, sent to peers in the handshake
	ListenPort uint16 // 0 = any
	FwMark     uint32 // SO_MARK on the UDP socket, 0 = none
	Logger     *slog.Logger
	Handler    Handler
	Extension  ExtensionFunc
	// Admit, when set, is asked about an authenticated handshake from a name this node
	// has no peer for: as responder (an AUTH_PROOF from that name), and as initiator of
	// a wildcard peer (PeerConfig.AnyName) whose address answered with that name. nil:
	// such handshakes are refused (CodeNotPeer) or dropped, as for any unknown name.
	Admit AdmitFunc
	// SessionUp, when set, is called each time a session with a peer is confirmed
	// (the peer has shown it holds the keys), with fresh true when the peer had no
	// confirmed session before (not a rekey of one that is up). It is called with no
	// lock held, from a receive or the timer goroutine, and must not block.
	SessionUp func(p *Peer, fresh bool)
	Bind      conn.Bind // nil = UDP on all addresses (stt/udp)
	Limits    Limits
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
	// RelayMaxPairs is the number of route pairs this node forwards at most
	// (RelayOpen); 0: it is not a relay and forwards nothing.
	RelayMaxPairs int
	// RelayMaxPerMember is the number of route pairs one peer may be an end of
	// (default DefaultRelayMaxPerMember when RelayMaxPairs > 0).
	RelayMaxPerMember int
	// PathMTUChanged, when set, is called when a peer's path MTU estimate
	// (Peer.PathMTU) changes, with the old and new values (0 = none known), not per
	// probe. It is called from a stt goroutine (the timer loop or a receive goroutine)
	// and must not block.
	PathMTUChanged func(p *Peer, old, new int)
	// routeMTU, when set (by tests), gives the MTU of the local link toward an
	// address instead of the routing table.
	routeMTU func(netip.Addr) int
}

// Node is an STT endpoint: peers, sessions, timers and a transport.
type Node struct {
	cfg    Config
	limits Limits
	log    *slog.Logger
	hs     *handshake.Engine
	bind   conn.Bind
	index  *indexTable
	ctr    counters
	epoch  time.Time

	// The seeds held, as the timers see them, and what moving between them did
	// (seeds.go); seedMu serialises SetSeeds.
	seeds   atomic.Pointer[seedSet]
	seedCtr seedCounters
	seedMu  sync.Mutex

	noncePool sync.Pool

	// admitMu makes the calls of cfg.Admit one at a time, so that two handshakes from a
	// new name do not admit it twice. Taken with no other lock held, before Node.mu.
	admitMu sync.Mutex

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

	// revoked is the set of static keys refused at every handshake (SetRevoked).
	revoked atomic.Pointer[map[[32]byte]struct{}]
	// addrGen counts changes of the peers' UDP addresses and removals of peers;
	// addrBuilt is its value when peerAddrs was last built (timer loop only).
	addrGen   atomic.Uint64
	addrBuilt uint64

	wsServer *ws.Server
	wsStates sync.Pool // *wsRecvState
	wsEPs    wsEndpoints

	relays relays // relay.go: routes as a relay, relay paths as an end

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
		limits:   cfg.Limits.withDefaults(),
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
	n.seeds.Store(&seedSet{ids: hs.SeedIDs(), at: time.Now()})
	n.bind = cfg.Bind
	if n.bind == nil {
		n.bind = udp.New()
		if !n.limits.PMTUDisable {
			// Don't Fragment on every datagram, never fragmented locally: what
			// probes find is what data gets (pmtu.go).
			n.bind = udp.NewPMTUProbe()
		}
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
		if s := p.keys.current.Load(); s != nil {
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
	// AnyName makes a wildcard (bootstrap) peer: its handshakes go to its endpoint (and
	// candidates) and accept a CHALLENGE from any node name; the handshake is completed
	// on the peer of that name (Config.Admit adds it when there is none), which gets the
	// session and the address. The wildcard itself never holds a session nor carries
	// data; Reached tells whom it reached. It handshakes from AddPeer on until it reaches
	// a node (or gives up after Limits.HandshakeGiveUp); Rekey makes it try again. An
	// address that answers as this node itself (its name or its key) is not used
	// (ReachedSelf). Its own name must be one no node uses.
	AnyName bool
	// IdleTimeout > 0 closes the peer's session when no data and no reliable control
	// message has gone either way for that long (keepalives and PINGs do not count): the
	// node sends CLOSE, drops its sessions and starts no handshake until Send or
	// SendReliable needs one. PersistentKeepalive then no longer brings a session up by
	// itself.
	IdleTimeout time.Duration
	// Candidates are more UDP addresses at which the peer may be reached (at most
	// MaxCandidates). While the peer has no endpoint, or its handshake went unanswered
	// for a retry, each HELLO goes to the endpoint and to every candidate; the address
	// the peer answers from becomes its endpoint.
	Candidates []netip.AddrPort
}

// MaxCandidates bounds PeerConfig.Candidates.
const MaxCandidates = 8

// ErrWildcardPeer reports an attempt to send on a wildcard peer (PeerConfig.AnyName),
// which carries no traffic.
var ErrWildcardPeer = errors.New("stt: a wildcard peer carries no traffic")

// AddPeer registers a peer. An endpoint given as a host name is looked up in the
// background (LookupDone tells when the first lookup ended): a name that does not
// resolve leaves the peer without an address, and is looked up again until it does,
// and whenever the peer goes quiet.
func (n *Node) AddPeer(pc PeerConfig) (*Peer, error) {
	if pc.Name == "" || len(pc.Name) > wire.NameLen {
		return nil, fmt.Errorf("stt: peer name %q must be 1..%d bytes", pc.Name, wire.NameLen)
	}
	cands, err := n.parseCandidates(pc.Candidates)
	if err != nil {
		return nil, fmt.Errorf("stt: peer %s: %w", pc.Name, err)
	}
	pc.Candidates = slices.Clone(pc.Candidates)
	p := &Peer{node: n, cfg: pc}
	p.handshake.candidates = cands
	p.handshake.want = pc.AnyName // a wildcard looks for its node at once
	p.path.wsConf.Store(pc.wsSettings())
	if pc.PublicKey != nil {
		p.handshake.static = *pc.PublicKey
		p.handshake.staticKnown = true
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
	if pc.AnyName {
		n.kick()
	}
	return p, nil
}

// parseCandidates checks a peer's candidate addresses and makes them endpoints of the
// bind.
func (n *Node) parseCandidates(aps []netip.AddrPort) ([]conn.Endpoint, error) {
	if len(aps) > MaxCandidates {
		return nil, fmt.Errorf("%d candidate addresses, at most %d", len(aps), MaxCandidates)
	}
	var eps []conn.Endpoint
	for _, ap := range aps {
		if !ap.IsValid() || ap.Port() == 0 || ap.Addr().IsUnspecified() || ap.Addr().IsMulticast() {
			return nil, fmt.Errorf("candidate address %v is not usable", ap)
		}
		ep, err := n.bind.ParseEndpoint(ap.String())
		if err != nil {
			return nil, fmt.Errorf("candidate address %v: %w", ap, err)
		}
		eps = append(eps, ep)
	}
	return eps, nil
}

// RemovePeer forgets a peer and its sessions.
func (n *Node) RemovePeer(name string) {
	n.mu.Lock()
	p := n.peers[name]
	delete(n.peers, name)
	n.mu.Unlock()
	if p != nil {
		p.shutdown()
		n.forgetRelays(p)
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
	st.SelfReached = n.ctr.selfReached.Load()
	st.HandshakeDHOps = n.hs.DHCount()
	st.Sessions, st.PendingHandshakes = n.index.counts()
	st.RelayForwardedPackets = n.relays.forwarded.Load()
	st.RelayForwardedBytes = n.relays.fwdBytes.Load()
	st.RelayRoutes = int(n.relays.npairs.Load())
	st.RelayRefused = n.relays.refused.Load()
	st.PMTU = n.ctr.pmtu.load()
	for i := range n.ctr.tx {
		st.Tx[i] = TxCount{Frames: n.ctr.tx[i].frames.Load(), Bytes: n.ctr.tx[i].bytes.Load()}
	}
	return st
}

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
