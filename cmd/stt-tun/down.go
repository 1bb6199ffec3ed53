package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/internal/ctl"
	"github.com/stt-tun/stt-tun/internal/statedir"
)

func downCommand(e *env) *cli.Command {
	return &cli.Command{
		Name:      "down",
		Usage:     "take an interface down",
		UsageText: "stt-tun down (NAME | -c FILE)",
		Description: `NAME is the interface name (or the NAME given to 'up', if its configuration
names the interface differently, also after the file was edited into one that does
not parse). down asks the interface's daemon to stop, and
returns once the tunnel is closed and its routes, rules and addresses are undone.

If the daemon is gone (killed) but left its routing journal behind, down undoes the
routing from the journal instead, and says so.

--leftovers only does the latter: it undoes what a dead daemon left behind, leaves a
running daemon alone, and succeeds when there is nothing to do. The systemd unit runs
it after the daemon exits. It leaves a full tunnel's kill switch (and the routing that
goes with it) in place, so that the traffic stays blocked until the unit restarts the
daemon, which takes the leftovers over, or until a plain 'down'.

Examples:
   stt-tun down alpha
   stt-tun down -c ./lab/alpha.toml
   stt-tun down --leftovers alpha`,
		Flags: []cli.Flag{
			configFlag(),
			timeoutFlag(30 * time.Second),
			&cli.BoolFlag{
				Name:  "leftovers",
				Usage: "only undo what a dead daemon left behind; never stop a running one",
			},
		},
		Action: func(c *cli.Context) error { return down(c, e) },
	}
}

func down(c *cli.Context, e *env) error {
	link, err := linkName(c, "down")
	if err != nil {
		return err
	}
	dir := stateDir(c)
	if err := statedir.Check(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			if c.Bool("leftovers") {
				return nil
			}
			return fmt.Errorf("%s is not up", link)
		}
		return err
	}
	ctx, cancel := context.WithTimeout(c.Context, flagDuration(c, "timeout"))
	defer cancel()
	if c.Bool("leftovers") {
		_, err := ctl.Status(ctx, ctl.SocketPath(dir, link))
		switch {
		case err == nil:
			return nil // a running daemon is left alone
		case !errors.Is(err, ctl.ErrNotRunning) && !errors.Is(err, ctl.ErrNoConfirmation):
			return fmt.Errorf("%s: %w", link, err)
		}
		return undoLeftovers(ctx, e, dir, link, err, true)
	}
	err = ctl.Down(ctx, ctl.SocketPath(dir, link))
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ctl.ErrNotRunning), errors.Is(err, ctl.ErrNoConfirmation):
		return undoLeftovers(ctx, e, dir, link, err, false)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: the daemon did not finish stopping within %v", link, flagDuration(c, "timeout"))
	default:
		return fmt.Errorf("down %s: %w", link, err)
	}
}

// undoLeftovers cleans up after a daemon that died without undoing its routing. The
// daemon is gone only if its lock is free, whatever became of its socket: a daemon
// whose socket was removed still runs and still owns its routing. The lock is held
// while the journal is undone, so no daemon can start meanwhile. With leftovers (down
// --leftovers) a missing journal is not an error.
func undoLeftovers(ctx context.Context, e *env, dir, link string, downErr error, leftovers bool) error {
	lock, err := lockGone(ctx, dir, link, downErr)
	if err != nil {
		return err
	}
	defer lock.Release()
	if leftovers {
		if held, _ := e.killSwitch(dir, link); held {
			// Undoing would let the full tunnel's traffic out by the uplink until
			// the restart; the next up takes the journal over instead.
			_ = lock.RemoveStale()
			fmt.Fprintf(e.stderr, "stt-tun: %s: the daemon was gone (killed?); its kill switch keeps blocking the full tunnel's traffic until the next up or 'stt-tun down %s'\n", link, link)
			return nil
		}
	}
	err = e.undo(dir, link)
	if errors.Is(err, fs.ErrNotExist) {
		_ = lock.RemoveStale()
		removeSourceIfClean(dir, link)
		switch {
		case leftovers:
			return nil
		case errors.Is(downErr, ctl.ErrNoConfirmation):
			return fmt.Errorf("%s: %w", link, downErr)
		}
		return fmt.Errorf("%s is not up", link)
	}
	if err != nil {
		return fmt.Errorf("%s: the daemon is gone; undo its routing from the journal: %w", link, err)
	}
	_ = lock.RemoveStale()
	removeSourceIfClean(dir, link)
	fmt.Fprintf(e.stderr, "stt-tun: %s: the daemon was gone (killed?); undid its routing from the journal\n", link)
	return nil
}

// lockGone takes the interface's lock, proving its daemon gone. A daemon that said it
// was stopping (ErrNoConfirmation) may still be exiting: its lock is waited for until
// ctx ends. One that does not answer on its socket but holds the lock is alive, and
// its routing is not touched.
func lockGone(ctx context.Context, dir, link string, downErr error) (*ctl.Lock, error) {
	for {
		lock, err := ctl.TryLock(dir, link)
		if err == nil {
			return lock, nil
		}
		if !errors.Is(err, ctl.ErrRunning) {
			return nil, fmt.Errorf("%s: %w", link, err)
		}
		if !errors.Is(downErr, ctl.ErrNoConfirmation) {
			return nil, fmt.Errorf("%s: its daemon is running (it holds %s) but does not answer on %s; not undoing its routing (stop the daemon with SIGTERM)",
				link, filepath.Join(dir, link+".lock"), ctl.SocketPath(dir, link))
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%s: %w, and it still runs", link, downErr)
		case <-time.After(20 * time.Millisecond): // polling the lock, bounded by ctx
		}
	}
}

// linkName is the interface a down, status or reload command is about: a bare NAME
// is taken as the interface name, unless no daemon socket has that name and an
// interface was started from <config-dir>/NAME.toml (see source.go) or that file names
// a different interface; -c FILE, or a NAME that is a path, likewise.
func linkName(c *cli.Context, cmd string) (string, error) {
	link, _, err := resolveLink(c, cmd)
	return link, err
}

// resolveLink is linkName, and also why the configuration file could not tell when a
// bare NAME was taken as the interface name for want of anything better.
func resolveLink(c *cli.Context, cmd string) (link string, cfgErr, err error) {
	path, bare, err := configPath(c, cmd)
	if err != nil {
		return "", nil, err
	}
	dir := stateDir(c)
	name := c.Args().First()
	if bare {
		if _, err := os.Lstat(ctl.SocketPath(dir, name)); err == nil {
			return name, nil, nil
		}
	}
	// What was started from the file is found even after the file was broken, or
	// renames the interface: the running daemon, or the journal of a dead one.
	if link, ok := startedFrom(dir, path); ok {
		return link, nil, nil
	}
	cfg, err := config.Load(path)
	switch {
	case err == nil && (cfg.Interface.Name != "" || !bare):
		return cfg.Interface.Name, nil, nil
	case err != nil && !bare:
		return "", nil, err
	}
	return name, err, nil
}
