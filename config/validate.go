package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Limits on individual values, documented in docs/configuration.md.
const (
	maxKeepalive     = 65535 * time.Second
	minRekeyAfter    = time.Second
	maxRekeyAfter    = 24 * time.Hour
	maxRoutingTable  = 1<<32 - 1
	reservedTableLow = 253 // 253 default, 254 main, 255 local
	minFallback      = time.Second
	maxFallback      = 5 * time.Minute
	minProbe         = time.Second
	maxProbe         = time.Hour
	minReplayWindow  = 2 * time.Second
	maxReplayWindow  = time.Hour
	maxWSPathLen     = 256
)

// parse decodes, validates and fills defaults. dir anchors relative file paths;
// checkFiles makes it check that the TLS files the document names exist.
func parse(data []byte, path, dir string, checkFiles bool) (*Config, error) {
	name := path
	if name == "" {
		name = "<input>"
	}
	ec := &errorCollector{path: name}
	// Editors on Windows may start a file with a byte order mark, which TOML
	// does not allow; it carries no meaning, so drop it.
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	sch := buildSchema()
	raw, ok := decodeRaw(data, ec, sch)
	if !ok {
		return nil, ec.err()
	}
	v := &validator{ec: ec, pos: indexPositions(data), dir: dir, defaultLink: defaultLinkName(path), checkFiles: checkFiles}
	for _, sec := range sch {
		// The decoder takes a lone [peer] as a one-element array; refuse it so
		// that the second [peer] does not fail with a puzzling redefinition.
		if line, ok := v.pos.tables[sec.name]; ok && sec.isArray {
			ec.add(line, "[%s] must be written %s, two brackets on each side, one section per %s", sec.name, sec.header(), sec.name)
		}
	}
	cfg := v.config(raw)
	if err := ec.err(); err != nil {
		return nil, err
	}
	cfg.Path = path
	return cfg, nil
}

// validator turns a rawFile into a Config, reporting each problem at the line of
// the key or array element at fault.
type validator struct {
	ec  *errorCollector
	pos *positions
	dir string
	// defaultLink is the link name when [interface] sets none: the file's base name,
	// as wg-quick does, so that `up NAME` and `down NAME` name the same interface.
	defaultLink string
	// noInterface is set when [interface] is missing, which is reported once
	// rather than once per required key.
	noInterface bool
	// checkFiles makes optional file keys (TLS certificates, keys and CAs) fail
	// when their file does not exist.
	checkFiles bool
}

// errAt reports a problem at the line of a dotted path such as
// "peer.1.allowed_prefixes.0".
func (v *validator) errAt(path, format string, args ...any) {
	line := v.pos.line(path)
	if line == 0 {
		line = 1
	}
	v.ec.add(line, format, args...)
}

func (v *validator) config(raw *rawFile) *Config {
	cfg := &Config{}
	if raw.Interface == nil {
		v.ec.add(1, "missing [interface] section; it needs at least seed_file and key_file")
		v.noInterface = true
		raw.Interface = &rawInterface{}
	}
	cfg.Interface = v.iface(raw.Interface)
	cfg.WebSocket = v.websocket(raw.WebSocket)
	cfg.Forwarding = v.forwarding(raw.Forwarding)
	cfg.Peers = v.peers(raw.Peers, cfg.Interface.NodeName)
	cfg.Metrics = v.metrics(raw.Metrics)
	cfg.Logging = v.logging(raw.Logging)
	cfg.Advanced = v.advanced(raw.Advanced)
	v.exitPeer(cfg)
	v.reachable(cfg, raw.Peers)
	return cfg
}

func (v *validator) iface(r *rawInterface) Interface {
	in := Interface{
		Name:       v.defaultLink,
		MTU:        DefaultMTU,
		ListenPort: DefaultListenPort,
		FwMark:     DefaultFwMark,
		Table:      DefaultTable,
		KillSwitch: true,
	}
	if r.Name != nil {
		in.Name = *r.Name
		if err := checkLinkName(in.Name); err != nil {
			v.errAt("interface.name", "interface: name %q %v", in.Name, err)
		}
	}
	if r.NodeName != nil {
		in.NodeName = *r.NodeName
		if err := checkName(in.NodeName); err != nil {
			v.errAt("interface.node_name", "interface: node_name %q %v", in.NodeName, err)
		}
	} else {
		in.NodeName = defaultNodeName()
	}

	hasV6 := false
	seen := make(map[netip.Prefix]int)
	for i, s := range r.Addresses {
		p := "interface.addresses." + strconv.Itoa(i)
		a, err := parseAddress(s)
		if err != nil {
			v.errAt(p, "interface: addresses: %v", err)
			continue
		}
		if j, dup := seen[a]; dup {
			v.errAt(p, "interface: addresses: %s is listed twice (also at line %d)", a, v.pos.line("interface.addresses."+strconv.Itoa(j)))
			continue
		}
		seen[a] = i
		if a.Addr().Is6() {
			hasV6 = true
		}
		in.Addresses = append(in.Addresses, a)
	}

	if r.MTU != nil {
		minMTU, why := MinMTUIPv4, "with IPv4 addresses only"
		if hasV6 {
			minMTU, why = MinMTU, "with IPv6 addresses"
		}
		switch m := *r.MTU; {
		case m < int64(minMTU):
			v.errAt("interface.mtu", "interface: mtu = %d is too small; the minimum is %d %s", m, minMTU, why)
		case m > MaxMTU:
			v.errAt("interface.mtu", "interface: mtu = %d is too large; the maximum is %d (a sealed frame must fit one UDP datagram)", m, MaxMTU)
		default:
			in.MTU = int(m)
		}
	}

	if r.UDP != nil {
		in.DisableUDP = !*r.UDP
	}
	if in.DisableUDP {
		in.ListenPort = 0
	}
	if r.ListenPort != nil && in.DisableUDP {
		// Refused rather than ignored: a node that looks reachable on a UDP port
		// and is not would be puzzling to debug.
		v.errAt("interface.listen_port", "interface: listen_port has no use with udp = false (line %d): this node opens no UDP socket; remove listen_port", v.pos.line("interface.udp"))
	} else if r.ListenPort != nil {
		if p := *r.ListenPort; p < 0 || p > 65535 {
			v.errAt("interface.listen_port", "interface: listen_port = %d is not a UDP port (0..65535; 0 picks a random port)", p)
		} else {
			in.ListenPort = int(p)
		}
	}

	in.SeedFile = v.filePath(r.SeedFile, "interface.seed_file", "seed_file",
		`seed_file = "/etc/stt-tun/seed" (create it with: stt-tun genseed)`)
	in.KeyFile = v.filePath(r.KeyFile, "interface.key_file", "key_file",
		`key_file = "/etc/stt-tun/`+in.Name+`.key" (it is created on first start)`)
	if in.SeedFile != "" && in.SeedFile == in.KeyFile {
		v.errAt("interface.key_file", "interface: key_file and seed_file are the same file %s; the node key and the network seed must be kept apart", in.KeyFile)
	}

	if r.ExitPeer != nil {
		in.ExitPeer = *r.ExitPeer // checked against the peers in exitPeer
	}
	if r.FwMark != nil {
		if m := *r.FwMark; m <= 0 || m > 1<<32-1 {
			v.errAt("interface.fwmark", "interface: fwmark = %d must be between 1 and 0xffffffff", m)
		} else {
			in.FwMark = uint32(m)
		}
	}
	if r.Table != nil {
		switch t := *r.Table; {
		case t <= 0 || t > maxRoutingTable:
			v.errAt("interface.table", "interface: table = %d must be between 1 and %d", t, int64(maxRoutingTable))
		case t >= reservedTableLow && t <= 255:
			v.errAt("interface.table", "interface: table = %d is reserved by the kernel (253 default, 254 main, 255 local); pick another, such as %d", t, DefaultTable)
		default:
			in.Table = int(t)
		}
	}
	if r.KillSwitch != nil {
		// Accepted without exit_peer, like fwmark and table, so that switching
		// the full tunnel on and off stays a one-line change.
		in.KillSwitch = *r.KillSwitch
	}
	return in
}

// filePath checks a required path key and resolves it against the config file's
// directory.
func (v *validator) filePath(s *string, path, key, example string) string {
	if s == nil {
		if v.noInterface {
			return ""
		}
		v.errAt("interface", "interface: %s is required, e.g. %s", key, example)
		return ""
	}
	p := *s
	switch {
	case p == "":
		v.errAt(path, "interface: %s is empty; e.g. %s", key, example)
		return ""
	case strings.ContainsFunc(p, unicode.IsControl):
		v.errAt(path, "interface: %s %q contains control characters", key, p)
		return ""
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(v.dir, p)
	}
	return filepath.Clean(p)
}

func (v *validator) websocket(r *rawWebSocket) WebSocket {
	w := WebSocket{Path: DefaultWSPath, MaxPending: DefaultWSMaxPending, MaxPendingPerSource: DefaultWSMaxPendingPerSource}
	if r == nil {
		return w
	}
	if r.Listen != nil && *r.Listen != "" {
		if err := checkListen(*r.Listen); err != nil {
			v.errAt("websocket.listen", "websocket: listen %q %v", *r.Listen, err)
		} else {
			w.Listen = *r.Listen
		}
	}
	hasListen := r.Listen != nil && *r.Listen != ""
	needsListen := func(key string) {
		if !hasListen {
			v.errAt("websocket."+key, "websocket: %s has no use without listen; add e.g. listen = \"0.0.0.0:8443\"", key)
		}
	}
	if r.Path != nil {
		needsListen("path")
		if err := checkWSPath(*r.Path); err != nil {
			v.errAt("websocket.path", "websocket: path %q %v", *r.Path, err)
		} else {
			w.Path = *r.Path
		}
	}
	w.TLSCert = v.optionalFile(r.TLSCert, "websocket.tls_cert", "websocket: tls_cert")
	w.TLSKey = v.optionalFile(r.TLSKey, "websocket.tls_key", "websocket: tls_key")
	certGiven := r.TLSCert != nil && *r.TLSCert != ""
	keyGiven := r.TLSKey != nil && *r.TLSKey != ""
	switch {
	case certGiven && !keyGiven:
		v.errAt("websocket.tls_cert", "websocket: tls_cert needs tls_key, the certificate's private key; set both for wss://, or neither for ws://")
	case keyGiven && !certGiven:
		v.errAt("websocket.tls_key", "websocket: tls_key needs tls_cert; set both for wss://, or neither for ws://")
	}
	if certGiven {
		needsListen("tls_cert")
	} else if keyGiven {
		needsListen("tls_key")
	}
	if w.TLSCert == "" || w.TLSKey == "" {
		// Half a TLS configuration is never used: the errors above say why.
		w.TLSCert, w.TLSKey = "", ""
	}
	if r.MaxPending != nil {
		needsListen("max_pending")
		if n := *r.MaxPending; n < 1 || n > MaxWSPending {
			v.errAt("websocket.max_pending", "websocket: max_pending = %d must be between 1 and %d", n, MaxWSPending)
		} else {
			w.MaxPending = int(n)
		}
	}
	w.MaxPendingPerSource = min(w.MaxPendingPerSource, w.MaxPending)
	if r.MaxPendingPerSource != nil {
		needsListen("max_pending_per_source")
		if n := *r.MaxPendingPerSource; n < 1 || n > int64(w.MaxPending) {
			v.errAt("websocket.max_pending_per_source", "websocket: max_pending_per_source = %d must be between 1 and max_pending (%d)", n, w.MaxPending)
		} else {
			w.MaxPendingPerSource = int(n)
		}
	}
	return w
}

// optionalFile checks an optional path key, "" meaning none, resolves it against the
// configuration file's directory and, when files are checked, makes sure it exists.
func (v *validator) optionalFile(s *string, path, label string) string {
	if s == nil || *s == "" {
		return ""
	}
	p := *s
	if strings.ContainsFunc(p, unicode.IsControl) {
		v.errAt(path, "%s %q contains control characters", label, p)
		return ""
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(v.dir, p)
	}
	p = filepath.Clean(p)
	if v.checkFiles {
		fi, err := os.Stat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			v.errAt(path, "%s %s does not exist", label, p)
			return ""
		case err != nil:
			v.errAt(path, "%s %s: %v", label, p, errors.Unwrap(err))
			return ""
		case fi.IsDir():
			v.errAt(path, "%s %s is a directory, not a file", label, p)
			return ""
		}
	}
	return p
}

func (v *validator) forwarding(r *rawForwarding) Forwarding {
	var f Forwarding
	if r == nil {
		return f
	}
	if r.Enabled != nil {
		f.Enabled = *r.Enabled
	}
	if r.Masquerade != nil {
		f.Masquerade = *r.Masquerade
	}
	if f.Masquerade && !f.Enabled {
		v.errAt("forwarding.masquerade", "forwarding: masquerade = true needs enabled = true; masquerading only applies to forwarded traffic")
	}
	return f
}

// owner records which peer claimed a prefix, for overlap messages.
type owner struct {
	prefix netip.Prefix
	peer   int
	path   string
}

func (v *validator) peers(raws []rawPeer, nodeName string) []Peer {
	peers := make([]Peer, 0, len(raws))
	names := make(map[string]int)
	var claimed []owner
	for i := range raws {
		r := &raws[i]
		base := "peer." + strconv.Itoa(i)
		p := Peer{Route: true}
		label := fmt.Sprintf("peer #%d", i+1)

		if r.Name == nil {
			v.errAt(base, "%s: name is required", label)
		} else {
			p.Name = *r.Name
			if err := checkName(p.Name); err != nil {
				v.errAt(base+".name", "%s: name %q %v", label, p.Name, err)
			} else {
				label = fmt.Sprintf("peer %q", p.Name)
				if j, dup := names[p.Name]; dup {
					v.errAt(base+".name", "%s: name is used twice (first at line %d); peer names must be unique", label,
						v.pos.line("peer."+strconv.Itoa(j)+".name"))
				} else {
					names[p.Name] = i
				}
				if p.Name == nodeName {
					v.errAt(base+".name", "%s: name is this node's own node_name; a node is not its own peer (set node_name in [interface] if the host name is wrong)", label)
				}
			}
		}

		if r.Endpoint != nil && *r.Endpoint != "" {
			if err := checkEndpoint(*r.Endpoint); err != nil {
				v.errAt(base+".endpoint", "%s: endpoint %q %v", label, *r.Endpoint, err)
			} else {
				p.Endpoint = *r.Endpoint
			}
		}

		if len(r.AllowedPrefixes) == 0 {
			where := base + ".allowed_prefixes"
			if !v.pos.has(where) {
				where = base
			}
			v.errAt(where, "%s: allowed_prefixes is required and must list at least one prefix, e.g. allowed_prefixes = [\"10.99.0.2/32\"]", label)
		}
		for j, s := range r.AllowedPrefixes {
			path := base + ".allowed_prefixes." + strconv.Itoa(j)
			pf, err := parseAllowedPrefix(s)
			if err != nil {
				v.errAt(path, "%s: allowed_prefixes: %v", label, err)
				continue
			}
			if msg := v.overlap(claimed, pf, i, peers, label); msg != "" {
				v.errAt(path, "%s", msg)
				continue
			}
			claimed = append(claimed, owner{prefix: pf, peer: i, path: path})
			p.AllowedPrefixes = append(p.AllowedPrefixes, pf)
		}

		if r.PublicKey != nil {
			k, err := DecodeKey(*r.PublicKey)
			if err != nil {
				// The value is not echoed: a private key pasted here by mistake
				// must not end up in logs.
				v.errAt(base+".public_key", "%s: public_key: %v", label, err)
			} else {
				p.PublicKey = &k
			}
		}

		if r.PersistentKeepalive != nil {
			d, err := parseDuration(*r.PersistentKeepalive)
			switch {
			case err != nil:
				v.errAt(base+".persistent_keepalive", "%s: persistent_keepalive = %q %v", label, *r.PersistentKeepalive, err)
			case d != 0 && (d < time.Second || d > maxKeepalive):
				v.errAt(base+".persistent_keepalive", "%s: persistent_keepalive = %q must be \"0s\" (off) or between 1s and %s", label, *r.PersistentKeepalive, maxKeepalive)
			default:
				p.PersistentKeepalive = d
			}
		}
		if r.Route != nil {
			p.Route = *r.Route
		}
		v.peerWS(r, &p, base, label)
		peers = append(peers, p)
	}
	return peers
}

// peerWS checks a peer's WebSocket keys.
func (v *validator) peerWS(r *rawPeer, p *Peer, base, label string) {
	scheme := ""
	if r.WSURL != nil && *r.WSURL != "" {
		u, err := checkWSURL(*r.WSURL)
		if err != nil {
			v.errAt(base+".ws_url", "%s: ws_url %q %v", label, u, err)
		} else {
			p.WSURL = *r.WSURL
			scheme = strings.SplitN(p.WSURL, ":", 2)[0]
		}
	}
	hasURL := r.WSURL != nil && *r.WSURL != ""
	if r.WSProxy != nil && *r.WSProxy != "" {
		shown, err := checkProxy(*r.WSProxy)
		switch {
		case err != nil:
			v.errAt(base+".ws_proxy", "%s: ws_proxy %q %v", label, shown, err)
		case !hasURL:
			v.errAt(base+".ws_proxy", "%s: ws_proxy has no use without ws_url", label)
		default:
			p.WSProxy = *r.WSProxy
		}
	}
	tlsOnly := func(key string) bool {
		switch {
		case !hasURL:
			v.errAt(base+"."+key, "%s: %s has no use without a wss:// ws_url", label, key)
		case scheme == "ws":
			v.errAt(base+"."+key, "%s: %s applies to wss:// only, and ws_url (line %d) is ws://", label, key, v.pos.line(base+".ws_url"))
		default:
			return true
		}
		return false
	}
	if r.WSCAFile != nil && *r.WSCAFile != "" {
		f := v.optionalFile(r.WSCAFile, base+".ws_ca_file", label+": ws_ca_file")
		if f != "" && tlsOnly("ws_ca_file") {
			p.WSCAFile = f
		}
	}
	if r.WSInsecure != nil && *r.WSInsecure {
		switch {
		case r.WSCAFile != nil && *r.WSCAFile != "":
			v.errAt(base+".ws_insecure", "%s: ws_insecure = true skips the certificate check that ws_ca_file (line %d) is for; keep one of them", label, v.pos.line(base+".ws_ca_file"))
		case tlsOnly("ws_insecure"):
			p.WSInsecure = true
		}
	}
}

// reachable checks that a node without UDP can still reach, or be reached by, each peer.
func (v *validator) reachable(cfg *Config, raws []rawPeer) {
	if !cfg.Interface.DisableUDP {
		return
	}
	udpLine := v.pos.line("interface.udp")
	for i := range raws {
		r := &raws[i]
		if i >= len(cfg.Peers) {
			break
		}
		p := &cfg.Peers[i]
		base := "peer." + strconv.Itoa(i)
		label := fmt.Sprintf("peer #%d", i+1)
		if p.Name != "" {
			label = fmt.Sprintf("peer %q", p.Name)
		}
		hasURL := r.WSURL != nil && *r.WSURL != ""
		switch {
		case r.Endpoint != nil && *r.Endpoint != "" && hasURL:
			v.errAt(base+".endpoint", "%s: endpoint is a UDP address, and this node has udp = false (line %d); remove it, ws_url reaches the peer", label, udpLine)
		case r.Endpoint != nil && *r.Endpoint != "":
			v.errAt(base+".endpoint", "%s: endpoint is a UDP address, and this node has udp = false (line %d), so the peer could never be reached; give it a ws_url instead", label, udpLine)
		case !hasURL && cfg.WebSocket.Listen == "":
			v.errAt(base, "%s could never be reached: this node has udp = false (line %d) and no [websocket] listen for the peer to connect to; give the peer a ws_url, or set listen", label, udpLine)
		}
	}
}

// overlap checks a new prefix against those already claimed. Prefixes of different
// peers may not overlap, except that a default route (/0) coexists with more
// specific prefixes: longest-prefix match makes that unambiguous. Within one peer,
// a prefix inside another (other than a /0) is redundant and refused.
func (v *validator) overlap(claimed []owner, pf netip.Prefix, peer int, peers []Peer, label string) string {
	for _, c := range claimed {
		if !c.prefix.Overlaps(pf) {
			continue
		}
		if c.peer == peer {
			if c.prefix == pf {
				return fmt.Sprintf("%s: allowed_prefixes: %s is listed twice (also at line %d)", label, pf, v.pos.line(c.path))
			}
			if c.prefix.Bits() == 0 || pf.Bits() == 0 {
				continue
			}
			outer, inner := c.prefix, pf
			if inner.Bits() < outer.Bits() {
				outer, inner = inner, outer
			}
			return fmt.Sprintf("%s: allowed_prefixes: %s is already covered by %s (line %d); list only %s", label, inner, outer, v.pos.line(c.path), outer)
		}
		if (c.prefix.Bits() == 0) != (pf.Bits() == 0) {
			continue
		}
		other := fmt.Sprintf("peer #%d", c.peer+1)
		if c.peer < len(peers) && peers[c.peer].Name != "" {
			other = fmt.Sprintf("peer %q", peers[c.peer].Name)
		}
		return fmt.Sprintf("%s: allowed_prefixes: %s overlaps %s of %s (line %d); a packet must have exactly one peer to go to",
			label, pf, c.prefix, other, v.pos.line(c.path))
	}
	return ""
}

func (v *validator) metrics(r *rawMetrics) Metrics {
	var m Metrics
	if r == nil || r.Listen == nil || *r.Listen == "" {
		return m
	}
	if err := checkListen(*r.Listen); err != nil {
		v.errAt("metrics.listen", "metrics: listen %q %v", *r.Listen, err)
		return m
	}
	m.Listen = *r.Listen
	return m
}

// logLevels are the levels [logging] level accepts, by name.
var logLevels = map[string]slog.Level{
	"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError,
}

func (v *validator) logging(r *rawLogging) Logging {
	l := Logging{Level: slog.LevelInfo, Format: LogText}
	if r == nil {
		return l
	}
	if r.Level != nil {
		if lv, ok := logLevels[*r.Level]; ok {
			l.Level = lv
		} else {
			v.errAt("logging.level", "logging: level = %q must be \"debug\", \"info\", \"warn\" or \"error\"", *r.Level)
		}
	}
	if r.Format != nil {
		switch f := *r.Format; f {
		case LogText, LogJSON:
			l.Format = f
		default:
			v.errAt("logging.format", "logging: format = %q must be \"text\" or \"json\"", f)
		}
	}
	return l
}

func (v *validator) advanced(r *rawAdvanced) Advanced {
	a := defaultAdvanced()
	if r == nil {
		return a
	}
	durationIn := func(s *string, key string, lo, hi time.Duration, dst *time.Duration) {
		if s == nil {
			return
		}
		d, err := parseDuration(*s)
		switch {
		case err != nil:
			v.errAt("advanced."+key, "advanced: %s = %q %v", key, *s, err)
		case d < lo || d > hi:
			v.errAt("advanced."+key, "advanced: %s = %q must be between %s and %s", key, *s, lo, hi)
		default:
			*dst = d
		}
	}
	durationIn(r.FallbackAfter, "fallback_after", minFallback, maxFallback, &a.FallbackAfter)
	durationIn(r.ProbeInterval, "probe_interval", minProbe, maxProbe, &a.ProbeInterval)
	durationIn(r.ReplayWindow, "handshake_replay_window", minReplayWindow, maxReplayWindow, &a.ReplayWindow)
	if r.RekeyAfter != nil {
		d, err := parseDuration(*r.RekeyAfter)
		switch {
		case err != nil:
			v.errAt("advanced.rekey_after", "advanced: rekey_after = %q %v", *r.RekeyAfter, err)
		case d < minRekeyAfter || d > maxRekeyAfter:
			v.errAt("advanced.rekey_after", "advanced: rekey_after = %q must be between %s and %s", *r.RekeyAfter, minRekeyAfter, maxRekeyAfter)
		default:
			a.RekeyAfter = d
		}
	}
	if r.RekeyAfterMessages != nil {
		if n := *r.RekeyAfterMessages; n < 1 {
			v.errAt("advanced.rekey_after_messages", "advanced: rekey_after_messages = %d must be at least 1", n)
		} else {
			a.RekeyAfterMessages = uint64(n)
		}
	}
	return a
}

// exitPeer checks that exit_peer names a peer that can carry a default route.
func (v *validator) exitPeer(cfg *Config) {
	name := cfg.Interface.ExitPeer
	if name == "" {
		return
	}
	idx := -1
	for i := range cfg.Peers {
		if cfg.Peers[i].Name == name {
			idx = i
			break
		}
	}
	if idx < 0 {
		v.errAt("interface.exit_peer", "interface: exit_peer %q is not the name of any [[peer]] in this file", name)
		return
	}
	p := &cfg.Peers[idx]
	hasDefault := false
	for _, pf := range p.AllowedPrefixes {
		if pf.Bits() == 0 {
			hasDefault = true
		}
	}
	base := "peer." + strconv.Itoa(idx)
	if !hasDefault {
		v.errAt("interface.exit_peer", "interface: exit_peer %q: that peer's allowed_prefixes (line %d) include neither 0.0.0.0/0 nor ::/0; add them to send all traffic through it",
			name, v.pos.line(base+".allowed_prefixes"))
	}
	if !p.Route {
		v.errAt("interface.exit_peer", "interface: exit_peer %q has route = false (line %d); an exit peer needs its routes", name, v.pos.line(base+".route"))
	}
}

// checkLinkName applies the kernel's rules for interface names.
func checkLinkName(s string) error {
	switch {
	case s == "":
		return errors.New("is empty")
	case len(s) > MaxLinkNameLen:
		return fmt.Errorf("is %d bytes long; Linux allows at most %d", len(s), MaxLinkNameLen)
	case s == "." || s == "..":
		return errors.New("is not a valid interface name")
	case strings.ContainsAny(s, "/:") || strings.ContainsFunc(s, unicode.IsSpace) || strings.ContainsFunc(s, unicode.IsControl):
		return errors.New("may not contain '/', ':', spaces or control characters")
	}
	return nil
}

// checkName applies the rules for node and peer names: they appear in the
// handshake, in logs and on command lines.
func checkName(s string) error {
	switch {
	case s == "":
		return errors.New("is empty")
	case len(s) > MaxNameLen:
		return fmt.Errorf("is %d bytes long; the limit is %d", len(s), MaxNameLen)
	case !utf8.ValidString(s):
		return errors.New("is not valid UTF-8")
	case strings.ContainsFunc(s, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }):
		return errors.New("may not contain spaces or control characters")
	}
	return nil
}

// parseAddress parses an interface address; host bits are the point here.
func parseAddress(s string) (netip.Prefix, error) {
	p, err := parsePrefix(s, "10.99.0.1/24")
	if err != nil {
		return p, err
	}
	a := p.Addr()
	switch {
	case a.IsUnspecified():
		return p, fmt.Errorf("%s is the unspecified address, not an interface address", s)
	case a.IsMulticast():
		return p, fmt.Errorf("%s is a multicast address, not an interface address", s)
	}
	return p, nil
}

// parseAllowedPrefix parses a routed prefix, which must not have host bits set.
func parseAllowedPrefix(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
			return netip.Prefix{}, fmt.Errorf("%s has no prefix length; did you mean %s?", s, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	p, err := parsePrefix(s, "10.99.0.2/32")
	if err != nil {
		return p, err
	}
	if m := p.Masked(); m != p {
		return p, fmt.Errorf("%s has host bits set; did you mean %s?", s, m)
	}
	return p, nil
}

func parsePrefix(s, example string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		return netip.Prefix{}, fmt.Errorf("%q has no prefix length; write ADDRESS/LENGTH, e.g. %s", s, example)
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, fmt.Errorf("%q is not an IP prefix; write ADDRESS/LENGTH, e.g. %s", s, example)
	}
	if p.Addr().Is4In6() {
		return p, fmt.Errorf("%q is an IPv4-mapped IPv6 prefix; write the IPv4 prefix instead", s)
	}
	return p, nil
}

// parseDuration parses a Go duration string such as "25s" or "2m", with errors
// phrased for the configuration file.
func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		if _, nerr := strconv.ParseFloat(s, 64); nerr == nil {
			return 0, fmt.Errorf("has no unit; write e.g. \"%ss\"", s)
		}
		return 0, errors.New("is not a duration; write e.g. \"25s\", \"2m\" or \"1h30m\"")
	}
	if d < 0 {
		return 0, errors.New("is negative")
	}
	return d, nil
}

// checkEndpoint accepts HOST:PORT where HOST is an IP address (IPv6 in brackets)
// or a DNS name, resolved later by the engine.
func checkEndpoint(s string) error {
	if strings.Contains(s, "://") {
		return errors.New("is a URL; write HOST:PORT, e.g. 192.0.2.2:51900")
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		if a, aerr := netip.ParseAddr(s); aerr == nil {
			if a.Is6() {
				return fmt.Errorf("has no port; IPv6 endpoints are written in brackets: [%s]:%d", a, DefaultListenPort)
			}
			return fmt.Errorf("has no port; write e.g. %s:%d", a, DefaultListenPort)
		}
		if !strings.Contains(s, ":") {
			return fmt.Errorf("has no port; write HOST:PORT, e.g. %s:%d", s, DefaultListenPort)
		}
		return errors.New("is not HOST:PORT (IPv6 addresses go in brackets: [2001:db8::1]:51900)")
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return fmt.Errorf("has port %q; want a number from 1 to 65535", port)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.IsUnspecified() || a.IsMulticast() {
			return fmt.Errorf("has address %s, which cannot be a peer's address", a)
		}
		return nil
	}
	if strings.Contains(host, ":") {
		return fmt.Errorf("has host %q, which is not an IPv6 address", host)
	}
	return checkHostName(host)
}

func checkHostName(h string) error {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return errors.New("has an empty or too long host name")
	}
	for label := range strings.SplitSeq(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("has an invalid host name %q", h)
		}
		for _, c := range []byte(label) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("has an invalid host name %q", h)
			}
		}
	}
	return nil
}

// defaultLinkName derives a link name from a config file name: "/etc/stt-tun/wg9.toml"
// gives "wg9". A base name that is not a valid link name gives DefaultName.
func defaultLinkName(path string) string {
	if path == "" {
		return DefaultName
	}
	base := strings.TrimSuffix(filepath.Base(path), ".toml")
	if base == "" || base == "." || checkLinkName(base) != nil {
		return DefaultName
	}
	return base
}

// checkListen accepts HOST:PORT for a listener: HOST empty (every address), an IP
// address or a host name; PORT 1 to 65535.
func checkListen(s string) error {
	if strings.Contains(s, "://") {
		return errors.New("is a URL; write HOST:PORT, e.g. \"0.0.0.0:8443\"")
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return errors.New("is not HOST:PORT; write e.g. \"0.0.0.0:8443\", \"[::]:8443\" or \"127.0.0.1:8080\"")
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("has port %q; want a number from 1 to 65535", port)
	}
	if host == "" {
		return nil
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.IsMulticast() {
			return fmt.Errorf("has address %s, which is multicast", a)
		}
		return nil
	}
	if strings.Contains(host, ":") {
		return fmt.Errorf("has host %q, which is not an IPv6 address", host)
	}
	return checkHostName(host)
}

// checkWSPath accepts an absolute HTTP path without query or fragment.
func checkWSPath(s string) error {
	switch {
	case !strings.HasPrefix(s, "/"):
		return errors.New("must start with /, e.g. \"/stt\"")
	case len(s) > maxWSPathLen:
		return fmt.Errorf("is %d bytes long; the limit is %d", len(s), maxWSPathLen)
	case strings.ContainsAny(s, "?#") || strings.ContainsFunc(s, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }):
		return errors.New("may not contain '?', '#', spaces or control characters")
	}
	return nil
}

// checkWSURL accepts ws://HOST[:PORT][/PATH] and wss://…; it returns the value to
// show in a message.
func checkWSURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return s, errors.New("is not a URL; write e.g. \"wss://vpn.example.net:443/stt\"")
	}
	shown := s
	if u.User != nil {
		shown = u.Redacted()
	}
	switch {
	case u.Scheme == "https" || u.Scheme == "http":
		return shown, fmt.Errorf("is an %s:// URL; WebSocket URLs start with ws:// or wss:// (the TLS form)", u.Scheme)
	case u.Scheme != "ws" && u.Scheme != "wss":
		return shown, errors.New("must start with ws:// or wss://, e.g. \"wss://vpn.example.net/stt\"")
	case u.Opaque != "" || u.Host == "" || u.Hostname() == "":
		return shown, errors.New("has no host; write e.g. \"wss://vpn.example.net/stt\"")
	case u.User != nil:
		return shown, errors.New("may not contain a user name or password")
	case u.Fragment != "" || strings.Contains(s, "#"):
		return shown, errors.New("may not contain a #fragment")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
			return shown, fmt.Errorf("has port %q; want a number from 1 to 65535", p)
		}
	}
	if a, err := netip.ParseAddr(u.Hostname()); err == nil {
		if a.IsUnspecified() || a.IsMulticast() {
			return shown, fmt.Errorf("has address %s, which cannot be a peer's address", a)
		}
		return shown, nil
	}
	if err := checkHostName(u.Hostname()); err != nil {
		return shown, err
	}
	return shown, nil
}

// checkProxy accepts "none" or http://[USER:PASSWORD@]HOST[:PORT]; it returns the
// value to show in a message, without a password.
func checkProxy(s string) (string, error) {
	if s == "none" {
		return s, nil
	}
	u, err := url.Parse(s)
	if err != nil || !strings.Contains(s, "://") {
		return s, errors.New("is not \"none\" or a proxy URL; write e.g. \"http://proxy.example.net:3128\"")
	}
	shown := u.Redacted()
	switch {
	case u.Scheme == "https":
		return shown, errors.New("is an https:// proxy; only http:// proxies are supported (the WebSocket's own TLS runs inside the CONNECT tunnel)")
	case u.Scheme != "http":
		return shown, errors.New("must be \"none\" or an http:// URL, e.g. \"http://proxy.example.net:3128\"")
	case u.Hostname() == "":
		return shown, errors.New("has no host")
	case (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "":
		return shown, errors.New("must be http://HOST:PORT, without a path")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
			return shown, fmt.Errorf("has port %q; want a number from 1 to 65535", p)
		}
	}
	if _, err := netip.ParseAddr(u.Hostname()); err == nil {
		return shown, nil
	}
	return shown, checkHostName(u.Hostname())
}
