//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/big"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/internal/nslab"
)

// The WebSocket tests: the tunnel where UDP does not get through, over ws:// and wss://,
// directly, behind nginx and through tinyproxy, and the switch from UDP to WebSocket
// and back in the middle of a TCP transfer. UDP is blocked with nftables inside the
// namespaces the tests own.

const (
	// wsListenB is beta's WebSocket listener on the underlay.
	wsListenB = "10.231.0.2:8443"
	wsURLB    = "ws://" + wsListenB + "/stt"
	// fallbackAfter and probeInterval are short, so that the tests switch quickly.
	fallbackAfter = 2 * time.Second
	probeInterval = 3 * time.Second
)

// blockUDP drops every UDP packet that enters or leaves dev in ns, with an nftables
// table of its own (inet sttblock), until the returned function or the test's cleanup
// deletes the table. The drop rules count what they drop; see droppedUDP.
func blockUDP(t *testing.T, ns *nslab.NS, dev string) (unblock func()) {
	t.Helper()
	script := fmt.Sprintf(`table inet sttblock {
	chain in {
		type filter hook input priority filter; policy accept;
		iifname %q meta l4proto udp counter drop
	}
	chain out {
		type filter hook output priority filter; policy accept;
		oifname %q meta l4proto udp counter drop
	}
}
`, dev, dev)
	file := filepath.Join(t.TempDir(), "block.nft")
	if err := os.WriteFile(file, []byte(script), 0o600); err != nil {
		t.Fatal(err)
	}
	mustIn(t, ns, "nft", "-f", file)
	var once sync.Once
	unblock = func() {
		once.Do(func() {
			if r := runIn(ns, "nft", "delete", "table", "inet", "sttblock"); r.err != nil {
				t.Errorf("delete nftables table sttblock in %s: %v: %s", ns, r.err, r.stderr)
			}
		})
	}
	t.Cleanup(unblock)
	return unblock
}

var nftCounterRE = regexp.MustCompile(`counter packets (\d+)`)

// droppedUDP is the number of packets blockUDP's rules dropped in ns so far.
func droppedUDP(t *testing.T, ns *nslab.NS) int {
	t.Helper()
	n := 0
	for _, m := range nftCounterRE.FindAllStringSubmatch(mustIn(t, ns, "nft", "list", "table", "inet", "sttblock"), -1) {
		k, _ := strconv.Atoi(m[1])
		n += k
	}
	return n
}

// peerPath is the path and endpoint `status --json` shows for n's peer.
func peerPath(t *testing.T, n *node, peer string) (path, endpoint string) {
	t.Helper()
	p := n.mustStatus().peer(t, peer)
	return p.Path, p.Endpoint
}

// waitPath polls n's status until its peer is on path want, for at most bound, and
// returns how long that took.
func waitPath(t *testing.T, n *node, peer, want string, bound time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	var got, ep string
	if err := nslab.WaitFor(ctx, func() bool {
		got, ep = peerPath(t, n, peer)
		return got == want
	}); err != nil {
		t.Fatalf("%s: peer %s on path %q (%s) after %v, want %q", n.name, peer, got, ep, bound, want)
	}
	return time.Since(start)
}

// checkPath fails the test unless n's peer is on path want with an endpoint that
// starts with epPrefix.
func checkPath(t *testing.T, n *node, peer, want, epPrefix string) {
	t.Helper()
	path, ep := peerPath(t, n, peer)
	if path != want || !strings.HasPrefix(ep, epPrefix) {
		t.Errorf("%s: peer %s on path %q endpoint %q; want %q with an endpoint starting %q", n.name, peer, path, ep, want, epPrefix)
	}
}

// selfSigned writes a self-signed certificate for the given IP addresses and its key
// into dir, and returns their paths. The certificate is its own CA, so it can be a
// peer's ws_ca_file.
func selfSigned(t *testing.T, dir string, ips ...string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "stt-tun e2e"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	for _, s := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(s))
	}
	der, err := x509.CreateCertificate(crand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	writeSecret(t, keyFile, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})))
	return certFile, keyFile
}

// waitListening waits until a TCP connection from ns to addr succeeds, failing the
// test if proc exits first.
func waitListening(t *testing.T, ns *nslab.NS, addr string, proc *nslab.Proc) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	exited := false
	err := nslab.WaitFor(ctx, func() bool {
		select {
		case <-proc.Done():
			exited = true
			return true
		default:
		}
		dctx, dcancel := context.WithTimeout(ctx, time.Second)
		defer dcancel()
		c, err := ns.Dial(dctx, "tcp", addr)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	if exited {
		t.Fatalf("process %d exited while starting: %v\n%s", proc.PID(), proc.Wait(), proc.Output())
	}
	if err != nil {
		t.Fatalf("nothing listens on %s in %s after %v:\n%s", addr, ns, readyTimeout, proc.Output())
	}
}

// stream is a TCP transfer from one namespace to another that runs, paced, until it is
// told to stop, so that a test can change the network under it.
type stream struct {
	sent, received atomic.Int64
	stop           chan struct{}
	stopOnce       sync.Once
	cancel         context.CancelFunc // closes both connections at once
	done           chan struct{}
	res            nslab.TransferResult
	err            error
}

// startStream connects from src to a listener in dst on host and sends random bytes
// at about rate bytes per second until finish.
func startStream(t *testing.T, src, dst *nslab.NS, host string, rate int64) *stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	ln, err := dst.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		cancel()
		t.Fatalf("listen in %s: %v", dst, err)
	}
	s := &stream{stop: make(chan struct{}), done: make(chan struct{}), cancel: cancel}
	type recv struct {
		n   int64
		sum [sha256.Size]byte
		err error
	}
	got := make(chan recv, 1)
	go func() {
		var r recv
		defer func() { got <- r }()
		defer ln.Close()
		c, err := ln.Accept()
		if err != nil {
			r.err = fmt.Errorf("accept: %w", err)
			return
		}
		defer c.Close()
		stop := context.AfterFunc(ctx, func() { c.Close() })
		defer stop()
		h := sha256.New()
		r.n, r.err = io.Copy(countingWriter{h, &s.received}, c)
		h.Sum(r.sum[:0])
	}()
	c, err := src.Dial(ctx, "tcp", ln.Addr().String())
	if err != nil {
		cancel()
		ln.Close()
		<-got
		t.Fatalf("connect from %s to %s: %v", src, ln.Addr(), err)
	}
	go func() {
		defer close(s.done)
		defer cancel()
		stopConn := context.AfterFunc(ctx, func() { c.Close() })
		defer stopConn()
		h := sha256.New()
		var seed [32]byte
		crand.Read(seed[:])
		rng := rand.NewChaCha8(seed)
		chunk := make([]byte, 32<<10)
		start := time.Now()
		var sendErr error
		// sleep waits for d and reports whether to go on sending.
		sleep := func(d time.Duration) bool {
			select {
			case <-s.stop:
				return false
			case <-ctx.Done():
				return false
			default:
			}
			if d <= 0 {
				return true
			}
			select {
			case <-s.stop:
				return false
			case <-ctx.Done():
				return false
			case <-time.After(d):
				return true
			}
		}
		for {
			if !sleep(0) {
				break
			}
			due := time.Duration(float64(s.sent.Load()) / float64(rate) * float64(time.Second))
			if ahead := due - time.Since(start); ahead > 0 {
				if !sleep(min(ahead, 50*time.Millisecond)) {
					break
				}
				continue
			}
			rng.Read(chunk)
			n, err := c.Write(chunk)
			h.Write(chunk[:n])
			s.sent.Add(int64(n))
			if err != nil {
				sendErr = fmt.Errorf("send after %d bytes: %w", s.sent.Load(), err)
				break
			}
		}
		if sendErr == nil {
			if err := c.(*net.TCPConn).CloseWrite(); err != nil {
				sendErr = fmt.Errorf("close write: %w", err)
			}
		} else {
			c.Close()
		}
		r := <-got
		c.Close()
		s.res.SentBytes = s.sent.Load()
		h.Sum(s.res.SentSHA256[:0])
		s.res.ReceivedBytes, s.res.ReceivedSHA256 = r.n, r.sum
		s.err = errors.Join(sendErr, r.err)
	}()
	// A test that fails half-way must not wait for a transfer stuck on a dead path.
	t.Cleanup(func() {
		s.cancel()
		<-s.done
	})
	return s
}

// finish stops sending and waits for everything sent to arrive.
func (s *stream) finish(t *testing.T) nslab.TransferResult {
	t.Helper()
	s.stopOnce.Do(func() { close(s.stop) })
	select {
	case <-s.done:
	case <-time.After(time.Minute):
		t.Fatalf("transfer did not finish within a minute of the end of sending (sent %d, received %d)", s.sent.Load(), s.received.Load())
	}
	if s.err != nil {
		t.Fatalf("transfer broke: %v (%v)", s.err, s.res)
	}
	if !s.res.OK() {
		t.Fatalf("transfer corrupted: %v", s.res)
	}
	return s.res
}

// waitReceived waits until the receiver has at least n bytes, while the stream runs.
func (s *stream) waitReceived(t *testing.T, n int64, bound time.Duration, what string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	if err := nslab.WaitFor(ctx, func() bool {
		select {
		case <-s.done:
			return true
		default:
		}
		return s.received.Load() >= n
	}); err != nil || s.received.Load() < n {
		t.Fatalf("%s: received %d bytes, want %d within %v (sent %d; transfer error: %v)", what, s.received.Load(), n, bound, s.sent.Load(), s.err)
	}
}

type countingWriter struct {
	h hash.Hash
	n *atomic.Int64
}

func (w countingWriter) Write(p []byte) (int, error) {
	w.n.Add(int64(len(p)))
	return w.h.Write(p)
}

// TestWebSocketUDPBlocked: UDP between the nodes is dropped from the start, so alpha's
// handshake over UDP goes unanswered and it moves to beta's ws:// listener by itself; a
// 20 MB transfer arrives intact, both sides show path ws, and garbage sent to the
// listener is turned away without disturbing the tunnel.
func TestWebSocketUDPBlocked(t *testing.T) {
	t.Parallel()
	lab := newLab(t)
	nsA, nsB := lab.NS("a"), lab.NS("b")
	_, devB := lab.Link(nsA, underA, nsB, underB)
	a, b := newNode(t, nsA, "alpha"), newNode(t, nsB, "beta")
	seed := seedFile(t)
	blockUDP(t, nsB, devB)

	a.writeConfig(nodeConf{addresses: tunA, seedFile: seed, fallbackAfter: fallbackAfter.String(), peers: []peerConf{
		{name: "beta", endpoint: endpointB, wsURL: wsURLB, allowed: allowB},
	}})
	b.writeConfig(nodeConf{addresses: tunB, seedFile: seed, ws: wsConf{listen: wsListenB}, peers: []peerConf{
		{name: "alpha", allowed: allowA},
	}})
	b.startForeground()
	a.startForeground()

	start := time.Now()
	waitPing(t, a.ns, "10.99.0.2")
	t.Logf("first ping through the tunnel %v after start, UDP blocked", time.Since(start).Round(time.Millisecond))
	waitPing(t, b.ns, "10.99.0.1")
	if n := droppedUDP(t, nsB); n == 0 {
		t.Errorf("the nftables rules dropped no UDP: alpha never tried UDP, so the fallback was not tested")
	}
	transfer(t, a.ns, b.ns, "10.99.0.2", 20<<20)
	checkPath(t, a, "beta", "ws", wsListenB)
	checkPath(t, b, "alpha", "ws", "10.231.0.1:")

	hostileWebSocket(t, a.ns, wsListenB)
	waitPing(t, a.ns, "10.99.0.2")
	transfer(t, b.ns, a.ns, "10.99.0.1", 2<<20)
	checkPath(t, a, "beta", "ws", wsListenB)
}

// hostileWebSocket sends what is not STT-over-WebSocket to the listener at addr and
// checks that each connection is answered with an error or closed: garbage bytes, plain
// HTTP, a wrong path, and upgraded connections carrying a zero-length record and a
// record that runs past its message.
func hostileWebSocket(t *testing.T, ns *nslab.NS, addr string) {
	t.Helper()
	dial := func() net.Conn {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := ns.Dial(ctx, "tcp", addr)
		if err != nil {
			t.Fatalf("connect to the WebSocket listener %s: %v", addr, err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		return c
	}
	// expectClosed reads until the server closes; what it sent first must start with
	// wantPrefix.
	expectClosed := func(c net.Conn, what, wantPrefix string) {
		t.Helper()
		defer c.Close()
		got, err := io.ReadAll(c)
		if err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
			t.Errorf("%s: the listener did not close the connection: %v (read %q)", what, err, got)
			return
		}
		if !strings.HasPrefix(string(got), wantPrefix) {
			t.Errorf("%s: the listener answered %.60q, want it to start with %q", what, got, wantPrefix)
		}
	}

	c := dial()
	junk := make([]byte, 4096)
	crand.Read(junk)
	c.Write(append(junk, "\r\n\r\n"...))
	expectClosed(c, "garbage bytes", "HTTP/1.1 400")

	c = dial()
	fmt.Fprintf(c, "GET /stt HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", addr)
	expectClosed(c, "GET without upgrade", "HTTP/1.1 426")

	c = dial()
	fmt.Fprintf(c, "GET /admin HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", addr)
	expectClosed(c, "wrong path", "HTTP/1.1 404")

	for _, rec := range []struct {
		what    string
		payload []byte
	}{
		{"zero-length record", []byte{0, 0}},
		{"record past its message", append([]byte{0xff, 0xff}, make([]byte, 10)...)},
	} {
		c := dial()
		fmt.Fprintf(c, "GET /stt HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
			"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", addr)
		br := bufio.NewReader(c)
		status, err := br.ReadString('\n')
		if err != nil || !strings.HasPrefix(status, "HTTP/1.1 101") {
			t.Fatalf("%s: upgrade answered %q, %v", rec.what, status, err)
		}
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("%s: upgrade response: %v", rec.what, err)
			}
			if l == "\r\n" {
				break
			}
		}
		c.Write(maskedBinaryFrame(rec.payload))
		// The server's close frame, then the end of the connection.
		if _, err := io.ReadAll(br); err != nil && !strings.Contains(err.Error(), "reset") {
			t.Errorf("%s: the listener did not close the connection: %v", rec.what, err)
		}
		c.Close()
	}
}

// maskedBinaryFrame is one client-to-server WebSocket binary frame (RFC 6455 5.2).
func maskedBinaryFrame(payload []byte) []byte {
	f := []byte{0x82}
	switch n := len(payload); {
	case n < 126:
		f = append(f, 0x80|byte(n))
	default:
		f = append(f, 0x80|126)
		f = append(f, byte(n>>8), byte(n))
	}
	var mask [4]byte
	crand.Read(mask[:])
	f = append(f, mask[:]...)
	for i, b := range payload {
		f = append(f, b^mask[i%4])
	}
	return f
}

// TestWebSocketFallbackMidTransfer: a TCP transfer runs through the tunnel over UDP;
// UDP is then dropped, the session moves to WebSocket within a few seconds and the
// transfer carries on; UDP is let through again, the transfer still running, and both
// sides return to it within a probe interval (plus FallbackAfter, for slack) and stay.
// The transfer arrives intact (no reset, same SHA-256) and the session is the same
// throughout (no new handshake).
func TestWebSocketFallbackMidTransfer(t *testing.T) {
	t.Parallel()
	lab := newLab(t)
	nsA, nsB := lab.NS("a"), lab.NS("b")
	_, devB := lab.Link(nsA, underA, nsB, underB)
	a, b := newNode(t, nsA, "alpha"), newNode(t, nsB, "beta")
	seed := seedFile(t)
	fa, pi := fallbackAfter.String(), probeInterval.String()
	a.writeConfig(nodeConf{addresses: tunA, seedFile: seed, fallbackAfter: fa, probeInterval: pi, peers: []peerConf{
		{name: "beta", endpoint: endpointB, wsURL: wsURLB, allowed: allowB},
	}})
	b.writeConfig(nodeConf{addresses: tunB, seedFile: seed, fallbackAfter: fa, probeInterval: pi,
		ws: wsConf{listen: wsListenB}, peers: []peerConf{{name: "alpha", allowed: allowA}}})
	b.startForeground()
	a.startForeground()
	waitPing(t, a.ns, "10.99.0.2")
	checkPath(t, a, "beta", "udp", endpointB)
	checkPath(t, b, "alpha", "udp", "10.231.0.1:")
	handshake := a.mustStatus().peer(t, "beta").LastHandshake

	// Paced, so that it lasts through both moves: some 60 MB in 8 to 10 seconds.
	const (
		rate  = 8 << 20  // bytes per second
		phase = 12 << 20 // bytes that must arrive on each path
	)
	x := startStream(t, a.ns, b.ns, "10.99.0.2", rate)
	x.waitReceived(t, phase, 30*time.Second, "before blocking UDP")

	unblock := blockUDP(t, nsB, devB)
	blocked := time.Now()
	mark := x.received.Load()
	d := waitPath(t, a, "beta", "ws", fallbackAfter+15*time.Second)
	waitPath(t, b, "alpha", "ws", 10*time.Second)
	t.Logf("UDP blocked: alpha on WebSocket after %v, beta follows %v later", d.Round(time.Millisecond), (time.Since(blocked) - d).Round(time.Millisecond))
	x.waitReceived(t, mark+phase, 30*time.Second, "over WebSocket")
	if droppedUDP(t, nsB) == 0 {
		t.Error("the nftables rules dropped no UDP during the transfer")
	}

	// UDP comes back with the transfer running: alpha's next probe is answered over UDP
	// within a probe interval, and beta follows alpha's traffic. Frames queued on the
	// WebSocket before the return keep arriving after it and must not move either side
	// back (docs/protocol.md, section 9).
	unblock()
	unblocked := time.Now()
	bound := probeInterval + fallbackAfter
	d = waitPath(t, a, "beta", "udp", bound)
	waitPath(t, b, "alpha", "udp", max(bound-time.Since(unblocked), 0))
	t.Logf("UDP unblocked: alpha back on UDP after %v, beta after %v (probe interval %v)",
		d.Round(time.Millisecond), time.Since(unblocked).Round(time.Millisecond), probeInterval)
	mark = x.received.Load()
	x.waitReceived(t, mark+phase, 30*time.Second, "back over UDP")
	checkPath(t, a, "beta", "udp", endpointB)
	checkPath(t, b, "alpha", "udp", "10.231.0.1:")

	res := x.finish(t)
	t.Logf("transfer across both switches: %d bytes, sha256 %x ok", res.ReceivedBytes, res.ReceivedSHA256[:8])
	checkPath(t, a, "beta", "udp", endpointB)
	if h := a.mustStatus().peer(t, "beta").LastHandshake; !h.Equal(handshake) {
		t.Errorf("alpha's last handshake with beta went from %v to %v: the session did not survive the moves", handshake, h)
	}
}

// nginxConf is nginx's configuration for a TLS-terminating reverse proxy in front of a
// node's ws:// listener, as docs/configuration.md shows it. master_process off keeps
// nginx in one process, the one the lab started and stops.
const nginxConf = `daemon off;
master_process off;
pid {{dir}}/nginx.pid;
error_log stderr info;
events { worker_connections 64; }
http {
	access_log {{dir}}/access.log;
	client_body_temp_path {{dir}}/client_body;
	proxy_temp_path {{dir}}/proxy;
	fastcgi_temp_path {{dir}}/fastcgi;
	uwsgi_temp_path {{dir}}/uwsgi;
	scgi_temp_path {{dir}}/scgi;
	server {
		listen {{listen}} ssl;
		ssl_certificate {{cert}};
		ssl_certificate_key {{key}};
		location = /stt {
			proxy_pass http://{{upstream}};
			proxy_http_version 1.1;
			proxy_set_header Upgrade $http_upgrade;
			proxy_set_header Connection "upgrade";
			proxy_set_header Host $host;
			proxy_read_timeout 300s;
			proxy_send_timeout 300s;
			proxy_buffering off;
		}
	}
}
`

// TestWebSocketBehindNginx: beta's node listens with plain ws:// on loopback behind a
// real nginx that terminates TLS with a certificate made by the test; UDP is blocked,
// and alpha reaches beta at wss://…:8443 trusting that certificate (ws_ca_file).
func TestWebSocketBehindNginx(t *testing.T) {
	t.Parallel()
	nginx := lookTool(t, "nginx")
	lab := newLab(t)
	nsA, nsB := lab.NS("a"), lab.NS("b")
	_, devB := lab.Link(nsA, underA, nsB, underB)
	a, b := newNode(t, nsA, "alpha"), newNode(t, nsB, "beta")
	seed := seedFile(t)
	blockUDP(t, nsB, devB)

	dir := t.TempDir()
	cert, key := selfSigned(t, dir, "10.231.0.2")
	conf := strings.NewReplacer("{{dir}}", dir, "{{listen}}", wsListenB, "{{cert}}", cert, "{{key}}", key,
		"{{upstream}}", "127.0.0.1:8080").Replace(nginxConf)
	confFile := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	proc := nsB.Start(nginx, "-e", "stderr", "-p", dir, "-c", confFile)
	waitListening(t, nsA, wsListenB, proc)

	a.writeConfig(nodeConf{addresses: tunA, seedFile: seed, fallbackAfter: fallbackAfter.String(), peers: []peerConf{
		{name: "beta", endpoint: endpointB, wsURL: "wss://" + wsListenB + "/stt", wsCAFile: cert, allowed: allowB},
	}})
	b.writeConfig(nodeConf{addresses: tunB, seedFile: seed, ws: wsConf{listen: "127.0.0.1:8080", path: "/stt"}, peers: []peerConf{
		{name: "alpha", allowed: allowA},
	}})
	b.startForeground()
	a.startForeground()
	waitPing(t, a.ns, "10.99.0.2")
	waitPing(t, b.ns, "10.99.0.1")
	transfer(t, a.ns, b.ns, "10.99.0.2", 8<<20)
	transfer(t, b.ns, a.ns, "10.99.0.1", 2<<20)
	checkPath(t, a, "beta", "ws", wsListenB)
	// beta sees alpha coming from nginx, on loopback.
	checkPath(t, b, "alpha", "ws", "127.0.0.1:")
	select {
	case <-proc.Done():
		t.Fatalf("nginx exited: %v\n%s", proc.Wait(), proc.Output())
	default:
	}
}

// TestWebSocketThroughHTTPProxy: alpha has no UDP at all (udp = false) and no route to
// beta; it can reach only a tinyproxy in a middle namespace, which can reach beta. alpha
// reaches beta's own wss:// listener (self-signed, ws_insecure) with CONNECT through the
// proxy.
func TestWebSocketThroughHTTPProxy(t *testing.T) {
	t.Parallel()
	tinyproxy := lookTool(t, "tinyproxy")
	lab := newLab(t)
	nsA, nsP, nsB := lab.NS("a"), lab.NS("proxy"), lab.NS("b")
	lab.Link(nsA, []string{"10.232.1.1/24"}, nsP, []string{"10.232.1.2/24"})
	lab.Link(nsP, []string{"10.232.2.1/24"}, nsB, []string{"10.232.2.2/24"})
	const (
		proxyAddr = "10.232.1.2:8888"
		listenB   = "10.232.2.2:8443"
	)
	if err := nsA.Ping("10.232.2.2"); err == nil {
		t.Fatal("alpha reaches beta directly; the proxy would not be needed")
	}

	dir := t.TempDir()
	// tinyproxy drops its privileges to nobody; it needs nothing from dir after reading
	// its configuration, and logs to stderr in the foreground.
	conf := fmt.Sprintf("User nobody\nGroup nogroup\nListen 10.232.1.2\nPort 8888\nTimeout 600\nMaxClients 32\n"+
		"LogLevel Connect\nAllow 10.232.1.0/24\nConnectPort %d\n", 8443)
	confFile := filepath.Join(dir, "tinyproxy.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	proc := nsP.Start(tinyproxy, "-d", "-c", confFile)
	waitListening(t, nsA, proxyAddr, proc)

	a, b := newNode(t, nsA, "alpha"), newNode(t, nsB, "beta")
	seed := seedFile(t)
	cert, key := selfSigned(t, dir, "10.232.2.2")
	a.writeConfig(nodeConf{addresses: tunA, seedFile: seed, noUDP: true, peers: []peerConf{
		{name: "beta", wsURL: "wss://" + listenB + "/stt", wsProxy: "http://" + proxyAddr, wsInsecure: true, allowed: allowB},
	}})
	b.writeConfig(nodeConf{addresses: tunB, seedFile: seed, ws: wsConf{listen: listenB, cert: cert, key: key}, peers: []peerConf{
		{name: "alpha", allowed: allowA},
	}})
	b.startForeground()
	a.startForeground()
	if st := a.mustStatus(); st.ListenPort != 0 {
		t.Errorf("alpha with udp = false listens on UDP port %d", st.ListenPort)
	}
	if out := mustIn(t, nsA, "ss", "-uanH"); strings.TrimSpace(out) != "" {
		t.Errorf("alpha with udp = false has UDP sockets:\n%s", out)
	}
	waitPing(t, a.ns, "10.99.0.2")
	waitPing(t, b.ns, "10.99.0.1")
	transfer(t, a.ns, b.ns, "10.99.0.2", 8<<20)
	transfer(t, b.ns, a.ns, "10.99.0.1", 2<<20)
	checkPath(t, a, "beta", "ws", listenB)
	// beta sees alpha coming from the proxy.
	checkPath(t, b, "alpha", "ws", "10.232.2.1:")
	if out := proc.Output(); !strings.Contains(out, "CONNECT "+listenB) {
		t.Errorf("tinyproxy's log shows no CONNECT %s:\n%s", listenB, out)
	}
}

// TestWebSocketExitPeer: a full tunnel (exit_peer) whose exit peer is reachable only
// over WebSocket. alpha's default route is the tunnel, so the WebSocket's own TCP
// connection must carry the fwmark to take the main table instead, or it would be
// routed into the tunnel it is meant to carry.
func TestWebSocketExitPeer(t *testing.T) {
	t.Parallel()
	lab := newLab(t)
	nsA, nsB := lab.NS("a"), lab.NS("b")
	_, devB := lab.Link(nsA, underA, nsB, underB)
	a, b := newNode(t, nsA, "alpha"), newNode(t, nsB, "beta")
	seed := seedFile(t)
	inet := lab.NS("inet")
	lab.Link(b.ns, []string{"198.51.100.1/24"}, inet, []string{"198.51.100.2/24"})
	const publicB = "10.233.0.2"
	mustIn(t, b.ns, "ip", "addr", "add", publicB+"/32", "dev", "lo")
	mustIn(t, a.ns, "ip", "route", "add", "default", "via", "10.231.0.2")
	blockUDP(t, nsB, devB)

	a.writeConfig(nodeConf{addresses: tunA, seedFile: seed, exitPeer: "beta", fallbackAfter: fallbackAfter.String(), peers: []peerConf{
		{name: "beta", endpoint: publicB + ":51900", wsURL: "ws://" + publicB + ":8443/stt",
			allowed: append([]string{"0.0.0.0/0", "::/0"}, allowB...)},
	}})
	b.writeConfig(nodeConf{addresses: tunB, seedFile: seed, forwarding: true, masquerade: true,
		ws: wsConf{listen: publicB + ":8443"}, peers: []peerConf{{name: "alpha", allowed: allowA}}})
	b.startForeground()
	a.startForeground()
	if got := mustIn(t, a.ns, "ip", "route", "get", publicB); !strings.Contains(got, "dev "+linkName) {
		t.Fatalf("alpha's unmarked traffic to beta does not go into the tunnel, so this test proves nothing: %s", got)
	}
	waitPing(t, a.ns, "10.99.0.2")
	waitPing(t, a.ns, "198.51.100.2")
	checkPath(t, a, "beta", "ws", publicB+":8443")
	if got := remoteAddrSeen(t, a.ns, inet, "198.51.100.2"); got != netip.MustParseAddr("198.51.100.1") {
		t.Errorf("internet saw alpha's connection coming from %s, want beta's 198.51.100.1", got)
	}
	transfer(t, a.ns, inet, "198.51.100.2", 4<<20)
	if out := mustIn(t, a.ns, "ss", "-tneH", "dst", publicB); !strings.Contains(out, "fwmark:0x5354") {
		t.Errorf("alpha's WebSocket connection to beta lacks fwmark 0x5354:\n%s", out)
	}
}

// lookTool finds a system program the test drives, failing with how to install it.
func lookTool(t *testing.T, name string) string {
	t.Helper()
	for _, dir := range []string{"/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin", "/usr/local/bin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	t.Fatalf("%s not found; run scripts/deps.sh (make e2e does) to install it", name)
	return ""
}
