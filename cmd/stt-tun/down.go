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
names the interface differently). down asks the interface's daemon to stop, and
returns once the tunnel is closed and its routes, rules and addresses are undone.

If the daemon is gone (killed) but left its routing journal behind, down undoes the
routing from the journal instead, and says so.

--leftovers only does the latter: it undoes what a dead daemon left behind, leaves a
running daemon alone, and succeeds when there is nothing to do. The systemd unit runs
it after the daemon exits, so that a restart after a crash finds a clean host.

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
	ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
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
		return fmt.Errorf("%s: the daemon did not finish stopping within %v", link, c.Duration("timeout"))
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
	err = e.undo(dir, link)
	if errors.Is(err, fs.ErrNotExist) {
		_ = lock.RemoveStale()
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

// linkName is the interface a down or status command is about: a bare NAME is taken as
// the interface name, unless no daemon socket has that name and <config-dir>/NAME.toml
// names a different interface; -c FILE, or a NAME that is a path, is read for its
// interface name.
func linkName(c *cli.Context, cmd string) (string, error) {
	path, bare, err := configPath(c, cmd)
	if err != nil {
		return "", err
	}
	if !bare {
		cfg, err := config.Load(path)
		if err != nil {
			return "", err
		}
		return cfg.Interface.Name, nil
	}
	name := c.Args().First()
	if _, err := os.Lstat(ctl.SocketPath(stateDir(c), name)); err == nil {
		return name, nil
	}
	if cfg, err := config.Load(path); err == nil && cfg.Interface.Name != "" {
		return cfg.Interface.Name, nil
	}
	return name, nil
}
