package tunnel

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/internal/accept"
	"github.com/stt-tun/stt-tun/internal/promtext"
	"github.com/stt-tun/stt-tun/stt"
	"github.com/stt-tun/stt-tun/stt/mesh"
)

// MetricsPath is the HTTP path that serves the metrics.
const MetricsPath = "/metrics"

// family is one metric family of the tunnel's, documented in docs/metrics.md.
type family struct{ name, typ, help string }

func counter(name, help string) family { return family{name, promtext.Counter, help} }
func gauge(name, help string) family   { return family{name, promtext.Gauge, help} }

// The metrics, documented in docs/metrics.md. They are read from the counters the
// packet paths keep anyway, at scrape time: exporting them costs nothing per packet.
var (
	famInterfaceInfo = gauge("stt_interface_info", "The interface: its name, node name and public key (base64). Always 1.")
	famPeerInfo      = gauge("stt_peer_info", "A peer (configured, or a discovered member) with its current path (udp, ws or none) and underlay endpoint. Always 1.")
	famPeerSession   = gauge("stt_peer_session_up", "1 if the peer has a usable session, else 0.")
	famPeerTxBytes   = counter("stt_peer_tx_bytes_total", "Payload bytes sent to the peer.")
	famPeerRxBytes   = counter("stt_peer_rx_bytes_total", "Payload bytes received from the peer.")
	famPeerTxPackets = counter("stt_peer_tx_packets_total", "Packets sent to the peer.")
	famPeerRxPackets = counter("stt_peer_rx_packets_total", "Packets received from the peer.")
	famPeerDrops     = counter("stt_peer_drops_total", "Packets to or from the peer that were dropped: handshake queue full, send errors, source not allowed, routing loop.")
	famPeerRTT       = gauge("stt_peer_rtt_seconds", "Smoothed round-trip time to the peer, measured with STT echoes; absent until measured.")
	famPeerHSAge     = gauge("stt_peer_handshake_age_seconds", "Seconds since the peer's latest handshake completed; absent before the first.")
	famPeerPathMTU   = gauge("stt_peer_path_mtu_bytes", "Largest inner packet known to reach the peer over its path (path MTU discovery); absent when none is known or needed.")
	famPeerRefused   = gauge("stt_peer_refused", "1 while the peer refuses this node's handshakes, with the reason (unknown_peer, pin_mismatch); absent otherwise.")

	famHSStarted   = counter("stt_handshakes_started_total", "Handshakes this node started (HELLOs sent, retransmissions included).")
	famHSCompleted = counter("stt_handshakes_completed_total", "Handshakes completed, as initiator or responder (as initiator: once the peer confirmed).")
	famHSFailures  = counter("stt_handshake_failures_total", "Handshake messages refused or failed, by reason.")
	famDrops       = counter("stt_drops_total", "Packets the node dropped other than handshakes, by reason (auth and replay among them).")
	famCookies     = counter("stt_cookie_replies_sent_total", "Cookie replies sent to handshakes while under load.")
	famDHOps       = counter("stt_handshake_dh_operations_total", "X25519 operations done for handshakes.")
	famRelayPkts   = counter("stt_relay_forwarded_packets_total", "RELAY messages this node forwarded between two members, as a relay.")
	famRelayBytes  = counter("stt_relay_forwarded_bytes_total", "Bytes of the RELAY messages this node forwarded, whole messages.")
	famRelayRoutes = gauge("stt_relay_routes", "Pairs of members this node forwards between now, as a relay.")
	famRelayBound  = counter("stt_relay_refused_total", "Relay requests refused at a bound: the relay's pairs, or a member's share of them.")
	famPMTUProbes  = counter("stt_pmtu_probes_total", "Path MTU probes, to every peer, by result: sent, acked, or lost (unanswered while others sent with them were).")
	famPMTUBadAcks = counter("stt_pmtu_bad_acks_total", "Path MTU probe acknowledgements refused (no such probe outstanding, already acknowledged, another size); they change nothing.")
	famPMTUHoles   = counter("stt_pmtu_black_holes_total", "Times a peer's confirmed path MTU stopped getting through while small packets did, and was lowered.")
	famSentFrames  = counter("stt_sent_frames_total", "Frames this node sent other than data and relayed ones, by kind: keepalive, ack, ping, probe, reliable, control, handshake.")
	famSentBytes   = counter("stt_sent_bytes_total", "Bytes of those frames (STT framing and tag included, UDP, IP or WebSocket headers not), by kind.")
	famSessions    = gauge("stt_sessions", "Sessions the node can receive on now, current and previous keys.")
	famPending     = gauge("stt_pending_handshakes", "Handshakes in progress.")

	famNoRoute    = counter("stt_tunnel_no_route_total", "Packets read from the interface whose destination is in no peer's allowed_prefixes.")
	famLinkScoped = counter("stt_tunnel_link_scoped_ignored_total", "Link-scoped packets read from the interface (link-local, router solicitations, MLD) that no peer's allowed_prefixes covers; not forwarded, by design.")
	famSrcDenied  = counter("stt_tunnel_source_denied_total", "Packets from a peer whose source is outside that peer's allowed_prefixes.")
	famMalformed  = counter("stt_tunnel_malformed_total", "Packets that are neither IPv4 nor IPv6.")
	famLoop       = counter("stt_tunnel_routing_loop_total", "Packets read from the interface that were this node's own underlay traffic to a peer (a routing loop), dropped.")
	famTunErrors  = counter("stt_tunnel_tun_errors_total", "Errors reading from or writing to the TUN device.")
	famTooBig     = counter("stt_tunnel_too_big_total", "Packets read from the interface larger than their peer's path MTU, dropped (IPv4 without DF is fragmented instead).")
	famTooBigICMP = counter("stt_tunnel_too_big_icmp_total", "ICMP errors (Fragmentation Needed, Packet Too Big) for packets too big for their peer's path, by result: sent to the interface, rate_limited, or not_allowed (an ICMP error, a later fragment, a multicast or broadcast packet: no error is sent about those).")
	famFragmented = counter("stt_tunnel_fragmented_total", "IPv4 packets without DF larger than their peer's path MTU, sent in fragments.")
	famFragments  = counter("stt_tunnel_fragments_total", "The fragments sent for them.")
	famMSSClamped = counter("stt_tunnel_mss_clamped_total", "TCP SYNs and SYN-ACKs, either way, whose MSS option was lowered to the peer's path MTU (mss_clamp).")
	famReloads    = counter("stt_reloads_total", "Configuration reloads, by result: applied or refused.")

	famWSAccepted = counter("stt_websocket_connections_accepted_total", "WebSocket connections the listener accepted.")
	famWSRejected = counter("stt_websocket_connections_rejected_total", "HTTP requests the WebSocket listener refused, by reason: http (wrong path, not a WebSocket upgrade) or full (connection limit, every connection authenticated).")
	famWSClosed   = counter("stt_websocket_connections_closed_total", "WebSocket connections of the listener that closed.")
	famWSEvicted  = counter("stt_websocket_connections_evicted_total", "WebSocket connections closed unauthenticated to make room for a new one while the listener was full.")
	famWSActive   = gauge("stt_websocket_connections", "WebSocket connections of the listener open now.")
	famWSDrops    = counter("stt_websocket_queue_drops_total", "Messages dropped because a WebSocket connection's send queue was full.")

	famWSPending       = gauge("stt_websocket_pending_connections", "TCP connections of the WebSocket listener accepted and not yet upgraded or closed.")
	famWSPendingClosed = counter("stt_websocket_pending_connections_closed_total", "TCP connections of the WebSocket listener closed before an upgrade by its bounds, by reason: source_limit (max_pending_per_source from its source, closed at accept), evicted (the oldest, max_pending reached) or deadline (not upgraded within 10 s of its accept).")

	famAcceptErrors = counter("stt_accept_errors_total", "Failed accepts on the daemon's listeners, retried with backoff, by listener: control, websocket or metrics.")

	famMeshMembers   = gauge("stt_mesh_members", "Members of the mesh this node knows, not counting itself.")
	famMeshConnected = gauge("stt_mesh_connected_members", "Members of the mesh with a session now.")
	famMeshRecords   = counter("stt_mesh_records_total", "Member records members sent, by outcome: accepted, or why they were dropped.")
	famMeshClaims    = counter("stt_mesh_claims_refused_total", "Addresses and prefixes members claimed that policy refused.")
	famMeshNames     = counter("stt_mesh_names_refused_total", "Member records refused because their name belongs to another key.")
	famMeshMsgs      = counter("stt_mesh_gossip_messages_total", "Gossip messages, by direction: in or out.")
	famMeshBytes     = counter("stt_mesh_gossip_bytes_total", "Bytes of gossip messages (type, length and body), by direction: in or out.")
	famMeshBytesOut  = counter("stt_mesh_gossip_sent_bytes_total", "Bytes of the gossip messages sent, as stt_mesh_gossip_bytes_total counts them, by type.")
	famMeshDelta     = counter("stt_mesh_summary_delta_answers_total", "SUMMARYs of lagging members answered with the records stored since instead of a DIGEST.")
	famMeshOffers    = counter("stt_mesh_seed_offers_total", "SEED_OFFER messages (the next seed of a rotation), by result: sent, or received and accepted, duplicate, or why they were dropped.")
	famMeshNAT       = counter("stt_mesh_nat_events_total", "NAT traversal events, by event: punch requests sent, punches coordinated and started, relay requests sent, granted and refused, relay paths installed, NAT messages ignored.")
	famPeerMesh      = gauge("stt_peer_mesh_info", "A peer that is a member of the mesh, with how the node learned of it (config, bootstrap, gossip, handshake). Always 1.")
)

type peerSample struct {
	name     string
	sp       *stt.Peer
	tunDrops uint64 // the tunnel layer's drops of the peer's packets
	source   string // how the mesh learned of it; "" without the mesh
}

// meshSample is the mesh's part of a scrape: its members that are not [[peer]]s, how
// the node learned of each member, and how many it knows and has sessions with.
type meshSample struct {
	members   []peerSample // discovered members with a peer, by name
	source    map[string]string
	known, up int
}

// sampleMesh reads the mesh's members. It takes mesh.mu, so the caller must not hold
// t.mu (the lock order is mesh.mu before t.mu).
func (t *Tunnel) sampleMesh() meshSample {
	m := t.mesh
	m.mu.Lock()
	defer m.mu.Unlock()
	ms := meshSample{source: make(map[string]string, len(m.members))}
	for _, mb := range m.members {
		ms.known++
		if mb.p == nil {
			continue // its record was refused: no peer, no traffic
		}
		if mb.p.sp.HasSession() {
			ms.up++
		}
		ms.source[mb.name] = mb.source
		if mb.source != sourceConfig {
			ms.members = append(ms.members, peerSample{name: mb.name, sp: mb.p.sp, tunDrops: mb.p.tunDrops(), source: mb.source})
		}
	}
	slices.SortFunc(ms.members, func(a, b peerSample) int { return strings.Compare(a.name, b.name) })
	return ms
}

// peerRow is a peer's figures as the metrics write them.
type peerRow struct {
	name   string
	source string // "" without the mesh
	peerFigures
	hsAge float64 // seconds since the last handshake, if there was one
}

// writeMetrics writes the tunnel's metrics, each family whole and in turn. Labels go
// in the order of their names, as Prometheus' own clients write them.
func (t *Tunnel) writeMetrics(w *promtext.Writer) {
	t.mu.RLock()
	iface, node := t.cfg.Interface.Name, t.cfg.Interface.NodeName
	peers := make([]peerSample, len(t.peers))
	for i, p := range t.peers {
		peers[i] = peerSample{name: p.cfg.Name, sp: p.sp, tunDrops: p.tunDrops()}
	}
	t.mu.RUnlock()
	// The discovered members are peers too, after the configured ones. mesh.mu is
	// taken with t.mu released: the lock order is mesh.mu before t.mu.
	var ms meshSample
	if t.mesh != nil {
		ms = t.sampleMesh()
		for i := range peers {
			peers[i].source = sourceConfig
			if src, ok := ms.source[peers[i].name]; ok {
				peers[i].source = src
			}
		}
		peers = append(peers, ms.members...)
	}

	one := func(f family, v uint64, labels ...string) {
		w.Family(f.name, f.typ, f.help)
		w.Uint(f.name, v, labels...)
	}
	one(famInterfaceInfo, 1, "interface", iface, "node_name", node, "public_key", config.EncodeKey(t.node.PublicKey()))

	// The peers' figures, read once, then written family by family.
	now := time.Now()
	figs := make([]peerRow, len(peers))
	for i, p := range peers {
		f := peerRow{name: p.name, source: p.source, peerFigures: figuresOf(p.sp, p.tunDrops)}
		if !f.lastHS.IsZero() {
			f.hsAge = max(now.Sub(f.lastHS).Seconds(), 0)
		}
		figs[i] = f
	}
	perPeer := func(fam family, v func(*peerRow) uint64) {
		w.Family(fam.name, fam.typ, fam.help)
		for i := range figs {
			w.Uint(fam.name, v(&figs[i]), "peer", figs[i].name)
		}
	}
	w.Family(famPeerInfo.name, famPeerInfo.typ, famPeerInfo.help)
	for _, f := range figs {
		w.Uint(famPeerInfo.name, 1, "endpoint", f.endpoint, "path", f.path, "peer", f.name)
	}
	perPeer(famPeerSession, func(f *peerRow) uint64 {
		if f.up {
			return 1
		}
		return 0
	})
	perPeer(famPeerTxBytes, func(f *peerRow) uint64 { return f.stats.TxBytes })
	perPeer(famPeerRxBytes, func(f *peerRow) uint64 { return f.stats.RxBytes })
	perPeer(famPeerTxPackets, func(f *peerRow) uint64 { return f.stats.TxPackets })
	perPeer(famPeerRxPackets, func(f *peerRow) uint64 { return f.stats.RxPackets })
	perPeer(famPeerDrops, func(f *peerRow) uint64 { return f.drops })
	w.Family(famPeerRTT.name, famPeerRTT.typ, famPeerRTT.help)
	for _, f := range figs {
		if f.rtt > 0 {
			w.Float(famPeerRTT.name, f.rtt.Seconds(), "peer", f.name)
		}
	}
	w.Family(famPeerHSAge.name, famPeerHSAge.typ, famPeerHSAge.help)
	for _, f := range figs {
		if !f.lastHS.IsZero() {
			w.Float(famPeerHSAge.name, f.hsAge, "peer", f.name)
		}
	}
	w.Family(famPeerPathMTU.name, famPeerPathMTU.typ, famPeerPathMTU.help)
	for _, f := range figs {
		if f.stats.PathMTU > 0 {
			w.Uint(famPeerPathMTU.name, uint64(f.stats.PathMTU), "peer", f.name)
		}
	}
	w.Family(famPeerRefused.name, famPeerRefused.typ, famPeerRefused.help)
	for _, f := range figs {
		if f.refused != "" {
			w.Uint(famPeerRefused.name, 1, "peer", f.name, "reason", f.refused)
		}
	}

	if t.mesh != nil {
		w.Family(famPeerMesh.name, famPeerMesh.typ, famPeerMesh.help)
		for _, f := range figs {
			w.Uint(famPeerMesh.name, 1, "peer", f.name, "source", f.source)
		}
	}

	st := t.node.Stats()
	one(famHSStarted, st.HandshakesStarted)
	one(famHSCompleted, st.HandshakesDone)
	for _, fam := range []family{famHSFailures, famDrops} {
		w.Family(fam.name, fam.typ, fam.help)
		for _, r := range stt.DropReasons() {
			if r.IsHandshake() == (fam == famHSFailures) {
				w.Uint(fam.name, st.Drops[r], "reason", r.String())
			}
		}
	}
	one(famCookies, st.CookieRepliesSent)
	one(famDHOps, st.HandshakeDHOps)
	one(famSessions, uint64(st.Sessions))
	one(famPending, uint64(st.PendingHandshakes))
	one(famRelayPkts, st.RelayForwardedPackets)
	one(famRelayBytes, st.RelayForwardedBytes)
	one(famRelayRoutes, uint64(st.RelayRoutes))
	one(famRelayBound, st.RelayRefused)
	w.Family(famPMTUProbes.name, famPMTUProbes.typ, famPMTUProbes.help)
	w.Uint(famPMTUProbes.name, st.PMTU.ProbesSent, "result", "sent")
	w.Uint(famPMTUProbes.name, st.PMTU.ProbesAcked, "result", "acked")
	w.Uint(famPMTUProbes.name, st.PMTU.ProbesLost, "result", "lost")
	one(famPMTUBadAcks, st.PMTU.BadAcks)
	one(famPMTUHoles, st.PMTU.BlackHoles)
	w.Family(famSentFrames.name, famSentFrames.typ, famSentFrames.help)
	for _, k := range stt.TxKinds() {
		w.Uint(famSentFrames.name, st.Tx[k].Frames, "kind", k.String())
	}
	w.Family(famSentBytes.name, famSentBytes.typ, famSentBytes.help)
	for _, k := range stt.TxKinds() {
		w.Uint(famSentBytes.name, st.Tx[k].Bytes, "kind", k.String())
	}

	tc := t.Counters()
	one(famNoRoute, tc.NoRoute)
	one(famLinkScoped, tc.LinkScoped)
	one(famSrcDenied, tc.SourceDenied)
	one(famMalformed, tc.Malformed)
	one(famLoop, tc.RoutingLoop)
	one(famTunErrors, tc.TunErrors)
	one(famTooBig, tc.TooBig)
	w.Family(famTooBigICMP.name, famTooBigICMP.typ, famTooBigICMP.help)
	w.Uint(famTooBigICMP.name, tc.TooBigICMPSent, "result", "sent")
	w.Uint(famTooBigICMP.name, tc.TooBigICMPRateLimited, "result", "rate_limited")
	w.Uint(famTooBigICMP.name, tc.TooBigICMPNotAllowed, "result", "not_allowed")
	one(famFragmented, tc.Fragmented)
	one(famFragments, tc.Fragments)
	one(famMSSClamped, tc.MSSClamped)
	w.Family(famReloads.name, famReloads.typ, famReloads.help)
	w.Uint(famReloads.name, t.reloadsApplied.Load(), "result", "applied")
	w.Uint(famReloads.name, t.reloadsRefused.Load(), "result", "refused")
	t.writeSeedMetrics(w, peers)

	if ws, ok := t.node.WSStats(); ok {
		one(famWSAccepted, ws.Accepted)
		w.Family(famWSRejected.name, famWSRejected.typ, famWSRejected.help)
		w.Uint(famWSRejected.name, ws.RejectedHTTP, "reason", "http")
		w.Uint(famWSRejected.name, ws.RejectedFull, "reason", "full")
		one(famWSClosed, ws.Closed)
		one(famWSEvicted, ws.Evicted)
		one(famWSActive, uint64(ws.Active))
		one(famWSDrops, ws.QueueDrops)
		one(famWSPending, ws.Pending)
		w.Family(famWSPendingClosed.name, famWSPendingClosed.typ, famWSPendingClosed.help)
		w.Uint(famWSPendingClosed.name, ws.PendingRefusedSource, "reason", "source_limit")
		w.Uint(famWSPendingClosed.name, ws.PendingEvicted, "reason", "evicted")
		w.Uint(famWSPendingClosed.name, ws.PendingExpired, "reason", "deadline")
	}
	w.Family(famAcceptErrors.name, famAcceptErrors.typ, famAcceptErrors.help)
	for _, k := range accept.Kinds {
		w.Uint(famAcceptErrors.name, accept.Errors(k), "listener", k.String())
	}
	if t.mesh != nil {
		t.writeMeshMetrics(w, ms)
	}
}

// writeMeshMetrics writes the mesh's families: members, records by outcome, refused
// claims and names, gossip traffic.
func (t *Tunnel) writeMeshMetrics(w *promtext.Writer, ms meshSample) {
	one := func(f family, v uint64) {
		w.Family(f.name, f.typ, f.help)
		w.Uint(f.name, v)
	}
	one(famMeshMembers, uint64(ms.known))
	one(famMeshConnected, uint64(ms.up))
	s := t.mesh.eng.Stats()
	w.Family(famMeshRecords.name, famMeshRecords.typ, famMeshRecords.help)
	for _, o := range []struct {
		outcome string
		n       uint64
	}{
		{"accepted", s.Accepted}, {"stale", s.Stale}, {"bad_signature", s.BadSignature},
		{"malformed", s.Malformed}, {"too_large", s.TooLarge}, {"expired", s.Expired},
		{"future", s.Future}, {"rate_limited", s.RateLimited}, {"table_full", s.Full},
		{"own_key", s.OwnKey}, {"revoked", t.mesh.eng.StatementStats().RevokedRecords},
	} {
		w.Uint(famMeshRecords.name, o.n, "outcome", o.outcome)
	}
	one(famMeshClaims, t.mesh.claimsRefused.Load())
	one(famMeshNames, t.mesh.namesRefused.Load())
	w.Family(famMeshMsgs.name, famMeshMsgs.typ, famMeshMsgs.help)
	w.Uint(famMeshMsgs.name, s.MsgsIn, "direction", "in")
	w.Uint(famMeshMsgs.name, s.MsgsOut, "direction", "out")
	w.Family(famMeshBytes.name, famMeshBytes.typ, famMeshBytes.help)
	w.Uint(famMeshBytes.name, s.BytesIn, "direction", "in")
	w.Uint(famMeshBytes.name, s.BytesOut, "direction", "out")
	w.Family(famMeshBytesOut.name, famMeshBytesOut.typ, famMeshBytesOut.help)
	for i, o := range s.Out {
		if name := mesh.OutTypeName(i); name != "" {
			w.Uint(famMeshBytesOut.name, o.Bytes, "type", name)
		}
	}
	one(famMeshDelta, s.DeltaAnswers)
	w.Family(famMeshNAT.name, famMeshNAT.typ, famMeshNAT.help)
	for _, e := range t.natEvents() {
		w.Uint(famMeshNAT.name, e.n, "event", e.name)
	}
	t.writeStatementMetrics(w)
	t.writeRotateMetrics(w)
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
	mux := http.NewServeMux()
	mux.HandleFunc(MetricsPath, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", promtext.ContentType)
		pw := promtext.NewWriter(w)
		t.writeMetrics(pw)
		promtext.WriteRuntime(pw)
		promtext.WriteProcess(pw)
		if err := pw.Flush(); err != nil {
			t.log.Debug("metrics: writing the response", "err", err)
		}
	})
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
	// Failed accepts (out of file descriptors) are counted, logged and retried, rather
	// than left to net/http's silent retry.
	ln = accept.Wrap(ln, accept.Metrics, t.log)
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
