// Command stt-tun brings up, takes down and inspects stt-tun interfaces, and makes the
// keys and seeds they use. It only turns flags and configuration into calls to the
// tunnel, routing and config packages; see `stt-tun --help`.
//
// Exit status: 0 on success, 1 on a runtime error and 2 on a usage error, each error
// reported as one line on stderr beginning "stt-tun: ", except the problems of a
// configuration file: one "FILE:LINE: message" line each (after a "stt-tun: " line
// saying what they stopped, if anything more than reading the file).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"regexp"
	"runtime/debug"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/routing"
	"github.com/stt-tun/stt-tun/tun"
	"github.com/stt-tun/stt-tun/tunnel"
)

// version is set at build time: -ldflags '-X main.version=...'.
var version = ""

func main() {
	os.Exit(run(context.Background(), os.Args, defaultEnv()))
}

// env is what the commands need from the outside world, so that tests can supply it.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	// exe is the program the daemon is started from; /proc/self/exe is this very binary
	// even if the file was replaced by an upgrade since.
	exe string
	// start brings a tunnel up; tunnel.Start outside tests.
	start func(context.Context, *config.Config, tunnel.Options) (daemonTunnel, error)
	// undo reverts the routing changes of a daemon that died; routing.UndoFromState
	// outside tests.
	undo func(stateDir, link string) error
	// killSwitch reports whether a dead daemon's journal holds a kill switch;
	// routing.HoldsKillSwitch outside tests.
	killSwitch func(stateDir, link string) (bool, error)
	// linkFree fails, in one line, if a link of the name exists; tun.CheckFree outside
	// tests.
	linkFree func(name string) error
}

func defaultEnv() *env {
	return &env{
		stdin:  os.Stdin,
		stdout: os.Stdout,
		stderr: os.Stderr,
		exe:    "/proc/self/exe",
		start: func(ctx context.Context, cfg *config.Config, opts tunnel.Options) (daemonTunnel, error) {
			return tunnel.Start(ctx, cfg, opts)
		},
		undo:       routing.UndoFromState,
		killSwitch: routing.HoldsKillSwitch,
		linkFree:   tun.CheckFree,
	}
}

// run runs the command line args (args[0] is the program name) and returns the exit status.
func run(ctx context.Context, args []string, e *env) int {
	app := newApp(e)
	err := app.RunContext(ctx, flagsFirst(app, args))
	if err == nil {
		return 0
	}
	if head, problems := splitProblems(err); problems != nil {
		if head != "" {
			fmt.Fprintf(e.stderr, "stt-tun: %s:\n", head)
		}
		for _, p := range problems {
			fmt.Fprintln(e.stderr, p)
		}
	} else {
		fmt.Fprintf(e.stderr, "stt-tun: %s\n", errorLine(err))
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}

// exitError carries an exit status other than 1.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageError is a mistake on the command line: exit status 2.
func usageError(format string, args ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, args...)}
}

// problemsError is a failure explained by a list of problems in a configuration file,
// FILE:LINE: message each, when only their text is known (from a daemon).
type problemsError struct {
	head     string // what failed; may be empty
	problems []string
}

func (e *problemsError) Error() string {
	s := strings.Join(e.problems, "\n")
	if e.head != "" {
		s = e.head + ": " + s
	}
	return s
}

// configProblem matches a line of config.ErrorList: FILE:LINE: message.
var configProblem = regexp.MustCompile(`^[^\s:][^:\n]*:[0-9]+: `)

// isConfigProblem says whether s reads like one problem of a configuration file.
func isConfigProblem(s string) bool { return configProblem.MatchString(s) }

// splitProblems takes apart an error that carries a configuration file's problems into
// what failed (head, "" if nothing more than the file's problems) and the problems, one
// FILE:LINE: message each: run prints them one per line, the form editors and CI
// annotations read, as docs/configuration.md shows. Other errors give nil problems.
func splitProblems(err error) (head string, problems []string) {
	var pe *problemsError
	if errors.As(err, &pe) {
		head = strings.TrimSuffix(strings.TrimSuffix(err.Error(), pe.Error()), ": ")
		if pe.head != "" {
			head = strings.TrimPrefix(head+": "+pe.head, ": ")
		}
		for _, p := range pe.problems {
			problems = append(problems, oneLine(p))
		}
		return head, problems
	}
	var list config.ErrorList
	if !errors.As(err, &list) || len(list) == 0 || !strings.HasSuffix(err.Error(), list.Error()) {
		return "", nil
	}
	head = strings.TrimSuffix(strings.TrimSuffix(err.Error(), list.Error()), ": ")
	for _, p := range list {
		problems = append(problems, oneLine(p.Error()))
	}
	return oneLine(head), problems
}

// rootHint ends the message of a permission error when stt-tun does not run as root,
// the usual reason: opening /dev/net/tun, or changing links and routes, needs root.
const rootHint = " (stt-tun needs root)"

// notRoot says whether this process lacks root's privileges; tests replace it.
var notRoot = func() bool { return os.Geteuid() != 0 }

// errorLine is err as the one line stt-tun reports it: a permission error gets the
// hint that stt-tun needs root, when it does not run as root.
func errorLine(err error) string {
	msg := oneLine(err.Error())
	if errors.Is(err, fs.ErrPermission) && notRoot() && !strings.HasSuffix(msg, rootHint) {
		msg += rootHint
	}
	return msg
}

// oneLine keeps an error message to a single line, whatever its source.
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", "; ")), " ")
}

// versionString is the build's version: the linker-set one, else the module's, else "dev".
func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// flagsFirst moves a command's flags in front of its arguments, so that
// `status NAME --json` means what `status --json NAME` means: administrators type
// flags last, and urfave/cli stops reading flags at the first argument. A "--" ends the
// reordering.
func flagsFirst(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	// Find the command: the first word that is not a global flag or its value.
	i := 1
	for i < len(args) && strings.HasPrefix(args[i], "-") {
		if takesValue(app.Flags, args[i]) {
			i++
		}
		i++
	}
	if i >= len(args) {
		return args
	}
	cmd := app.Command(args[i])
	if cmd == nil {
		return args
	}
	// A command with subcommands (seed rotate): the subcommand's flags.
	for i+1 < len(args) && cmd.Subcommands != nil {
		sub := cmd.Command(args[i+1])
		if sub == nil {
			break
		}
		cmd, i = sub, i+1
	}
	head := append([]string(nil), args[:i+1]...)
	var flags, rest []string
	tail := splitGlued(cmd.Flags, args[i+1:])
	for j := 0; j < len(tail); j++ {
		a := tail[j]
		if a == "--" {
			rest = append(rest, tail[j:]...)
			break
		}
		if len(a) > 1 && strings.HasPrefix(a, "-") {
			flags = append(flags, a)
			if takesValue(cmd.Flags, a) && j+1 < len(tail) {
				j++
				flags = append(flags, tail[j])
			}
			continue
		}
		rest = append(rest, a)
	}
	return append(append(head, flags...), rest...)
}

// splitGlued separates a short flag from a value glued to it, as ping(8) users type
// them: "-c1" becomes "-c", "1" and "-W0.5" becomes "-W", "0.5", for every one-letter
// flag of the command that takes a value. Words up to a "--" are looked at.
func splitGlued(flags []cli.Flag, args []string) []string {
	out := make([]string, 0, len(args))
	value := false // a is the value of the flag before it
	for j, a := range args {
		if value {
			out, value = append(out, a), false
			continue
		}
		if a == "--" {
			return append(out, args[j:]...)
		}
		value = strings.HasPrefix(a, "-") && takesValue(flags, a)
		if len(a) > 2 && a[0] == '-' && a[1] != '-' && !strings.Contains(a, "=") &&
			!isFlag(flags, a[1:]) && takesValue(flags, a[:2]) {
			out = append(out, a[:2], a[2:])
			continue
		}
		out = append(out, a)
	}
	return out
}

// isFlag says whether name is one of the names of flags.
func isFlag(flags []cli.Flag, name string) bool {
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				return true
			}
		}
	}
	return false
}

// takesValue says whether the flag token a names a flag that reads the next word as
// its value (a non-boolean flag written without "=").
func takesValue(flags []cli.Flag, a string) bool {
	name := strings.TrimLeft(a, "-")
	if strings.Contains(name, "=") {
		return false
	}
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				_, isBool := f.(*cli.BoolFlag)
				return !isBool
			}
		}
	}
	return false
}
