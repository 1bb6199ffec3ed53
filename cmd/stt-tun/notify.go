package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// notifySocketEnv names the service manager's notification socket (sd_notify(3)).
const notifySocketEnv = "NOTIFY_SOCKET"

// notifier tells a service manager (systemd, Type=notify) how the daemon is doing:
// READY=1 once the interface has its addresses and routes, RELOADING=1 around a reload,
// STOPPING=1 on the way down. It speaks the sd_notify protocol itself: one datagram of
// newline-separated assignments per state, on the unix datagram socket NOTIFY_SOCKET
// names, a path or an abstract name written with a leading "@". A nil notifier, as
// outside systemd, sends nothing.
type notifier struct {
	addr *net.UnixAddr
	log  *slog.Logger
	once sync.Once // warn about a failing socket only once
}

// newNotifier returns the notifier for the socket named by NOTIFY_SOCKET, or nil when
// it is unset. A value that names no usable socket is reported once and ignored.
func newNotifier(log *slog.Logger) *notifier {
	name := os.Getenv(notifySocketEnv)
	if name == "" {
		return nil
	}
	if !strings.HasPrefix(name, "/") && !strings.HasPrefix(name, "@") {
		log.Warn("ignoring "+notifySocketEnv+": neither an absolute path nor an abstract socket name", "value", name)
		return nil
	}
	// Go's net package turns a leading "@" into Linux's abstract namespace (a NUL).
	return &notifier{addr: &net.UnixAddr{Name: name, Net: "unixgram"}, log: log}
}

// ready reports that the interface is up; status is a one-line description that
// `systemctl status` shows.
func (n *notifier) ready(status string) {
	n.send(fmt.Sprintf("READY=1\nSTATUS=%s\nMAINPID=%d", oneLine(status), os.Getpid()))
}

// reloading reports that a reload has started; ready ends it.
func (n *notifier) reloading() {
	n.send(fmt.Sprintf("RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC=%d", monotonicUsec()))
}

// stopping reports that the daemon is shutting down and undoing its routing.
func (n *notifier) stopping() {
	n.send("STOPPING=1\nSTATUS=stopping: closing the tunnel and undoing its routing")
}

func (n *notifier) send(state string) {
	if n == nil {
		return
	}
	if err := n.write(state); err != nil {
		n.once.Do(func() { n.log.Warn("cannot notify the service manager", "socket", n.addr.Name, "err", err) })
	}
}

func (n *notifier) write(state string) error {
	c, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return err
	}
	defer c.Close()
	w, err := c.Write([]byte(state))
	if err == nil && w != len(state) {
		err = errors.New("short write")
	}
	return err
}

// monotonicUsec is CLOCK_MONOTONIC in microseconds, which systemd wants with
// RELOADING=1 to tell this reload from an earlier one.
func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano() / 1000
}
