package ws

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// pendingState is a snapshot of a server's pending set, for tests.
type pendingState struct {
	n                               int
	remotes                         []string // listed connections' client addresses, oldest first
	sent                            int      // listed connections that have sent something
	added, hijacked, ended, evicted uint64
	linksOK                         bool // head, tail and the links agree with n
}

func (s *Server) pendingState() pendingState {
	p := s.pending
	p.mu.Lock()
	defer p.mu.Unlock()
	st := pendingState{n: p.n, added: p.added, hijacked: p.hijacked, ended: p.ended, evicted: p.evicted}
	var prev *serverConn
	count := 0
	st.linksOK = true
	for c := p.head; c != nil; c = c.next {
		if c.prev != prev || !c.listed {
			st.linksOK = false
		}
		st.remotes = append(st.remotes, c.Conn.RemoteAddr().String())
		if c.read.Load() {
			st.sent++
		}
		prev = c
		count++
	}
	if p.tail != prev || count != p.n {
		st.linksOK = false
	}
	return st
}

// waitPending waits until cond holds for the server's stats and pending set, waking on
// every change to the set or its counters.
func waitPending(t testing.TB, srv *Server, what string, cond func(ServerStats, pendingState) bool) (ServerStats, pendingState) {
	t.Helper()
	deadline := time.After(waitTimeout)
	for {
		st, ps := srv.Stats(), srv.pendingState()
		if cond(st, ps) {
			return st, ps
		}
		select {
		case <-srv.pending.events:
		case <-deadline:
			t.Fatalf("timed out waiting for %s: stats %+v, pending %+v", what, st, ps)
		}
	}
}

// openIdle opens a TCP connection that sends nothing and waits until the server has
// accepted it, so that connections opened one after the other are listed in order.
func openIdle(t testing.TB, srv *Server) net.Conn {
	t.Helper()
	before := srv.pendingState().added
	nc, err := net.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	waitPending(t, srv, "the server to accept a connection", func(_ ServerStats, ps pendingState) bool {
		return ps.added > before
	})
	return nc
}

// expectEOF waits for the server to close nc: the client reads EOF, nothing before.
func expectEOF(t testing.TB, nc net.Conn, what string) {
	t.Helper()
	_ = nc.SetReadDeadline(time.Now().Add(waitTimeout))
	n, err := nc.Read(make([]byte, 1))
	if n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("%s: read %d bytes, %v; want EOF", what, n, err)
	}
}

func addrs(cs ...net.Conn) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.LocalAddr().String()
	}
	return out
}

// checkAccounting checks that every connection the server accepted and let go was
// removed from the pending set exactly once, and that the set's links are sound.
func checkAccounting(t testing.TB, srv *Server) {
	t.Helper()
	ps := srv.pendingState()
	if !ps.linksOK || ps.added != ps.hijacked+ps.ended+ps.evicted+uint64(ps.n) {
		t.Errorf("pending set %+v: added != hijacked + ended + evicted + listed, or broken links", ps)
	}
	if st := srv.Stats(); st.PendingEvicted != ps.evicted || st.Pending != uint64(ps.n) {
		t.Errorf("stats %+v disagree with the pending set %+v", st, ps)
	}
}

// TestPendingLimitEvictsOldestIdle: with MaxPending connections open that have not sent
// a request, a new TCP connection closes the oldest of them (the client sees EOF) and
// counts it, then the next oldest for the next one.
func TestPendingLimitEvictsOldestIdle(t *testing.T) {
	const maxPending = 4
	srv, _ := startServer(t, func(c *ServerConfig) { c.MaxPending = maxPending })
	var idle []net.Conn
	for range maxPending {
		idle = append(idle, openIdle(t, srv))
	}
	if st, ps := srv.Stats(), srv.pendingState(); st.Pending != maxPending || st.PendingEvicted != 0 ||
		!slices.Equal(ps.remotes, addrs(idle...)) {
		t.Fatalf("stats %+v, pending %v; want the %d idle connections in order", st, ps.remotes, maxPending)
	}

	for i := range 2 {
		idle = append(idle, openIdle(t, srv))
		expectEOF(t, idle[i], fmt.Sprintf("idle connection %d, the oldest", i))
		st, ps := waitPending(t, srv, "the eviction to be counted", func(st ServerStats, _ pendingState) bool {
			return st.PendingEvicted == uint64(i+1)
		})
		if st.Pending != maxPending || !slices.Equal(ps.remotes, addrs(idle[i+1:]...)) {
			t.Fatalf("after connection %d: stats %+v, pending %v; want the newest %d", maxPending+i, st, ps.remotes, maxPending)
		}
	}

	// Closing the rest from the client side refuses nothing more.
	for _, nc := range idle {
		nc.Close()
	}
	st, _ := waitPending(t, srv, "the closed connections to leave the set", func(st ServerStats, _ pendingState) bool {
		return st.Pending == 0
	})
	if st.PendingEvicted != 2 || st.RejectedBadRequest != 0 || st.RejectedTLS != 0 || st.RejectedHTTP != 0 {
		t.Errorf("stats %+v", st)
	}
	checkAccounting(t, srv)
}

// TestUpgradeWhilePendingFull: with every pending slot held by idle connections, an
// upgrade still succeeds (its connection evicts the oldest idle one); once upgraded it
// is not pending any more, so further idle connections evict each other, never it.
func TestUpgradeWhilePendingFull(t *testing.T) {
	const maxPending = 4
	srv, conns := echoServer(t, func(c *ServerConfig) { c.MaxPending = maxPending })
	var idle []net.Conn
	for range maxPending {
		idle = append(idle, openIdle(t, srv))
	}

	recv := newSink()
	cl := dial(t, DialConfig{URL: srv.URL(), Receive: recv.receive})
	sc := nextConn(t, conns)
	expectEOF(t, idle[0], "the oldest idle connection")
	st, ps := waitPending(t, srv, "the upgraded connection to leave the set", func(_ ServerStats, ps pendingState) bool {
		return ps.hijacked == 1
	})
	if st.PendingEvicted != 1 || st.Pending != maxPending-1 || !slices.Equal(ps.remotes, addrs(idle[1:]...)) {
		t.Fatalf("after the upgrade: stats %+v, pending %v; want the 3 newest idle connections", st, ps.remotes)
	}
	checkEcho(t, cl, recv)

	// maxPending+1 more idle connections: the first fills the set, each of the others
	// evicts the oldest idle connection, the older idle ones first.
	for i := range maxPending + 1 {
		idle = append(idle, openIdle(t, srv))
		if i > 0 {
			expectEOF(t, idle[i], fmt.Sprintf("idle connection %d", i))
		}
	}
	st, ps = waitPending(t, srv, "the evictions to be counted", func(st ServerStats, _ pendingState) bool {
		return st.PendingEvicted == maxPending+1
	})
	if st.Pending != maxPending || !slices.Equal(ps.remotes, addrs(idle[len(idle)-maxPending:]...)) {
		t.Fatalf("stats %+v, pending %v; want the %d newest idle connections", st, ps.remotes, maxPending)
	}
	if slices.Contains(ps.remotes, sc.RemoteAddr().String()) {
		t.Fatal("the upgraded connection is listed as pending")
	}
	checkOpen(t, "upgraded connection", sc, cl)
	checkEcho(t, cl, recv)
	if st := srv.Stats(); st.Accepted != 1 || st.Active != 1 || st.Closed != 0 {
		t.Errorf("stats %+v", st)
	}
	checkAccounting(t, srv)
}

// readResponse reads one HTTP response from nc and returns its status code.
func readResponse(t testing.TB, nc net.Conn) int {
	t.Helper()
	_ = nc.SetReadDeadline(time.Now().Add(waitTimeout))
	resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// send opens a TCP connection to srv, writes req, and returns the connection.
func send(t testing.TB, srv *Server, req string) net.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	if _, err := io.WriteString(nc, req); err != nil {
		t.Fatal(err)
	}
	return nc
}

// settled waits until no connection is pending and every one the server accepted has
// been accounted for, and returns the stats.
func settled(t testing.TB, srv *Server, accepted uint64) ServerStats {
	t.Helper()
	st, _ := waitPending(t, srv, "every connection to leave the pending set", func(st ServerStats, ps pendingState) bool {
		return st.Pending == 0 && ps.added == accepted
	})
	return st
}

// TestRefusalsCounted: connections that net/http closes without passing a request to
// the handler (not HTTP, headers too large, cut off) and failed TLS handshakes are each
// counted once, as their own reason; requests the handler refused are counted only
// there (and their connections closed after the answer), and connections that sent
// nothing, or only completed a TLS handshake, are not counted.
func TestRefusalsCounted(t *testing.T) {
	t.Run("plain", func(t *testing.T) {
		srv, _ := echoServer(t, nil)
		want := ServerStats{}
		check := func(what string, accepted uint64) {
			t.Helper()
			st := settled(t, srv, accepted)
			if st.RejectedBadRequest != want.RejectedBadRequest || st.RejectedTLS != 0 ||
				st.RejectedHTTP != want.RejectedHTTP || st.PendingEvicted != 0 {
				t.Errorf("after %s: stats %+v, want RejectedBadRequest %d, RejectedHTTP %d",
					what, st, want.RejectedBadRequest, want.RejectedHTTP)
			}
		}

		nc := send(t, srv, "\x00\x01\x02 garbage \xff\r\n\r\n")
		if code := readResponse(t, nc); code != http.StatusBadRequest {
			t.Errorf("garbage: status %d, want 400", code)
		}
		want.RejectedBadRequest++
		check("garbage", 1)

		nc = send(t, srv, "GET /stt HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", 2*MaxHeaderBytes)+"\r\n\r\n")
		if code := readResponse(t, nc); code != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("oversized header: status %d, want 431", code)
		}
		want.RejectedBadRequest++
		check("an oversized header", 2)

		// Half a request, then the client hangs up.
		nc = send(t, srv, "GET /stt HTTP/1.1\r\nHost: x\r\n")
		nc.Close()
		want.RejectedBadRequest++
		check("a request cut off", 3)

		// Well-formed requests the handler refuses (404, 426) are counted there only,
		// and their connection is closed after the answer, a request pipelined behind
		// them unread.
		for i, req := range []string{
			"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
			"GET /stt HTTP/1.1\r\nHost: x\r\n\r\nnot http\r\n\r\n",
		} {
			nc = send(t, srv, req)
			_ = nc.SetReadDeadline(time.Now().Add(waitTimeout))
			br := bufio.NewReader(nc)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if want := []int{http.StatusNotFound, http.StatusUpgradeRequired}[i]; resp.StatusCode != want || !resp.Close {
				t.Errorf("request %d: status %d, close %v; want %d and close", i, resp.StatusCode, resp.Close, want)
			}
			if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
				t.Errorf("request %d: after the answer, read %v; want EOF", i, err)
			}
			want.RejectedHTTP++
			check("a request the handler refused", uint64(4+i))
		}

		// A refused request whose body the client declared and does not send: its
		// connection is closed after the answer, not held for the body.
		nc = send(t, srv, "POST /stt HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n0123456789")
		_ = nc.SetReadDeadline(time.Now().Add(waitTimeout))
		if b, err := io.ReadAll(nc); err != nil || !strings.HasPrefix(string(b), "HTTP/1.1 426 ") {
			t.Errorf("a request with its body held back: read %q, %v; want a 426 and EOF", b, err)
		}
		want.RejectedHTTP++
		check("a request with its body held back", 6)

		// Connected, sent nothing, hung up; and an upgrade, closed by the client.
		send(t, srv, "").Close()
		s := newSink()
		c := dial(t, DialConfig{URL: srv.URL(), Receive: s.receive})
		checkEcho(t, c, s)
		c.Close()
		check("an idle connection and an upgrade", 8)
		if ps := srv.pendingState(); ps.hijacked != 1 {
			t.Errorf("pending %+v, want one upgrade", ps)
		}
		checkAccounting(t, srv)
	})

	t.Run("TLS", func(t *testing.T) {
		certFile, keyFile := writeSelfSigned(t, t.TempDir())
		srv, _ := echoServer(t, func(c *ServerConfig) { c.CertFile, c.KeyFile = certFile, keyFile })
		var wantTLS uint64
		check := func(what string, accepted uint64) {
			t.Helper()
			st := settled(t, srv, accepted)
			if st.RejectedTLS != wantTLS || st.RejectedBadRequest != 0 || st.RejectedHTTP != 0 || st.PendingEvicted != 0 {
				t.Errorf("after %s: stats %+v, want RejectedTLS %d", what, st, wantTLS)
			}
		}

		// Bytes that are not TLS at all.
		nc := send(t, srv, "\x00\x01\x02 garbage \xff\r\n\r\n")
		_ = nc.SetReadDeadline(time.Now().Add(waitTimeout))
		_, _ = io.ReadAll(nc) // until the server closes
		wantTLS++
		check("garbage", 1)

		// Plain HTTP to the TLS listener: net/http answers 400 on the raw connection.
		nc = send(t, srv, "GET /stt HTTP/1.1\r\nHost: x\r\n\r\n")
		if code := readResponse(t, nc); code != http.StatusBadRequest {
			t.Errorf("plain HTTP: status %d, want 400", code)
		}
		wantTLS++
		check("plain HTTP", 2)

		// A TLS client that does not trust the certificate aborts the handshake.
		raw, err := net.Dial("tcp", srv.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		tc := tls.Client(raw, &tls.Config{ServerName: "stt.test"})
		if err := tc.Handshake(); err == nil {
			t.Fatal("handshake with an unknown CA succeeded")
		}
		tc.Close()
		wantTLS++
		check("a refused certificate", 3)

		// Connected, sent nothing, hung up; a handshake then nothing; an upgrade.
		send(t, srv, "").Close()
		raw, err = net.Dial("tcp", srv.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		tc = tls.Client(raw, &tls.Config{ServerName: "stt.test", InsecureSkipVerify: true})
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		tc.Close()
		s := newSink()
		c := dial(t, DialConfig{URL: srv.URL(), CAFile: certFile, Receive: s.receive})
		checkEcho(t, c, s)
		c.Close()
		check("an idle connection, a bare handshake and an upgrade", 6)
		checkAccounting(t, srv)
	})
}

// TestPendingSetDoesNotLeak: many concurrent connections of every kind, opened and
// closed from both sides while small limits force evictions, leave the pending set
// empty with every connection removed exactly once, and Close leaves no goroutine.
func TestPendingSetDoesNotLeak(t *testing.T) {
	const (
		workers = 8
		cycles  = 40
	)
	base := runtime.NumGoroutine()
	certFile, keyFile := writeSelfSigned(t, t.TempDir())
	for _, tlsOn := range []bool{false, true} {
		srv, err := Listen(ServerConfig{
			Addr:       "127.0.0.1:0",
			MaxPending: 4,
			MaxConns:   4,
			Receive:    func(c *Conn, _ [][]byte, _ []int) { c.MarkAuthenticated() },
			CertFile:   map[bool]string{true: certFile}[tlsOn],
			KeyFile:    map[bool]string{true: keyFile}[tlsOn],
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Close() }) // if the test stops early
		addr := srv.Addr().String()
		var dials sync.WaitGroup
		var opened atomic.Uint64
		for w := range workers {
			dials.Go(func() {
				for i := range cycles {
					opened.Add(1)
					if (w+i)%5 == 4 {
						c, err := Dial(context.Background(), DialConfig{URL: srv.URL(), Proxy: "none", InsecureSkipVerify: tlsOn,
							Receive: func(*Conn, [][]byte, []int) {}})
						if err == nil {
							_ = c.Send([][]byte{[]byte("x")})
							c.Close()
							<-c.Done()
						}
						continue
					}
					nc, err := net.Dial("tcp", addr)
					if err != nil {
						t.Error(err)
						return
					}
					switch (w + i) % 5 {
					case 0: // nothing
					case 1:
						_, _ = io.WriteString(nc, "garbage\r\n\r\n")
					case 2:
						_, _ = io.WriteString(nc, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
						_ = nc.SetReadDeadline(time.Now().Add(waitTimeout))
						_, _ = nc.Read(make([]byte, 1)) // the answer, or the eviction
					case 3:
						_, _ = io.WriteString(nc, "GET /stt HTTP/1.1\r\n")
					}
					nc.Close()
				}
			})
		}
		dials.Wait()
		st := settled(t, srv, opened.Load())
		ps := srv.pendingState()
		if ps.n != 0 || len(ps.remotes) != 0 {
			t.Errorf("TLS %v: %d connections still listed", tlsOn, ps.n)
		}
		checkAccounting(t, srv)
		t.Logf("TLS %v: stats %+v, pending %+v", tlsOn, st, ps)

		// Close also waits for connections that were pending when it was called, and
		// does not count those it cut off in the middle of a request as refused.
		half := "GET /stt HTTP/1.1\r\n"
		if tlsOn {
			half = "\x16\x03\x01\x02\x00\x01" // the start of a 512-byte ClientHello record
		}
		for range 3 {
			nc := openIdle(t, srv)
			if _, err := io.WriteString(nc, half); err != nil {
				t.Fatal(err)
			}
		}
		waitPending(t, srv, "requests to begin", func(_ ServerStats, ps pendingState) bool { return ps.sent == 3 })
		if err := srv.Close(); err != nil {
			t.Fatal(err)
		}
		if ps := srv.pendingState(); ps.n != 0 {
			t.Errorf("TLS %v: %d connections listed after Close", tlsOn, ps.n)
		}
		checkAccounting(t, srv)
		if st2 := srv.Stats(); st2.RejectedBadRequest != st.RejectedBadRequest || st2.RejectedTLS != st.RejectedTLS {
			t.Errorf("TLS %v: connections closed by Close counted as refused: %+v, before %+v", tlsOn, st2, st)
		}
	}
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
