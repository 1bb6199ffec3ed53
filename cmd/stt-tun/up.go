package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/internal/ctl"
	"github.com/stt-tun/stt-tun/internal/statedir"
	"github.com/stt-tun/stt-tun/tunnel"
)

// Lines the daemon writes on its readiness pipe: exactly one, then it closes the pipe.
const (
	readyLine   = "READY"
	errorPrefix = "ERROR "
)

// readyFD is the daemon's readiness pipe: the first of exec.Cmd.ExtraFiles.
const readyFD = 3

// stopGrace is how long `up` gives a daemon that missed its start deadline to undo what it
// did after SIGTERM, before it is killed.
const stopGrace = 10 * time.Second

func upCommand(e *env) *cli.Command {
	return &cli.Command{
		Name:      "up",
		Usage:     "bring an interface up",
		UsageText: "stt-tun up [--foreground] (NAME | -c FILE)",
		Description: `NAME means <config-dir>/NAME.toml (default /etc/stt-tun/NAME.toml); -c names
any file. The interface's own name is the one its configuration gives.

Without --foreground, up starts a daemon in the background and returns once the
interface has its addresses and routes, or prints why it could not. The daemon logs
to <state-dir>/<interface>.log (default /run/stt-tun/), which it keeps under 10 MiB by
renaming it to <interface>.log.1 and starting anew. With --foreground the daemon
runs in this process and logs to stderr; under systemd (scripts/stt-tun@.service,
Type=notify) it reports readiness once the interface is up. SIGTERM or SIGINT, or
'stt-tun down', stops it and undoes its routing; SIGHUP reloads the configuration.

Examples:
   stt-tun up alpha
   stt-tun up -c ./lab/alpha.toml
   stt-tun up --foreground --log-level debug alpha`,
		Flags: []cli.Flag{
			configFlag(),
			&cli.BoolFlag{
				Name:    "foreground",
				Aliases: []string{"f"},
				Usage:   "run the daemon in this process, logging to stderr",
			},
			&cli.StringFlag{
				Name:  "log-level",
				Usage: "debug, info, warn or error (default: the configuration's [logging] level, info)",
			},
			timeoutFlag(30 * time.Second),
			&cli.StringFlag{
				Name:   "log-file",
				Usage:  "log to this file, capped in size with one rotation (set by up for its daemon)",
				Hidden: true,
			},
			&cli.IntFlag{
				Name:   "ready-fd",
				Usage:  "file descriptor to report readiness on (set by up for its daemon)",
				Hidden: true,
			},
		},
		Action: func(c *cli.Context) error { return up(c, e) },
	}
}

func up(c *cli.Context, e *env) error {
	path, bare, err := configPath(c, "up")
	if err != nil {
		return err
	}
	logLevel := c.String("log-level")
	if logLevel != "" {
		if _, err := parseLevel(logLevel); err != nil {
			return err
		}
	}
	var ready *readiness
	if fd := c.Int("ready-fd"); fd != 0 {
		if !c.Bool("foreground") {
			return usageError("up: --ready-fd needs --foreground")
		}
		ready = &readiness{f: os.NewFile(uintptr(fd), "readiness pipe")}
		defer ready.f.Close()
		// Started through /proc/self/exe, the daemon would be "exe" to ss, top and
		// ps -e (its argv[0] is the program's path); name it as administrators look
		// for it. Best effort.
		_ = os.WriteFile("/proc/self/comm", []byte("stt-tun"), 0)
	}
	cfg, err := loadConfig(path, bare)
	if err != nil {
		return ready.fail(err)
	}
	if err := checkDiscoveryKey(cfg); err != nil {
		return ready.fail(err)
	}
	name := cfg.Interface.Name
	dir := stateDir(c)
	level := cfg.Logging.Level
	if logLevel != "" {
		level, _ = parseLevel(logLevel) // checked above
	}

	if err := statedir.Check(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return ready.fail(err)
	}
	// A cheap, friendly check; the daemon's lock is what really keeps a second one out.
	ctx, cancel := context.WithTimeout(c.Context, 5*time.Second)
	_, err = ctl.Status(ctx, ctl.SocketPath(dir, name))
	cancel()
	if err == nil {
		return ready.fail(fmt.Errorf("%s is already up (see 'stt-tun status %s')", name, name))
	}
	// A daemon that holds the lock runs, whether or not its socket answers.
	if held, err := ctl.Held(dir, name); err == nil && held {
		return ready.fail(fmt.Errorf("%s is already up: its daemon holds %s (see 'stt-tun status %s')",
			name, filepath.Join(dir, name+".lock"), name))
	}
	// stt-tun never adopts a link it did not create; refused before anything is made,
	// in the state directory or on the link. (tun.Create refuses it too, race-free.)
	if err := e.linkFree(name); err != nil {
		return ready.fail(err)
	}

	if c.Bool("foreground") {
		opts := daemonOptions{stateDir: dir, level: level, ready: ready}
		if path := c.String("log-file"); path != "" {
			// The background daemon's log: its stderr already is the file (for what
			// comes before this); from here on the file is capped, and stderr follows
			// each new file so that a panic's trace lands in the current one.
			l, err := newCappedLog(path, maxLogSize, redirectStderr)
			if err != nil {
				return ready.fail(fmt.Errorf("open daemon log: %w", err))
			}
			defer l.Close()
			opts.log = l
		}
		return ready.fail(runDaemon(c.Context, e, cfg, opts))
	}
	// The daemon logs these too, once names are resolved; its log is not in sight.
	for _, w := range tunnel.ConfigLoopWarnings(cfg) {
		fmt.Fprintf(e.stderr, "warning: %s\n", w)
	}
	return startDaemon(c.Context, e, cfg, dir, logLevel, flagDuration(c, "timeout"))
}

// checkDiscoveryKey refuses, before anything starts, a configuration with [discovery]
// whose key file holds a legacy key, naming the command that converts it. A missing
// key file is fine: the daemon creates it in the ed25519 format. Other problems with
// the file are the daemon's to report, as without [discovery].
func checkDiscoveryKey(cfg *config.Config) error {
	if !cfg.Discovery.Enabled {
		return nil
	}
	key, err := config.LoadKey(cfg.Interface.KeyFile)
	if err != nil {
		return nil
	}
	return cfg.CheckKeyForDiscovery(key)
}

// loadConfig reads a configuration, explaining a missing file named by a bare NAME.
func loadConfig(path string, bare bool) (*config.Config, error) {
	cfg, err := config.Load(path)
	if err != nil {
		if bare && errors.Is(err, fs.ErrNotExist) {
			name := strings.TrimSuffix(filepath.Base(path), ".toml")
			return nil, fmt.Errorf("%s: no configuration %s (create it, or use -c FILE)", name, path)
		}
		return nil, err
	}
	return cfg, nil
}

// startDaemon re-executes this program as `up --foreground` in a new session, with a
// readiness pipe, and waits until the daemon reports READY or an error, or exits.
func startDaemon(ctx context.Context, e *env, cfg *config.Config, dir, logLevel string, timeout time.Duration) error {
	name := cfg.Interface.Name
	// Interrupted, stop the daemon too rather than leave it half started.
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	if err := statedir.Ensure(dir); err != nil {
		return err
	}
	logPath := filepath.Join(dir, name+".log")
	logFile, err := openLogFile(logPath)
	if err != nil {
		return fmt.Errorf("open daemon log: %w", err)
	}
	defer logFile.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("readiness pipe: %w", err)
	}
	defer r.Close()

	args := []string{
		"--state-dir", dir,
		"up", "--foreground",
		"--ready-fd", strconv.Itoa(readyFD),
		"--config", cfg.Path,
		"--log-file", logPath,
	}
	if logLevel != "" {
		args = append(args, "--log-level", logLevel)
	}
	cmd := exec.Command(e.exe, args...)
	// ps shows argv: the program's path, not the /proc/self/exe it is started through.
	cmd.Args[0] = programPath()
	cmd.Stdin = nil  // /dev/null
	cmd.Stdout = nil // /dev/null
	cmd.Stderr = logFile
	cmd.ExtraFiles = []*os.File{w} // readyFD
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	w.Close() // the daemon holds the only write end now: its exit means EOF
	if err != nil {
		return fmt.Errorf("start daemon: %w", err)
	}

	line, err := readReady(ctx, r, timeout)
	switch {
	case err == nil && line == readyLine:
		return cmd.Process.Release()
	case err == nil && strings.HasPrefix(line, errorPrefix):
		cmd.Wait()
		return errors.New(strings.TrimPrefix(line, errorPrefix))
	case err == nil:
		cmd.Wait()
		return fmt.Errorf("%s: daemon said %q before it was ready (see %s)", name, line, logPath)
	case errors.Is(err, os.ErrDeadlineExceeded) || ctx.Err() != nil:
		// Ask it to undo what it did, then insist.
		cmd.Process.Signal(syscall.SIGTERM)
		if _, werr := readReady(context.Background(), r, stopGrace); errors.Is(werr, os.ErrDeadlineExceeded) {
			cmd.Process.Kill()
		}
		cmd.Wait()
		if ctx.Err() != nil {
			return fmt.Errorf("%s: interrupted while starting; stopped the daemon", name)
		}
		return fmt.Errorf("%s: not up after %v; stopped the daemon (see %s)", name, timeout, logPath)
	default:
		werr := cmd.Wait()
		if werr == nil {
			werr = errors.New("exit status 0")
		}
		return fmt.Errorf("%s: daemon exited before it was ready (%v); see %s", name, werr, logPath)
	}
}

// programPath is this program's file as ps should show it: resolved, and without the
// " (deleted)" the kernel appends once an upgrade has replaced the file.
func programPath() string {
	p, err := os.Executable()
	if err != nil {
		return "stt-tun"
	}
	p = strings.TrimSuffix(p, " (deleted)")
	if r, err := filepath.EvalSymlinks(p); err == nil {
		p = r
	}
	return p
}

var errNoLine = errors.New("readiness pipe closed without a line")

// readReady reads the daemon's one readiness line, until timeout or ctx ends.
func readReady(ctx context.Context, r *os.File, timeout time.Duration) (string, error) {
	if err := r.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return "", fmt.Errorf("readiness pipe: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { r.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	line, err := bufio.NewReader(r).ReadString('\n')
	if strings.HasSuffix(line, "\n") {
		return strings.TrimSuffix(line, "\n"), nil
	}
	if ctx.Err() != nil {
		return "", ctx.Err()
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return "", err
	}
	return "", errNoLine // EOF or a torn line: the daemon died
}

// readiness is the daemon's end of the readiness pipe; a nil one reports nothing.
type readiness struct {
	f    *os.File
	done bool
}

// ok reports that the interface is up.
func (r *readiness) ok() {
	if r == nil || r.done {
		return
	}
	r.done = true
	fmt.Fprintln(r.f, readyLine)
	r.f.Close()
}

// fail reports err (if any) as the reason the interface did not come up, and returns it.
func (r *readiness) fail(err error) error {
	if r == nil || r.done || err == nil {
		return err
	}
	r.done = true
	// The same line as run prints, root hint included: `up` only gets the text.
	fmt.Fprintf(r.f, "%s%s\n", errorPrefix, errorLine(err))
	r.f.Close()
	return err
}
