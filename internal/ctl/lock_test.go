package ctl

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLockTellsADaemonAliveWithoutItsSocket: whether a daemon is gone is decided by its
// lock, not by its socket: with the socket removed, the lock still says it runs.
func TestLockTellsADaemonAliveWithoutItsSocket(t *testing.T) {
	srv, dir := serve(t, newFake())
	if err := os.Remove(srv.Path()); err != nil {
		t.Fatal(err)
	}
	if _, err := Status(testContext(t), srv.Path()); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Status without the socket: %v, want ErrNotRunning", err)
	}
	if held, err := Held(dir, "stt0"); err != nil || !held {
		t.Errorf("Held while the daemon runs = %v, %v; want true", held, err)
	}
	if l, err := TryLock(dir, "stt0"); !errors.Is(err, ErrRunning) {
		if l != nil {
			l.Release()
		}
		t.Errorf("TryLock while the daemon runs = %v, want ErrRunning", err)
	}
	srv.Close()
	if held, err := Held(dir, "stt0"); err != nil || held {
		t.Errorf("Held after the daemon closed = %v, %v; want false", held, err)
	}
	l, err := TryLock(dir, "stt0")
	if err != nil {
		t.Fatalf("TryLock after the daemon closed: %v", err)
	}
	// While it is held, no daemon can start.
	if _, err := Listen(dir, "stt0", nil); !errors.Is(err, ErrRunning) {
		t.Errorf("Listen while another holds the lock = %v, want ErrRunning", err)
	}
	l.Release()
}

func TestHeldCreatesNothing(t *testing.T) {
	dir := t.TempDir()
	if held, err := Held(dir, "stt0"); err != nil || held {
		t.Errorf("Held without a lock file = %v, %v", held, err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("Held created %v", entries)
	}
}

// TestListenDoesNotFollowPlantedLinks: a symbolic link where the lock file goes is
// refused, and what it points to is left as it was.
func TestListenDoesNotFollowPlantedLinks(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("precious\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(dir, "stt0"+lockSuffix)); err != nil {
		t.Fatal(err)
	}
	if srv, err := Listen(dir, "stt0", nil); err == nil {
		srv.Close()
		t.Error("Listen with a link planted as its lock file succeeded")
	}
	if fi, err := os.Stat(victim); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("link target changed: %v %v", fi, err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
		t.Errorf("link target changed: %q", b)
	}
}

// TestClientRefusesSymlinkedSocket: a link in the socket's place, to some other
// daemon's socket, is not connected to.
func TestClientRefusesSymlinkedSocket(t *testing.T) {
	srv, dir := serve(t, newFake())
	link := SocketPath(dir, "stt1")
	if err := os.Symlink(srv.Path(), link); err != nil {
		t.Fatal(err)
	}
	if _, err := Status(testContext(t), link); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Status through a link: %v, want refusal", err)
	}
}

func TestListenRefusesUnsafeStateDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	srv, err := Listen(dir, "stt0", nil)
	if err == nil {
		srv.Close()
		t.Fatal("Listen in a world-writable state dir succeeded")
	}
	if !strings.Contains(err.Error(), "writable by group or others") {
		t.Errorf("Listen error %q does not say why", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("Listen left %v", entries)
	}
}
