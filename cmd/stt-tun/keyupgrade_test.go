package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/config"
)

// legacyKeyFile writes a key file in the old format (a bare base64 X25519 key) and
// returns its path and the key.
func legacyKeyFile(t *testing.T, h *harness, name string) (string, [32]byte) {
	t.Helper()
	x, err := config.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return h.write(name, config.EncodeKey(x)+"\n"), x
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// TestKeyUpgradeReplacesLegacyKey: key-upgrade keeps the old key in FILE.legacy, puts
// a new ed25519 key in FILE (both mode 0600), prints both public keys and says which
// pins change, and leaves no temporary file.
func TestKeyUpgradeReplacesLegacyKey(t *testing.T) {
	h := newHarness(t)
	path, x := legacyKeyFile(t, h, "alpha.key")
	r := h.run("", "key-upgrade", path)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("key-upgrade: %+v", r)
	}
	key, err := config.LoadKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if key.Legacy {
		t.Fatal("FILE still holds a legacy key")
	}
	data, _ := os.ReadFile(path)
	if string(data) != key.Encode()+"\n" || !strings.HasPrefix(string(data), "ed25519:") {
		t.Errorf("FILE holds %d bytes not in the ed25519 format", len(data))
	}
	backup := path + ".legacy"
	old, err := os.ReadFile(backup)
	if err != nil || string(old) != config.EncodeKey(x)+"\n" {
		t.Errorf("FILE.legacy does not hold the old key: %v", err)
	}
	for _, p := range []string{path, backup} {
		if m := mode(t, p); m != 0o600 {
			t.Errorf("%s has mode %04o, want 0600", p, m)
		}
	}
	oldPub, newPub := config.EncodeKey(config.PublicKey(x)), config.EncodeKey(key.PublicKey())
	if oldPub == newPub {
		t.Fatal("the public key did not change")
	}
	for _, want := range []string{
		"old public key: " + oldPub + "\n",
		"new public key: " + newPub + "\n",
		`public_key = "` + oldPub + `" that pins this node on other nodes must change to "` + newPub + `"`,
		"IPv6 mesh address will be derived from the new key",
		backup,
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, config.EncodeKey(x)) || strings.Contains(r.stdout, config.EncodeKey(key.Ed25519Seed)) {
		t.Error("output reveals a private key")
	}
	entries, _ := os.ReadDir(h.dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".stt-tun-key-") {
			t.Errorf("temporary file left: %s", e.Name())
		}
	}
	// pubkey agrees with what key-upgrade printed.
	if r := h.run(string(data), "pubkey"); r.stdout != newPub+"\n" {
		t.Errorf("pubkey of the new file %q, key-upgrade said %q", r.stdout, newPub)
	}
}

// TestKeyUpgradeRefusals: a file already upgraded, a missing file, an existing
// FILE.legacy, a file others may read and a wrong argument count are each refused in
// one line, and the key file is left as it was.
func TestKeyUpgradeRefusals(t *testing.T) {
	h := newHarness(t)
	k, _ := config.GenerateNodeKey()
	upgraded := h.write("new.key", k.Encode()+"\n")
	r := h.run("", "key-upgrade", upgraded)
	checkOneLineError(t, r, 1, "key-upgrade: key file "+upgraded+" is already in the ed25519 format; there is nothing to upgrade")
	if data, _ := os.ReadFile(upgraded); string(data) != k.Encode()+"\n" {
		t.Error("an upgraded file was changed")
	}
	if _, err := os.Stat(upgraded + ".legacy"); err == nil {
		t.Error("a backup was written for a file already upgraded")
	}

	missing := filepath.Join(h.dir, "missing.key")
	checkOneLineError(t, h.run("", "key-upgrade", missing), 1, "key-upgrade: key file "+missing+" does not exist")
	if _, err := os.Stat(missing); err == nil {
		t.Error("key-upgrade created a missing key file")
	}

	path, x := legacyKeyFile(t, h, "beta.key")
	h.write("beta.key.legacy", "an earlier backup\n")
	checkOneLineError(t, h.run("", "key-upgrade", path), 1, path+".legacy already exists")
	if data, _ := os.ReadFile(path); string(data) != config.EncodeKey(x)+"\n" {
		t.Error("the key file changed although the backup could not be written")
	}
	if data, _ := os.ReadFile(path + ".legacy"); string(data) != "an earlier backup\n" {
		t.Error("an existing backup was overwritten")
	}

	open, _ := legacyKeyFile(t, h, "gamma.key")
	os.Chmod(open, 0o644)
	r = h.run("", "key-upgrade", open)
	checkOneLineError(t, r, 1, "run: chmod 600 "+open)
	if _, err := os.Stat(open + ".legacy"); err == nil {
		t.Error("a backup was written for a file that was refused")
	}

	checkOneLineError(t, h.run("", "key-upgrade"), 2, "key-upgrade: give one key FILE")
	checkOneLineError(t, h.run("", "key-upgrade", path, upgraded), 2, "key-upgrade: give one key FILE")
}

// TestKeyUpgradeFollowsSymlink: a key file reached through a symbolic link is upgraded
// where it is, and the link still points to it.
func TestKeyUpgradeFollowsSymlink(t *testing.T) {
	h := newHarness(t)
	real, _ := legacyKeyFile(t, h, "real.key")
	link := filepath.Join(h.dir, "link.key")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if r := h.run("", "key-upgrade", link); r.code != 0 {
		t.Fatalf("key-upgrade: %+v", r)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the link was replaced: %v", err)
	}
	if k, err := config.LoadKey(real); err != nil || k.Legacy {
		t.Errorf("the link's target was not upgraded: %v", err)
	}
	if _, err := os.Stat(real + ".legacy"); err != nil {
		t.Errorf("no backup beside the target: %v", err)
	}
}

// TestUpWithDiscoveryRefusesLegacyKey: `up` of a configuration with [discovery] and
// a legacy key file fails in one line that names key-upgrade, and starts nothing;
// after the upgrade, it comes up.
func TestUpWithDiscoveryRefusesLegacyKey(t *testing.T) {
	h := newHarness(t)
	keyPath, _ := legacyKeyFile(t, h, "mesh.key")
	cfg := h.writeConfig("mesh", "stt6", "alpha")
	if err := os.WriteFile(cfg, append(readFile(t, cfg), "[discovery]\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	// In the foreground, so that if the check were missing no daemon would be left
	// running; the background up runs the same check first.
	for _, args := range [][]string{{"up", "--foreground", "mesh"}, {"up", "--foreground", "-c", cfg}} {
		// Bounded, so that without the check the daemon it starts does not hang the test.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		r := h.runContext(ctx, "", args...)
		cancel()
		checkOneLineError(t, r, 1, "key file "+keyPath+" holds a legacy X25519 key, and [discovery] needs a key in the ed25519 format; convert it with: stt-tun key-upgrade "+keyPath)
		select {
		case <-h.started:
			t.Fatalf("%v started a tunnel", args)
		default:
		}
	}
	if r := h.run("", "key-upgrade", keyPath); r.code != 0 {
		t.Fatalf("key-upgrade: %+v", r)
	}
	f, done := h.foreground("-c", cfg)
	f.Close()
	if r := <-done; r.code != 0 {
		t.Errorf("up after key-upgrade: %+v", r)
	}
}
