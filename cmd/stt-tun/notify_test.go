package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/tunnel"
)

// fakeNotifySocket listens where NOTIFY_SOCKET points, as systemd does for a
// Type=notify service.
func fakeNotifySocket(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv(notifySocketEnv, name)
	return c
}

// receive returns the next notification, or "" if none comes within d.
func receive(t *testing.T, c *net.UnixConn, d time.Duration) string {
	t.Helper()
	buf := make([]byte, 4096)
	c.SetReadDeadline(time.Now().Add(d))
	n, err := c.Read(buf)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(buf[:n])
}

// TestNotifyReadyOnlyAfterStart runs the daemon in the foreground under a fake service
// manager: no READY=1 while tunnel.Start is still running, READY=1 once it returned,
// RELOADING=1 and READY=1 around a reload, and STOPPING=1 on the way down.
func TestNotifyReadyOnlyAfterStart(t *testing.T) {
	h := newHarness(t)
	cfg := h.writeConfig("alpha", "stt9", "alpha")
	sock := fakeNotifySocket(t, filepath.Join(t.TempDir(), "notify"))

	entered, release := make(chan struct{}), make(chan struct{})
	var returned atomic.Bool
	started := make(chan *fakeTunnel, 1)
	e := defaultEnv()
	var stderr bytes.Buffer
	e.stdout, e.stderr = new(bytes.Buffer), &stderr
	e.start = func(ctx context.Context, c *config.Config, o tunnel.Options) (daemonTunnel, error) {
		close(entered)
		<-release // addresses and routes are "being configured"
		tu, err := fakeStart(started)(ctx, c, o)
		returned.Store(true)
		return tu, err
	}
	exited := make(chan int, 1)
	go func() { exited <- run(context.Background(), []string{"stt-tun", "up", "--foreground", "-c", cfg}, e) }()

	<-entered
	if msg := receive(t, sock, 300*time.Millisecond); msg != "" {
		t.Fatalf("notified %q while tunnel.Start had not returned", msg)
	}
	close(release)
	msg := receive(t, sock, 10*time.Second)
	if !returned.Load() {
		t.Fatal("notified before tunnel.Start returned")
	}
	want := fmt.Sprintf("READY=1\nSTATUS=stt9 up with 0 peers\nMAINPID=%d", os.Getpid())
	if msg != want {
		t.Fatalf("notification %q, want %q", msg, want)
	}
	f := <-started

	// A reload over the control socket, as the unit's ExecReload asks for it, is framed
	// by RELOADING=1 and READY=1 (the fake tunnel refuses it; that changes nothing).
	h.run("", "reload", "stt9")
	if msg := receive(t, sock, 10*time.Second); !strings.HasPrefix(msg, "RELOADING=1\n") {
		t.Errorf("on reload: notification %q, want RELOADING=1", msg)
	}
	if msg := receive(t, sock, 10*time.Second); msg != want {
		t.Errorf("after reload: notification %q, want %q", msg, want)
	}

	if r := h.run("", "down", "stt9"); r.code != 0 {
		t.Fatalf("down: %+v", r)
	}
	if msg := receive(t, sock, 10*time.Second); !strings.HasPrefix(msg, "STOPPING=1\n") {
		t.Errorf("on down: notification %q, want STOPPING=1", msg)
	}
	if code := <-exited; code != 0 || !f.isClosed() {
		t.Errorf("daemon exit %d, tunnel closed %v; stderr:\n%s", code, f.isClosed(), stderr.String())
	}
}

// TestNotifyNotReadyOnFailedStart: a start that fails reports no readiness; systemd
// learns of the failure from the exit status.
func TestNotifyNotReadyOnFailedStart(t *testing.T) {
	h := newHarness(t)
	cfg := h.writeConfig("alpha", "stt9", "fail")
	sock := fakeNotifySocket(t, filepath.Join(t.TempDir(), "notify"))
	if r := h.run("", "up", "--foreground", "-c", cfg); r.code != 1 {
		t.Fatalf("up: %+v", r)
	}
	if msg := receive(t, sock, 100*time.Millisecond); msg != "" {
		t.Errorf("notified %q after a failed start", msg)
	}
}

func TestNotifyAbstractSocket(t *testing.T) {
	name := fmt.Sprintf("@stt-tun-test-notify-%d-%d", os.Getpid(), time.Now().UnixNano())
	sock := fakeNotifySocket(t, name)
	n := newNotifier(slog.New(slog.DiscardHandler))
	if n == nil {
		t.Fatal("no notifier for an abstract socket name")
	}
	n.reloading()
	msg := receive(t, sock, 5*time.Second)
	if !strings.HasPrefix(msg, "RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC=") || strings.HasSuffix(msg, "=0") {
		t.Errorf("notification %q", msg)
	}
	n.ready("stt0 up\nwith a newline")
	if msg := receive(t, sock, 5*time.Second); !strings.HasPrefix(msg, "READY=1\nSTATUS=stt0 up; with a newline\n") {
		t.Errorf("notification %q", msg)
	}
}

func TestNotifyWithoutSocket(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	t.Setenv(notifySocketEnv, "")
	if n := newNotifier(log); n != nil {
		t.Error("a notifier without NOTIFY_SOCKET")
	}
	var nilNotifier *notifier
	nilNotifier.ready("up") // does nothing, and does not panic
	t.Setenv(notifySocketEnv, "relative/path")
	if n := newNotifier(log); n != nil || !strings.Contains(logs.String(), "ignoring NOTIFY_SOCKET") {
		t.Errorf("relative NOTIFY_SOCKET: notifier %v, log %q", n, logs.String())
	}
	// A socket nobody listens on is reported once, and the daemon carries on.
	logs.Reset()
	t.Setenv(notifySocketEnv, filepath.Join(t.TempDir(), "gone"))
	n := newNotifier(log)
	n.ready("up")
	n.stopping()
	if c := strings.Count(logs.String(), "cannot notify the service manager"); c != 1 {
		t.Errorf("%d warnings about a missing socket, want 1:\n%s", c, logs.String())
	}
}
