package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/stt-tun/stt-tun/internal/ctl"
)

func reloadCommand(e *env) *cli.Command {
	return &cli.Command{
		Name:      "reload",
		Usage:     "apply a changed configuration to a running interface",
		UsageText: "stt-tun reload (NAME | -c FILE)",
		Description: `reload makes the interface's daemon read its configuration file again (the file
it was started with) and apply what changed, without dropping traffic: peers added
or removed, a peer's allowed_prefixes, route, endpoint, persistent_keepalive,
public_key and ws_* keys, [metrics], and the seed file (a planned rotation from
"genseed --next-of", or a new seed: sessions move to it by a rekey). Peers whose
section did not change keep their sessions and routes. It prints one line per change.

An invalid file is refused with its FILE:LINE errors, and a change that only a
restart can make (an [interface] key such as mtu, [websocket], [forwarding],
[advanced], [logging], the key, a seed file of another network) is refused naming
the key; either way the interface runs on unchanged and reload exits 1. Sending
SIGHUP to the daemon does the same as reload, with the result in the daemon's log.

NAME is the interface name, as for down.

Examples:
   stt-tun reload alpha
   stt-tun reload -c ./lab/alpha.toml
   systemctl reload stt-tun@alpha`,
		Flags: []cli.Flag{
			configFlag(),
			timeoutFlag(30 * time.Second),
		},
		Action: func(c *cli.Context) error { return reload(c, e) },
	}
}

func reload(c *cli.Context, e *env) error {
	link, cfgErr, err := resolveLink(c, "reload")
	if err != nil {
		return err
	}
	if cfgErr != nil && !errors.Is(cfgErr, fs.ErrNotExist) {
		// Nothing runs under NAME or was started from NAME.toml, and the file does not
		// say which interface it is: its problems are the answer.
		return cfgErr
	}
	ctx, cancel := context.WithTimeout(c.Context, flagDuration(c, "timeout"))
	defer cancel()
	changes, err := ctl.Reload(ctx, ctl.SocketPath(stateDir(c), link))
	var de *ctl.DaemonError
	switch {
	case errors.Is(err, ctl.ErrNotRunning):
		return fmt.Errorf("%s is not up", link)
	case errors.As(err, &de):
		head := fmt.Sprintf("reload %s refused, still running as before", link)
		if lines := strings.Split(de.Msg, "\n"); len(lines) > 1 || isConfigProblem(de.Msg) {
			return &problemsError{head: head, problems: lines}
		}
		return fmt.Errorf("%s: %s", head, de.Msg)
	case err != nil:
		return fmt.Errorf("reload %s: %w", link, err)
	}
	if len(changes) == 0 {
		fmt.Fprintf(e.stdout, "%s: reloaded, nothing changed\n", link)
		return nil
	}
	fmt.Fprintf(e.stdout, "%s: reloaded\n", link)
	for _, ch := range changes {
		fmt.Fprintf(e.stdout, "  %s\n", ch)
	}
	return nil
}

// tunnelReloader is the part of *tunnel.Tunnel a reload needs.
type tunnelReloader interface {
	ReloadFile(path string) ([]string, error)
}

// Reload reads the configuration file again and applies it to the running tunnel,
// returning what changed. The control socket's reload op and SIGHUP call it.
func (d *daemon) Reload() ([]string, error) {
	d.mu.Lock()
	t := d.tunnel
	d.mu.Unlock()
	if t == nil {
		return nil, errors.New("the interface is still starting; reload once it is up")
	}
	r, ok := t.(tunnelReloader)
	if !ok {
		return nil, errors.New("this tunnel cannot reload")
	}
	return r.ReloadFile(d.cfgPath)
}

// reloadOnSIGHUP reloads the configuration on every SIGHUP until the returned function
// is called. The outcome goes to the log (the tunnel logs each change).
func (d *daemon) reloadOnSIGHUP() (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		for {
			select {
			case <-done:
				return
			case <-hup:
				d.log.Info("SIGHUP: reloading", "config", d.cfgPath)
				if _, err := d.Reload(); err != nil {
					d.log.Error("SIGHUP: reload refused", "err", err)
				}
			}
		}
	}()
	return func() {
		signal.Stop(hup)
		close(done)
		<-finished
	}
}
