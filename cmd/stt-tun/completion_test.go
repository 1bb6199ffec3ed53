package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

func completionScript(t *testing.T, shell string) string {
	t.Helper()
	h := newHarness(t)
	r := h.run("", "completion", shell)
	if r.code != 0 || r.stderr != "" || r.stdout == "" {
		t.Fatalf("completion %s: %+v", shell, r)
	}
	p := filepath.Join(t.TempDir(), "completion."+shell)
	if err := os.WriteFile(p, []byte(r.stdout), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestBashCompletion sources the bash script and asks it to complete command lines,
// as bash does on TAB.
func TestBashCompletion(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	script := completionScript(t, "bash")
	if out, err := exec.Command(bash, "-n", script).CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, out)
	}

	conf, state, other := t.TempDir(), t.TempDir(), t.TempDir()
	for _, f := range []string{"alpha.toml", "beta.toml", "notes.txt"} {
		os.WriteFile(filepath.Join(conf, f), []byte("[[peer]]\nname = \"gamma\"\n[[peer]]\n  name = \"delta\" # lab\n[advanced]\nname = \"x\"\n"), 0o600)
	}
	os.WriteFile(filepath.Join(other, "lab.toml"), nil, 0o600)
	staleSocket(t, state, "stt7") // a control socket: a running interface

	complete := func(line string) []string {
		t.Helper()
		words := strings.Fields(line)
		if strings.HasSuffix(line, " ") {
			words = append(words, "")
		}
		var q []string
		for _, w := range words {
			q = append(q, "'"+w+"'")
		}
		cmd := exec.Command(bash, "-c", `source "$1"; COMP_WORDS=(`+strings.Join(q, " ")+`); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _stt_tun; printf '%s\n' "${COMPREPLY[@]}"`, "bash", script)
		cmd.Env = append(os.Environ(), "STT_TUN_CONFIG_DIR="+conf, "STT_TUN_STATE_DIR="+state)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%q: %v\n%s", line, err, out)
		}
		got := strings.Fields(string(out))
		slices.Sort(got)
		return got
	}
	for _, tc := range []struct {
		line string
		want []string
	}{
		{"stt-tun st", []string{"status"}},
		{"stt-tun --state-dir /x comp", []string{"completion"}},
		{"stt-tun --stat", []string{"--state-dir"}},
		{"stt-tun up --fo", []string{"--foreground"}},
		{"stt-tun up --log-level ", []string{"debug", "error", "info", "warn"}},
		{"stt-tun up ", []string{"alpha", "beta"}},
		{"stt-tun up -f a", []string{"alpha"}},
		{"stt-tun status ", []string{"alpha", "beta", "stt7"}},
		{"stt-tun down --timeout ", nil},
		{"stt-tun --config-dir " + other + " up ", []string{"lab"}},
		{"stt-tun --config-dir=" + other + " down ", []string{"lab", "stt7"}},
		{"stt-tun completion ", []string{"bash", "zsh"}},
		{"stt-tun genseed ", nil},
		{"stt-tun ping ", []string{"delta", "gamma"}},
		{"stt-tun ping -I ", []string{"alpha", "beta", "stt7"}},
		{"stt-tun ping -c ", nil},
		{"stt-tun key-upgrade " + other + "/la", []string{other + "/lab.toml"}},
		{"stt-tun revoke ", []string{"delta", "gamma"}},
		{"stt-tun revoke --admin-key " + other + "/la", []string{other + "/lab.toml"}},
		{"stt-tun seed ", []string{"rotate"}},
		{"stt-tun seed r", []string{"rotate"}},
		{"stt-tun admin ", []string{"genkey", "pubkey"}},
		{"stt-tun seed rotate --ex", []string{"--exclude"}},
		{"stt-tun seed rotate --exclude ", []string{"delta", "gamma"}},
		{"stt-tun seed rotate --exclude gamma --exclude d", []string{"delta"}},
		{"stt-tun seed rotate --admin-key " + other + "/la", []string{other + "/lab.toml"}},
		{"stt-tun seed rotate -I ", []string{"alpha", "beta", "stt7"}},
		{"stt-tun --state-dir " + state + " seed rotate --interface s", []string{"stt7"}},
		{"stt-tun seed rotate --from ", nil},
		{"stt-tun seed rotate --overlap ", nil},
		{"stt-tun seed rotate ", nil},
	} {
		if got := complete(tc.line); !slices.Equal(got, tc.want) {
			t.Errorf("%q completes to %q, want %q", tc.line, got, tc.want)
		}
	}
	// Every command and every visible flag of every command is offered.
	// ("help" is the library's, added when the app runs.)
	if got := complete("stt-tun "); !slices.Equal(got, slices.Sorted(slices.Values(append(commandNames(newApp(defaultEnv())), "help")))) {
		t.Errorf("commands: %q", got)
	}
	// So is every flag of every subcommand (seed rotate, admin genkey).
	type named struct {
		line  string
		flags []cli.Flag
	}
	var cmds []named
	for _, c := range newApp(defaultEnv()).Commands {
		cmds = append(cmds, named{c.Name, c.Flags})
		for _, sc := range subcommands(c) {
			cmds = append(cmds, named{c.Name + " " + sc.Name, sc.Flags})
		}
	}
	if !slices.ContainsFunc(cmds, func(n named) bool { return n.line == "seed rotate" }) {
		t.Fatal("seed rotate is not among the commands completed")
	}
	for _, c := range cmds {
		got := complete("stt-tun " + c.line + " -")
		for _, f := range visibleFlags(c.flags) {
			for _, n := range f.Names() {
				if !slices.Contains(got, dashed(n)) {
					t.Errorf("stt-tun %s -<TAB> lacks %s: %q", c.line, dashed(n), got)
				}
			}
		}
		if slices.Contains(got, "--ready-fd") {
			t.Errorf("stt-tun %s -<TAB> offers a hidden flag: %q", c.line, got)
		}
	}

	// Peer names come from the [[peer]] sections only.
	cmd := exec.Command(bash, "-c", `source "$1"; __stt_tun_names peers | sort -u`, "bash", script)
	cmd.Env = append(os.Environ(), "STT_TUN_CONFIG_DIR="+conf)
	if out, err := cmd.Output(); err != nil || string(out) != "delta\ngamma\n" {
		t.Errorf("peer names: %q, %v", out, err)
	}
}

// TestZshCompletionParses checks the zsh script's syntax, where zsh is installed.
func TestZshCompletionParses(t *testing.T) {
	zsh, err := exec.LookPath("zsh")
	if err != nil {
		t.Skip("no zsh")
	}
	script := completionScript(t, "zsh")
	if out, err := exec.Command(zsh, "-n", script).CombinedOutput(); err != nil {
		t.Fatalf("zsh -n: %v\n%s", err, out)
	}
	// The name functions run under sh emulation, as the script runs them.
	conf := t.TempDir()
	os.WriteFile(filepath.Join(conf, "alpha.toml"), []byte("[[peer]]\nname = \"beta\"\n"), 0o600)
	cmd := exec.Command(zsh, "-c", `source "$1" 2>/dev/null; __stt_tun_zsh_list interfaces; __stt_tun_zsh_list peers`, "zsh", script)
	cmd.Env = append(os.Environ(), "STT_TUN_CONFIG_DIR="+conf, "STT_TUN_STATE_DIR="+t.TempDir())
	if out, err := cmd.CombinedOutput(); err != nil || string(out) != "alpha\nbeta\n" {
		t.Errorf("zsh names: %q, %v", out, err)
	}
}

func TestCompletionUsage(t *testing.T) {
	h := newHarness(t)
	checkOneLineError(t, h.run("", "completion"), 2, "completion: give one shell, bash or zsh")
	checkOneLineError(t, h.run("", "completion", "fish"), 2, `"fish" is not a shell`)
}
