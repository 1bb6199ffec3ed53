// Package tunnel is the engine of stt-tun: it owns a TUN device, an STT node and the
// prefix table, and pumps packets between them in both directions.
package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gaissmai/bart"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/internal/status"
	"github.com/stt-tun/stt-tun/routing"
	"github.com/stt-tun/stt-tun/stt"
	"github.com/stt-tun/stt-tun/tun"
)

// Options are the run-time settings of a tunnel that do not come from its config file.
type Options struct {
	Logger   *slog.Logger
	StateDir string // where routing keeps its journal; "" = /run/stt-tun
	// Device, when set, is used instead of creating a TUN device and no routing is
	// done: the in-memory device of unit tests.
	Device tun.Device
	// Resolver replaces the system's resolver for peers' endpoint names: for tests.
	Resolver func(ctx context.Context, hostport string) (netip.AddrPort, error)
	// SeedRekeySpread replaces stt's (30 s) during a seed rotation: for tests.
	SeedRekeySpread time.Duration
	// Bind replaces the node's UDP transport: for tests (a path that loses large
	// datagrams, say).
	Bind conn.Bind
}

// peer is the tunnel's view of one configured peer: its allowed prefixes and its node
// peer.
type peer struct {
	cfg        config.Peer
	sp         *stt.Peer
	srcDenied  atomic.Uint64 // packets from this peer with a source it may not use
	loops      atomic.Uint64 // packets to this peer dropped as a routing loop
	loopLogged atomic.Bool   // the routing loop was logged
	// ws is the peer's ws_url and the addresses of its host (an IP address, or what
	// its name resolved to), for the packet pump, which reads no cfg.
	ws atomic.Pointer[wsTarget]
	// member is the mesh's record of a discovered member (nil for a [[peer]] the
	// mesh has not matched); guarded by meshState.mu.
	member *member
	// pinged is when `stt-tun ping` last asked for the peer (unix ns): it wants a
	// session as traffic does, and the mesh reaches a member behind NAT for it.
	pinged atomic.Int64
}

// tableT is the prefix table: destination (outbound) and source (inbound) prefix → peer.
type tableT = *bart.Table[*peer]

// Tunnel is a running stt-tun interface.
type Tunnel struct {
	cfg   *config.Config
	log   *slog.Logger
	dev   tun.Device
	node  *stt.Node
	route *routing.Manager
	table atomic.Pointer[bart.Table[*peer]]
	peers []*peer
	// mesh is the discovery side ([discovery]); nil without it.
	mesh *meshState

	// mu guards cfg, peers and each peer's cfg, which Reload replaces; the packet
	// paths read only the table.
	mu       sync.RWMutex
	reloadMu sync.Mutex // one Reload at a time
	seed     seedState  // seeds.go: the seed file as applied
	metrics  *metricsServer

	reloadsApplied atomic.Uint64
	reloadsRefused atomic.Uint64

	noRoute    atomic.Uint64 // outbound packets to no peer
	linkScoped atomic.Uint64 // outbound link-scoped packets no peer takes
	srcDenied  atomic.Uint64 // inbound packets from a source the peer may not use
	malformed  atomic.Uint64 // packets that are not IPv4 or IPv6
	loops      atomic.Uint64 // outbound packets that are the node's own underlay traffic
	port       uint16        // the UDP listen port, 0 = none; set before the pumps start
	ownAddrs   []netip.Addr  // the interface's addresses; fixed while it runs
	tunErrors  atomic.Uint64
	// pmtu counts what the pumps did about the peers' path MTUs (pmtu.go); own6 is
	// the interface's first IPv6 address, the source of a Packet Too Big about a
	// multicast packet; mssClamp is [interface] mss_clamp, which a reload sets.
	pmtu       pmtuCounters
	own6       netip.Addr
	mssClamp   atomic.Bool
	pumpsDone  sync.WaitGroup
	done       chan struct{}
	closeOnce  sync.Once
	failOnce   sync.Once
	stopReason atomic.Pointer[error]

	// resolver is Options.Resolver; lookupCtx ends the lookups of ws_url host names
	// when the tunnel closes.
	resolver     func(ctx context.Context, hostport string) (netip.AddrPort, error)
	lookupCtx    context.Context
	lookupCancel context.CancelFunc
}

// Start brings a tunnel up: TUN device, STT node, addresses and routes. It returns once
// the interface is fully configured; on error nothing it did is left behind.
func Start(ctx context.Context, cfg *config.Config, opts Options) (_ *Tunnel, err error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := &Tunnel{cfg: cfg, log: log, done: make(chan struct{}), resolver: opts.Resolver}
	t.lookupCtx, t.lookupCancel = context.WithCancel(context.Background())
	var undo []func()
	undo = append(undo, t.lookupCancel)
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()

	sf, err := config.LoadSeedFile(cfg.Interface.SeedFile)
	if err != nil {
		return nil, err
	}
	t.seed.network = sf.Network
	key, created, err := config.LoadOrCreateKey(cfg.Interface.KeyFile)
	if err != nil {
		return nil, err
	}
	if created {
		log.Info("created node key", "file", cfg.Interface.KeyFile)
	}
	if cfg.Discovery.Enabled {
		if err := cfg.CheckKeyForDiscovery(key); err != nil {
			return nil, err
		}
		if err := t.startMesh(sf.Network, key); err != nil {
			return nil, err
		}
		t.loadStatements(statementsPath(cfg.Interface.SeedFile, cfg.Interface.Name))
	}

	if opts.Device != nil {
		t.dev = opts.Device
	} else {
		t.dev, err = tun.Create(cfg.Interface.Name, cfg.Interface.MTU)
		if err != nil {
			return nil, err
		}
	}
	undo = append(undo, func() { _ = t.dev.Close() })
	go func() {
		for range t.dev.Events() {
		}
	}()

	var fwmark uint32
	if cfg.Interface.ExitPeer != "" {
		fwmark = cfg.Interface.FwMark
	}
	sc := stt.Config{
		Seed:       sf.Seed,
		PrivateKey: key.X25519,
		Name:       cfg.Interface.NodeName,
		ListenPort: uint16(cfg.Interface.ListenPort),
		FwMark:     fwmark,
		Logger:     log,
		Handler:    t,
		Limits: stt.Limits{
			RekeyAfterTime:     cfg.Advanced.RekeyAfter,
			RekeyAfterMessages: cfg.Advanced.RekeyAfterMessages,
			FallbackAfter:      cfg.Advanced.FallbackAfter,
			ProbeInterval:      cfg.Advanced.ProbeInterval,
			SeedRekeySpread:    opts.SeedRekeySpread,
			PMTUDisable:        !cfg.Advanced.PMTUDiscovery,
			PMTUReprobe:        cfg.Advanced.PMTUReprobe,
			PMTUMax:            cfg.Interface.MTU, // a larger path MTU helps no packet
		},
		DisableUDP: cfg.Interface.DisableUDP,
		WSListen:   cfg.WebSocket.Listen,
		WSPath:     cfg.WebSocket.Path,
		WSCertFile: cfg.WebSocket.TLSCert,
		WSKeyFile:  cfg.WebSocket.TLSKey,
		Resolver:   opts.Resolver,
		Bind:       opts.Bind,

		PathMTUChanged: t.pathMTUChanged,

		HandshakeReplayWindow: cfg.Advanced.ReplayWindow,
		WSMaxPending:          cfg.WebSocket.MaxPending,
		WSMaxPendingPerSource: cfg.WebSocket.MaxPendingPerSource,
	}
	if t.mesh != nil && t.mesh.nat.relay {
		sc.RelayMaxPairs, sc.RelayMaxPerMember = relayPairs, relayPerMember
	}
	if t.mesh != nil {
		sc.Admit = t.admit
		sc.Extension = t.meshExtension
		sc.SessionUp = t.meshSessionUp
	}
	t.node, err = stt.New(sc)
	if err != nil {
		return nil, err
	}
	t.applyRevocations() // before the first packet
	if err := t.applySeeds(sf, false); err != nil {
		return nil, err
	}
	undo = append(undo, t.stopSeeds)
	if err := t.node.Start(); err != nil {
		return nil, err
	}
	undo = append(undo, func() { _ = t.node.Close() })
	t.port = t.node.Port()
	for _, a := range cfg.Interface.Addresses {
		t.ownAddrs = append(t.ownAddrs, a.Addr().Unmap())
	}
	for _, a := range t.ownAddrs {
		if a.Is6() && !t.own6.IsValid() {
			t.own6 = a
		}
	}
	t.mssClamp.Store(cfg.Interface.MSSClamp)

	for i := range cfg.Peers {
		pc := cfg.Peers[i]
		p := &peer{cfg: pc}
		t.setWSURL(p, pc.WSURL)
		p.sp, err = t.node.AddPeer(sttPeerConfig(pc, p))
		if err != nil {
			return nil, err
		}
		t.peers = append(t.peers, p)
	}
	t.table.Store(t.configTable(cfg, t.peers))
	if t.mesh != nil {
		if err := t.addBootstraps(); err != nil {
			return nil, err
		}
	}
	t.awaitLookups(ctx)
	for _, w := range t.runningLoopWarnings(cfg, t.peers) {
		log.Warn(w)
	}

	if err := t.startMetrics(cfg.Metrics.Listen); err != nil {
		return nil, err
	}
	undo = append(undo, t.stopMetrics)

	if opts.Device == nil {
		t.route, err = routing.Apply(routing.Spec{
			Link:       cfg.Interface.Name,
			MTU:        cfg.Interface.MTU,
			Addresses:  t.interfaceAddresses(),
			Routes:     routesOf(cfg),
			FullTunnel: cfg.Interface.ExitPeer != "",
			KillSwitch: cfg.Interface.ExitPeer != "" && cfg.Interface.KillSwitch,
			FwMark:     cfg.Interface.FwMark,
			Table:      cfg.Interface.Table,
			Forwarding: cfg.Forwarding.Enabled,
			Masquerade: cfg.Forwarding.Masquerade,
			StateDir:   opts.StateDir,
		})
		if err != nil {
			return nil, err
		}
	}

	t.pumpsDone.Add(1)
	go t.readLoop()
	if t.mesh != nil {
		go t.meshLoop()
	}
	log.Info("tunnel up", "interface", cfg.Interface.Name, "port", t.node.Port(), "websocket", t.node.WSAddr(), "peers", len(t.peers))
	return t, nil
}

// configTable builds the prefix table of the configured peers.
func (t *Tunnel) configTable(cfg *config.Config, peers []*peer) tableT {
	table := new(bart.Table[*peer])
	for _, p := range peers {
		for _, pfx := range p.cfg.AllowedPrefixes {
			table.Insert(pfx, p)
		}
	}
	return table
}

// interfaceAddresses are the addresses the interface gets: the configured ones and,
// with the mesh, the key-derived one.
func (t *Tunnel) interfaceAddresses() []netip.Prefix {
	addrs := slices.Clone(t.cfg.Interface.Addresses)
	if a := t.meshAddress(); a.IsValid() {
		addrs = append(addrs, a)
	}
	return addrs
}

// lookupWait bounds how long Start waits for the first lookups of the peers' endpoint
// names: those that answer by then are in place when `up` returns; the others go on in
// the background, and their peers start without an address.
const lookupWait = 2 * time.Second

// awaitLookups waits for the first lookup of every peer's endpoint name, all running at
// once, for lookupWait at most or until ctx ends.
func (t *Tunnel) awaitLookups(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, lookupWait)
	defer cancel()
	for _, p := range t.peers {
		select {
		case <-p.sp.LookupDone():
		case <-ctx.Done():
			return
		}
		if w := p.ws.Load(); w != nil {
			select {
			case <-w.looked:
			case <-ctx.Done():
				return
			}
		}
	}
}

// Node exposes the STT node, for status and tests.
func (t *Tunnel) Node() *stt.Node { return t.node }

// Done is closed when the tunnel stops by itself (a fatal error) or after Close.
func (t *Tunnel) Done() <-chan struct{} { return t.done }

// Err reports why the tunnel stopped, nil after a clean Close.
func (t *Tunnel) Err() error {
	if e := t.stopReason.Load(); e != nil {
		return *e
	}
	return nil
}

// fail stops the tunnel because of err.
func (t *Tunnel) fail(err error) {
	t.failOnce.Do(func() {
		t.stopReason.Store(&err)
		t.log.Error("tunnel failed", "err", err)
		go t.Close()
	})
}

// Close stops the tunnel and undoes every change it made to the system.
func (t *Tunnel) Close() error {
	var errs []error
	t.closeOnce.Do(func() {
		if t.mesh != nil {
			// Tell the members this node is leaving, before the sessions close.
			if err := t.mesh.eng.Leave(leaveLinger); err != nil {
				t.log.Debug("mesh: leave", "err", err)
			}
			t.awaitLeaveAcks()
		}
		t.stopMesh()
		t.saveStatementsAt(time.Now(), true)
		t.stopSeeds()
		t.lookupCancel()
		t.stopMetrics()
		if err := t.node.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close node: %w", err))
		}
		if err := t.dev.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close tun: %w", err))
		}
		t.pumpsDone.Wait()
		if t.route != nil {
			if err := t.route.Undo(); err != nil {
				errs = append(errs, fmt.Errorf("undo routing: %w", err))
			}
		}
		close(t.done)
	})
	return errors.Join(errs...)
}

// Counters are the tunnel layer's own drop counters.
type Counters struct {
	NoRoute      uint64 // outbound packets whose destination no peer serves
	LinkScoped   uint64 // outbound link-scoped packets (router solicitations, MLD) no peer serves
	SourceDenied uint64 // inbound packets from outside the sending peer's prefixes
	Malformed    uint64 // packets that are neither IPv4 nor IPv6
	RoutingLoop  uint64 // outbound packets that were the node's own underlay traffic
	TunErrors    uint64

	// What the pump did about the peers' path MTUs (pmtu.go).
	TooBig                uint64 // outbound packets larger than their peer's path, dropped
	TooBigICMPSent        uint64 // ICMP errors written to the interface for them
	TooBigICMPRateLimited uint64 // ... not written, over the rate bound
	TooBigICMPNotAllowed  uint64 // ... not written, as the RFCs forbid an error about the packet
	Fragmented            uint64 // IPv4 packets without DF sent in fragments
	Fragments             uint64 // the fragments sent for them
	MSSClamped            uint64 // TCP SYNs whose MSS was lowered, both ways
}

// Counters returns the tunnel's counters.
func (t *Tunnel) Counters() Counters {
	return Counters{
		NoRoute: t.noRoute.Load(), LinkScoped: t.linkScoped.Load(), SourceDenied: t.srcDenied.Load(),
		Malformed: t.malformed.Load(), RoutingLoop: t.loops.Load(), TunErrors: t.tunErrors.Load(),
		TooBig: t.pmtu.tooBig.Load(), TooBigICMPSent: t.pmtu.icmpSent.Load(),
		TooBigICMPRateLimited: t.pmtu.icmpLimited.Load(), TooBigICMPNotAllowed: t.pmtu.icmpRefused.Load(),
		Fragmented: t.pmtu.fragmented.Load(), Fragments: t.pmtu.fragments.Load(), MSSClamped: t.pmtu.clamped.Load(),
	}
}

// Status reports the tunnel's current state.
func (t *Tunnel) Status() status.Status {
	st := t.configStatus()
	st.Seed = t.seedStatus()
	t.addRotationStatus(st.Seed)
	if t.mesh != nil {
		t.meshStatus(&st)
	}
	return st
}

// peerStatus is one peer's status line.
func peerStatus(p *peer) status.Peer {
	f := figuresOf(p.sp, p.tunDrops())
	ps := status.Peer{Name: p.cfg.Name, Path: f.path, Endpoint: f.endpoint, LastHandshake: f.lastHS, Refused: f.refused}
	if k, ok := p.sp.PublicKey(); ok {
		ps.PublicKey = config.EncodeKey(k)
	}
	ps.EndpointError = p.sp.EndpointError()
	ps.Seed = sessionSeed(p.sp)
	if ps.Path == stt.PathRelay {
		if via := p.sp.RelayVia(); via != nil {
			ps.RelayVia = via.Name()
		}
	}
	for _, pfx := range p.cfg.AllowedPrefixes {
		ps.AllowedPrefixes = append(ps.AllowedPrefixes, pfx.String())
	}
	ps.RTT = float64(f.rtt.Microseconds()) / 1000
	s := f.stats
	ps.TxBytes, ps.RxBytes, ps.TxPackets, ps.RxPackets = s.TxBytes, s.RxBytes, s.TxPackets, s.RxPackets
	ps.Drops = f.drops
	ps.PathMTU, ps.PathMTUDatagram, ps.PathMTUState = s.PathMTU, s.PathMTUDatagram, s.PathMTUState
	return ps
}

// configStatus is the status of the interface and its configured peers.
func (t *Tunnel) configStatus() status.Status {
	t.mu.RLock()
	defer t.mu.RUnlock()
	pub := t.node.PublicKey()
	st := status.Status{
		State:      status.StateUp,
		Interface:  t.cfg.Interface.Name,
		NodeName:   t.cfg.Interface.NodeName,
		PublicKey:  config.EncodeKey(pub),
		ListenPort: int(t.node.Port()),
		MTU:        t.cfg.Interface.MTU,
		Counters:   t.counterMap(),
	}
	for _, a := range t.cfg.Interface.Addresses {
		st.Addresses = append(st.Addresses, a.String())
	}
	for _, p := range t.peers {
		ps := peerStatus(p)
		if t.mesh != nil {
			ps.Source = sourceConfig
		}
		st.Peers = append(st.Peers, ps)
	}
	if a := t.meshAddress(); a.IsValid() {
		st.Addresses = append(st.Addresses, a.String())
	}
	return st
}
