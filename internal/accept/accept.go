// Package accept keeps a listener accepting through errors.
//
// A failed accept(2) is usually about the process, not the listener: out of file
// descriptors (EMFILE, ENFILE), out of memory (ENOBUFS, ENOMEM), or a connection reset
// before it was taken (ECONNABORTED). Returning such an error to a serve loop either
// stops it, and with it the daemon, or spins it. A Listener instead counts the error,
// logs it at most once per LogInterval (with the number of errors since the last line),
// waits a backoff that doubles from MinBackoff to MaxBackoff while the errors go on, and
// accepts again. Only a closed listener ends Accept.
package accept

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stt-tun/stt-tun/internal/lograte"
)

// Kind names the daemon's listeners; each has its own error counter.
type Kind int

// The daemon's listeners.
const (
	Control   Kind = iota // the control socket
	WebSocket             // the WebSocket listener
	Metrics               // the metrics listener
	numKinds
)

// String is the kind's name in logs and metrics: control, websocket, metrics.
func (k Kind) String() string {
	switch k {
	case Control:
		return "control"
	case WebSocket:
		return "websocket"
	case Metrics:
		return "metrics"
	}
	return "unknown"
}

// Kinds lists every Kind, in metric order.
var Kinds = [...]Kind{Control, WebSocket, Metrics}

// Backoff and logging bounds.
const (
	MinBackoff  = 5 * time.Millisecond
	MaxBackoff  = time.Second
	LogInterval = 10 * time.Second
)

// errorCounts are the process's accept errors by listener kind: a daemon runs one
// listener of each kind at most.
var errorCounts [numKinds]atomic.Uint64

// Errors returns how many accepts on listeners of kind k failed in this process.
func Errors(k Kind) uint64 {
	if k < 0 || k >= numKinds {
		return 0
	}
	return errorCounts[k].Load()
}

// Listener is a net.Listener whose Accept retries failed accepts; see the package
// documentation.
type Listener struct {
	net.Listener
	kind Kind
	log  *slog.Logger

	closeOnce sync.Once
	done      chan struct{}

	logs lograte.Limiter
}

// Wrap returns ln retrying its failed accepts, counted under kind and logged to log
// (nil: discard).
func Wrap(ln net.Listener, kind Kind, log *slog.Logger) *Listener {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Listener{Listener: ln, kind: kind, log: log, done: make(chan struct{})}
}

// Accept returns the next connection. It returns an error only once the listener is
// closed: net.ErrClosed, or what the closed listener reported.
func (l *Listener) Accept() (net.Conn, error) {
	var backoff time.Duration
	for {
		c, err := l.Listener.Accept()
		if err == nil {
			return c, nil
		}
		select {
		case <-l.done:
			return nil, err
		default:
		}
		if errors.Is(err, net.ErrClosed) {
			return nil, err
		}
		if l.kind >= 0 && l.kind < numKinds {
			errorCounts[l.kind].Add(1)
		}
		if backoff == 0 {
			backoff = MinBackoff
		} else {
			backoff = min(2*backoff, MaxBackoff)
		}
		l.logError(err, backoff)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-l.done:
			t.Stop()
			return nil, net.ErrClosed
		}
	}
}

// logError logs err unless a line was logged less than LogInterval ago; the next line
// says how many errors went unlogged.
func (l *Listener) logError(err error, backoff time.Duration) {
	suppressed, ok := l.logs.Allow(LogInterval)
	if !ok {
		return
	}
	l.log.Warn("accept failed; retrying", "listener", l.kind.String(), "addr", l.Listener.Addr().String(),
		"err", err, "retry_in", backoff, "unlogged_since_last", suppressed)
}

// Close closes the listener and ends a pending Accept, also one waiting out a backoff.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}
