// Package config reads stt-tun's configuration: a strict TOML file describing the
// interface and its peers (see docs/configuration.md), and the seed and key files it
// names. Every problem in a configuration file is reported as FILE:LINE: message, and
// unknown keys are errors rather than silently ignored.
package config

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/stt-tun/stt-tun/stt/wire"
)

// Defaults and limits that the configuration reference documents.
const (
	// DefaultDir holds configuration files named by bare interface name, as
	// /etc/wireguard does for wg-quick.
	DefaultDir = "/etc/stt-tun"

	// DefaultName is the link name used when [interface] sets none.
	DefaultName = "stt0"

	// DefaultMTU is the largest inner packet that, once framed and sealed, still fits
	// a 1500-byte underlay path carried over IPv6: 1500 - 40 (IPv6) - 8 (UDP) - wire.Overhead.
	DefaultMTU = 1500 - 40 - 8 - wire.Overhead

	// MinMTU is the smallest MTU accepted when the interface has an IPv6 address;
	// IPv6 requires every link to carry 1280-byte packets.
	MinMTU = 1280

	// MinMTUIPv4 is the smallest MTU accepted when the interface has IPv4 addresses only.
	MinMTUIPv4 = 576

	// MaxMTU is the largest inner packet whose sealed frame still fits one UDP
	// datagram over IPv4: 65535 - 20 (IPv4) - 8 (UDP) - wire.Overhead.
	MaxMTU = 65535 - 20 - 8 - wire.Overhead

	// DefaultListenPort is the UDP port a node listens on when listen_port is absent.
	DefaultListenPort = 51900

	// DefaultFwMark marks the tunnel's own underlay packets so that a full-tunnel
	// route does not capture them ("ST" in ASCII).
	DefaultFwMark = 0x5354

	// DefaultTable is the routing table that holds the default routes of a full tunnel.
	DefaultTable = 5354

	// DefaultRekeyAfter is the session age after which a new handshake starts.
	DefaultRekeyAfter = 120 * time.Second

	// DefaultRekeyAfterMessages is the number of messages sent under one session key
	// after which a new handshake starts.
	DefaultRekeyAfterMessages = 1 << 32

	// DefaultWSPath is the HTTP path of the WebSocket listener when [websocket] sets none.
	DefaultWSPath = "/stt"
	// DefaultWSMaxPending is the most TCP connections the WebSocket listener holds that
	// have not upgraded yet.
	DefaultWSMaxPending = 512
	// DefaultWSMaxPendingPerSource is the most of them from one IPv4 address or IPv6 /64.
	DefaultWSMaxPendingPerSource = 32
	// MaxWSPending is the largest max_pending accepted.
	MaxWSPending = 65535

	// DefaultFallbackAfter is how long UDP may go unanswered before a peer's traffic
	// moves to WebSocket.
	DefaultFallbackAfter = 3 * time.Second

	// DefaultPMTUReprobe is how often a peer's path, its MTU found, is probed for a
	// larger one ([advanced] pmtu_reprobe_interval).
	DefaultPMTUReprobe = 10 * time.Minute

	// DefaultProbeInterval is how often UDP is probed while a peer's traffic is on
	// WebSocket; an answer moves it back.
	DefaultProbeInterval = 10 * time.Second

	// DefaultReplayWindow is how long a responder remembers the HELLOs it has seen, and
	// how far a HELLO's timestamp may be from its clock to count as fresh
	// (docs/protocol.md 4.5).
	DefaultReplayWindow = 180 * time.Second

	// MaxNameLen is the longest node_name or peer name, in bytes.
	MaxNameLen = 32

	// MaxLinkNameLen is the longest interface name Linux accepts (IFNAMSIZ - 1).
	MaxLinkNameLen = 15
)

// Config is a parsed and validated configuration file, with every default filled in.
type Config struct {
	// Path is the file the configuration was read from; relative seed and key paths
	// have already been resolved against its directory.
	Path string

	// Interface is the [interface] section.
	Interface Interface
	// WebSocket is the [websocket] section.
	WebSocket WebSocket
	// Forwarding is the [forwarding] section.
	Forwarding Forwarding
	// Discovery is the [discovery] section; Discovery.Enabled says whether it is there.
	Discovery Discovery
	// Membership is the [membership] section: the admin keys this node obeys.
	Membership Membership
	// Peers are the [[peer]] sections, in file order.
	Peers []Peer
	// Metrics is the [metrics] section.
	Metrics Metrics
	// Logging is the [logging] section.
	Logging Logging
	// Advanced is the [advanced] section.
	Advanced Advanced
}

// Interface is the [interface] section: the local link and this node's identity.
type Interface struct {
	// Name is the link name, such as "stt0".
	Name string
	// NodeName is the name this node announces in the handshake.
	NodeName string
	// Addresses are the link's addresses; host bits are kept (10.99.0.1/24).
	Addresses []netip.Prefix
	// MTU is the link MTU.
	MTU int
	// ListenPort is the UDP port to listen on; 0 picks a random port. It is 0
	// when UDP is off.
	ListenPort int
	// DisableUDP keeps the node off UDP entirely (udp = false): it reaches its peers
	// and is reached over WebSocket only. The zero value uses UDP.
	DisableUDP bool
	// SeedFile is the path of the network seed file, resolved against the
	// configuration file's directory if it was relative.
	SeedFile string
	// KeyFile is the path of this node's private key, created on first start.
	KeyFile string
	// ExitPeer names the peer that carries all traffic, or is empty.
	ExitPeer string
	// FwMark marks the tunnel's own underlay packets for policy routing.
	FwMark uint32
	// Table is the routing table used for the full-tunnel default routes.
	Table int
	// KillSwitch, with ExitPeer, blocks the traffic of the full tunnel while the
	// tunnel is gone (the daemon was killed) instead of letting it out through the
	// uplink, until `stt-tun down`. The default is true; it has no effect without
	// ExitPeer.
	KillSwitch bool
	// MSSClamp lowers the MSS option of TCP SYNs through the tunnel, both ways, to
	// what the peer's path carries (Peer.PathMTU). The default is true; a reload
	// changes it.
	MSSClamp bool
}

// WebSocket is the [websocket] section: the listener peers reach this node on when
// UDP does not get through.
type WebSocket struct {
	// Listen is the TCP address HOST:PORT of the listener, or empty for none.
	Listen string
	// Path is the HTTP path that upgrades to WebSocket.
	Path string
	// TLSCert and TLSKey, both set or both empty, make the listener speak wss://.
	// Relative paths have been resolved against the configuration file's directory.
	TLSCert, TLSKey string
	// MaxPending bounds the TCP connections accepted and not yet upgraded;
	// MaxPendingPerSource bounds them per IPv4 address or IPv6 /64.
	MaxPending, MaxPendingPerSource int
	// PublicURL is the ws:// or wss:// URL this node announces in its member record
	// for reaching its listener (through a reverse proxy, say), or empty. It needs
	// Listen and [discovery].
	PublicURL string
}

// Forwarding is the [forwarding] section: whether this node forwards packets for
// its peers, as an exit node or subnet router.
type Forwarding struct {
	// Enabled turns on IP forwarding for traffic arriving from peers.
	Enabled bool
	// Masquerade source-NATs forwarded traffic to the address of the outgoing interface.
	Masquerade bool
}

// Peer is one [[peer]] section.
type Peer struct {
	// Name identifies the peer in the handshake, the CLI and logs.
	Name string
	// Endpoint is the peer's underlay address as HOST:PORT, or empty if the peer
	// is only reached when it connects first. Host names are resolved later.
	Endpoint string
	// AllowedPrefixes are the inner prefixes routed to this peer and accepted as
	// source addresses from it. They are masked (no host bits).
	AllowedPrefixes []netip.Prefix
	// PublicKey, when set, is the only static key accepted for this peer.
	PublicKey *[32]byte
	// PersistentKeepalive is the keepalive interval; 0 turns keepalives off.
	PersistentKeepalive time.Duration
	// Route says whether routes for AllowedPrefixes are installed.
	Route bool
	// WSURL is the peer's ws:// or wss:// URL, or empty: the way to the peer when UDP
	// fails, or the only way when Endpoint is empty.
	WSURL string
	// WSProxy is "" (the proxy from HTTPS_PROXY, HTTP_PROXY and NO_PROXY), "none"
	// (direct), or an http:// proxy URL.
	WSProxy string
	// WSCAFile is a PEM file of the CAs trusted for a wss:// WSURL instead of the
	// system's, resolved against the configuration file's directory.
	WSCAFile string
	// WSInsecure skips the certificate check of a wss:// WSURL.
	WSInsecure bool
}

// Metrics is the [metrics] section: the Prometheus endpoint, off by default.
type Metrics struct {
	// Listen is the TCP address HOST:PORT that serves /metrics, or empty for none.
	Listen string
}

// Logging is the [logging] section: what the daemon logs, and in which form. The zero
// value logs at info level as text.
type Logging struct {
	// Level is the least severe level logged: slog.LevelDebug, LevelInfo, LevelWarn or
	// LevelError. Peer addresses appear at debug level only.
	Level slog.Level
	// Format is "text" (logfmt-style key=value lines, slog's TextHandler) or "json"
	// (one JSON object per line, slog's JSONHandler).
	Format string
}

// Log formats of [logging] format.
const (
	LogText = "text"
	LogJSON = "json"
)

// Advanced is the [advanced] section: knobs for tests and experts.
type Advanced struct {
	// RekeyAfter is the session age after which a new handshake starts.
	RekeyAfter time.Duration
	// RekeyAfterMessages is the message count after which a new handshake starts.
	RekeyAfterMessages uint64
	// FallbackAfter is how long UDP may go unanswered before traffic moves to WebSocket.
	FallbackAfter time.Duration
	// ProbeInterval is how often UDP is probed while traffic is on WebSocket.
	ProbeInterval time.Duration
	// ReplayWindow is how long the responder remembers HELLOs (docs/protocol.md 4.5).
	ReplayWindow time.Duration
	// PMTUDiscovery turns path MTU discovery on (default) or off (docs/protocol.md 6.3).
	PMTUDiscovery bool
	// PMTUReprobe is how often a path whose MTU was found is probed upward again.
	PMTUReprobe time.Duration
}

// Peer returns the peer with the given name, or nil.
func (c *Config) Peer(name string) *Peer {
	for i := range c.Peers {
		if c.Peers[i].Name == name {
			return &c.Peers[i]
		}
	}
	return nil
}

// ResolvePath turns the argument of `stt-tun up` into a file path. A bare name such
// as "alpha" (no slash, no .toml suffix) means DefaultDir/alpha.toml, like wg-quick;
// anything else is taken as a path.
func ResolvePath(nameOrFile string) string {
	if nameOrFile == "" || strings.ContainsRune(nameOrFile, '/') || strings.HasSuffix(nameOrFile, ".toml") ||
		nameOrFile == "." || nameOrFile == ".." {
		return nameOrFile
	}
	return filepath.Join(DefaultDir, nameOrFile+".toml")
}

// Load reads and parses the configuration file at path. Error messages name the
// file as given; Config.Path is made absolute so that a daemon that changes its
// working directory still finds the seed and key files. Unlike Parse, Load also checks
// that the files named by tls_cert, tls_key and ws_ca_file exist.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("read config %s: %w", path, err)
	}
	cfg, err := parse(data, path, filepath.Dir(abs), true)
	if err != nil {
		return nil, err
	}
	cfg.Path = abs
	return cfg, nil
}

// Parse parses and validates a configuration document. path names the document in
// error messages and anchors relative file paths; neither it nor the files named in
// the document are read.
func Parse(data []byte, path string) (*Config, error) {
	return parse(data, path, filepath.Dir(path), false)
}

// defaultNodeName is the host name cut to MaxNameLen bytes without splitting a
// character, or "stt-tun" when the host name is unusable.
func defaultNodeName() string {
	h, err := os.Hostname()
	if err != nil {
		return "stt-tun"
	}
	h = truncateUTF8(h, MaxNameLen)
	if checkName(h) != nil {
		return "stt-tun"
	}
	return h
}

// truncateUTF8 cuts s to at most n bytes at a character boundary.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
