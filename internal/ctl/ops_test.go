package ctl

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/internal/status"
)

// opsFake is a daemon that also reloads and pings: peer "beta" answers, "silent" has a
// session but does not answer, "new" never completes its handshake, and any other name
// is unknown.
type opsFake struct {
	*fakeTunnel
	changes   []string
	reloadErr error
	reloads   atomic.Int32
	lastWait  atomic.Int64 // how long the last ping was allowed to wait, in ns
}

func (f *opsFake) Reload() ([]string, error) {
	f.reloads.Add(1)
	return f.changes, f.reloadErr
}

func (f *opsFake) Ping(ctx context.Context, peer string) (status.PingReply, error) {
	if dl, ok := ctx.Deadline(); ok {
		f.lastWait.Store(int64(time.Until(dl)))
	}
	switch peer {
	case "beta":
		return status.PingReply{RTT: 1500 * time.Microsecond, Path: "ws", Endpoint: "192.0.2.7:443"}, nil
	case "silent":
		<-ctx.Done()
		return status.PingReply{}, fmt.Errorf("no reply from silent: %w", ctx.Err())
	case "new":
		<-ctx.Done()
		return status.PingReply{}, fmt.Errorf("no session with new: the handshake did not complete: %w", ctx.Err())
	}
	return status.PingReply{}, fmt.Errorf("%w named %q on stt0", status.ErrUnknownPeer, peer)
}

func serveTunnel(t *testing.T, tu Tunnel) *Server {
	t.Helper()
	srv, err := Listen(filepath.Join(t.TempDir(), "state"), "stt0", nil)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(tu) }()
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return srv
}

func TestReloadOp(t *testing.T) {
	f := &opsFake{fakeTunnel: newFake(), changes: []string{`peer "gamma" added`, "route 10.9.3.0/24 added"}}
	srv := serveTunnel(t, f)
	changes, err := Reload(testContext(t), srv.Path())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(changes, f.changes) || f.reloads.Load() != 1 {
		t.Errorf("Reload = %q after %d reloads, want %q after 1", changes, f.reloads.Load(), f.changes)
	}

	f.changes = nil
	if changes, err := Reload(testContext(t), srv.Path()); err != nil || len(changes) != 0 {
		t.Errorf("Reload with nothing changed = %q, %v", changes, err)
	}

	f.reloadErr = errors.New("/etc/stt-tun/alpha.toml:7: interface: mtu = 10 is too small")
	_, err = Reload(testContext(t), srv.Path())
	var de *DaemonError
	if !errors.As(err, &de) || de.Op != OpReload || de.Msg != f.reloadErr.Error() {
		t.Errorf("refused reload: %v (%#v), want a DaemonError with the daemon's message", err, de)
	}
}

func TestReloadOpUnsupported(t *testing.T) {
	srv := serveTunnel(t, newFake()) // no Reload method
	_, err := Reload(testContext(t), srv.Path())
	if err == nil || !strings.Contains(err.Error(), "this daemon cannot reload") {
		t.Errorf("Reload on a daemon that cannot: %v", err)
	}
}

func TestPingOp(t *testing.T) {
	f := &opsFake{fakeTunnel: newFake()}
	srv := serveTunnel(t, f)
	ctx := testContext(t)

	got, err := Ping(ctx, srv.Path(), "beta", 0)
	if err != nil {
		t.Fatal(err)
	}
	want := PingResult{Peer: "beta", Replied: true, RTT: 1.5, Path: "ws", Endpoint: "192.0.2.7:443"}
	if got != want {
		t.Errorf("Ping = %+v, want %+v", got, want)
	}
	if w := time.Duration(f.lastWait.Load()); w > DefaultPingTimeout || w < DefaultPingTimeout/2 {
		t.Errorf("default wait %v, want %v", w, DefaultPingTimeout)
	}

	for _, tc := range []struct{ peer, reason string }{
		{"silent", "no reply within 50ms"},
		{"new", "no reply within 50ms (no session with new: the handshake did not complete)"},
	} {
		start := time.Now()
		got, err := Ping(ctx, srv.Path(), tc.peer, 50*time.Millisecond)
		if err != nil {
			t.Fatalf("%s: %v", tc.peer, err)
		}
		if got.Replied || got.Reason != tc.reason || got.Peer != tc.peer {
			t.Errorf("%s: %+v, want no reply: %q", tc.peer, got, tc.reason)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("%s: a 50ms ping took %v", tc.peer, d)
		}
	}

	_, err = Ping(ctx, srv.Path(), "nobody", time.Second)
	var de *DaemonError
	if !errors.As(err, &de) || !strings.Contains(de.Msg, `no such peer named "nobody"`) {
		t.Errorf("unknown peer: %v", err)
	}

	// The wait is capped.
	if _, err := Ping(ctx, srv.Path(), "beta", time.Hour); err != nil {
		t.Fatal(err)
	}
	if w := time.Duration(f.lastWait.Load()); w > MaxPingTimeout {
		t.Errorf("wait %v exceeds the cap %v", w, MaxPingTimeout)
	}
}

func TestPingOpBadRequests(t *testing.T) {
	srv := serveTunnel(t, &opsFake{fakeTunnel: newFake()})
	c := dialRaw(t, srv.Path())
	c.send(`{"op":"ping"}` + "\n")
	if resp := c.recv(); resp.OK || !strings.Contains(resp.Error, "no peer named") {
		t.Errorf("ping without a peer: %+v", resp)
	}
	c.send(`{"op":"ping","peer":"beta","timeout_ms":-5}` + "\n")
	if resp := c.recv(); resp.OK || !strings.Contains(resp.Error, "negative") {
		t.Errorf("negative timeout: %+v", resp)
	}
	// The connection stays usable for the next request.
	c.send(`{"op":"ping","peer":"beta"}` + "\n")
	if resp := c.recv(); !resp.OK || resp.Ping == nil || !resp.Ping.Replied {
		t.Errorf("ping after bad requests: %+v", resp)
	}

	plain := serveTunnel(t, newFake())
	if _, err := Ping(testContext(t), plain.Path(), "beta", 0); err == nil || !strings.Contains(err.Error(), "this daemon cannot ping") {
		t.Errorf("Ping on a daemon that cannot: %v", err)
	}
}

// TestPingEndsWithServer: a ping in progress ends when the server closes.
func TestPingEndsWithServer(t *testing.T) {
	srv, err := Listen(filepath.Join(t.TempDir(), "state"), "stt0", nil)
	if err != nil {
		t.Fatal(err)
	}
	f := &opsFake{fakeTunnel: newFake()}
	go srv.Serve(f)
	done := make(chan error, 1)
	go func() {
		_, err := Ping(context.Background(), srv.Path(), "silent", time.Minute)
		done <- err
	}()
	// Close only once the daemon is waiting for the reply.
	deadline := time.Now().Add(10 * time.Second)
	for f.lastWait.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the ping never reached the daemon")
		}
		time.Sleep(time.Millisecond)
	}
	closed := make(chan struct{})
	go func() { srv.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close waited for a ping in progress")
	}
	select {
	case err := <-done:
		if err == nil {
			t.Error("Ping of a peer that never answers succeeded when the server closed")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the client still waits")
	}
}
