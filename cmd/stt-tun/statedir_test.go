package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stt-tun/stt-tun/internal/ctl"
	"github.com/stt-tun/stt-tun/routing"
)

// leaveJournal leaves a routing journal for link, as a daemon killed with SIGKILL does
// (with its stale socket).
func leaveJournal(t *testing.T, dir, link string) {
	t.Helper()
	j := fmt.Sprintf(`{"version":1,"link":%q,"ifindex":7,"changes":[]}`, link)
	if err := os.WriteFile(routing.StatePath(dir, link), []byte(j), 0o600); err != nil {
		t.Fatal(err)
	}
	staleSocket(t, dir, link)
}

// dirNames lists the names in dir.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// TestStatusListsDaemonGone: an interface whose daemon died and left its journal is
// listed, in text and JSON, with what to do about it; status NAME says so and fails.
func TestStatusListsDaemonGone(t *testing.T) {
	h := newHarness(t)
	serveFake(t, h.dir, sampleStatus()[0]) // stt0 runs
	leaveJournal(t, h.dir, "stt9")
	// The state directory is not the default: the command to run names it.
	line := "stt9: daemon gone, run 'stt-tun --state-dir " + h.dir + " down stt9'"
	// A journal without a socket is listed too.
	if err := os.WriteFile(routing.StatePath(h.dir, "stt8"), []byte(`{}`), 0o600); err != nil {
		t.Fatal(err)
	}

	r := h.run("", "status")
	if r.code != 0 || !strings.Contains(r.stdout, "interface: stt0\n") ||
		!strings.HasSuffix(r.stdout, "\n\nstt8: daemon gone, run 'stt-tun --state-dir "+h.dir+" down stt8'\n"+line+"\n") {
		t.Errorf("status: %+v, want stt0 and then the stt8 and stt9 lines", r)
	}

	r = h.run("", "status", "--json")
	var all []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &all); r.code != 0 || err != nil {
		t.Fatalf("status --json: %+v: %v", r, err)
	}
	if len(all) != 3 || all[0]["interface"] != "stt0" || all[0]["state"] != "up" ||
		all[1]["interface"] != "stt8" || all[1]["state"] != "daemon_gone" ||
		all[2]["interface"] != "stt9" || all[2]["state"] != "daemon_gone" {
		t.Errorf("status --json = %v, want stt0 up, stt8 and stt9 daemon_gone", all)
	}

	checkOneLineError(t, h.run("", "status", "stt9"), 1, line)

	r = h.run("", "status", "--json", "stt9")
	var one map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &one); err != nil || one["state"] != "daemon_gone" || one["interface"] != "stt9" {
		t.Errorf("status --json stt9: %+v (%v), want a daemon_gone object", r, err)
	}
	if r.code != 1 || r.stderr != "stt-tun: "+line+"\n" {
		t.Errorf("status --json stt9: exit %d, stderr %q; want 1 and the line", r.code, r.stderr)
	}

	// A daemon that holds its lock is alive, whatever became of its socket.
	l, err := ctl.TryLock(h.dir, "stt9")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	r = h.run("", "status")
	if strings.Contains(r.stdout, "stt9: daemon gone") || r.code != 1 || !strings.Contains(r.stderr, "holds the lock") {
		t.Errorf("status while stt9's lock is held: %+v, want no 'daemon gone' and an error", r)
	}
}

// TestDownLeavesRoutingOfADaemonThatHoldsItsLock: a missing or dead socket does not
// make a daemon gone; while one holds the interface's lock, down undoes nothing.
func TestDownLeavesRoutingOfADaemonThatHoldsItsLock(t *testing.T) {
	h := newHarness(t)
	h.undo = func(string, string) error { return nil }
	leaveJournal(t, h.dir, "stt9")
	l, err := ctl.TryLock(h.dir, "stt9") // the daemon, still running
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"down", "stt9"}, {"down", "--leftovers", "stt9"}} {
		checkOneLineError(t, h.run("", args...), 1, "stt9: its daemon is running")
	}
	if len(h.undone) != 0 {
		t.Errorf("undo ran for %v while the daemon holds its lock", h.undone)
	}
	l.Release()
	// Gone now: down undoes the journal.
	if r := h.run("", "down", "stt9"); r.code != 0 || !strings.Contains(r.stderr, "undid its routing") {
		t.Errorf("down after the daemon is gone: %+v", r)
	}
}

// linkExists has up find a link of the interface's name already there, described by
// what, as tun.CheckFree words it.
func (h *harness) linkExists(what string) {
	h.linkFree = func(name string) error {
		return fmt.Errorf("a link named %s already exists (%s)", name, what)
	}
}

// TestUpRefusesExistingLink: a link of the interface's name is never adopted; up says
// what is there in one line and creates nothing in the state directory.
func TestUpRefusesExistingLink(t *testing.T) {
	h := newHarness(t)
	h.writeConfig("alpha", "stt9", "alpha")
	h.linkExists("tun, not created by stt-tun")
	state := filepath.Join(t.TempDir(), "state")
	before := dirNames(t, h.dir)
	for _, args := range [][]string{{"up", "--foreground", "alpha"}, {"up", "alpha"}} {
		r := h.run("", append([]string{"--state-dir", state}, args...)...)
		checkOneLineError(t, r, 1, "a link named stt9 already exists (tun, not created by stt-tun)")
	}
	if _, err := os.Lstat(state); err == nil {
		t.Errorf("up created the state directory: %v", dirNames(t, state))
	}
	if after := dirNames(t, h.dir); !slices.Equal(before, after) {
		t.Errorf("up left files: %v, before %v", after, before)
	}
}

// TestUnsafeStateDirRefused: a state directory that others can write, or that another
// user owns, is refused by every command that uses it, before anything in it is
// opened: links planted there are not followed and a planted journal is not undone.
func TestUnsafeStateDirRefused(t *testing.T) {
	for _, c := range []struct {
		name string
		make func(t *testing.T, dir string)
		want string
	}{
		{"world-writable", func(t *testing.T, dir string) { os.Chmod(dir, 0o777) }, "writable by group or others"},
		{"group-writable", func(t *testing.T, dir string) { os.Chmod(dir, 0o770) }, "writable by group or others"},
		{"another user's", func(t *testing.T, dir string) {
			if os.Geteuid() != 0 {
				t.Skip("needs root (chown)")
			}
			os.Chown(dir, 65534, 65534)
		}, "owned by uid 65534"},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			h.undo = func(string, string) error { return nil }
			h.writeConfig("alpha", "stt9", "alpha")
			state := filepath.Join(t.TempDir(), "state")
			if err := os.Mkdir(state, 0o700); err != nil {
				t.Fatal(err)
			}
			victim := filepath.Join(t.TempDir(), "victim")
			if err := os.WriteFile(victim, []byte("root's file\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			// What another user could plant: links for root to follow, a journal
			// and a dead socket for down to believe.
			for _, name := range []string{"stt9.log", "stt9.lock", "stt9.json.tmp"} {
				if err := os.Symlink(victim, filepath.Join(state, name)); err != nil {
					t.Fatal(err)
				}
			}
			leaveJournal(t, state, "stt8")
			c.make(t, state)
			before := dirNames(t, state)

			for _, args := range [][]string{
				{"up", "alpha"},
				{"up", "--foreground", "alpha"},
				{"down", "stt8"},
				{"down", "--leftovers", "stt8"},
				{"status"},
				{"status", "stt8"},
			} {
				r := h.run("", append([]string{"--state-dir", state}, args...)...)
				checkOneLineError(t, r, 1, c.want)
				if !strings.Contains(r.stderr, state) {
					t.Errorf("%v: error %q does not name the directory", args, r.stderr)
				}
			}
			if len(h.undone) != 0 {
				t.Errorf("undo ran for %v", h.undone)
			}
			if after := dirNames(t, state); !slices.Equal(before, after) {
				t.Errorf("state directory changed: %v, before %v", after, before)
			}
			if b, _ := os.ReadFile(victim); string(b) != "root's file\n" {
				t.Errorf("a planted link was followed: the victim now holds %q", b)
			}
		})
	}
}

// TestUpRefusedWhileDaemonHoldsLock: a daemon whose socket is gone still runs; up says
// so rather than blame the link that daemon made.
func TestUpRefusedWhileDaemonHoldsLock(t *testing.T) {
	h := newHarness(t)
	h.writeConfig("alpha", "stt9", "alpha")
	h.linkExists("tun, created by stt-tun: is it up under another --state-dir?")
	l, err := ctl.TryLock(h.dir, "stt9")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	checkOneLineError(t, h.run("", "up", "alpha"), 1, "stt9 is already up: its daemon holds")
}
