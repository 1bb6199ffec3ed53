// The WebSocket transport as the node sees it: connections as endpoints, the
// listener, and dialing a peer's URL.

package stt

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/stt-tun/stt-tun/stt/ws"
)

// wsEndpoint is a WebSocket connection seen as a conn.Endpoint, so that the receive
// path and the handshake treat both transports alike.
type wsEndpoint struct {
	c    *ws.Conn
	addr netip.AddrPort
}

func newWSEndpoint(c *ws.Conn) *wsEndpoint { return &wsEndpoint{c: c, addr: c.RemoteAddr()} }

func (e *wsEndpoint) ClearSrc() {}

func (e *wsEndpoint) SrcToString() string { return "" }

func (e *wsEndpoint) DstToString() string { return e.addr.String() }

func (e *wsEndpoint) DstToBytes() []byte { b, _ := e.addr.MarshalBinary(); return b }

func (e *wsEndpoint) DstIP() netip.Addr { return e.addr.Addr() }

func (e *wsEndpoint) SrcIP() netip.Addr { return netip.Addr{} }

// AddrPort is the TCP address at the other end of the connection (addrPortOf).
func (e *wsEndpoint) AddrPort() netip.AddrPort { return e.addr }

func (e *wsEndpoint) String() string { return e.c.String() }

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
			if p.path.ws.CompareAndSwap(e, nil) {
				p.path.on.CompareAndSwap(onWS, onUDP)
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

// dialWSLocked starts dialing the peer's WebSocket URL in the background unless a dial
// is running or recently failed, and reports whether it started one. Called with p.mu
// held.
func (p *Peer) dialWSLocked() bool {
	if p.path.dial.running || !p.chooser() || p.path.ws.Load() != nil {
		return false
	}
	if time.Since(p.path.dial.failedAt) < p.wsDialBackoff() {
		return false
	}
	p.path.dial.running = true
	n := p.node
	// The settings are read here, under p.mu: Update may change them during the dial.
	conf := p.path.wsConf.Load()
	dc := ws.DialConfig{
		URL:                conf.URL,
		Proxy:              conf.Proxy,
		CAFile:             conf.CAFile,
		InsecureSkipVerify: conf.Insecure,
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
		p.path.dial.running = false
		if err != nil {
			p.path.dial.failedAt = time.Now()
			p.path.dial.fails++
			fails := p.path.dial.fails
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
		p.path.dial.fails = 0
		// Settings changed and changed back during the dial are the same settings: the
		// connection is kept, as before the settings became a snapshot.
		if cur := p.path.wsConf.Load(); p.removed || n.ctx.Err() != nil || cur == nil || *cur != *conf {
			p.dropHeldLocked()
			p.mu.Unlock()
			_ = c.Close()
			return
		}
		p.path.ws.Store(n.wsEndpointFor(c))
		p.mu.Unlock()
		n.log.Info("websocket connected", "peer", p.cfg.Name)
		n.log.Debug("websocket connected", "peer", p.cfg.Name, "url", c.String())
		n.kick()
	}()
	return true
}

// maxWSDialBackoff caps the wait between WebSocket dial attempts.
const maxWSDialBackoff = 30 * time.Second

// wsDialBackoff is how long to wait after a failed dial: HandshakeRetry doubling per
// consecutive failure up to maxWSDialBackoff. Called with p.mu held.
func (p *Peer) wsDialBackoff() time.Duration {
	d := p.node.limits.HandshakeRetry << min(p.path.dial.fails, 10)
	if d <= 0 || d > maxWSDialBackoff {
		d = maxWSDialBackoff
	}
	return d
}

// wsSettings are a peer's WebSocket settings, as PeerConfig gives them: a dial made
// with settings that have changed since is not used.
type wsSettings struct {
	URL, Proxy, CAFile string
	Insecure           bool
}

func (pc *PeerConfig) wsSettings() *wsSettings {
	return &wsSettings{URL: pc.WSURL, Proxy: pc.WSProxy, CAFile: pc.WSCAFile, Insecure: pc.WSInsecure}
}
