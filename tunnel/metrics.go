package tunnel

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/stt"
)

// MetricsPath is the HTTP path that serves the metrics.
const MetricsPath = "/metrics"

// handshakeDropReasons are the node's drop reasons that are failed or refused
// handshakes, exported as stt_handshake_failures_total; the others are packets dropped,
// exported as stt_drops_total.
var handshakeDropReasons = map[stt.DropReason]bool{
	stt.DropBadMAC1:         true,
	stt.DropHandshake:       true,
	stt.DropHandshakeReplay: true,
	stt.DropVersion:         true,
	stt.DropRateLimited:     true,
	stt.DropUnknownPeer:     true,
	stt.DropPinMismatch:     true,
	stt.DropStaleTimestamp:  true,
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

// The metrics, documented in docs/metrics.md. They are read from the counters the
// packet paths keep anyway, at scrape time: exporting them costs nothing per packet.
var (
	descInterfaceInfo = desc("stt_interface_info", "The interface: its name, node name and public key (base64). Always 1.", "interface", "node_name", "public_key")
	descPeerInfo      = desc("stt_peer_info", "A configured peer with its current path (udp, ws or none) and underlay endpoint. Always 1.", "peer", "path", "endpoint")
	descPeerSession   = desc("stt_peer_session_up", "1 if the peer has a usable session, else 0.", "peer")
	descPeerTxBytes   = desc("stt_peer_tx_bytes_total", "Payload bytes sent to the peer.", "peer")
	descPeerRxBytes   = desc("stt_peer_rx_bytes_total", "Payload bytes received from the peer.", "peer")
	descPeerTxPackets = desc("stt_peer_tx_packets_total", "Packets sent to the peer.", "peer")
	descPeerRxPackets = desc("stt_peer_rx_packets_total", "Packets received from the peer.", "peer")
	descPeerDrops     = desc("stt_peer_drops_total", "Packets to or from the peer that were dropped: handshake queue full, send errors, source not allowed.", "peer")
	descPeerRTT       = desc("stt_peer_rtt_seconds", "Smoothed round-trip time to the peer, measured with STT echoes; absent until measured.", "peer")
	descPeerHSAge     = desc("stt_peer_handshake_age_seconds", "Seconds since the peer's latest handshake completed; absent before the first.", "peer")

	descHSStarted   = desc("stt_handshakes_started_total", "Handshakes this node started (HELLOs sent, retransmissions included).")
	descHSCompleted = desc("stt_handshakes_completed_total", "Handshakes completed, as initiator or responder.")
	descHSFailures  = desc("stt_handshake_failures_total", "Handshake messages refused or failed, by reason.", "reason")
	descDrops       = desc("stt_drops_total", "Packets the node dropped other than handshakes, by reason (auth and replay among them).", "reason")
	descCookies     = desc("stt_cookie_replies_sent_total", "Cookie replies sent to handshakes while under load.")
	descDHOps       = desc("stt_handshake_dh_operations_total", "X25519 operations done for handshakes.")
	descSessions    = desc("stt_sessions", "Sessions the node can receive on now, current and previous keys.")
	descPending     = desc("stt_pending_handshakes", "Handshakes in progress.")

	descNoRoute   = desc("stt_tunnel_no_route_total", "Packets read from the interface whose destination is in no peer's allowed_prefixes.")
	descSrcDenied = desc("stt_tunnel_source_denied_total", "Packets from a peer whose source is outside that peer's allowed_prefixes.")
	descMalformed = desc("stt_tunnel_malformed_total", "Packets that are neither IPv4 nor IPv6.")
	descTunErrors = desc("stt_tunnel_tun_errors_total", "Errors reading from or writing to the TUN device.")
	descReloads   = desc("stt_reloads_total", "Configuration reloads, by result: applied or refused.", "result")

	descWSAccepted = desc("stt_websocket_connections_accepted_total", "WebSocket connections the listener accepted.")
	descWSRejected = desc("stt_websocket_connections_rejected_total", "HTTP requests the WebSocket listener refused, by reason: http (wrong path, not a WebSocket upgrade) or full (connection limit).", "reason")
	descWSClosed   = desc("stt_websocket_connections_closed_total", "WebSocket connections of the listener that closed.")
	descWSActive   = desc("stt_websocket_connections", "WebSocket connections of the listener open now.")
	descWSDrops    = desc("stt_websocket_queue_drops_total", "Messages dropped because a WebSocket connection's send queue was full.")
)

var allDescs = []*prometheus.Desc{
	descInterfaceInfo, descPeerInfo, descPeerSession, descPeerTxBytes, descPeerRxBytes, descPeerTxPackets,
	descPeerRxPackets, descPeerDrops, descPeerRTT, descPeerHSAge,
	descHSStarted, descHSCompleted, descHSFailures, descDrops, descCookies, descDHOps, descSessions, descPending,
	descNoRoute, descSrcDenied, descMalformed, descTunErrors, descReloads,
	descWSAccepted, descWSRejected, descWSClosed, descWSActive, descWSDrops,
}

// collector is the tunnel's prometheus.Collector.
type collector struct{ t *Tunnel }

// Describe sends every metric's description.
func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

type peerSample struct {
	name      string
	sp        *stt.Peer
	srcDenied uint64
}

// Collect reads the counters and sends them as metrics.
func (c collector) Collect(ch chan<- prometheus.Metric) {
	t := c.t
	t.mu.RLock()
	iface, node := t.cfg.Interface.Name, t.cfg.Interface.NodeName
	peers := make([]peerSample, len(t.peers))
	for i, p := range t.peers {
		peers[i] = peerSample{name: p.cfg.Name, sp: p.sp, srcDenied: p.srcDenied.Load()}
	}
	t.mu.RUnlock()

	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}

	gauge(descInterfaceInfo, 1, iface, node, config.EncodeKey(t.node.PublicKey()))
	now := time.Now()
	for _, p := range peers {
		sp := p.sp
		path, up := stt.PathNone, 0.0
		if sp.HasSession() {
			path, up = sp.Path(), 1
		}
		endpoint := ""
		if ep := sp.Endpoint(); ep.IsValid() {
			endpoint = ep.String()
		}
		gauge(descPeerInfo, 1, p.name, path, endpoint)
		gauge(descPeerSession, up, p.name)
		s := sp.Stats()
		counter(descPeerTxBytes, s.TxBytes, p.name)
		counter(descPeerRxBytes, s.RxBytes, p.name)
		counter(descPeerTxPackets, s.TxPackets, p.name)
		counter(descPeerRxPackets, s.RxPackets, p.name)
		counter(descPeerDrops, s.Drops+p.srcDenied, p.name)
		if rtt := sp.RTT(); rtt > 0 {
			gauge(descPeerRTT, rtt.Seconds(), p.name)
		}
		if hs := sp.LastHandshake(); !hs.IsZero() {
			gauge(descPeerHSAge, max(now.Sub(hs).Seconds(), 0), p.name)
		}
	}

	st := t.node.Stats()
	counter(descHSStarted, st.HandshakesStarted)
	counter(descHSCompleted, st.HandshakesDone)
	for _, r := range stt.DropReasons() {
		d := descDrops
		if handshakeDropReasons[r] {
			d = descHSFailures
		}
		counter(d, st.Drops[r], r.String())
	}
	counter(descCookies, st.CookieRepliesSent)
	counter(descDHOps, st.HandshakeDHOps)
	gauge(descSessions, float64(st.Sessions))
	gauge(descPending, float64(st.PendingHandshakes))

	tc := t.Counters()
	counter(descNoRoute, tc.NoRoute)
	counter(descSrcDenied, tc.SourceDenied)
	counter(descMalformed, tc.Malformed)
	counter(descTunErrors, tc.TunErrors)
	counter(descReloads, t.reloadsApplied.Load(), "applied")
	counter(descReloads, t.reloadsRefused.Load(), "refused")

	if ws, ok := t.node.WSStats(); ok {
		counter(descWSAccepted, ws.Accepted)
		counter(descWSRejected, ws.RejectedHTTP, "http")
		counter(descWSRejected, ws.RejectedFull, "full")
		counter(descWSClosed, ws.Closed)
		gauge(descWSActive, float64(ws.Active))
		counter(descWSDrops, ws.QueueDrops)
	}
}

// metricsServer serves one tunnel's metrics over HTTP.
type metricsServer struct {
	addr string // as configured
	ln   net.Listener
	srv  *http.Server
	done chan struct{}
}

// metricsHandler is the HTTP handler of the metrics endpoint: the tunnel's metrics and
// the Go runtime's and process's.
func (t *Tunnel) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collector{t},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	mux := http.NewServeMux()
	mux.Handle(MetricsPath, promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(t.log.Handler(), slog.LevelWarn),
		Registry: reg,
	}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintf(w, "stt-tun metrics are at %s\n", MetricsPath)
	})
	return mux
}

// listenMetrics opens the metrics listener on addr.
func listenMetrics(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	return ln, nil
}

// serveMetrics serves the metrics on ln until close.
func (t *Tunnel) serveMetrics(ln net.Listener, addr string) *metricsServer {
	m := &metricsServer{
		addr: addr,
		ln:   ln,
		srv: &http.Server{
			Handler:           t.metricsHandler(),
			ReadHeaderTimeout: 5 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       2 * time.Minute,
		},
		done: make(chan struct{}),
	}
	go func() {
		defer close(m.done)
		if err := m.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.log.Error("metrics server stopped", "addr", addr, "err", err)
		}
	}()
	t.log.Info("serving metrics", "addr", ln.Addr().String(), "path", MetricsPath)
	return m
}

func (m *metricsServer) close() {
	_ = m.srv.Close()
	<-m.done
}

// startMetrics serves the metrics on addr, if it is not empty.
func (t *Tunnel) startMetrics(addr string) error {
	if addr == "" {
		return nil
	}
	ln, err := listenMetrics(addr)
	if err != nil {
		return err
	}
	m := t.serveMetrics(ln, addr)
	t.mu.Lock()
	t.metrics = m
	t.mu.Unlock()
	return nil
}

// stopMetrics stops serving the metrics; it may be called more than once.
func (t *Tunnel) stopMetrics() {
	t.mu.Lock()
	m := t.metrics
	t.metrics = nil
	t.mu.Unlock()
	if m != nil {
		m.close()
	}
}

// MetricsAddr is the address the metrics are served on, "" if they are not.
func (t *Tunnel) MetricsAddr() string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.metrics == nil {
		return ""
	}
	return t.metrics.ln.Addr().String()
}

// metricsChange is a reload's move of the metrics listener: prepare opens the new
// one, so that a port in use refuses the reload before anything changed; commit or
// abort finishes.
type metricsChange struct {
	t    *Tunnel
	from *metricsServer
	to   string
	ln   net.Listener // the new listener, once prepared
	// reopen is set when the old listener had to close first (the new address
	// overlaps it): abort then opens the old address again.
	reopen bool
}

func (c *metricsChange) prepare() error {
	if c.to == "" {
		return nil
	}
	ln, err := listenMetrics(c.to)
	if err != nil && errors.Is(err, syscall.EADDRINUSE) && c.from != nil && samePort(c.from.addr, c.to) {
		// The old listener holds the port, as when "127.0.0.1:9586" becomes
		// "0.0.0.0:9586": close it and try again.
		c.from.close()
		c.reopen = true
		ln, err = listenMetrics(c.to)
	}
	if err != nil {
		c.abort()
		return err
	}
	c.ln = ln
	return nil
}

// abort undoes prepare.
func (c *metricsChange) abort() {
	if c.ln != nil {
		_ = c.ln.Close()
		c.ln = nil
	}
	if c.reopen {
		c.reopen = false
		ln, err := listenMetrics(c.from.addr)
		if err != nil {
			c.t.log.Error("metrics: cannot listen on the old address again", "err", err)
			c.t.mu.Lock()
			c.t.metrics = nil
			c.t.mu.Unlock()
			return
		}
		m := c.t.serveMetrics(ln, c.from.addr)
		c.t.mu.Lock()
		c.t.metrics = m
		c.t.mu.Unlock()
	}
}

// commit starts serving on the new listener and stops the old one. The caller holds
// t.mu.
func (c *metricsChange) commit() (stop *metricsServer) {
	var next *metricsServer
	if c.ln != nil {
		next = c.t.serveMetrics(c.ln, c.to)
	}
	c.t.metrics = next
	if c.reopen {
		return nil // closed already
	}
	return c.from
}

func samePort(a, b string) bool {
	_, pa, errA := net.SplitHostPort(a)
	_, pb, errB := net.SplitHostPort(b)
	return errA == nil && errB == nil && strings.EqualFold(pa, pb)
}
