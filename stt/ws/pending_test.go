package ws

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// upgradeRequest is a WebSocket handshake on the default path.
const upgradeRequest = "GET " + DefaultPath + " HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
	"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"

// rawConn opens a TCP connection to srv from the loopback address from.
func rawConn(t testing.TB, srv *Server, from string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: waitTimeout}
	c, err := d.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitStats polls srv's counters until ok accepts them.
func waitStats(t testing.TB, srv *Server, what string, ok func(ServerStats) bool) ServerStats {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		st := srv.Stats()
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; stats %+v", what, st)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// closeWait bounds waitClosed: shorter than ReadHeaderTimeout, after which net/http
// closes a connection that sent nothing whatever the bounds do.
const closeWait = ReadHeaderTimeout / 2

// waitClosed waits until the server closes c: a read returns EOF or a reset.
func waitClosed(t testing.TB, c net.Conn, what string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(closeWait))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("%s: still open after %v", what, closeWait)
	}
}

// isOpen reports whether the server still holds c open: a short read times out.
func isOpen(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	var b [1]byte
	_, err := c.Read(b[:])
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// upgrades sends a WebSocket handshake on c and reports whether it was answered 101.
func upgrades(t testing.TB, c net.Conn) bool {
	t.Helper()
	if _, err := io.WriteString(c, upgradeRequest); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(waitTimeout))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusSwitchingProtocols
}

// A source holding MaxPendingPerSource connections that send nothing gets further ones
// closed at accept; another source still upgrades.
func TestPendingBoundPerSource(t *testing.T) {
	srv, _ := startServer(t, func(c *ServerConfig) {
		c.MaxPending, c.MaxPendingPerSource = 8, 3
		c.PendingTimeout = time.Hour // the held connections must not expire however slow the test
	})
	var held []net.Conn
	for i := range 3 {
		held = append(held, rawConn(t, srv, "127.0.0.1"))
		waitStats(t, srv, "the connection pending", func(st ServerStats) bool { return st.Pending == uint64(i+1) })
	}
	for i := range 2 {
		c := rawConn(t, srv, "127.0.0.1")
		waitClosed(t, c, "a connection over the source's bound")
		waitStats(t, srv, "the refusal counted", func(st ServerStats) bool { return st.PendingRefusedSource == uint64(i+1) })
	}
	for i, c := range held {
		if !isOpen(c) {
			t.Fatalf("held connection %d was closed", i)
		}
	}
	if !upgrades(t, rawConn(t, srv, "127.0.0.2")) {
		t.Fatal("a connection from another source was not upgraded")
	}
	st := waitStats(t, srv, "the upgrade to leave the pending set", func(st ServerStats) bool { return st.Accepted == 1 && st.Pending == 3 })
	if st.PendingEvicted != 0 || st.PendingRefusedSource != 2 {
		t.Fatalf("stats %+v: want 2 refused, none evicted", st)
	}
}

// With MaxPending connections pending, a new one closes the oldest, from any source.
func TestPendingBoundTotalEvictsOldest(t *testing.T) {
	srv, _ := startServer(t, func(c *ServerConfig) {
		c.MaxPending, c.MaxPendingPerSource = 4, 2
		c.PendingTimeout = time.Hour
	})
	var held []net.Conn
	for i, from := range []string{"127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.2"} {
		held = append(held, rawConn(t, srv, from))
		waitStats(t, srv, "the connection pending", func(st ServerStats) bool { return st.Pending == uint64(i+1) })
	}
	if !upgrades(t, rawConn(t, srv, "127.0.0.3")) {
		t.Fatal("the newest connection was not upgraded")
	}
	waitClosed(t, held[0], "the oldest pending connection")
	for i, c := range held[1:] {
		if !isOpen(c) {
			t.Fatalf("pending connection %d, not the oldest, was closed", i+1)
		}
	}
	st := waitStats(t, srv, "the eviction counted", func(st ServerStats) bool { return st.PendingEvicted == 1 && st.Accepted == 1 })
	if st.Pending != 3 {
		t.Fatalf("%d pending, want 3", st.Pending)
	}
}

// A refused request's connection is closed after the answer: a client cannot keep it by
// sending a request now and then.
func TestRefusedRequestClosesConnection(t *testing.T) {
	srv, _ := startServer(t, nil)
	for _, req := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",                            // wrong path: 404
		"GET " + DefaultPath + " HTTP/1.1\r\nHost: x\r\n\r\n",          // not an upgrade: 426
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n", // a body that never comes
	} {
		c := rawConn(t, srv, "127.0.0.1")
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(waitTimeout))
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%q: %v", req, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if !resp.Close {
			t.Fatalf("%q: answer %d without Connection: close", req, resp.StatusCode)
		}
		if _, err := br.ReadByte(); err == nil {
			t.Fatalf("%q: more after the answer", req)
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("%q: connection still open after the answer", req)
		}
	}
	waitStats(t, srv, "nothing pending", func(st ServerStats) bool { return st.Pending == 0 && st.RejectedHTTP == 3 })
}

// A connection that trickles its request is closed PendingTimeout after its accept,
// however it keeps sending.
func TestPendingDeadlineDoesNotRestart(t *testing.T) {
	const timeout = 300 * time.Millisecond
	srv, _ := startServer(t, func(c *ServerConfig) { c.PendingTimeout = timeout })
	c := rawConn(t, srv, "127.0.0.1")
	start := time.Now()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // one header byte every 20 ms, never ending the headers
		defer wg.Done()
		msg := "GET / HTTP/1.1\r\nHost: x\r\nX: " + strings.Repeat("a", 10000)
		for i := 0; i < len(msg); i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if _, err := c.Write([]byte{msg[i]}); err != nil {
				return
			}
		}
	}()
	waitClosed(t, c, "the trickling connection")
	close(stop)
	wg.Wait()
	if d := time.Since(start); d >= ReadHeaderTimeout {
		t.Fatalf("closed after %v: by net/http's header timeout, not the pending deadline", d)
	}
	waitStats(t, srv, "the expiry counted", func(st ServerStats) bool { return st.PendingExpired == 1 && st.Pending == 0 })
}

// An upgraded connection leaves the pending set: the pending deadline does not close it,
// and it does not count against the bounds.
func TestUpgradeLeavesPending(t *testing.T) {
	const timeout = 200 * time.Millisecond
	srv, conns := echoServer(t, func(c *ServerConfig) {
		c.PendingTimeout = timeout
		c.MaxPending, c.MaxPendingPerSource = 1, 1
	})
	s := newSink()
	c := dial(t, DialConfig{URL: srv.URL(), Receive: s.receive})
	nextConn(t, conns)
	waitStats(t, srv, "the upgrade to leave the pending set", func(st ServerStats) bool { return st.Accepted == 1 && st.Pending == 0 })
	time.Sleep(3 * timeout) // a negative check: the deadline would have fired by now
	checkEcho(t, c, s)
	c2 := dial(t, DialConfig{URL: srv.URL(), Receive: s.receive}) // the same source, bound 1
	nextConn(t, conns)
	checkEcho(t, c2, s)
	st := srv.Stats()
	if st.PendingExpired != 0 || st.PendingEvicted != 0 || st.PendingRefusedSource != 0 || st.Pending != 0 {
		t.Fatalf("stats %+v: the upgraded connections were counted as pending", st)
	}
}

// However connections end before an upgrade (hung up, refused, upgraded, too slow), none
// stays counted as pending.
func TestPendingAccountingUnderChurn(t *testing.T) {
	srv, _ := startServer(t, func(c *ServerConfig) {
		c.MaxPending, c.MaxPendingPerSource = 16, 16
		c.PendingTimeout = 500 * time.Millisecond
	})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				d := net.Dialer{Timeout: waitTimeout}
				c, err := d.Dial("tcp", srv.Addr().String())
				if err != nil {
					t.Error(err)
					return
				}
				switch (g + i) % 4 {
				case 0: // hang up at once
				case 1:
					_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
					_, _ = io.Copy(io.Discard, c)
				case 2:
					_, _ = io.WriteString(c, upgradeRequest)
					_ = c.SetReadDeadline(time.Now().Add(waitTimeout))
					if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
						resp.Body.Close()
					}
				case 3:
					_, _ = io.WriteString(c, "GET / HTT") // then hang up half-way
				}
				c.Close()
			}
		}()
	}
	wg.Wait()
	waitStats(t, srv, "nothing pending", func(st ServerStats) bool { return st.Pending == 0 })
	srv.pending.mu.Lock()
	defer srv.pending.mu.Unlock()
	if len(srv.pending.bySource) != 0 || srv.pending.head != nil || srv.pending.tail != nil {
		t.Fatalf("pending set not empty: %d sources", len(srv.pending.bySource))
	}
}
