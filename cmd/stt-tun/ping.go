package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/internal/ctl"
	"github.com/stt-tun/stt-tun/internal/status"
)

// Defaults and limits of ping.
const (
	defaultPingCount    = 4
	defaultPingInterval = time.Second
	minPingInterval     = 10 * time.Millisecond
)

func pingCommand(e *env) *cli.Command {
	return &cli.Command{
		Name:      "ping",
		Usage:     "echo through a peer's session and show the round-trip time and path",
		UsageText: "stt-tun ping [-c COUNT] [-i INTERVAL] [-W TIMEOUT] [-I NAME] PEER",
		Description: `ping sends STT echoes to PEER through the session with it, the way tunnelled
packets go, and prints each round-trip time and the path that answered: udp or ws
(WebSocket) and the underlay address, or relay and the member that relayed it. No packet goes through the TUN device or
either node's IP stack, so ping tells a tunnel problem from a firewall or routing
one inside the tunnel. Without a session, the first echo waits for the handshake.

PEER is a peer's name as in the configuration. -I NAME picks the interface; it
may be left out when exactly one running interface has a peer of that name.

ping sends COUNT echoes (default 4; 0 means until interrupted) one INTERVAL
apart, waits up to TIMEOUT for each, and ends with a summary. It exits 0 if any
echo was answered and 1 if none was; ^C stops it early, with the summary.
INTERVAL and TIMEOUT take a unit (200ms, 3s) or plain seconds (0.2, 3), and a
value may be glued to its flag (-c1, -W3), as with ping(8).

Examples:
   stt-tun ping beta
   stt-tun ping -c 10 -i 200ms -I stt0 beta
   stt-tun ping -c1 -W 3 beta && echo "beta answers"`,
		Flags: []cli.Flag{
			&cli.IntFlag{
				Name:    "count",
				Aliases: []string{"c"},
				Usage:   "number of echoes to send; 0 = until interrupted",
				Value:   defaultPingCount,
			},
			durationFlag("interval", []string{"i"}, "time between echoes (at least 10ms)", defaultPingInterval),
			durationFlag("timeout", []string{"W"}, "how long to wait for each reply (at most 1m)", ctl.DefaultPingTimeout),
			&cli.StringFlag{
				Name:    "interface",
				Aliases: []string{"I"},
				Usage:   "the interface `NAME` whose peer to ping",
			},
		},
		Action: func(c *cli.Context) error { return ping(c, e) },
	}
}

// pingSettings is a validated ping command line.
type pingSettings struct {
	peer     string
	count    int
	interval time.Duration
	timeout  time.Duration
}

func pingArgs(c *cli.Context) (pingSettings, error) {
	s := pingSettings{
		count:    c.Int("count"),
		interval: flagDuration(c, "interval"),
		timeout:  flagDuration(c, "timeout"),
	}
	switch n := c.Args().Len(); {
	case n == 0:
		return s, usageError("ping: missing PEER (see 'stt-tun ping --help')")
	case n > 1:
		return s, usageError("ping: unexpected arguments %q (one PEER at a time)", c.Args().Slice()[1:])
	}
	s.peer = c.Args().First()
	switch {
	case s.count < 0:
		return s, usageError("ping: -c %d: want a count of 1 or more, or 0 for no limit", s.count)
	case s.interval < minPingInterval:
		return s, usageError("ping: -i %v: the interval is at least %v", s.interval, minPingInterval)
	case s.timeout <= 0 || s.timeout > ctl.MaxPingTimeout:
		return s, usageError("ping: -W %v: want a timeout above 0 and at most %v", s.timeout, ctl.MaxPingTimeout)
	}
	return s, nil
}

func ping(c *cli.Context, e *env) error {
	s, err := pingArgs(c)
	if err != nil {
		return err
	}
	dir := stateDir(c)
	link, err := pingInterface(c.Context, dir, c.String("config-dir"), c.String("interface"), s.peer)
	if err != nil {
		return err
	}
	// ^C ends the run with the summary, like ping(8).
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return runPings(ctx, e.stdout, ctl.SocketPath(dir, link), link, s)
}

// pingInterface finds the interface to ping peer on: the one given (a NAME given to up
// is accepted too, as for down), or else the only running interface with that peer.
func pingInterface(ctx context.Context, dir, configDir, given, peer string) (string, error) {
	if given != "" {
		if _, err := os.Lstat(ctl.SocketPath(dir, given)); err == nil || strings.ContainsRune(given, '/') {
			return given, nil
		}
		if cfg, err := config.Load(filepath.Join(configDir, given+".toml")); err == nil && cfg.Interface.Name != "" {
			return cfg.Interface.Name, nil
		}
		return given, nil
	}
	names, err := ctl.List(dir)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var up, with []string
	for _, name := range names {
		st, err := ctl.Status(ctx, ctl.SocketPath(dir, name))
		if err != nil {
			continue // stale socket, or a daemon that does not answer
		}
		up = append(up, name)
		if slices.ContainsFunc(st.Peers, func(p status.Peer) bool { return p.Name == peer }) {
			with = append(with, name)
		}
	}
	switch {
	case len(with) == 1:
		return with[0], nil
	case len(with) > 1:
		return "", usageError("ping: peer %q is on several interfaces (%s); choose one with -I NAME", peer, strings.Join(with, ", "))
	case len(up) == 0:
		return "", errors.New("ping: no interface is up")
	}
	return "", fmt.Errorf("ping: no running interface has a peer named %q (up: %s)", peer, strings.Join(up, ", "))
}

// runPings sends the echoes one interval apart and prints a line for each and the
// summary. It fails if no echo was answered.
func runPings(ctx context.Context, w io.Writer, sock, link string, s pingSettings) error {
	// A deadline on ctx may cut a request short a moment before ctx reports it.
	interrupted := func() bool {
		dl, ok := ctx.Deadline()
		return ctx.Err() != nil || ok && !time.Now().Before(dl)
	}
	var rtts []float64
	sent := 0
	for seq := 1; s.count == 0 || seq <= s.count; seq++ {
		start := time.Now()
		// The daemon waits up to s.timeout; the margin covers the control socket.
		rctx, cancel := context.WithTimeout(ctx, s.timeout+5*time.Second)
		r, err := ctl.Ping(rctx, sock, s.peer, s.timeout)
		cancel()
		if interrupted() {
			break // this echo does not count
		}
		var de *ctl.DaemonError
		switch {
		case errors.Is(err, ctl.ErrNotRunning):
			return fmt.Errorf("%s is not up", link)
		case errors.As(err, &de):
			return fmt.Errorf("ping: %s", de.Msg)
		case err != nil:
			return fmt.Errorf("ping %s on %s: %w", s.peer, link, err)
		}
		if sent == 0 {
			// After the first answer, so that an error is the only output.
			fmt.Fprintf(w, "PING %s on %s: STT echo through the session\n", s.peer, link)
		}
		sent++
		if r.Replied {
			rtts = append(rtts, r.RTT)
			via := r.Path
			switch {
			case r.Via != "":
				via += " " + r.Via
			case r.Endpoint != "":
				via += " " + r.Endpoint
			}
			fmt.Fprintf(w, "reply from %s via %s: seq=%d time=%.3f ms\n", s.peer, via, seq, r.RTT)
		} else {
			fmt.Fprintf(w, "no reply from %s: seq=%d: %s\n", s.peer, seq, r.Reason)
		}
		if s.count != 0 && seq == s.count {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Until(start.Add(s.interval))):
		}
		if ctx.Err() != nil {
			break
		}
	}
	if sent == 0 {
		return fmt.Errorf("ping %s: interrupted before the first echo", s.peer)
	}
	fmt.Fprintf(w, "\n--- %s ping statistics ---\n%s\n", s.peer, pingSummary(sent, rtts))
	if len(rtts) == 0 {
		return fmt.Errorf("no reply from %s", s.peer)
	}
	return nil
}

// pingSummary is the last line: "4 sent, 3 received, 25% loss, rtt min/avg/max =
// 0.210/0.260/0.310 ms".
func pingSummary(sent int, rtts []float64) string {
	loss := 0
	if sent > 0 {
		loss = (sent - len(rtts)) * 100 / sent
	}
	line := fmt.Sprintf("%d sent, %d received, %d%% loss", sent, len(rtts), loss)
	if len(rtts) == 0 {
		return line
	}
	sum := 0.0
	for _, r := range rtts {
		sum += r
	}
	return fmt.Sprintf("%s, rtt min/avg/max = %.3f/%.3f/%.3f ms", line, slices.Min(rtts), sum/float64(len(rtts)), slices.Max(rtts))
}

// tunnelPinger is the part of *tunnel.Tunnel a ping needs.
type tunnelPinger interface {
	Ping(ctx context.Context, peer string) (status.PingReply, error)
}

// Ping sends one echo through the session with peer; the control socket's ping op
// calls it.
func (d *daemon) Ping(ctx context.Context, peer string) (status.PingReply, error) {
	d.mu.Lock()
	t := d.tunnel
	d.mu.Unlock()
	if t == nil {
		return status.PingReply{}, errors.New("the interface is still starting")
	}
	p, ok := t.(tunnelPinger)
	if !ok {
		return status.PingReply{}, errors.New("this tunnel cannot ping")
	}
	return p.Ping(ctx, peer)
}
