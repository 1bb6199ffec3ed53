package main

import (
	"bytes"
	"encoding/base64"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stt-tun/stt-tun/config"
)

// runInstall runs scripts/install.sh with DESTDIR=dest, installing this test binary,
// which TestMain turns into stt-tun.
func runInstall(t *testing.T, dest string, args ...string) string {
	t.Helper()
	out, err := tryInstall(t, dest, args...)
	if err != nil {
		t.Fatalf("install.sh %v: %v\n%s", args, err, out)
	}
	return out
}

// tryInstall is runInstall for a run that may fail.
func tryInstall(t *testing.T, dest string, args ...string) (string, error) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("../../scripts/install.sh", append([]string{"--bin", self}, args...)...)
	// The race detector waits a second at exit by default; this binary runs often.
	cmd.Env = append(os.Environ(), "DESTDIR="+dest, daemonEnvVar+"=1", "GORACE=atexit_sleep_ms=0")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// filesUnder lists every file and symlink under root, relative to it.
func filesUnder(t *testing.T, root string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(root, p)
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func checkMode(t *testing.T, path string, want fs.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Error(err)
		return
	}
	if got := fi.Mode() & (fs.ModePerm | fs.ModeDir); got&fs.ModePerm != want {
		t.Errorf("%s: mode %v, want %v", path, got, want)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestInstallScript(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	dest := t.TempDir()
	out := runInstall(t, dest)
	checkMode(t, filepath.Join(dest, "usr/local/bin/stt-tun"), 0o755)
	checkMode(t, filepath.Join(dest, "etc/stt-tun"), 0o700)
	sample := filepath.Join(dest, "etc/stt-tun/example.toml.sample")
	checkMode(t, sample, 0o600)
	if _, err := config.Parse(readFile(t, sample), "/etc/stt-tun/alpha.toml"); err != nil {
		t.Errorf("the example configuration does not parse: %v", err)
	}
	checkMode(t, filepath.Join(dest, "usr/local/share/bash-completion/completions/stt-tun"), 0o644)
	checkMode(t, filepath.Join(dest, "usr/local/share/zsh/site-functions/_stt-tun"), 0o644)
	if _, err := os.Stat(filepath.Join(dest, "etc/stt-tun/seed")); !os.IsNotExist(err) {
		t.Errorf("a seed without --genseed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dest, "etc/systemd")); !os.IsNotExist(err) || !strings.Contains(out, "skipped the systemd unit") {
		t.Errorf("unit installed without /etc/systemd: %v\n%s", err, out)
	}
	if ents, _ := os.ReadDir(filepath.Join(dest, "etc/stt-tun")); len(ents) != 1 {
		t.Errorf("/etc/stt-tun holds %v, want only the example", ents)
	}

	// Again, on a machine with systemd, asking for a seed; a configuration is there
	// and the directory's mode was loosened meanwhile.
	os.MkdirAll(filepath.Join(dest, "etc/systemd"), 0o755)
	conf := filepath.Join(dest, "etc/stt-tun/alpha.toml")
	os.WriteFile(conf, []byte("# mine\n"), 0o600)
	os.Chmod(filepath.Join(dest, "etc/stt-tun"), 0o755)
	out = runInstall(t, dest, "--genseed")
	checkMode(t, filepath.Join(dest, "etc/stt-tun"), 0o700)
	if !strings.Contains(out, "tightened "+dest+"/etc/stt-tun from mode 755 to 0700") {
		t.Errorf("no word about the loosened directory:\n%s", out)
	}
	unit := filepath.Join(dest, "etc/systemd/system/stt-tun@.service")
	checkMode(t, unit, 0o644)
	if want := readFile(t, "../../scripts/stt-tun@.service"); !bytes.Equal(readFile(t, unit), want) {
		t.Error("installed unit differs from scripts/stt-tun@.service")
	}
	seedFile := filepath.Join(dest, "etc/stt-tun/seed")
	checkMode(t, seedFile, 0o600)
	seed := readFile(t, seedFile)
	if b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(seed))); err != nil || len(b) != 32 {
		t.Errorf("seed %q: %v", seed, err)
	}
	if got := string(readFile(t, conf)); got != "# mine\n" {
		t.Errorf("install changed a configuration: %q", got)
	}

	// And again: nothing changes that should stay, the seed above all.
	out = runInstall(t, dest, "--genseed")
	if !bytes.Equal(readFile(t, seedFile), seed) || !strings.Contains(out, "kept the existing "+dest+"/etc/stt-tun/seed") {
		t.Errorf("second --genseed replaced the seed or did not say so:\n%s", out)
	}
	if strings.Contains(out, "tightened") {
		t.Errorf("nothing to tighten the second time:\n%s", out)
	}
	left, _ := filepath.Glob(filepath.Join(dest, "*/*/.*.new"))
	more, _ := filepath.Glob(filepath.Join(dest, "*/*/*/.*.new"))
	if len(left)+len(more) > 0 {
		t.Errorf("temporary files left: %v %v", left, more)
	}
}

func TestInstallScriptPrefix(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	dest := t.TempDir()
	os.MkdirAll(filepath.Join(dest, "etc/systemd"), 0o755)
	runInstall(t, dest, "--prefix", "/opt/stt-tun", "--system")
	checkMode(t, filepath.Join(dest, "opt/stt-tun/bin/stt-tun"), 0o755)
	unit := string(readFile(t, filepath.Join(dest, "etc/systemd/system/stt-tun@.service")))
	if !strings.Contains(unit, "ExecStart=/opt/stt-tun/bin/stt-tun up --foreground %i\n") ||
		strings.Contains(unit, "/usr/local/bin") {
		t.Errorf("unit does not follow --prefix:\n%s", unit)
	}
}

// TestInstallScriptPrefixStaysInPrefix: with --prefix and without --system, install.sh
// writes nothing outside the prefix, says so, and prints the paths it writes with
// DESTDIR; --genseed, which would write /etc/stt-tun/seed, is refused up front.
func TestInstallScriptPrefixStaysInPrefix(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	dest := t.TempDir()
	os.MkdirAll(filepath.Join(dest, "etc/systemd"), 0o755) // a systemd machine
	out := runInstall(t, dest, "--prefix", "/opt/stt-tun")
	for _, f := range filesUnder(t, dest) {
		if !strings.HasPrefix(f, "opt/stt-tun/") {
			t.Errorf("install.sh --prefix /opt/stt-tun wrote /%s", f)
		}
	}
	if _, err := os.Stat(filepath.Join(dest, "opt/stt-tun/bin/stt-tun")); err != nil {
		t.Error(err)
	}
	for _, want := range []string{
		"staging under DESTDIR=" + dest + "\n",
		"installed " + dest + "/opt/stt-tun/bin/stt-tun (",
		"skipped /etc/stt-tun and the systemd unit: outside --prefix /opt/stt-tun (add --system to install them)\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	dest = t.TempDir()
	out, err := tryInstall(t, dest, "--prefix", "/opt/stt-tun", "--genseed")
	if err == nil || !strings.Contains(out, "install.sh: --genseed writes /etc/stt-tun/seed, outside --prefix /opt/stt-tun: add --system\n") {
		t.Errorf("--prefix --genseed without --system: %v\n%s", err, out)
	}
	if files := filesUnder(t, dest); len(files) != 0 {
		t.Errorf("a refused install wrote %v", files)
	}
}
