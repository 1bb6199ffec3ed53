package ctl

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/internal/status"
)

// fakeTunnel stands in for the daemon: a fixed status, and a channel that a down request
// closes.
type fakeTunnel struct {
	status   status.Status
	once     sync.Once
	shutdown chan struct{}
}

func newFake() *fakeTunnel {
	return &fakeTunnel{
		status: status.Status{
			Interface:  "stt0",
			NodeName:   "alpha",
			PublicKey:  "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=",
			ListenPort: 51820,
			MTU:        1420,
			Addresses:  []string{"10.9.0.1/24", "fd09::1/64"},
			Peers: []status.Peer{{
				Name:            "beta",
				Endpoint:        "192.0.2.7:51820",
				Path:            "udp",
				AllowedPrefixes: []string{"10.9.0.2/32"},
				LastHandshake:   time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC),
				RTT:             1.25,
				TxBytes:         1 << 20,
				RxBytes:         4096,
				TxPackets:       900,
				RxPackets:       12,
				Drops:           3,
			}},
		},
		shutdown: make(chan struct{}),
	}
}

func (f *fakeTunnel) Status() status.Status { return f.status }
func (f *fakeTunnel) Shutdown()             { f.once.Do(func() { close(f.shutdown) }) }

// serve starts a server for f in a fresh state directory and closes it when the test ends.
func serve(t *testing.T, f *fakeTunnel) (*Server, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "state")
	srv, err := Listen(dir, "stt0", nil)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(f) }()
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return srv, dir
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestStatusRoundTrip(t *testing.T) {
	f := newFake()
	srv, _ := serve(t, f)
	got, err := Status(testContext(t), srv.Path())
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if !reflect.DeepEqual(got, f.status) {
		t.Errorf("Status = %+v\nwant %+v", got, f.status)
	}
}

func TestDownTriggersShutdown(t *testing.T) {
	for _, tc := range []struct {
		name    string
		stopErr error
		wantErr string
	}{
		{"clean", nil, ""},
		{"close fails", errors.New("undo routes: no such device"), "daemon: undo routes: no such device"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake()
			srv, _ := serve(t, f)
			downErr := make(chan error, 1)
			go func() { downErr <- Down(testContext(t), srv.Path()) }()

			<-f.shutdown // the daemon is asked to stop
			select {
			case err := <-downErr:
				t.Fatalf("Down returned %v before the daemon closed the tunnel", err)
			default:
			}
			if err := srv.CloseWithError(tc.stopErr); err != nil {
				t.Fatalf("CloseWithError: %v", err)
			}
			err := <-downErr
			if tc.wantErr == "" && err != nil {
				t.Fatalf("Down: %v", err)
			}
			if tc.wantErr != "" && (err == nil || err.Error() != tc.wantErr) {
				t.Fatalf("Down = %v, want %q", err, tc.wantErr)
			}
			if _, err := os.Lstat(srv.Path()); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("socket still there after close: %v", err)
			}
		})
	}
}

// rawConn speaks the protocol by hand.
type rawConn struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
}

func dialRaw(t *testing.T, path string) *rawConn {
	t.Helper()
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return &rawConn{t: t, conn: conn, br: bufio.NewReader(conn)}
}

func (r *rawConn) send(line string) {
	r.t.Helper()
	if _, err := io.WriteString(r.conn, line); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

func (r *rawConn) recv() Response {
	r.t.Helper()
	line, err := r.br.ReadBytes('\n')
	if err != nil {
		r.t.Fatalf("read response: %v", err)
	}
	var resp Response
	if err := json.Unmarshal(line, &resp); err != nil {
		r.t.Fatalf("decode %q: %v", line, err)
	}
	return resp
}

func TestUnknownAndBadRequests(t *testing.T) {
	srv, _ := serve(t, newFake())
	c := dialRaw(t, srv.Path())

	c.send(`{"op":"frobnicate"}` + "\n")
	if resp := c.recv(); resp.OK || resp.Error != `unknown op "frobnicate"` {
		t.Errorf("unknown op: got %+v", resp)
	}
	// The connection stays usable after an unknown op, and a final request may lack its
	// newline if the client half-closes.
	c.send(`{"op":"status","extra":1}`)
	if err := c.conn.(*net.UnixConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if resp := c.recv(); !resp.OK || resp.Status == nil || resp.Status.Interface != "stt0" {
		t.Errorf("status after unknown op: got %+v", resp)
	}

	c = dialRaw(t, srv.Path())
	c.send("not json\n")
	if resp := c.recv(); resp.OK || !strings.HasPrefix(resp.Error, "bad request:") {
		t.Errorf("bad json: got %+v", resp)
	}
	if _, err := c.br.ReadByte(); err != io.EOF {
		t.Errorf("connection not closed after a bad request: %v", err)
	}
}

func TestOversizedRequestRejected(t *testing.T) {
	srv, _ := serve(t, newFake())
	c := dialRaw(t, srv.Path())
	go func() {
		// The server stops reading part way; the write then fails, which is the point.
		big := append([]byte(`{"op":"status","pad":"`), bytes.Repeat([]byte("a"), MaxRequestSize)...)
		c.conn.Write(append(big, "\"}\n"...))
	}()
	resp := c.recv()
	if resp.OK || !strings.Contains(resp.Error, "request larger than 65536 bytes") {
		t.Errorf("oversized request: got %+v", resp)
	}
}

func TestConcurrentClients(t *testing.T) {
	f := newFake()
	srv, _ := serve(t, f)
	ctx := testContext(t)
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for range 32 {
		wg.Go(func() {
			st, err := Status(ctx, srv.Path())
			if err == nil && !reflect.DeepEqual(st, f.status) {
				err = errors.New("wrong status")
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

func TestSocketAndDirectoryModes(t *testing.T) {
	srv, dir := serve(t, newFake())
	fi, err := os.Lstat(srv.Path())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode = %v, want socket 0600", fi.Mode())
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Errorf("state directory mode = %v, want 0700", di.Mode().Perm())
	}
	names, err := List(dir)
	if err != nil || !reflect.DeepEqual(names, []string{"stt0"}) {
		t.Errorf("List = %v, %v; want [stt0]", names, err)
	}
}

func TestSecondListenRefused(t *testing.T) {
	_, dir := serve(t, newFake())
	if _, err := Listen(dir, "stt0", nil); !errors.Is(err, ErrRunning) {
		t.Fatalf("second Listen = %v, want ErrRunning", err)
	}
	if err := removeStale(dir, "stt0"); !errors.Is(err, ErrRunning) {
		t.Fatalf("RemoveStale of a live socket = %v, want ErrRunning", err)
	}
}

func TestStaleSocket(t *testing.T) {
	dir := t.TempDir()
	path := SocketPath(dir, "stt0")
	// A socket whose listener is gone, as a SIGKILLed daemon leaves it.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()

	ctx := testContext(t)
	if _, err := Status(ctx, path); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Status on stale socket = %v, want ErrNotRunning", err)
	}
	if err := Down(ctx, path); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Down on stale socket = %v, want ErrNotRunning", err)
	}
	if _, err := Status(ctx, SocketPath(dir, "none")); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Status on missing socket = %v, want ErrNotRunning", err)
	}

	// A new daemon replaces the stale socket.
	srv, err := Listen(dir, "stt0", nil)
	if err != nil {
		t.Fatalf("Listen over stale socket: %v", err)
	}
	go srv.Serve(newFake())
	if _, err := Status(ctx, path); err != nil {
		t.Fatalf("Status: %v", err)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	// The lock is released: the interface can be served again, and RemoveStale agrees.
	if err := removeStale(dir, "stt0"); err != nil {
		t.Fatalf("RemoveStale after close: %v", err)
	}
}

func TestRemoveStale(t *testing.T) {
	dir := t.TempDir()
	path := SocketPath(dir, "stt0")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if err := removeStale(dir, "stt0"); err != nil {
		t.Fatalf("RemoveStale: %v", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale socket not removed: %v", err)
	}
	if err := removeStale(filepath.Join(dir, "missing"), "stt0"); err != nil {
		t.Errorf("RemoveStale in a missing directory: %v", err)
	}
}

func TestCloseBeforeServe(t *testing.T) {
	dir := t.TempDir()
	srv, err := Listen(dir, "stt0", nil)
	if err != nil {
		t.Fatal(err)
	}
	// A client connected while the daemon is still starting waits in the backlog...
	conn, err := net.Dial("unix", srv.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, `{"op":"status"}`+"\n"); err != nil {
		t.Fatal(err)
	}
	// ...and is told nothing but the end when the start fails.
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Fatal("read after close succeeded")
	}
	if err := srv.Serve(newFake()); err != nil {
		t.Errorf("Serve after Close = %v, want nil", err)
	}
}

// oneShotDaemon listens on a fresh socket and, on the first connection, reads one
// request line and hands the connection to then, closing it afterwards. It returns
// the socket's path.
func oneShotDaemon(t *testing.T, then func(conn net.Conn)) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "x.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		bufio.NewReader(conn).ReadBytes('\n')
		then(conn)
	}()
	return path
}

func TestDownWithoutConfirmation(t *testing.T) {
	// A daemon that acknowledges and then dies.
	path := oneShotDaemon(t, func(conn net.Conn) {
		io.WriteString(conn, `{"ok":true,"pid":1}`+"\n")
	})
	if err := Down(testContext(t), path); !errors.Is(err, ErrNoConfirmation) {
		t.Fatalf("Down = %v, want ErrNoConfirmation", err)
	}
}

func TestDaemonHangsUp(t *testing.T) {
	// A daemon that dies with a request in flight is not running.
	path := oneShotDaemon(t, func(net.Conn) {})
	if _, err := Status(testContext(t), path); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Status = %v, want ErrNotRunning", err)
	}
}

func TestClientContextEnds(t *testing.T) {
	// A daemon that never answers: the client gives up when its context ends.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	path := oneShotDaemon(t, func(conn net.Conn) {
		cancel()
		conn.Read(make([]byte, 1)) // until the client hangs up
	})
	if _, err := Status(ctx, path); !errors.Is(err, context.Canceled) {
		t.Fatalf("Status = %v, want context.Canceled", err)
	}
}

func TestCheckName(t *testing.T) {
	for _, name := range []string{"", ".", "..", "a/b", "a\x00b", strings.Repeat("x", 120)} {
		if err := checkName("/run/stt-tun", name); err == nil {
			t.Errorf("checkName(%q) accepted", name)
		}
	}
	if err := checkName("/run/stt-tun", "stt0"); err != nil {
		t.Errorf("checkName(stt0): %v", err)
	}
}

func TestReadLine(t *testing.T) {
	for _, tc := range []struct {
		in    string
		max   int
		lines []string
		err   error
	}{
		{in: "a\nbb\n", max: 8, lines: []string{"a\n", "bb\n"}, err: io.EOF},
		{in: "a\nbb", max: 8, lines: []string{"a\n", "bb"}, err: io.EOF},
		{in: "", max: 8, err: io.EOF},
		{in: "1234567\n", max: 8, lines: []string{"1234567\n"}, err: io.EOF},
		{in: "12345678\n", max: 8, err: errTooLarge},
		{in: strings.Repeat("x", 100), max: 64, err: errTooLarge},
	} {
		// A small buffer exercises lines that span several reads.
		r := bufio.NewReaderSize(strings.NewReader(tc.in), 16)
		var got []string
		var err error
		for {
			var line []byte
			line, err = readLine(r, tc.max)
			if err != nil {
				break
			}
			got = append(got, string(line))
		}
		if !reflect.DeepEqual(got, tc.lines) || !errors.Is(err, tc.err) {
			t.Errorf("readLine(%q, %d) = %q, %v; want %q, %v", tc.in, tc.max, got, err, tc.lines, tc.err)
		}
	}
}

// FuzzRequest feeds arbitrary bytes through the server's request parser.
func FuzzRequest(f *testing.F) {
	f.Add([]byte(`{"op":"status"}` + "\n"))
	f.Add([]byte(`{"op":"down"}` + "\n" + `{"op":"x"}`))
	f.Add([]byte("{\"op\":\n\n\xff"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReaderSize(bytes.NewReader(data), 16)
		for {
			line, err := readLine(r, 256)
			if err != nil {
				return
			}
			if len(line) > 256 {
				t.Fatalf("line of %d bytes exceeds the limit", len(line))
			}
			if req, err := decodeRequest(line); err == nil {
				b, _ := json.Marshal(req)
				if _, err := decodeRequest(b); err != nil {
					t.Fatalf("re-encoded request %s does not decode: %v", b, err)
				}
			}
		}
	})
}

// emfileListener fails its first n accepts with EMFILE, as a daemon out of file
// descriptors sees them, then accepts from the listener under it.
type emfileListener struct {
	net.Listener
	mu sync.Mutex
	n  int
}

func (l *emfileListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if l.n > 0 {
		l.n--
		l.mu.Unlock()
		return nil, &net.OpError{Op: "accept", Net: "unix", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	l.mu.Unlock()
	return l.Listener.Accept()
}

// Out of file descriptors, the control socket keeps serving: a failed accept is retried,
// not the end of Serve (which would stop the daemon).
func TestServeSurvivesEMFILE(t *testing.T) {
	f := newFake()
	dir := filepath.Join(t.TempDir(), "state")
	srv, err := Listen(dir, "stt0", nil)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	srv.ln.Listener = &emfileListener{Listener: srv.ln.Listener, n: 5}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(f) }()
	defer func() {
		if err := srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	if _, err := Status(testContext(t), srv.Path()); err != nil {
		t.Fatalf("Status after the accepts failed with EMFILE: %v", err)
	}
}

// removeStale removes the control socket of interface name if no daemon holds it, as
// after the daemon was killed, the way stt-tun down does it (TryLock, then
// Lock.RemoveStale). It reports ErrRunning if a daemon does.
func removeStale(dir, name string) error {
	if err := checkName(dir, name); err != nil {
		return err
	}
	if _, err := os.Lstat(SocketPath(dir, name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	l, err := TryLock(dir, name)
	if err != nil {
		return err
	}
	defer l.Release()
	return l.RemoveStale()
}
