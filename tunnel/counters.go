package tunnel

import "github.com/stt-tun/stt-tun/stt"

// counterMap names the node's and the tunnel's counters for Status: every drop reason
// as "drop_<reason>" (zero ones too, so that scripts find every key), the handshake
// counters, the tunnel layer's own drops, and the link-scoped packets it ignores
// (not prefixed tunnel_, so status does not list them among the drops).
func (t *Tunnel) counterMap() map[string]uint64 {
	st := t.node.Stats()
	m := make(map[string]uint64, len(st.Drops)+8)
	for _, r := range stt.DropReasons() {
		m["drop_"+r.String()] = st.Drops[r]
	}
	m["handshakes_started"] = st.HandshakesStarted
	m["handshakes_completed"] = st.HandshakesDone
	m["cookie_replies_sent"] = st.CookieRepliesSent
	m["handshake_dh_ops"] = st.HandshakeDHOps
	c := t.Counters()
	m["tunnel_no_route"] = c.NoRoute
	m["ignored_link_scoped"] = c.LinkScoped
	m["tunnel_source_denied"] = c.SourceDenied
	m["tunnel_malformed"] = c.Malformed
	m["tunnel_routing_loop"] = c.RoutingLoop
	m["tunnel_tun_errors"] = c.TunErrors
	return m
}
