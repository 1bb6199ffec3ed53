package ws

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// Client limits.
const (
	// DefaultDialTimeout bounds a Dial whose context has no deadline: TCP connect, proxy
	// CONNECT, TLS and WebSocket handshakes together.
	DefaultDialTimeout = 20 * time.Second
	// maxProxyResponse bounds a proxy's CONNECT response headers.
	maxProxyResponse = 16 << 10
)

// DialConfig configures Dial. Zero values select the defaults.
type DialConfig struct {
	// URL is the server's ws:// or wss:// URL, with its path, e.g. "wss://vpn.example/stt".
	URL string
	// Proxy selects the HTTP proxy: "" takes it from the environment (HTTPS_PROXY for
	// wss://, HTTP_PROXY for ws://, NO_PROXY; loopback targets are never proxied),
	// "none" connects directly, anything else is an http://[user:pass@]host:port proxy.
	// Both ws:// and wss:// go through the proxy with CONNECT.
	Proxy string
	// CAFile is a PEM file of the CAs to trust for wss:// instead of the system's.
	CAFile string
	// InsecureSkipVerify disables the certificate check; STT authenticates end to end,
	// so this only exposes the transport's disguise, not the tunnel.
	InsecureSkipVerify bool
	// ServerName overrides the TLS server name (SNI and verification); default: the
	// URL's host.
	ServerName string
	// FwMark, when not 0, is set as SO_MARK on the TCP connection (to the server or the
	// proxy) and on the DNS queries that find it, so that policy routing can keep them
	// out of a full tunnel the connection carries.
	FwMark uint32

	// Offset is where a record starts in a receive buffer.
	Offset int
	// BufSize is the size of each receive buffer (default Offset+MaxRecordLen).
	BufSize int
	// Batch is the most records per ReceiveFunc call (default DefaultBatch).
	Batch int
	// MaxMessage is the largest message read or written (default DefaultMaxMessage).
	MaxMessage int
	// SendQueue is the number of messages queued (default DefaultSendQueue).
	SendQueue int
	// PingInterval is the keepalive interval (default DefaultPingInterval; negative
	// disables).
	PingInterval time.Duration

	// Receive gets the records read from the connection. Required.
	Receive ReceiveFunc
	// Logger receives debug logs (default: discard).
	Logger *slog.Logger
}

// Dial connects to a server and returns the running connection.
func Dial(ctx context.Context, cfg DialConfig) (*Conn, error) {
	o := options{
		offset: cfg.Offset, bufSize: cfg.BufSize, batch: cfg.Batch,
		maxMessage: cfg.MaxMessage, sendQueue: cfg.SendQueue,
		pingInterval: cfg.PingInterval, recv: cfg.Receive, log: cfg.Logger,
	}
	if err := o.normalize(); err != nil {
		return nil, fmt.Errorf("ws: dial: %w", err)
	}
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("ws: dial: parse URL: %w", err)
	}
	if u.Scheme != "ws" && u.Scheme != "wss" {
		return nil, fmt.Errorf("ws: dial %s: scheme must be ws or wss", cfg.URL)
	}
	if u.Hostname() == "" {
		return nil, fmt.Errorf("ws: dial %s: no host", cfg.URL)
	}
	if u.Path == "" {
		u.Path = "/"
	}
	proxy, err := proxyFor(cfg.Proxy, u)
	if err != nil {
		return nil, fmt.Errorf("ws: dial %s: %w", cfg.URL, err)
	}

	var tlsConf *tls.Config
	if u.Scheme == "wss" {
		tlsConf = &tls.Config{
			MinVersion:         tls.VersionTLS12,
			ServerName:         cfg.ServerName,
			InsecureSkipVerify: cfg.InsecureSkipVerify, //nolint:gosec // see DialConfig: STT authenticates itself
			NextProtos:         []string{"http/1.1"},
		}
		if cfg.CAFile != "" {
			pem, err := os.ReadFile(cfg.CAFile)
			if err != nil {
				return nil, fmt.Errorf("ws: dial %s: read CA file: %w", cfg.URL, err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("ws: dial %s: no certificate in CA file %s", cfg.URL, cfg.CAFile)
			}
			tlsConf.RootCAs = pool
		}
	} else if cfg.CAFile != "" || cfg.ServerName != "" || cfg.InsecureSkipVerify {
		return nil, fmt.Errorf("ws: dial %s: TLS options given for a ws:// URL", cfg.URL)
	}

	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultDialTimeout)
		defer cancel()
	}

	var (
		corkMu sync.Mutex
		cork   *corkConn // the connection the upgrade went over, and so its peer
	)
	dialer := &net.Dialer{KeepAlive: 30 * time.Second}
	if cfg.FwMark != 0 {
		dialer.Control = markControl(cfg.FwMark)
		// The name lookups for the URL's or the proxy's host need the mark too: a full
		// tunnel would otherwise route them into the tunnel that is not up yet.
		marked := &net.Dialer{Control: dialer.Control}
		dialer.Resolver = &net.Resolver{PreferGo: true, Dial: marked.DialContext}
	}
	tr := &http.Transport{
		Proxy: nil, // proxying is done in DialContext, with CONNECT for ws:// too
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			nc, err := dialVia(ctx, dialer, proxy, addr)
			if err != nil {
				return nil, err
			}
			cc := &corkConn{Conn: nc}
			corkMu.Lock()
			cork = cc
			corkMu.Unlock()
			return cc, nil
		},
		TLSClientConfig:        tlsConf,
		TLSHandshakeTimeout:    10 * time.Second,
		MaxResponseHeaderBytes: 16 << 10,
		DisableCompression:     true,
		ForceAttemptHTTP2:      false,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	wsc, resp, err := websocket.Dial(ctx, u.String(), &websocket.DialOptions{
		HTTPClient:      client,
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("ws: dial %s: server answered %s: %w", cfg.URL, resp.Status, err)
		}
		return nil, fmt.Errorf("ws: dial %s: %w", cfg.URL, err)
	}

	corkMu.Lock()
	cc := cork
	corkMu.Unlock()
	var remote netip.AddrPort
	if cc != nil {
		remote = addrPortOf(cc.RemoteAddr())
	}
	name := u.Scheme + "://" + remote.String() + u.EscapedPath()
	if proxy != nil {
		port := u.Port()
		if port == "" {
			port = map[string]string{"ws": "80", "wss": "443"}[u.Scheme]
		}
		if ap, err := netip.ParseAddrPort(net.JoinHostPort(u.Hostname(), port)); err == nil {
			remote = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		}
		name = u.Scheme + "://" + u.Host + u.EscapedPath() + " via " + proxy.Host
	}
	c := newConn(wsc, o, nil, remote, name)
	c.cork = cc
	c.start(0)
	return c, nil
}

// addrPortOf converts a TCP address.
func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// proxyFor resolves DialConfig.Proxy for target: nil means a direct connection.
func proxyFor(spec string, target *url.URL) (*url.URL, error) {
	switch spec {
	case "none":
		return nil, nil
	case "":
		p, err := proxyFromEnv(target, os.Getenv)
		if err != nil {
			return nil, fmt.Errorf("proxy from environment: %w", err)
		}
		return p, nil
	default:
		return parseProxy(spec)
	}
}

// parseProxy parses an http://[user:pass@]host[:port] proxy; the scheme may be left out.
func parseProxy(spec string) (*url.URL, error) {
	if !strings.Contains(spec, "://") {
		spec = "http://" + spec
	}
	p, err := url.Parse(spec)
	if err != nil {
		return nil, fmt.Errorf("parse proxy: %w", err)
	}
	if p.Scheme == "https" {
		return nil, fmt.Errorf("proxy %s: TLS to the proxy is not supported; give its plain HTTP address, http://host:port (wss:// is still encrypted end to end through it)", p.Redacted())
	}
	if p.Scheme != "http" || p.Hostname() == "" {
		return nil, fmt.Errorf("proxy %s: want http://host:port", p.Redacted())
	}
	return p, nil
}

// proxyFromEnv picks the proxy for target from the environment, read through getenv on
// every call (http.ProxyFromEnvironment caches it for the process): HTTPS_PROXY for
// wss://, HTTP_PROXY for ws:// (upper case first, then lower case), except for
// loopback and "localhost" targets and those NO_PROXY matches. NO_PROXY is a comma- or
// space-separated list of "*", IP addresses, CIDR prefixes and host names, each
// optionally with ":port"; "example.com" matches that host and its subdomains,
// ".example.com" only the subdomains.
func proxyFromEnv(target *url.URL, getenv func(string) string) (*url.URL, error) {
	env := func(name string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return getenv(strings.ToLower(name))
	}
	spec := env("HTTP_PROXY")
	port := "80"
	if target.Scheme == "wss" {
		spec, port = env("HTTPS_PROXY"), "443"
	}
	if spec == "" {
		return nil, nil
	}
	if p := target.Port(); p != "" {
		port = p
	}
	host := strings.ToLower(strings.TrimSuffix(target.Hostname(), "."))
	ip, ipErr := netip.ParseAddr(host)
	ip = ip.Unmap()
	if host == "localhost" || ipErr == nil && ip.IsLoopback() {
		return nil, nil
	}
	for entry := range strings.FieldsFuncSeq(env("NO_PROXY"), func(r rune) bool { return r == ',' || r == ' ' }) {
		entry = strings.ToLower(entry)
		if entry == "*" {
			return nil, nil
		}
		if pfx, err := netip.ParsePrefix(entry); err == nil {
			if ipErr == nil && pfx.Contains(ip) {
				return nil, nil
			}
			continue
		}
		h, p := entry, ""
		if sh, sp, err := net.SplitHostPort(entry); err == nil {
			h, p = sh, sp
		}
		if p != "" && p != port {
			continue
		}
		h = strings.TrimSuffix(strings.Trim(h, "[]"), ".")
		if eip, err := netip.ParseAddr(h); err == nil {
			if ipErr == nil && eip.Unmap() == ip {
				return nil, nil
			}
			continue
		}
		if strings.HasPrefix(h, "*.") {
			h = h[1:]
		}
		if strings.HasPrefix(h, ".") {
			if strings.HasSuffix(host, h) {
				return nil, nil
			}
		} else if host == h || strings.HasSuffix(host, "."+h) {
			return nil, nil
		}
	}
	return parseProxy(spec)
}

// dialVia opens a TCP connection to addr, directly or through an HTTP proxy with
// CONNECT.
func dialVia(ctx context.Context, d *net.Dialer, proxy *url.URL, addr string) (net.Conn, error) {
	if proxy == nil {
		nc, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("connect to %s: %w", addr, err)
		}
		return nc, nil
	}
	paddr := proxy.Host
	if proxy.Port() == "" {
		paddr = net.JoinHostPort(proxy.Hostname(), "80")
	}
	nc, err := d.DialContext(ctx, "tcp", paddr)
	if err != nil {
		return nil, fmt.Errorf("connect to proxy %s: %w", paddr, err)
	}
	// Until CONNECT completes, the context's end closes the connection.
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	c, err := connect(nc, proxy, addr)
	if !stop() {
		err = errors.Join(err, ctx.Err())
	}
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("proxy %s: %w", paddr, err)
	}
	return c, nil
}

// connect asks the proxy on nc to open a tunnel to addr.
func connect(nc net.Conn, proxy *url.URL, addr string) (net.Conn, error) {
	req := &http.Request{
		Method: http.MethodConnect,
		URL:    &url.URL{Opaque: addr},
		Host:   addr,
		Header: make(http.Header),
	}
	if u := proxy.User; u != nil {
		pass, _ := u.Password()
		req.Header.Set("Proxy-Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(u.Username()+":"+pass)))
	}
	if err := req.Write(nc); err != nil {
		return nil, fmt.Errorf("send CONNECT %s: %w", addr, err)
	}
	br := bufio.NewReader(io.LimitReader(nc, maxProxyResponse))
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return nil, fmt.Errorf("read CONNECT %s response: %w", addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("CONNECT %s: %s", addr, resp.Status)
	}
	if n := br.Buffered(); n > 0 {
		// The server spoke first; keep what the proxy's response read ahead.
		b, _ := br.Peek(n)
		return &prefixConn{Conn: nc, prefix: append([]byte(nil), b...)}, nil
	}
	return nc, nil
}

// prefixConn replays bytes read ahead before reading from its connection.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}
