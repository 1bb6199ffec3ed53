// Command stt-tun brings up, takes down and inspects stt-tun interfaces, and makes the
// keys and seeds they use. It only turns flags and configuration into calls to the
// tunnel, routing and config packages; see `stt-tun --help`.
//
// Exit status: 0 on success, 1 on a runtime error and 2 on a usage error, each error
// reported as one line on stderr beginning "stt-tun: ".
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
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
		undo:     routing.UndoFromState,
		linkFree: tun.CheckFree,
	}
}

// run runs the command line args (args[0] is the program name) and returns the exit status.
func run(ctx context.Context, args []string, e *env) int {
	app := newApp(e)
	err := app.RunContext(ctx, flagsFirst(app, args))
	if err == nil {
		return 0
	}
	msg := oneLine(err.Error())
	if errors.Is(err, fs.ErrPermission) && os.Geteuid() != 0 {
		msg += " (stt-tun needs root)"
	}
	fmt.Fprintf(e.stderr, "stt-tun: %s\n", msg)
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
	head := append([]string(nil), args[:i+1]...)
	var flags, rest []string
	tail := args[i+1:]
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
