package tunnel

import (
	"github.com/stt-tun/stt-tun/stt"
	"github.com/stt-tun/stt-tun/stt/mesh"
)

// counterMap names the node's and the tunnel's counters for Status: every drop reason
// as "drop_<reason>" (zero ones too, so that scripts find every key), the handshake
// counters, the tunnel layer's own drops, the link-scoped packets it ignores and what
// it did about path MTUs other than dropping (not prefixed tunnel_, so status does not
// list them among the drops).
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
	m["relay_forwarded_packets"] = st.RelayForwardedPackets
	m["relay_forwarded_bytes"] = st.RelayForwardedBytes
	m["relay_refused_at_bound"] = st.RelayRefused
	ss := t.node.SeedStats()
	m["seed_rekeys"] = ss.Rekeys
	m["seed_sessions_closed"] = ss.Closed
	m["pmtu_probes_sent"] = st.PMTU.ProbesSent
	m["pmtu_probes_acked"] = st.PMTU.ProbesAcked
	m["pmtu_probes_lost"] = st.PMTU.ProbesLost
	m["pmtu_bad_acks"] = st.PMTU.BadAcks
	m["pmtu_black_holes"] = st.PMTU.BlackHoles
	c := t.Counters()
	m["tunnel_no_route"] = c.NoRoute
	m["ignored_link_scoped"] = c.LinkScoped
	m["tunnel_source_denied"] = c.SourceDenied
	m["tunnel_malformed"] = c.Malformed
	m["tunnel_routing_loop"] = c.RoutingLoop
	m["tunnel_tun_errors"] = c.TunErrors
	m["tunnel_too_big"] = c.TooBig
	m["too_big_icmp_sent"] = c.TooBigICMPSent
	m["too_big_icmp_rate_limited"] = c.TooBigICMPRateLimited
	m["too_big_icmp_not_allowed"] = c.TooBigICMPNotAllowed
	m["fragmented"] = c.Fragmented
	m["fragments_sent"] = c.Fragments
	m["mss_clamped"] = c.MSSClamped
	for _, k := range stt.TxKinds() {
		m["sent_"+k.String()+"_frames"] = st.Tx[k].Frames
		m["sent_"+k.String()+"_bytes"] = st.Tx[k].Bytes
	}
	if t.mesh != nil {
		t.meshCounters(m)
	}
	return m
}

// meshCounters adds the mesh's counters: records offered by members, by outcome
// ("mesh_record_<outcome>"; all but accepted are drops), claims and names policy
// refused, and the gossip traffic.
func (t *Tunnel) meshCounters(m map[string]uint64) {
	s := t.mesh.eng.Stats()
	m["mesh_record_accepted"] = s.Accepted
	m["mesh_record_stale"] = s.Stale
	m["mesh_record_bad_signature"] = s.BadSignature
	m["mesh_record_malformed"] = s.Malformed
	m["mesh_record_too_large"] = s.TooLarge
	m["mesh_record_expired"] = s.Expired
	m["mesh_record_future"] = s.Future
	m["mesh_record_rate_limited"] = s.RateLimited
	m["mesh_record_table_full"] = s.Full
	m["mesh_record_own_key"] = s.OwnKey
	m["mesh_records_swept"] = s.Swept
	m["mesh_bad_messages"] = s.BadMessages
	m["mesh_unknown_messages"] = s.UnknownTypes
	m["mesh_messages_in"] = s.MsgsIn
	m["mesh_messages_out"] = s.MsgsOut
	m["mesh_bytes_in"] = s.BytesIn
	m["mesh_bytes_out"] = s.BytesOut
	m["mesh_summary_delta_answers"] = s.DeltaAnswers
	for i, o := range s.Out {
		if name := mesh.OutTypeName(i); name != "" {
			m["mesh_messages_out_"+name] = o.Msgs
			m["mesh_bytes_out_"+name] = o.Bytes
		}
	}
	m["mesh_claims_refused"] = t.mesh.claimsRefused.Load()
	m["mesh_names_refused"] = t.mesh.namesRefused.Load()
	t.statementCounters(m)
	for _, e := range t.natEvents() {
		m["mesh_"+e.name] = e.n
	}
	t.rotateCounters(m)
}
