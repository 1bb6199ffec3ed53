package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/internal/ctl"
	"github.com/stt-tun/stt-tun/internal/status"
	"github.com/stt-tun/stt-tun/tunnel"
)

// daemonTunnel is the part of *tunnel.Tunnel the daemon drives; tests supply a fake.
type daemonTunnel interface {
	Status() status.Status
	Done() <-chan struct{}
	Err() error
	Close() error
}

type daemonOptions struct {
	stateDir string
	level    slog.Level
	ready    *readiness
	log      io.Writer // where the log goes; nil means e.stderr
}

// runDaemon runs one interface until SIGTERM or SIGINT, a down request on its control
// socket, or a fatal tunnel error; then it closes the tunnel, which undoes its routing.
// It reports readiness once the tunnel is up and the control socket answers.
func runDaemon(ctx context.Context, e *env, cfg *config.Config, opts daemonOptions) error {
	name := cfg.Interface.Name
	// The tunnel names the interface in its own records.
	logTo := opts.log
	if logTo == nil {
		logTo = e.stderr
	}
	tunnelLog := newLogger(logTo, cfg.Logging.Format, opts.level)
	log := tunnelLog.With("interface", name)

	// Up to the hard limit (systemd's LimitNOFILE): an exhausted table makes every
	// listener's accept fail (they retry) and new sessions' sockets impossible.
	fileLimit, err := raiseFileLimit()
	if err != nil {
		log.Warn("cannot raise the limit on open files to the hard limit", "limit", fileLimit, "err", err)
	}

	sigCtx, stopSignals := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stopSignals()

	srv, err := ctl.Listen(opts.stateDir, name, log)
	if errors.Is(err, ctl.ErrRunning) {
		return fmt.Errorf("%s is already up (see 'stt-tun status %s')", name, name)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	// Before anything is changed, so that leftovers can be found from the file's name
	// whatever the file says later (see source.go). Removed, still holding the lock,
	// once nothing is left behind.
	if err := recordSource(opts.stateDir, name, cfg.Path); err != nil {
		log.Warn("cannot record the configuration file; 'down --leftovers' then needs the interface name", "err", err)
	}

	// Serve from the start, so that status shows a starting interface and down can
	// abort a start that hangs (say, resolving a peer's name).
	startCtx, cancelStart := context.WithCancel(sigCtx)
	defer cancelStart()
	d := &daemon{
		starting: status.Status{State: status.StateStarting, Interface: name, NodeName: cfg.Interface.NodeName},
		shutdown: make(chan struct{}),
		cancel:   cancelStart,
		cfgPath:  cfg.Path,
		log:      log,
	}
	stopReloads := d.reloadOnSIGHUP() // see reload.go
	defer stopReloads()
	sd := newNotifier(log)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(notifyingReloads{d, sd}) }()

	log.Info("starting", "config", cfg.Path, "version", versionString(), "open_files_limit", fileLimit)
	if addr := os.Getenv("STT_TUN_PPROF"); addr != "" {
		servePprof(addr, log)
	}
	t, err := e.start(startCtx, cfg, tunnel.Options{Logger: tunnelLog, StateDir: opts.stateDir})
	if err != nil {
		removeSourceIfClean(opts.stateDir, name)
		srv.Close()
		switch {
		case d.stopRequested():
			return fmt.Errorf("%s: start aborted by 'stt-tun down': %w", name, err)
		case sigCtx.Err() != nil && ctx.Err() == nil:
			return fmt.Errorf("%s: start interrupted by a signal: %w", name, err)
		}
		return fmt.Errorf("start %s: %w", name, err)
	}
	d.started(t)
	// Only now, with the interface's addresses and routes in place, may whatever
	// waits for it (`up`, or systemd and the units ordered after this one) go on.
	opts.ready.ok()
	sd.ready(d.readyStatus())
	log.Info("up", "control", srv.Path())

	var runErr error
	select {
	case <-sigCtx.Done():
		stopSignals() // a second signal ends the process the hard way
		log.Info("stopping on signal")
	case <-d.shutdown:
		log.Info("stopping on request")
	case <-t.Done():
		if sigCtx.Err() == nil {
			runErr = t.Err()
			if runErr != nil {
				log.Error("tunnel failed", "err", runErr)
				runErr = fmt.Errorf("%s stopped: %w", name, runErr)
			}
		}
	case err := <-served:
		// Without its control socket the daemon could not be managed: stop rather than
		// linger unreachable.
		runErr = fmt.Errorf("%s: %w", name, err)
		log.Error("control socket failed", "err", err)
	}

	sd.stopping()
	closeErr := t.Close()
	if closeErr != nil {
		closeErr = fmt.Errorf("close %s: %w", name, closeErr)
		log.Error("close", "err", closeErr)
	}
	removeSourceIfClean(opts.stateDir, name)
	if err := srv.CloseWithError(closeErr); err != nil {
		log.Warn("control socket", "err", err)
	}
	if runErr == nil && closeErr == nil {
		log.Info("down")
	}
	return errors.Join(runErr, closeErr)
}

// notifyingReloads is the daemon as its control socket serves it: a reload asked for
// there (`stt-tun reload`, the systemd unit's ExecReload) is framed by RELOADING=1 and
// READY=1 to the service manager, so that `systemctl reload` waits for it.
type notifyingReloads struct {
	*daemon
	sd *notifier
}

func (n notifyingReloads) Reload() ([]string, error) {
	n.mu.Lock()
	up := n.tunnel != nil
	n.mu.Unlock()
	if !up { // never READY=1 before the start has finished
		return n.daemon.Reload()
	}
	n.sd.reloading()
	defer func() { n.sd.ready(n.readyStatus()) }()
	return n.daemon.Reload()
}

// readyStatus is the one-line state systemd shows for a running interface.
func (d *daemon) readyStatus() string {
	st := d.Status()
	if len(st.Peers) == 1 {
		return st.Interface + " up with 1 peer"
	}
	return fmt.Sprintf("%s up with %d peers", st.Interface, len(st.Peers))
}

// daemon is what the control socket sees of a running interface.
type daemon struct {
	starting status.Status      // what status shows until the tunnel is up
	cancel   context.CancelFunc // aborts a start in progress
	once     sync.Once
	shutdown chan struct{} // closed by a down request
	cfgPath  string        // the configuration file, read again by a reload
	log      *slog.Logger

	mu     sync.Mutex
	tunnel daemonTunnel // nil while starting
}

func (d *daemon) started(t daemonTunnel) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.tunnel = t
}

// Status reports the tunnel's status, or only its name while it starts.
func (d *daemon) Status() status.Status {
	d.mu.Lock()
	t := d.tunnel
	d.mu.Unlock()
	if t == nil {
		return d.starting
	}
	return t.Status()
}

// Shutdown asks runDaemon to stop, aborting a start in progress.
func (d *daemon) Shutdown() {
	d.once.Do(func() {
		close(d.shutdown)
		d.mu.Lock()
		up := d.tunnel != nil
		d.mu.Unlock()
		if !up {
			d.cancel()
		}
	})
}

func (d *daemon) stopRequested() bool {
	select {
	case <-d.shutdown:
		return true
	default:
		return false
	}
}

// parseLevel parses --log-level.
func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, usageError("up: --log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}
