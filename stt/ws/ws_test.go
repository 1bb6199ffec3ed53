package ws

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/coder/websocket"
)

const testOffset = 16

// waitTimeout bounds every wait on an event in these tests; events normally come in
// milliseconds.
const waitTimeout = 10 * time.Second

func wait(t testing.TB, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(waitTimeout):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// sink collects received records.
type sink struct {
	mu      sync.Mutex
	recs    [][]byte
	batches []int
	notify  chan struct{}
}

func newSink() *sink { return &sink{notify: make(chan struct{}, 1)} }

func (s *sink) receive(c *Conn, bufs [][]byte, sizes []int) {
	s.mu.Lock()
	for i, b := range bufs {
		if len(b) != testOffset+MaxRecordLen {
			panic(fmt.Sprintf("buffer has %d bytes", len(b)))
		}
		s.recs = append(s.recs, bytes.Clone(b[testOffset:testOffset+sizes[i]]))
	}
	s.batches = append(s.batches, len(bufs))
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// waitN waits until the sink holds n records and returns them.
func (s *sink) waitN(t testing.TB, n int) [][]byte {
	t.Helper()
	deadline := time.After(waitTimeout)
	for {
		s.mu.Lock()
		got := len(s.recs)
		s.mu.Unlock()
		if got >= n {
			s.mu.Lock()
			defer s.mu.Unlock()
			return s.recs
		}
		select {
		case <-s.notify:
		case <-deadline:
			t.Fatalf("received %d records, want %d", got, n)
		}
	}
}

// startServer starts a server on loopback with test defaults, changed by mod.
func startServer(t testing.TB, mod func(*ServerConfig)) (*Server, chan *Conn) {
	t.Helper()
	conns := make(chan *Conn, 64)
	cfg := ServerConfig{
		Addr:      "127.0.0.1:0",
		Offset:    testOffset,
		OnConnect: func(c *Conn) { conns <- c },
		Receive:   func(*Conn, [][]byte, []int) {},
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, conns
}

func dial(t testing.TB, cfg DialConfig) *Conn {
	t.Helper()
	if cfg.Proxy == "" {
		cfg.Proxy = "none"
	}
	if cfg.Offset == 0 {
		cfg.Offset = testOffset
	}
	if cfg.Receive == nil {
		cfg.Receive = func(*Conn, [][]byte, []int) {}
	}
	c, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); <-c.Done() })
	return c
}

func nextConn(t testing.TB, conns chan *Conn) *Conn {
	t.Helper()
	select {
	case c := <-conns:
		return c
	case <-time.After(waitTimeout):
		t.Fatal("no connection accepted")
		return nil
	}
}

// frame makes a recognizable frame: its index, then a pattern derived from it.
func frame(idx int, size int) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(idx*31 + i*7)
	}
	if size >= 4 {
		binary.LittleEndian.PutUint32(b, uint32(idx))
	}
	return b
}

// TestRoundTrip sends many batches of frames of mixed sizes from the client; the server
// echoes each batch back. Both directions must keep every record's content and
// boundaries, in order.
func TestRoundTrip(t *testing.T) {
	var serverBatches sync.Map  // batch sizes seen
	var preAuthMax atomic.Int64 // largest batch before the connection was marked
	srv, conns := startServer(t, func(c *ServerConfig) {
		c.MaxMessage = 100 << 10 // forces batches to be split into several messages
		c.Receive = func(c *Conn, bufs [][]byte, sizes []int) {
			serverBatches.Store(len(bufs), true)
			if !c.Authenticated() && int64(len(bufs)) > preAuthMax.Load() {
				preAuthMax.Store(int64(len(bufs))) // one reader goroutine: no race
			}
			c.MarkAuthenticated()
			frames := make([][]byte, len(bufs))
			for i := range bufs {
				frames[i] = bufs[i][testOffset : testOffset+sizes[i]]
			}
			if err := c.Send(frames); err != nil {
				panic(err)
			}
		}
	})
	back := newSink()
	cl := dial(t, DialConfig{URL: srv.URL(), Receive: back.receive, MaxMessage: 100 << 10, Batch: 32})
	sc := nextConn(t, conns)
	if got, want := cl.String(), srv.URL(); got != want {
		t.Errorf("client String() = %q, want %q", got, want)
	}
	if cl.RemoteAddr().String() != srv.Addr().String() {
		t.Errorf("client RemoteAddr = %v, want %v", cl.RemoteAddr(), srv.Addr())
	}
	if sc.RemoteAddr().Addr().String() != "127.0.0.1" || !strings.HasPrefix(sc.String(), "ws://127.0.0.1:") {
		t.Errorf("server conn: %v %s", sc.RemoteAddr(), sc)
	}

	rng := mrand.New(mrand.NewPCG(1, 2))
	var sent [][]byte
	sizes := []int{1, 2, 3, 20, 64, 1280, 1400, 1500, 9000, 65535}
	for b := range 200 {
		n := 1 + rng.IntN(100)
		if b%10 == 5 {
			n = 150
		}
		batch := make([][]byte, n)
		for i := range batch {
			size := sizes[rng.IntN(len(sizes))]
			switch {
			case b%10 == 5:
				size = 64 // a batch of small frames fits one message: full receive batches
			case rng.IntN(4) == 0:
				size = 1 + rng.IntN(2000)
			}
			batch[i] = frame(len(sent)+i, size)
		}
		if err := cl.Send(batch); err != nil {
			t.Fatalf("batch %d: %v", b, err)
		}
		sent = append(sent, batch...)
		back.waitN(t, len(sent)) // one batch in flight: the queues never fill
	}
	got := back.waitN(t, len(sent))
	if len(got) != len(sent) {
		t.Fatalf("got %d records back, sent %d", len(got), len(sent))
	}
	for i := range sent {
		if !bytes.Equal(got[i], sent[i]) {
			t.Fatalf("record %d: got %d bytes %x..., sent %d bytes %x...", i, len(got[i]), got[i][:min(8, len(got[i]))], len(sent[i]), sent[i][:min(8, len(sent[i]))])
		}
	}
	back.mu.Lock()
	for _, n := range back.batches {
		if n > 32 {
			t.Fatalf("client got a batch of %d records, Batch is 32", n)
		}
	}
	back.mu.Unlock()
	// A map keyed by size cannot tell the state a batch came in: a later
	// authenticated batch of the same size would hide an oversized early one.
	if n := preAuthMax.Load(); n > PreAuthBatch {
		t.Errorf("server got a batch of %d records before authentication, at most %d allowed", n, PreAuthBatch)
	}
	serverBatches.Range(func(k, v any) bool {
		if n := k.(int); n > DefaultBatch {
			t.Errorf("server got a batch of %d records", n)
		}
		return true
	})
	if _, ok := serverBatches.Load(DefaultBatch); !ok {
		t.Errorf("server never got a full batch of %d records", DefaultBatch)
	}

	cs, ss := cl.Stats(), sc.Stats()
	var bytesSent uint64
	for _, f := range sent {
		bytesSent += uint64(len(f))
	}
	if cs.RecordsOut != uint64(len(sent)) || ss.RecordsIn != uint64(len(sent)) || ss.RecordsOut != uint64(len(sent)) || cs.RecordsIn != uint64(len(sent)) {
		t.Errorf("record counters: client %+v, server %+v", cs, ss)
	}
	if cs.BytesOut != bytesSent || ss.BytesIn != bytesSent || cs.BytesIn != bytesSent {
		t.Errorf("byte counters: client %+v, server %+v, want %d", cs, ss, bytesSent)
	}
	if cs.MessagesOut <= 200 || ss.MessagesIn != cs.MessagesOut {
		t.Errorf("message counters: client %+v, server %+v; batches over 100 KiB must be split", cs, ss)
	}
	if cs.QueueDrops != 0 || ss.QueueDrops != 0 {
		t.Errorf("drops: client %d, server %d", cs.QueueDrops, ss.QueueDrops)
	}

	cl.Close()
	wait(t, cl.Done(), "client goroutines")
	wait(t, sc.Done(), "server conn to see the close")
	if err := cl.Send([][]byte{{1}}); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Send after Close = %v, want net.ErrClosed", err)
	}
	if !errors.Is(cl.Err(), net.ErrClosed) {
		t.Errorf("client Err() = %v", cl.Err())
	}
	st := srv.Stats()
	if st.Accepted != 1 || st.Closed != 1 || st.Active != 0 || st.ClosedError != 0 || st.ClosedBadRecord != 0 {
		t.Errorf("server stats %+v", st)
	}
}

func TestSendChecksFrames(t *testing.T) {
	srv, _ := startServer(t, nil)
	cl := dial(t, DialConfig{URL: srv.URL(), MaxMessage: 1000})
	for _, frames := range [][][]byte{{{}}, {{1}, make([]byte, 999)}, {make([]byte, MaxRecordLen+1)}} {
		if err := cl.Send(frames); !errors.Is(err, ErrFrameSize) {
			t.Errorf("Send(%d frames) = %v, want ErrFrameSize", len(frames), err)
		}
	}
	if err := cl.Send([][]byte{make([]byte, 998)}); err != nil {
		t.Errorf("Send of a frame filling MaxMessage: %v", err)
	}
	if err := cl.Send(nil); err != nil {
		t.Errorf("Send(nil) = %v", err)
	}
}

// writeSelfSigned writes a self-signed CA certificate for stt.test and 127.0.0.1 and its
// key into dir.
func writeSelfSigned(t testing.TB, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "stt.test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"stt.test"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// echoServer starts a server that marks its connections authenticated and echoes.
func echoServer(t testing.TB, mod func(*ServerConfig)) (*Server, chan *Conn) {
	return startServer(t, func(c *ServerConfig) {
		c.Receive = func(c *Conn, bufs [][]byte, sizes []int) {
			c.MarkAuthenticated()
			frames := make([][]byte, len(bufs))
			for i := range bufs {
				frames[i] = bufs[i][testOffset : testOffset+sizes[i]]
			}
			_ = c.Send(frames)
		}
		if mod != nil {
			mod(c)
		}
	})
}

// checkEcho sends a few frames on c and waits for them to come back into s.
func checkEcho(t testing.TB, c *Conn, s *sink) {
	t.Helper()
	base := len(s.waitN(t, 0))
	frames := [][]byte{[]byte("one"), bytes.Repeat([]byte("two"), 1000), []byte("three")}
	if err := c.Send(frames); err != nil {
		t.Fatal(err)
	}
	got := s.waitN(t, base+len(frames))[base:]
	for i := range frames {
		if !bytes.Equal(got[i], frames[i]) {
			t.Fatalf("echo %d = %q", i, got[i])
		}
	}
}

func TestWSS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := writeSelfSigned(t, dir)
	srv, _ := echoServer(t, func(c *ServerConfig) { c.CertFile, c.KeyFile = certFile, keyFile })
	u := srv.URL()
	if !strings.HasPrefix(u, "wss://127.0.0.1:") {
		t.Fatalf("URL %s", u)
	}

	t.Run("CAFile", func(t *testing.T) {
		s := newSink()
		c := dial(t, DialConfig{URL: u, CAFile: certFile, Receive: s.receive})
		checkEcho(t, c, s)
	})
	t.Run("ServerName", func(t *testing.T) {
		s := newSink()
		c := dial(t, DialConfig{URL: u, CAFile: certFile, ServerName: "stt.test", Receive: s.receive})
		checkEcho(t, c, s)
	})
	t.Run("InsecureSkipVerify", func(t *testing.T) {
		s := newSink()
		c := dial(t, DialConfig{URL: u, InsecureSkipVerify: true, ServerName: "other.name", Receive: s.receive})
		checkEcho(t, c, s)
	})
	t.Run("unknown CA", func(t *testing.T) {
		_, err := Dial(context.Background(), DialConfig{URL: u, Proxy: "none", Receive: func(*Conn, [][]byte, []int) {}})
		var uae x509.UnknownAuthorityError
		if !errors.As(err, &uae) {
			t.Fatalf("Dial = %v, want an unknown authority error", err)
		}
	})
	t.Run("wrong name", func(t *testing.T) {
		_, err := Dial(context.Background(), DialConfig{URL: u, Proxy: "none", CAFile: certFile, ServerName: "other.name", Receive: func(*Conn, [][]byte, []int) {}})
		var hne x509.HostnameError
		if !errors.As(err, &hne) {
			t.Fatalf("Dial = %v, want a host name error", err)
		}
	})
	t.Run("plain ws to a TLS server", func(t *testing.T) {
		_, err := Dial(context.Background(), DialConfig{URL: strings.Replace(u, "wss:", "ws:", 1), Proxy: "none", Receive: func(*Conn, [][]byte, []int) {}})
		if err == nil {
			t.Fatal("Dial succeeded")
		}
	})
}

// connectProxy is an HTTP CONNECT proxy for tests. If target is set it connects there
// whatever the request asks for, so that a client can name a host that does not exist.
type connectProxy struct {
	t        testing.TB
	target   string
	auth     string // "user:pass" to require, or ""
	connects atomic.Int32
	lastHost atomic.Value
	wg       sync.WaitGroup
	mu       sync.Mutex
	open     []net.Conn
	srv      *http.Server
	url      string
}

func startProxy(t testing.TB, target, auth string) *connectProxy {
	t.Helper()
	p := &connectProxy{t: t, target: target, auth: auth}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.url = "http://" + ln.Addr().String()
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 5 * time.Second}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.srv.Serve(ln)
	}()
	t.Cleanup(func() {
		p.srv.Close()
		p.mu.Lock()
		for _, c := range p.open {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *connectProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodConnect {
		http.Error(w, "CONNECT only", http.StatusMethodNotAllowed)
		return
	}
	if p.auth != "" {
		want := "Basic " + base64.StdEncoding.EncodeToString([]byte(p.auth))
		if r.Header.Get("Proxy-Authorization") != want {
			w.Header().Set("Proxy-Authenticate", `Basic realm="test"`)
			http.Error(w, "auth", http.StatusProxyAuthRequired)
			return
		}
	}
	p.lastHost.Store(r.Host)
	target := r.Host
	if p.target != "" {
		target = p.target
	}
	up, err := net.Dial("tcp", target)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	down, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		up.Close()
		return
	}
	p.connects.Add(1)
	p.mu.Lock()
	p.open = append(p.open, up, down)
	p.mu.Unlock()
	if _, err := down.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		up.Close()
		down.Close()
		return
	}
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		io.Copy(up, brw.Reader) // what the client sent early, then the rest
		up.Close()
	}()
	go func() {
		defer p.wg.Done()
		io.Copy(down, up)
		down.Close()
	}()
}

func TestProxy(t *testing.T) {
	srv, _ := echoServer(t, nil)
	t.Run("explicit", func(t *testing.T) {
		p := startProxy(t, "", "")
		s := newSink()
		c := dial(t, DialConfig{URL: srv.URL(), Proxy: p.url, Receive: s.receive})
		checkEcho(t, c, s)
		if p.connects.Load() != 1 {
			t.Fatalf("proxy saw %d CONNECTs", p.connects.Load())
		}
		if h := p.lastHost.Load(); h != srv.Addr().String() {
			t.Fatalf("CONNECT to %v, want %v", h, srv.Addr())
		}
		if c.RemoteAddr().String() != srv.Addr().String() {
			t.Errorf("RemoteAddr %v, want the server's %v", c.RemoteAddr(), srv.Addr())
		}
		if !strings.Contains(c.String(), " via 127.0.0.1:") {
			t.Errorf("String() = %q", c.String())
		}
	})
	t.Run("authenticated", func(t *testing.T) {
		p := startProxy(t, "", "user:s3cret")
		s := newSink()
		purl := strings.Replace(p.url, "http://", "http://user:s3cret@", 1)
		c := dial(t, DialConfig{URL: srv.URL(), Proxy: purl, Receive: s.receive})
		checkEcho(t, c, s)
		_, err := Dial(context.Background(), DialConfig{URL: srv.URL(), Proxy: p.url, Receive: s.receive})
		if err == nil || !strings.Contains(err.Error(), "407") {
			t.Fatalf("Dial without credentials = %v, want a 407", err)
		}
		if strings.Contains(fmt.Sprint(err), "s3cret") {
			t.Fatalf("error leaks the password: %v", err)
		}
	})
	t.Run("wss", func(t *testing.T) {
		certFile, keyFile := writeSelfSigned(t, t.TempDir())
		tsrv, _ := echoServer(t, func(c *ServerConfig) { c.CertFile, c.KeyFile = certFile, keyFile })
		p := startProxy(t, "", "")
		s := newSink()
		c := dial(t, DialConfig{URL: tsrv.URL(), Proxy: p.url, CAFile: certFile, Receive: s.receive})
		checkEcho(t, c, s)
		if p.connects.Load() != 1 {
			t.Fatalf("proxy saw %d CONNECTs", p.connects.Load())
		}
	})
	t.Run("unreachable proxy", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		_, err = Dial(context.Background(), DialConfig{URL: srv.URL(), Proxy: addr, Receive: func(*Conn, [][]byte, []int) {}})
		if err == nil || !strings.Contains(err.Error(), "proxy") {
			t.Fatalf("Dial = %v", err)
		}
	})
}

// TestProxyFromEnvironment dials a name that does not resolve, through a proxy named by
// HTTP_PROXY that connects to the test server whatever it is asked for.
func TestProxyFromEnvironment(t *testing.T) {
	srv, _ := echoServer(t, nil)
	p := startProxy(t, srv.Addr().String(), "")
	t.Setenv("HTTP_PROXY", p.url)
	t.Setenv("http_proxy", "")
	t.Setenv("NO_PROXY", "")
	t.Setenv("no_proxy", "")
	s := newSink()
	c, err := Dial(context.Background(), DialConfig{URL: "ws://stt.invalid:8080/stt", Offset: testOffset, Receive: s.receive})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { c.Close(); <-c.Done() }()
	checkEcho(t, c, s)
	if h := p.lastHost.Load(); h != "stt.invalid:8080" {
		t.Fatalf("CONNECT to %v", h)
	}

	t.Setenv("NO_PROXY", "example.org, .invalid")
	_, err = Dial(context.Background(), DialConfig{URL: "ws://stt.invalid:8080/stt", Offset: testOffset, Receive: s.receive})
	if err == nil || p.connects.Load() != 1 {
		t.Fatalf("with NO_PROXY matching: Dial = %v, %d CONNECTs", err, p.connects.Load())
	}
}

func TestProxyFromEnvRules(t *testing.T) {
	env := map[string]string{
		"HTTP_PROXY":  "http://plain.proxy:3128",
		"https_proxy": "tls.proxy:8080",
		"NO_PROXY":    "skip.example, .sub.example,10.0.0.0/8, 192.0.2.7,other.example:8443, [2001:db8::1]",
	}
	getenv := func(k string) string { return env[k] }
	cases := []struct{ target, want string }{
		{"ws://stt.example/stt", "plain.proxy:3128"},
		{"wss://stt.example/stt", "tls.proxy:8080"},
		{"ws://localhost:80/", ""},
		{"ws://127.0.0.1:80/", ""},
		{"ws://[::1]:80/", ""},
		{"ws://skip.example/", ""},
		{"ws://a.skip.example/", ""},
		{"ws://noskip.example/", "plain.proxy:3128"},
		{"ws://sub.example/", "plain.proxy:3128"},
		{"ws://x.sub.example/", ""},
		{"ws://10.1.2.3/", ""},
		{"ws://11.1.2.3/", "plain.proxy:3128"},
		{"ws://192.0.2.7:9000/", ""},
		{"wss://other.example:8443/", ""},
		{"wss://other.example/", "tls.proxy:8080"},
		{"ws://[2001:db8::1]:80/", ""},
	}
	for _, tc := range cases {
		u, _ := url.Parse(tc.target)
		p, err := proxyFromEnv(u, getenv)
		if err != nil {
			t.Fatalf("%s: %v", tc.target, err)
		}
		got := ""
		if p != nil {
			got = p.Host
		}
		if got != tc.want {
			t.Errorf("%s: proxy %q, want %q", tc.target, got, tc.want)
		}
	}
	env["NO_PROXY"] = "*"
	u, _ := url.Parse("ws://stt.example/")
	if p, _ := proxyFromEnv(u, getenv); p != nil {
		t.Errorf("NO_PROXY=* still proxies: %v", p)
	}
	for _, bad := range []string{"socks5://x:1", "http://", "https://x:1"} {
		if _, err := proxyFor(bad, u); err == nil {
			t.Errorf("proxy %q accepted", bad)
		}
	}
}

// get sends a raw HTTP request and returns the status code.
func get(t testing.TB, addr, req string) int {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := io.WriteString(nc, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestRejectsPlainHTTP(t *testing.T) {
	srv, _ := echoServer(t, nil)
	addr := srv.Addr().String()
	cases := []struct {
		req  string
		code int
	}{
		{"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 404},
		{"GET /stt/x HTTP/1.1\r\nHost: x\r\n\r\n", 404},
		{"GET /stt HTTP/1.1\r\nHost: x\r\n\r\n", 426},
		{"POST /stt HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 426},
		{"GET /stt HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 400}, // no key, no version
		{"POST /stt HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", 405},
		{"GET /stt HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 2*MaxHeaderBytes) + "\r\n\r\n", 431},
	}
	for i, tc := range cases {
		if code := get(t, addr, tc.req); code != tc.code {
			t.Errorf("request %d: status %d, want %d", i, code, tc.code)
		}
	}
	if st := srv.Stats(); st.RejectedHTTP != uint64(len(cases)-1) || st.Accepted != 0 {
		t.Errorf("stats %+v, want RejectedHTTP %d", st, len(cases)-1)
	}
	s := newSink()
	c := dial(t, DialConfig{URL: srv.URL(), Receive: s.receive})
	checkEcho(t, c, s)
}

// rawDial opens a WebSocket with the library directly, to send what Conn never would.
func rawDial(t testing.TB, u string) *websocket.Conn {
	t.Helper()
	c, _, err := websocket.Dial(context.Background(), u, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

func TestOversizedMessage(t *testing.T) {
	var delivered atomic.Int32
	srv, conns := startServer(t, func(c *ServerConfig) {
		c.MaxMessage = 4096
		c.Receive = func(*Conn, [][]byte, []int) { delivered.Add(1) }
	})
	raw := rawDial(t, srv.URL())
	sc := nextConn(t, conns)
	// Exactly MaxMessage is fine.
	ok := encodeRecords(make([]byte, 2000), make([]byte, 4096-4-2000))
	if err := raw.Write(context.Background(), websocket.MessageBinary, ok); err != nil {
		t.Fatal(err)
	}
	msg := encodeRecords(make([]byte, 3000), make([]byte, 3000))
	if err := raw.Write(context.Background(), websocket.MessageBinary, msg); err != nil {
		t.Fatal(err)
	}
	wait(t, sc.Done(), "the server to close the connection")
	if !errors.Is(sc.Err(), websocket.ErrMessageTooBig) {
		t.Errorf("Err() = %v", sc.Err())
	}
	st := srv.Stats()
	if st.ClosedOversized != 1 || st.Closed != 1 || st.Active != 0 {
		t.Errorf("stats %+v", st)
	}
	if sc.Stats().MessagesIn != 1 {
		t.Errorf("conn stats %+v", sc.Stats())
	}
}

func TestMalformedMessages(t *testing.T) {
	var delivered sync.Map
	srv, conns := startServer(t, func(c *ServerConfig) {
		c.BufSize = testOffset + 1500
		c.Receive = func(_ *Conn, bufs [][]byte, sizes []int) {
			for i := range bufs {
				delivered.Store(string(bufs[i][testOffset:testOffset+sizes[i]]), true)
			}
		}
	})
	cases := []struct {
		name string
		typ  websocket.MessageType
		msg  []byte
	}{
		{"length zero", websocket.MessageBinary, []byte{0, 0}},
		{"zero after a record", websocket.MessageBinary, append(encodeRecords([]byte("r1")), 0, 0)},
		{"past the end", websocket.MessageBinary, append(encodeRecords([]byte("r2")), 10, 0, 1, 2, 3)},
		{"cut length", websocket.MessageBinary, append(encodeRecords([]byte("r3")), 1)},
		{"over BufSize", websocket.MessageBinary, encodeRecords(make([]byte, 1501))},
		{"text", websocket.MessageText, encodeRecords([]byte("r4"))},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			raw := rawDial(t, srv.URL())
			sc := nextConn(t, conns)
			if err := raw.Write(context.Background(), tc.typ, tc.msg); err != nil {
				t.Fatal(err)
			}
			wait(t, sc.Done(), "the server to close the connection")
			if !errors.Is(sc.Err(), ErrBadRecord) {
				t.Errorf("Err() = %v", sc.Err())
			}
			if st := srv.Stats(); st.ClosedBadRecord != uint64(i+1) || st.Active != 0 {
				t.Errorf("stats %+v", st)
			}
			// The peer sees the connection end.
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			if _, _, err := raw.Read(ctx); err == nil || errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("peer read %v, want the connection closed", err)
			}
		})
	}
	delivered.Range(func(k, _ any) bool {
		t.Errorf("record %q of a malformed message was delivered", k)
		return true
	})
	// The server still works.
	s := newSink()
	c := dial(t, DialConfig{URL: srv.URL(), Receive: s.receive})
	sc := nextConn(t, conns)
	if err := c.Send([][]byte{[]byte("fine")}); err != nil {
		t.Fatal(err)
	}
	if err := sc.Send([][]byte{[]byte("back")}); err != nil {
		t.Fatal(err)
	}
	if got := s.waitN(t, 1); string(got[0]) != "back" {
		t.Fatalf("got %q", got[0])
	}
}

// TestMaxConns: with MaxConns authenticated connections open, an upgrade gets 503; a
// slot freed by a close is taken again.
func TestMaxConns(t *testing.T) {
	srv, conns := startServer(t, func(c *ServerConfig) {
		c.MaxConns = 2
		next := c.OnConnect
		c.OnConnect = func(c *Conn) { c.MarkAuthenticated(); next(c) }
	})
	dial(t, DialConfig{URL: srv.URL()})
	c2 := dial(t, DialConfig{URL: srv.URL()})
	// The server may report the two connections in either order.
	sa, sb := nextConn(t, conns), nextConn(t, conns)
	_, err := Dial(context.Background(), DialConfig{URL: srv.URL(), Proxy: "none", Receive: func(*Conn, [][]byte, []int) {}})
	if err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("third Dial = %v, want 503", err)
	}
	if st := srv.Stats(); st.RejectedFull != 1 || st.Active != 2 || st.Accepted != 2 {
		t.Fatalf("stats %+v", st)
	}
	c2.Close()
	select {
	case <-sa.Done():
	case <-sb.Done():
	case <-time.After(waitTimeout):
		t.Fatal("timed out waiting for the server side of the closed connection")
	}
	dial(t, DialConfig{URL: srv.URL()})
	nextConn(t, conns)
	if st := srv.Stats(); st.Active != 2 || st.Accepted != 3 || st.Evicted != 0 {
		t.Fatalf("stats after reconnecting %+v", st)
	}
}

// fillServer dials n connections one after the other and returns the client and server
// sides in the order the server registered them.
func fillServer(t *testing.T, srv *Server, conns chan *Conn, n int) (clients, servers []*Conn) {
	t.Helper()
	for range n {
		clients = append(clients, dial(t, DialConfig{URL: srv.URL()}))
		servers = append(servers, nextConn(t, conns)) // registered before the next dial
	}
	return clients, servers
}

func checkOpen(t *testing.T, what string, cs ...*Conn) {
	t.Helper()
	for i, c := range cs {
		if err := c.Err(); err != nil {
			t.Errorf("%s %d closed: %v", what, i, err)
		}
	}
}

func checkEvicted(t *testing.T, what string, server, client *Conn) {
	t.Helper()
	wait(t, server.Done(), what+" to be evicted")
	if !errors.Is(server.Err(), ErrEvicted) {
		t.Errorf("%s: Err() = %v, want ErrEvicted", what, server.Err())
	}
	wait(t, client.Done(), what+": the client to see the close")
}

// TestFullServerEvictsOldestUnauthenticated: with MaxConns connections open and none
// authenticated, a new upgrade is accepted and the oldest connection is closed in its
// place, then the next oldest for the next upgrade.
func TestFullServerEvictsOldestUnauthenticated(t *testing.T) {
	const maxConns = 4
	srv, conns := startServer(t, func(c *ServerConfig) { c.MaxConns = maxConns })
	clients, servers := fillServer(t, srv, conns, maxConns)

	recv := newSink()
	dial(t, DialConfig{URL: srv.URL(), Receive: recv.receive})
	news := nextConn(t, conns)
	checkEvicted(t, "the oldest connection", servers[0], clients[0])
	checkOpen(t, "newer connection", append(servers[1:], news)...)
	if st := srv.Stats(); st.Evicted != 1 || st.Active != maxConns || st.Accepted != maxConns+1 ||
		st.RejectedFull != 0 || st.Closed != 1 || st.ClosedUnauthenticated != 0 {
		t.Errorf("stats %+v", st)
	}

	dial(t, DialConfig{URL: srv.URL()})
	nextConn(t, conns)
	checkEvicted(t, "the second oldest connection", servers[1], clients[1])
	checkOpen(t, "newer connection", append(servers[2:], news)...)
	if st := srv.Stats(); st.Evicted != 2 || st.Active != maxConns || st.Accepted != maxConns+2 {
		t.Errorf("stats %+v", st)
	}

	// The newcomer's connection works.
	if err := news.Send([][]byte{[]byte("in")}); err != nil {
		t.Fatal(err)
	}
	if got := recv.waitN(t, 1); string(got[0]) != "in" {
		t.Fatalf("got %q", got[0])
	}
}

// TestFullServerOfAuthenticatedRefuses: with MaxConns authenticated connections open, a
// new upgrade gets 503 and none of them is closed.
func TestFullServerOfAuthenticatedRefuses(t *testing.T) {
	const maxConns = 4
	srv, conns := startServer(t, func(c *ServerConfig) {
		c.MaxConns = maxConns
		next := c.OnConnect
		c.OnConnect = func(c *Conn) { c.MarkAuthenticated(); next(c) }
	})
	_, servers := fillServer(t, srv, conns, maxConns)
	for range 3 {
		_, err := Dial(context.Background(), DialConfig{URL: srv.URL(), Proxy: "none", Receive: func(*Conn, [][]byte, []int) {}})
		if err == nil || !strings.Contains(err.Error(), "503") {
			t.Fatalf("Dial to a server full of authenticated connections = %v, want 503", err)
		}
	}
	// An eviction would have closed its victim before the upgrade was answered.
	checkOpen(t, "authenticated connection", servers...)
	if st := srv.Stats(); st.RejectedFull != 3 || st.Evicted != 0 || st.Active != maxConns || st.Closed != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestEvictionSkipsAuthenticated: the connection evicted is the oldest unauthenticated
// one, never an older authenticated one; once only authenticated ones are left, 503.
func TestEvictionSkipsAuthenticated(t *testing.T) {
	const maxConns = 4
	srv, conns := startServer(t, func(c *ServerConfig) { c.MaxConns = maxConns })
	// Connections 0 and 2 authenticated, 1 and 3 not.
	clients, servers := fillServer(t, srv, conns, maxConns)
	servers[0].MarkAuthenticated()
	servers[2].MarkAuthenticated()

	dial(t, DialConfig{URL: srv.URL()})
	n1 := nextConn(t, conns)
	checkEvicted(t, "connection 1", servers[1], clients[1])
	checkOpen(t, "connection", servers[0], servers[2], servers[3], n1)
	n1.MarkAuthenticated()

	dial(t, DialConfig{URL: srv.URL()})
	n2 := nextConn(t, conns)
	checkEvicted(t, "connection 3", servers[3], clients[3])
	checkOpen(t, "connection", servers[0], servers[2], n1, n2)
	n2.MarkAuthenticated()

	_, err := Dial(context.Background(), DialConfig{URL: srv.URL(), Proxy: "none", Receive: func(*Conn, [][]byte, []int) {}})
	if err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("Dial with only authenticated connections open = %v, want 503", err)
	}
	checkOpen(t, "authenticated connection", servers[0], servers[2], n1, n2)
	if st := srv.Stats(); st.Evicted != 2 || st.RejectedFull != 1 || st.Active != maxConns || st.Closed != 2 {
		t.Errorf("stats %+v", st)
	}
}

// TestEvictionRacesAuthentication: concurrent upgrades, authentications and closes keep
// the accounting right, never evict a connection that was marked authenticated, and
// never hold more than MaxConns; run with -race.
func TestEvictionRacesAuthentication(t *testing.T) {
	const (
		maxConns = 4
		workers  = 8
		dials    = 25
	)
	var (
		mu      sync.Mutex
		all     []*Conn
		marks   sync.WaitGroup
		srvPtr  atomic.Pointer[Server]
		tooMany atomic.Int64
	)
	srv, err := Listen(ServerConfig{
		Addr:     "127.0.0.1:0",
		MaxConns: maxConns,
		Receive:  func(*Conn, [][]byte, []int) {},
		OnConnect: func(c *Conn) {
			if a := srvPtr.Load().Stats().Active; a > maxConns {
				tooMany.Store(int64(a))
			}
			mu.Lock()
			i := len(all)
			all = append(all, c)
			mu.Unlock()
			if i%2 == 0 {
				// Authenticate concurrently with the upgrades that may evict c.
				marks.Go(c.MarkAuthenticated)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	srvPtr.Store(srv)
	defer srv.Close()

	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			rng := mrand.New(mrand.NewPCG(uint64(w), 7))
			var held []*Conn
			defer func() {
				for _, c := range held {
					c.Close()
					<-c.Done()
				}
			}()
			for range dials {
				ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
				c, err := Dial(ctx, DialConfig{URL: srv.URL(), Proxy: "none", Receive: func(*Conn, [][]byte, []int) {}})
				cancel()
				switch {
				case err != nil && strings.Contains(err.Error(), "503"):
					if len(held) > 0 { // make room
						held[0].Close()
						<-held[0].Done()
						held = held[1:]
					}
				case err != nil:
					t.Errorf("Dial: %v", err)
					return
				default:
					held = append(held, c)
					if rng.IntN(3) == 0 {
						i := rng.IntN(len(held))
						held[i].Close()
						held = append(held[:i], held[i+1:]...)
					}
				}
			}
		})
	}
	wg.Wait()
	// A Dial returns once the upgrade is answered, before the server's handler calls
	// OnConnect, so marks.Go may still come: Close first, which waits for every
	// handler, so that no marks.Go runs concurrently with marks.Wait.
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	marks.Wait()
	if a := tooMany.Load(); a != 0 {
		t.Errorf("%d connections active, MaxConns %d", a, maxConns)
	}
	mu.Lock()
	defer mu.Unlock()
	var evicted uint64
	for i, c := range all {
		wait(t, c.Done(), "every server connection to finish")
		if errors.Is(c.Err(), ErrEvicted) {
			evicted++
			if c.Authenticated() {
				t.Errorf("connection %d evicted although authenticated", i)
			}
		}
	}
	st := srv.Stats()
	if st.Evicted != evicted || st.Accepted != uint64(len(all)) || st.Closed != st.Accepted || st.Active != 0 {
		t.Errorf("stats %+v; %d connections, %d evicted", st, len(all), evicted)
	}
	if evicted == 0 {
		t.Error("no connection was evicted; the test did not exercise eviction")
	}
	t.Logf("stats %+v", st)
}

func TestAuthTimeout(t *testing.T) {
	const timeout = 200 * time.Millisecond
	srv, conns := startServer(t, func(c *ServerConfig) { c.AuthTimeout = timeout })
	start := time.Now()
	idle := dial(t, DialConfig{URL: srv.URL()})
	sIdle := nextConn(t, conns)
	good := dial(t, DialConfig{URL: srv.URL()})
	sGood := nextConn(t, conns)
	sGood.MarkAuthenticated()

	wait(t, sIdle.Done(), "the unauthenticated connection to be closed")
	if d := time.Since(start); d < timeout {
		t.Errorf("closed after %v, before AuthTimeout %v", d, timeout)
	}
	if !errors.Is(sIdle.Err(), ErrAuthTimeout) {
		t.Errorf("Err() = %v", sIdle.Err())
	}
	wait(t, idle.Done(), "the client to see the close")
	select {
	case <-sGood.Done():
		t.Fatal("authenticated connection closed")
	default:
	}
	if st := srv.Stats(); st.ClosedUnauthenticated != 1 || st.Active != 1 {
		t.Errorf("stats %+v", st)
	}
	if err := good.Send([][]byte{[]byte("still here")}); err != nil {
		t.Fatal(err)
	}
}

// TestSendNeverBlocks: while the writer is stuck in a write that does not return (a
// peer that stopped reading, a full TCP buffer), Send still returns: it queues up to
// SendQueue messages, then drops each further one with ErrQueueFull, counted once. The
// writer is held deterministically, by the lock its connection's writes take; a Send
// that waited for it would never return, which a generous watchdog reports.
func TestSendNeverBlocks(t *testing.T) {
	const queue, extra = 4, 3
	rx := newSink()
	srv, _ := startServer(t, func(c *ServerConfig) { c.Receive = rx.receive; c.PingInterval = -1 })
	cl := dial(t, DialConfig{URL: srv.URL(), SendQueue: queue, PingInterval: -1})
	if cl.cork == nil {
		t.Fatal("client connection has no corkConn to hold its writer with")
	}
	// Every write of the writer goroutine, and the start of each run (cork), takes
	// this lock: held, the writer cannot write anything.
	cl.cork.mu.Lock()
	held := true
	release := func() {
		if held {
			held = false
			cl.cork.mu.Unlock()
		}
	}
	defer release()

	// sendAll sends n one-record messages from another goroutine and returns their
	// errors; it fails the test if they have not all returned within the watchdog's
	// time, which only a Send that waits for the writer takes.
	next := 0
	sendAll := func(n int) []error {
		t.Helper()
		errs := make(chan []error, 1)
		first := next
		next += n
		go func() {
			var e []error
			for i := range n {
				e = append(e, cl.Send([][]byte{frame(first+i, 100)}))
			}
			errs <- e
		}()
		select {
		case e := <-errs:
			return e
		case <-time.After(waitTimeout):
			t.Fatalf("Send blocked while the writer was stuck (%d messages queued)", len(cl.sendq))
			return nil
		}
	}

	// The writer takes the first message off the queue and sticks.
	if errs := sendAll(1); errs[0] != nil {
		t.Fatal(errs[0])
	}
	deadline := time.Now().Add(waitTimeout)
	for len(cl.sendq) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the writer never took the first message")
		}
		time.Sleep(time.Millisecond)
	}
	// The queue takes SendQueue messages; every one after is dropped.
	for i, err := range sendAll(queue + extra) {
		switch {
		case i < queue && err != nil:
			t.Fatalf("Send %d with room in the queue: %v", i+1, err)
		case i >= queue && !errors.Is(err, ErrQueueFull):
			t.Fatalf("Send %d with the queue full: %v, want ErrQueueFull", i+1, err)
		}
	}
	if st := cl.Stats(); st.MessagesOut != 0 || st.QueueDrops != extra {
		t.Fatalf("while the writer was stuck: %d messages written, %d drops; want 0 and %d", st.MessagesOut, st.QueueDrops, extra)
	}

	// Released, the writer sends the one it held and the queued ones, in order.
	release()
	recs := rx.waitN(t, 1+queue)
	for i, r := range recs {
		if !bytes.Equal(r, frame(i, 100)) {
			t.Fatalf("record %d is not message %d", i, i)
		}
	}
	if len(recs) != 1+queue {
		t.Fatalf("%d records arrived, want %d", len(recs), 1+queue)
	}
	if d := cl.Stats().QueueDrops; d != extra {
		t.Errorf("QueueDrops %d, want %d", d, extra)
	}
}

// TestSendWaitsNoTimeWhenTheQueueIsFull: Send does not wait, not even a bounded time,
// for room in the queue. In a synctest bubble the clock moves only while every
// goroutine in it waits, so a Send that waited on a timer shows as elapsed time, and
// one that waited for room forever as a deadlock; a descheduled goroutine shows as
// neither. The connection has no writer at all: nothing ever empties its queue.
func TestSendWaitsNoTimeWhenTheQueueIsFull(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const queue, extra = 4, 3
		o := options{sendQueue: queue, recv: func(*Conn, [][]byte, []int) {}}
		if err := o.normalize(); err != nil {
			t.Fatal(err)
		}
		c := &Conn{opts: o, name: "test", sendq: make(chan *outMsg, queue), stop: make(chan struct{}), done: make(chan struct{})}
		start := time.Now()
		for i := range queue + extra {
			err := c.Send([][]byte{frame(i, 100)})
			if i < queue && err != nil || i >= queue && !errors.Is(err, ErrQueueFull) {
				t.Fatalf("Send %d: %v", i+1, err)
			}
		}
		if d := time.Since(start); d != 0 {
			t.Fatalf("Send waited %v for room in the queue", d)
		}
		if d := c.Stats().QueueDrops; d != extra {
			t.Fatalf("QueueDrops %d, want %d", d, extra)
		}
	})
}

func TestServerCountsQueueDrops(t *testing.T) {
	srv, conns := startServer(t, func(c *ServerConfig) { c.SendQueue = 1; c.PingInterval = -1 })
	release := make(chan struct{})
	dial(t, DialConfig{URL: srv.URL(), PingInterval: -1, Receive: func(*Conn, [][]byte, []int) { <-release }})
	defer close(release)
	sc := nextConn(t, conns)
	big := [][]byte{make([]byte, 60000)}
	for i := 0; i < 5000 && srv.Stats().QueueDrops == 0; i++ {
		_ = sc.Send(big)
	}
	if srv.Stats().QueueDrops == 0 || sc.Stats().QueueDrops != srv.Stats().QueueDrops {
		t.Fatalf("server %+v, conn %+v", srv.Stats(), sc.Stats())
	}
}

// TestKeepaliveClosesAPeerThatStopsAnswering: a peer that answered pings and then
// stops (its reader blocks in its ReceiveFunc, so it reads no pong) is closed by the
// server's keepalive, with the ping's deadline as the reason, and counted.
func TestKeepaliveClosesAPeerThatStopsAnswering(t *testing.T) {
	const interval = 100 * time.Millisecond
	release := make(chan struct{})
	srv, conns := startServer(t, func(c *ServerConfig) { c.PingInterval = interval })
	dial(t, DialConfig{URL: srv.URL(), PingInterval: -1, Receive: func(*Conn, [][]byte, []int) { <-release }})
	defer close(release)
	sc := nextConn(t, conns)
	sc.MarkAuthenticated()
	// The peer answers a few pings first, so that the keepalive must go on pinging
	// after answers. A machine too loaded to answer within the interval ends this
	// early, by the keepalive too: that is checked below as the same outcome.
	select {
	case <-sc.Done():
	case <-time.After(3 * interval):
	}
	// The client's reader blocks in its ReceiveFunc, so pongs stop.
	if err := sc.Send([][]byte{[]byte("block")}); err != nil && !errors.Is(err, net.ErrClosed) {
		t.Fatal(err)
	}
	wait(t, sc.Done(), "the keepalive to close the connection")
	if !errors.Is(sc.Err(), context.DeadlineExceeded) {
		t.Errorf("Err() = %v", sc.Err())
	}
	if st := srv.Stats(); st.ClosedKeepalive != 1 {
		t.Errorf("stats %+v", st)
	}
}

// TestKeepaliveKeepsAPeerThatAnswers: a peer that answers pings stays connected. A ping
// not answered within the interval closes the connection, which is right for a peer that
// slow; the interval here is long enough that a pong late only by a loaded machine's
// scheduling (hundreds of milliseconds under -race) still comes in time.
func TestKeepaliveKeepsAPeerThatAnswers(t *testing.T) {
	const interval = time.Second
	srv, conns := startServer(t, func(c *ServerConfig) { c.PingInterval = interval })
	dial(t, DialConfig{URL: srv.URL(), PingInterval: -1})
	sc := nextConn(t, conns)
	sc.MarkAuthenticated()
	// The first ping goes out after an interval and must be answered within the next:
	// half an interval beyond that deadline, a keepalive that did not take the answer
	// would have closed the connection.
	select {
	case <-sc.Done():
		t.Fatalf("closed while the peer answers pings: %v", sc.Err())
	case <-time.After(2*interval + interval/2):
	}
	if st := srv.Stats(); st.ClosedKeepalive != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestServerCloseReleasesAll(t *testing.T) {
	base := runtime.NumGoroutine()
	accepted := make(chan *Conn, 5)
	srv, err := Listen(ServerConfig{
		Addr:      "127.0.0.1:0",
		OnConnect: func(c *Conn) { accepted <- c },
		Receive:   func(c *Conn, bufs [][]byte, sizes []int) { _ = c.Send([][]byte{{1}}) },
	})
	if err != nil {
		t.Fatal(err)
	}
	var clients []*Conn
	for range 5 {
		c, err := Dial(context.Background(), DialConfig{URL: srv.URL(), Proxy: "none", Receive: func(*Conn, [][]byte, []int) {}})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Send([][]byte{[]byte("x")}); err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
		nextConn(t, accepted) // Dial returns before the server's handler registers the conn
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if st := srv.Stats(); st.Active != 0 || st.Closed != 5 {
		t.Errorf("stats %+v", st)
	}
	for _, c := range clients {
		wait(t, c.Done(), "clients to see the server close")
	}
	if _, err := Dial(context.Background(), DialConfig{URL: srv.URL(), Proxy: "none", Receive: func(*Conn, [][]byte, []int) {}}); err == nil {
		t.Fatal("Dial after Close succeeded")
	}
	srv.Close() // idempotent
	deadline := time.Now().Add(waitTimeout)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond)
	}
}

func TestConfigErrors(t *testing.T) {
	recv := func(*Conn, [][]byte, []int) {}
	for _, cfg := range []ServerConfig{
		{Addr: "127.0.0.1:0"},
		{Addr: "127.0.0.1:0", Receive: recv, Offset: 10, BufSize: 10},
		{Addr: "127.0.0.1:0", Receive: recv, MaxMessage: 2},
		{Addr: "127.0.0.1:0", Receive: recv, Path: "stt"},
		{Addr: "127.0.0.1:0", Receive: recv, CertFile: "x"},
		{Addr: "127.0.0.1:0", Receive: recv, CertFile: "/nonexistent", KeyFile: "/nonexistent"},
		{Addr: "256.0.0.1:0", Receive: recv},
	} {
		if s, err := Listen(cfg); err == nil {
			s.Close()
			t.Errorf("Listen(%+v) succeeded", cfg)
		}
	}
	for _, cfg := range []DialConfig{
		{URL: "ws://127.0.0.1:1/"},
		{URL: "http://127.0.0.1:1/", Receive: recv},
		{URL: "ws:///stt", Receive: recv},
		{URL: "ws://127.0.0.1:1/", Receive: recv, CAFile: "x"},
		{URL: "wss://127.0.0.1:1/", Receive: recv, CAFile: "/nonexistent"},
	} {
		if c, err := Dial(context.Background(), cfg); err == nil {
			c.Close()
			t.Errorf("Dial(%+v) succeeded", cfg)
		}
	}
}

// TestConnsAreCorked checks that both ends of a connection write through a corkConn
// directly on the TCP connection (under TLS for wss://), which the write loop needs to
// send a run of messages in one write: nothing else fails without it.
func TestConnsAreCorked(t *testing.T) {
	certFile, keyFile := writeSelfSigned(t, t.TempDir())
	for _, tc := range []struct {
		name string
		tls  bool
	}{{"ws", false}, {"wss", true}} {
		t.Run(tc.name, func(t *testing.T) {
			srv, conns := echoServer(t, func(c *ServerConfig) {
				if tc.tls {
					c.CertFile, c.KeyFile = certFile, keyFile
				}
			})
			s := newSink()
			cfg := DialConfig{URL: srv.URL(), Receive: s.receive}
			if tc.tls {
				cfg.CAFile = certFile
			}
			c := dial(t, cfg)
			sc := nextConn(t, conns)
			checkEcho(t, c, s)
			for _, x := range []struct {
				side string
				c    *Conn
			}{{"client", c}, {"server", sc}} {
				if x.c.cork == nil {
					t.Fatalf("%s side: no corkConn", x.side)
				}
				under := x.c.cork.Conn
				if pc, ok := under.(*pendingConn); ok && x.side == "server" {
					under = pc.Conn // the server's pending bound sits between cork and socket
				}
				if _, ok := under.(*net.TCPConn); !ok {
					t.Fatalf("%s side: corkConn over %T, want *net.TCPConn", x.side, under)
				}
			}
		})
	}
}
