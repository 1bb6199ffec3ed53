package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stt-tun/stt-tun/internal/status"
)

// TestDownLeftovers covers what the systemd unit runs after the daemon exits
// (ExecStopPost): clean up after a crash, and leave everything else alone.
func TestDownLeftovers(t *testing.T) {
	t.Run("running daemon left alone", func(t *testing.T) {
		h := newHarness(t)
		serveFake(t, h.dir, status.Status{Interface: "stt9"})
		if r := h.run("", "down", "--leftovers", "stt9"); r.code != 0 || r.stderr != "" {
			t.Errorf("down --leftovers: %+v", r)
		}
		if len(h.undone) != 0 {
			t.Errorf("undo called for a running daemon: %v", h.undone)
		}
		if r := h.run("", "status", "stt9"); r.code != 0 {
			t.Errorf("daemon gone after down --leftovers: %+v", r)
		}
	})
	t.Run("crashed daemon cleaned up", func(t *testing.T) {
		h := newHarness(t)
		h.undo = func(string, string) error { return nil }
		staleSocket(t, h.dir, "stt9")
		r := h.run("", "down", "--leftovers", "stt9")
		if r.code != 0 || r.stderr != "stt-tun: stt9: the daemon was gone (killed?); undid its routing from the journal\n" {
			t.Errorf("down --leftovers: %+v", r)
		}
		if len(h.undone) != 1 || h.undone[0] != "stt9" {
			t.Errorf("undo called for %v", h.undone)
		}
	})
	t.Run("crashed daemon with a kill switch: kept", func(t *testing.T) {
		h := newHarness(t)
		h.undo = func(string, string) error { return nil }
		h.killSwitch = func(string, string) (bool, error) { return true, nil }
		staleSocket(t, h.dir, "stt9")
		r := h.run("", "down", "--leftovers", "stt9")
		if r.code != 0 || !strings.Contains(r.stderr, "kill switch keeps blocking") || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("down --leftovers: %+v", r)
		}
		if len(h.undone) != 0 {
			t.Errorf("undo called for %v; the kill switch would have opened", h.undone)
		}
		// A plain down is the way out.
		if r := h.run("", "down", "stt9"); r.code != 0 || len(h.undone) != 1 {
			t.Errorf("down after down --leftovers kept the kill switch: %+v, undone %v", r, h.undone)
		}
	})
	t.Run("clean stop: nothing to do", func(t *testing.T) {
		h := newHarness(t)
		if r := h.run("", "down", "--leftovers", "stt9"); r.code != 0 || r.stderr != "" || r.stdout != "" {
			t.Errorf("down --leftovers: %+v", r)
		}
	})
	t.Run("undo fails", func(t *testing.T) {
		h := newHarness(t)
		h.undo = func(string, string) error { return errors.New("routing: undo stt9: permission denied") }
		staleSocket(t, h.dir, "stt9")
		checkOneLineError(t, h.run("", "down", "--leftovers", "stt9"), 1, "permission denied")
	})
}

// TestBackgroundDaemonShowsItsProgram: a daemon started by `up` runs /proc/self/exe,
// which ps, ss and top would show as "exe" and "/proc/self/exe"; it renames itself
// stt-tun, and its argv[0] is the program's path.
func TestBackgroundDaemonShowsItsProgram(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if r, err := filepath.EvalSymlinks(self); err == nil {
		self = r
	}
	h := newHarness(t)
	t.Setenv(daemonEnvVar, "1")
	h.writeConfig("alpha", "stt9", "alpha")
	if r := h.run("", "up", "alpha"); r.code != 0 {
		t.Fatalf("up: %+v", r)
	}
	t.Cleanup(func() { h.run("", "down", "stt9") })
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	found := 0
	for _, p := range procs {
		cmdline, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(cmdline, []byte("\x00"+h.dir+"\x00")) {
			continue
		}
		found++
		comm, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "comm"))
		if string(comm) != "stt-tun\n" {
			t.Errorf("daemon %s is named %q", filepath.Dir(p), comm)
		}
		if argv0, _, _ := bytes.Cut(cmdline, []byte{0}); string(argv0) != self {
			t.Errorf("daemon %s has argv[0] %q, want %q", filepath.Dir(p), argv0, self)
		}
	}
	if found != 1 {
		t.Errorf("found %d daemons with state directory %s", found, h.dir)
	}
}

// TestLeftoversFoundAfterConfigBroken: after a daemon died, `down --leftovers NAME`
// (the systemd unit's ExecStopPost) undoes the journal of the interface NAME.toml
// started, although the file was edited meanwhile into one that does not parse and
// names another interface. A clean stop leaves no record behind.
func TestLeftoversFoundAfterConfigBroken(t *testing.T) {
	h := newHarness(t)
	t.Setenv(daemonEnvVar, "1")
	h.writeConfig("alpha", "stt9", "alpha")
	if r := h.run("", "up", "alpha"); r.code != 0 {
		t.Fatalf("up: %+v", r)
	}
	if got := readSource(sourcePath(h.dir, "stt9")); got != filepath.Join(h.dir, "alpha.toml") {
		t.Errorf("record of stt9 is %q", got)
	}
	if r := h.run("", "down", "alpha"); r.code != 0 {
		t.Fatalf("down: %+v", r)
	}
	if _, err := os.Lstat(sourcePath(h.dir, "stt9")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("record left after a clean stop: %v", err)
	}

	h.writeConfig("crashing", "stt7", "crash")
	if r := h.run("", "up", "crashing"); r.code != 1 {
		t.Fatalf("up crashing: %+v", r)
	}
	h.write("crashing.toml", "[interface]\nname = \"stt6\"\nbogus = \n")
	h.undo = func(string, string) error { return nil } // a journal was there, and is undone
	r := h.run("", "down", "--leftovers", "crashing")
	if r.code != 0 || r.stderr != "stt-tun: stt7: the daemon was gone (killed?); undid its routing from the journal\n" {
		t.Errorf("down --leftovers crashing: %+v", r)
	}
	if len(h.undone) != 1 || h.undone[0] != "stt7" {
		t.Errorf("undo called for %v, want stt7", h.undone)
	}
	if _, err := os.Lstat(sourcePath(h.dir, "stt7")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("record left after the leftovers were undone: %v", err)
	}
	// Now there is nothing left, and nothing to do.
	h.undone = nil
	h.undo = func(string, string) error { return os.ErrNotExist }
	if r := h.run("", "down", "--leftovers", "crashing"); r.code != 0 || r.stderr != "" || len(h.undone) != 1 || h.undone[0] != "crashing" {
		t.Errorf("second down --leftovers: %+v, undone %v", r, h.undone)
	}
}
