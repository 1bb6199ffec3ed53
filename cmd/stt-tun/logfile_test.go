package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestDaemonLogIsCapped: concurrent records go to a log that rotates once past its
// cap; neither the log nor its one predecessor grows past the cap, no line is torn,
// and the newest record is in the current log.
func TestDaemonLogIsCapped(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "stt0.log")
	const max = 1000
	var opened []string
	var mu sync.Mutex
	l, err := newCappedLog(path, max, func(f *os.File) {
		mu.Lock()
		opened = append(opened, f.Name())
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				fmt.Fprintf(l, "time=now level=INFO msg=record g=%d i=%03d\n", g, i)
			}
		}()
	}
	wg.Wait()
	if _, err := l.Write([]byte("last\n")); err != nil {
		t.Fatal(err)
	}
	l.Close()
	line := regexp.MustCompile(`^(time=now level=INFO msg=record g=[0-7] i=[0-9]{3}|last)$`)
	for _, p := range []string{path, path + ".1"} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > max || len(b) == 0 {
			t.Errorf("%s: %d bytes, want 1 to %d", p, len(b), max)
		}
		for _, l := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
			if !line.MatchString(l) {
				t.Errorf("%s: torn line %q", p, l)
			}
		}
	}
	if b, _ := os.ReadFile(path); !bytes.HasSuffix(b, []byte("\nlast\n")) {
		t.Errorf("the newest record is not at the end of the current log")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("files in the state directory: %v, want the log and one rotation", ents)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(opened) < 2 {
		t.Errorf("opened reported %d files, want every file opened (at least 2)", len(opened))
	}
}

// TestDaemonLogKeepsCopytruncatedFile: a log truncated from outside (logrotate's
// copytruncate) is not rotated for the size it had.
func TestDaemonLogKeepsCopytruncatedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stt0.log")
	l, err := newCappedLog(path, 100, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.Write(bytes.Repeat([]byte("x"), 90))
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	l.Write([]byte("after truncation\n"))
	if _, err := os.Lstat(path + ".1"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("rotated a truncated log: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "after truncation\n" {
		t.Errorf("log holds %q", b)
	}
}

// TestDaemonLogRefusesSymlink: a symlink planted where the log goes is not followed.
func TestDaemonLogRefusesSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	os.WriteFile(target, []byte("precious\n"), 0o600)
	path := filepath.Join(dir, "stt0.log")
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	if l, err := newCappedLog(path, 100, nil); err == nil {
		l.Write([]byte("overwritten\n"))
		l.Close()
		t.Error("opened a log through a symlink")
	}
	if f, err := openLogFile(path); err == nil {
		f.Close()
		t.Error("openLogFile followed a symlink")
	}
	if b, _ := os.ReadFile(target); string(b) != "precious\n" {
		t.Errorf("symlink target changed: %q", b)
	}
}

// TestBackgroundDaemonLogIsCapped: the daemon that up starts writes its log through
// the cap: with a small cap, starting and stopping it rotates the log.
func TestBackgroundDaemonLogIsCapped(t *testing.T) {
	h := newHarness(t)
	const max = 200
	t.Setenv(daemonEnvVar, "1")
	t.Setenv(logMaxEnvVar, fmt.Sprint(max))
	h.writeConfig("alpha", "stt9", "alpha")
	if r := h.run("", "up", "alpha"); r.code != 0 {
		t.Fatalf("up: %+v", r)
	}
	if r := h.run("", "down", "stt9"); r.code != 0 {
		t.Fatalf("down: %+v", r)
	}
	log := filepath.Join(h.dir, "stt9.log")
	// down returns once the tunnel is closed; the daemon's last record follows.
	deadline := time.Now().Add(10 * time.Second)
	for b, _ := os.ReadFile(log); !strings.Contains(string(b), "msg=down"); b, _ = os.ReadFile(log) {
		if time.Now().After(deadline) {
			t.Fatalf("the last record is not in the current log:\n%s", b)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, p := range []string{log, log + ".1"} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("%v (the log was not rotated)", err)
		}
		// A record longer than the cap is written whole, alone in its file.
		if len(b) > max && strings.Count(string(b), "\n") > 1 {
			t.Errorf("%s: %d bytes in %d records, cap %d:\n%s", p, len(b), strings.Count(string(b), "\n"), max, b)
		}
	}
}

// TestDaemonLogCapIsDocumented: docs/operations.md, docs/configuration.md and up --help
// say 10 MiB.
func TestDaemonLogCapIsDocumented(t *testing.T) {
	if maxLogSize != 10<<20 {
		t.Errorf("maxLogSize is %d; the docs say 10 MiB", maxLogSize)
	}
	for _, doc := range []string{"../../docs/operations.md", "../../docs/configuration.md"} {
		if b := readFile(t, doc); !bytes.Contains(b, []byte("10 MiB")) || !bytes.Contains(b, []byte(".log.1`")) {
			t.Errorf("%s does not describe the log's cap and rotation", doc)
		}
	}
}
