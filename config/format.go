package config

import (
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"unicode"
)

// String renders the effective configuration, every default filled in, as a TOML
// document that Parse accepts and that yields the same Config. It holds no secret:
// the seed and the private key live in their own files and only their paths appear.
func (c *Config) String() string {
	var b strings.Builder
	in := &c.Interface
	b.WriteString("[interface]\n")
	fmt.Fprintf(&b, "name = %s\n", quote(in.Name))
	fmt.Fprintf(&b, "node_name = %s\n", quote(in.NodeName))
	fmt.Fprintf(&b, "addresses = %s\n", prefixList(in.Addresses))
	fmt.Fprintf(&b, "mtu = %d\n", in.MTU)
	if !in.DisableUDP {
		fmt.Fprintf(&b, "listen_port = %d\n", in.ListenPort)
	}
	fmt.Fprintf(&b, "udp = %t\n", !in.DisableUDP)
	fmt.Fprintf(&b, "seed_file = %s\n", quote(in.SeedFile))
	fmt.Fprintf(&b, "key_file = %s\n", quote(in.KeyFile))
	if in.ExitPeer != "" {
		fmt.Fprintf(&b, "exit_peer = %s\n", quote(in.ExitPeer))
		fmt.Fprintf(&b, "kill_switch = %t\n", in.KillSwitch)
	}
	fmt.Fprintf(&b, "fwmark = 0x%x\n", in.FwMark)
	fmt.Fprintf(&b, "table = %d\n", in.Table)
	fmt.Fprintf(&b, "mss_clamp = %t\n", in.MSSClamp)

	if w := &c.WebSocket; w.Listen != "" {
		b.WriteString("\n[websocket]\n")
		fmt.Fprintf(&b, "listen = %s\n", quote(w.Listen))
		fmt.Fprintf(&b, "path = %s\n", quote(w.Path))
		fmt.Fprintf(&b, "max_pending = %d\n", w.MaxPending)
		fmt.Fprintf(&b, "max_pending_per_source = %d\n", w.MaxPendingPerSource)
		if w.TLSCert != "" {
			fmt.Fprintf(&b, "tls_cert = %s\n", quote(w.TLSCert))
			fmt.Fprintf(&b, "tls_key = %s\n", quote(w.TLSKey))
		}
		if w.PublicURL != "" {
			fmt.Fprintf(&b, "public_url = %s\n", quote(w.PublicURL))
		}
	}

	if c.Forwarding != (Forwarding{}) {
		b.WriteString("\n[forwarding]\n")
		fmt.Fprintf(&b, "enabled = %t\n", c.Forwarding.Enabled)
		fmt.Fprintf(&b, "masquerade = %t\n", c.Forwarding.Masquerade)
	}

	if d := &c.Discovery; d.Enabled {
		b.WriteString("\n[discovery]\n")
		bs := make([]string, len(d.Bootstrap))
		for i, s := range d.Bootstrap {
			bs[i] = quote(s)
		}
		fmt.Fprintf(&b, "bootstrap = [%s]\n", strings.Join(bs, ", "))
		fmt.Fprintf(&b, "accept_prefixes = %s\n", prefixList(d.AcceptPrefixes))
		fmt.Fprintf(&b, "announce_prefixes = %s\n", prefixList(d.AnnouncePrefixes))
		eps := make([]string, len(d.Endpoints))
		for i, e := range d.Endpoints {
			eps[i] = quote(e.String())
		}
		fmt.Fprintf(&b, "endpoints = [%s]\n", strings.Join(eps, ", "))
		fmt.Fprintf(&b, "idle_timeout = %s\n", quote(d.IdleTimeout.String()))
		fmt.Fprintf(&b, "mesh_ipv6 = %t\n", d.MeshIPv6)
		fmt.Fprintf(&b, "relay = %t\n", d.Relay)
		fmt.Fprintf(&b, "nat_keepalive = %s\n", quote(d.NATKeepalive.String()))
	}

	if len(c.Membership.Admins) > 0 {
		b.WriteString("\n[membership]\n")
		as := make([]string, len(c.Membership.Admins))
		for i, a := range c.Membership.Admins {
			as[i] = quote(EncodeKey([32]byte(a)))
		}
		fmt.Fprintf(&b, "admins = [%s]\n", strings.Join(as, ", "))
	}

	for i := range c.Peers {
		p := &c.Peers[i]
		b.WriteString("\n[[peer]]\n")
		fmt.Fprintf(&b, "name = %s\n", quote(p.Name))
		if p.Endpoint != "" {
			fmt.Fprintf(&b, "endpoint = %s\n", quote(p.Endpoint))
		}
		if len(p.AllowedPrefixes) > 0 {
			fmt.Fprintf(&b, "allowed_prefixes = %s\n", prefixList(p.AllowedPrefixes))
		}
		if p.PublicKey != nil {
			fmt.Fprintf(&b, "public_key = %s\n", quote(EncodeKey(*p.PublicKey)))
		}
		if p.PersistentKeepalive != 0 {
			fmt.Fprintf(&b, "persistent_keepalive = %s\n", quote(p.PersistentKeepalive.String()))
		}
		fmt.Fprintf(&b, "route = %t\n", p.Route)
		if p.WSURL != "" {
			fmt.Fprintf(&b, "ws_url = %s\n", quote(p.WSURL))
		}
		if p.WSProxy != "" {
			fmt.Fprintf(&b, "ws_proxy = %s\n", quote(p.WSProxy))
		}
		if p.WSCAFile != "" {
			fmt.Fprintf(&b, "ws_ca_file = %s\n", quote(p.WSCAFile))
		}
		if p.WSInsecure {
			b.WriteString("ws_insecure = true\n")
		}
	}

	if c.Metrics.Listen != "" {
		b.WriteString("\n[metrics]\n")
		fmt.Fprintf(&b, "listen = %s\n", quote(c.Metrics.Listen))
	}

	if l := c.Logging; l.Level != slog.LevelInfo || (l.Format != LogText && l.Format != "") {
		b.WriteString("\n[logging]\n")
		fmt.Fprintf(&b, "level = %s\n", quote(strings.ToLower(l.Level.String())))
		format := l.Format
		if format == "" {
			format = LogText
		}
		fmt.Fprintf(&b, "format = %s\n", quote(format))
	}

	if c.Advanced != defaultAdvanced() {
		b.WriteString("\n[advanced]\n")
		fmt.Fprintf(&b, "rekey_after = %s\n", quote(c.Advanced.RekeyAfter.String()))
		fmt.Fprintf(&b, "rekey_after_messages = %d\n", c.Advanced.RekeyAfterMessages)
		fmt.Fprintf(&b, "fallback_after = %s\n", quote(c.Advanced.FallbackAfter.String()))
		fmt.Fprintf(&b, "probe_interval = %s\n", quote(c.Advanced.ProbeInterval.String()))
		fmt.Fprintf(&b, "handshake_replay_window = %s\n", quote(c.Advanced.ReplayWindow.String()))
		fmt.Fprintf(&b, "pmtu_discovery = %t\n", c.Advanced.PMTUDiscovery)
		fmt.Fprintf(&b, "pmtu_reprobe_interval = %s\n", quote(c.Advanced.PMTUReprobe.String()))
	}
	return b.String()
}

// defaultAdvanced is the [advanced] section when the file leaves every key out.
func defaultAdvanced() Advanced {
	return Advanced{
		RekeyAfter: DefaultRekeyAfter, RekeyAfterMessages: DefaultRekeyAfterMessages,
		FallbackAfter: DefaultFallbackAfter, ProbeInterval: DefaultProbeInterval,
		ReplayWindow: DefaultReplayWindow, PMTUDiscovery: true, PMTUReprobe: DefaultPMTUReprobe,
	}
}

func prefixList(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = quote(p.String())
	}
	return "[" + strings.Join(s, ", ") + "]"
}

// quote writes a TOML basic string. Go's %q is close but not the same language:
// its \x and \U escapes differ from TOML's.
func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\t':
			b.WriteString(`\t`)
		case r == 0x7f || unicode.IsControl(r):
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}
