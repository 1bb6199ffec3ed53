package ctl

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/stt-tun/stt-tun/internal/statedir"
	"github.com/stt-tun/stt-tun/internal/status"
)

// ErrNoConfirmation means the daemon closed the connection after acknowledging a down
// request but before confirming that the tunnel was closed: it died while tearing down.
var ErrNoConfirmation = errors.New("daemon exited without confirming that the tunnel was closed")

// Status asks the daemon listening on sock for its tunnel's status.
func Status(ctx context.Context, sock string) (status.Status, error) {
	c, err := dial(ctx, sock)
	if err != nil {
		return status.Status{}, err
	}
	defer c.close()
	resp, err := c.roundTrip(Request{Op: OpStatus})
	if err != nil {
		return status.Status{}, err
	}
	if resp.Status == nil {
		return status.Status{}, fmt.Errorf("status from %s: response has no status", sock)
	}
	return *resp.Status, nil
}

// Down asks the daemon listening on sock to stop and waits, until ctx is done, for it to
// confirm that its tunnel is closed and its routing undone. An error from closing the
// tunnel is returned as the daemon reported it.
func Down(ctx context.Context, sock string) error {
	c, err := dial(ctx, sock)
	if err != nil {
		return err
	}
	defer c.close()
	if _, err := c.roundTrip(Request{Op: OpDown}); err != nil {
		return err
	}
	resp, err := c.read()
	if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
		return fmt.Errorf("down %s: %w", sock, ErrNoConfirmation)
	}
	if err != nil {
		return fmt.Errorf("down %s: wait for the daemon: %w", sock, err)
	}
	if !resp.OK {
		return fmt.Errorf("daemon: %s", resp.Error)
	}
	return nil
}

// client is one connection to a control socket whose I/O is cut short when ctx ends.
type client struct {
	ctx  context.Context
	conn net.Conn
	br   *bufio.Reader
	stop func() bool
	sock string
}

func dial(ctx context.Context, sock string) (*client, error) {
	// Whoever can write the directory could have put a socket of theirs there.
	if err := statedir.Check(filepath.Dir(sock)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s: %w", sock, ErrNotRunning)
		}
		return nil, err
	}
	// connect(2) follows symbolic links; a daemon's socket is never one.
	if fi, err := os.Lstat(sock); err == nil && fi.Mode().Type() != os.ModeSocket {
		return nil, fmt.Errorf("%s is not a socket; not connecting", sock)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%s: %w", sock, ErrNotRunning)
		}
		return nil, fmt.Errorf("connect to %s: %w", sock, err)
	}
	c := &client{ctx: ctx, conn: conn, br: bufio.NewReader(conn), sock: sock}
	// A deadline in the past wakes any blocked read or write at once.
	c.stop = context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	return c, nil
}

func (c *client) close() {
	c.stop()
	c.conn.Close()
}

// roundTrip sends req and reads one response, turning an error response into an error.
func (c *client) roundTrip(req Request) (Response, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return Response{}, fmt.Errorf("encode request: %w", err)
	}
	if _, err := c.conn.Write(append(b, '\n')); err != nil {
		return Response{}, c.wrap(fmt.Sprintf("send %s request", req.Op), err)
	}
	resp, err := c.read()
	if c.ctx.Err() == nil && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
		// It closed without answering: it was dying, or had failed to start.
		return Response{}, fmt.Errorf("%s: the daemon hung up: %w", c.sock, ErrNotRunning)
	}
	if err != nil {
		return Response{}, c.wrap(fmt.Sprintf("%s request", req.Op), err)
	}
	if !resp.OK {
		return Response{}, &DaemonError{Op: req.Op, Msg: resp.Error}
	}
	return resp, nil
}

// DaemonError is a request the daemon answered with an error.
type DaemonError struct {
	Op  string // the request's op
	Msg string // the daemon's message
}

func (e *DaemonError) Error() string { return fmt.Sprintf("%s request: daemon: %s", e.Op, e.Msg) }

// Reload asks the daemon listening on sock to read its configuration file again and
// apply it, and returns what changed, one line each. A refusal (an invalid file, or a
// change that needs a restart) is a *DaemonError; the daemon then runs on unchanged.
func Reload(ctx context.Context, sock string) ([]string, error) {
	c, err := dial(ctx, sock)
	if err != nil {
		return nil, err
	}
	defer c.close()
	resp, err := c.roundTrip(Request{Op: OpReload})
	if err != nil {
		return nil, err
	}
	return resp.Changes, nil
}

// Ping asks the daemon listening on sock to send one echo to peer through its session
// and to wait up to timeout for the answer (0: DefaultPingTimeout). No answer is not an
// error: the result says Replied false, and why. An unknown peer is a *DaemonError.
func Ping(ctx context.Context, sock, peer string, timeout time.Duration) (PingResult, error) {
	c, err := dial(ctx, sock)
	if err != nil {
		return PingResult{}, err
	}
	defer c.close()
	resp, err := c.roundTrip(Request{Op: OpPing, Peer: peer, TimeoutMS: timeout.Milliseconds()})
	if err != nil {
		return PingResult{}, err
	}
	if resp.Ping == nil {
		return PingResult{}, fmt.Errorf("ping from %s: response has no result", sock)
	}
	return *resp.Ping, nil
}

// read reads one response line.
func (c *client) read() (Response, error) {
	line, err := c.br.ReadBytes('\n')
	if err != nil {
		if ctxErr := c.ctx.Err(); ctxErr != nil {
			return Response{}, ctxErr
		}
		return Response{}, err
	}
	var resp Response
	if err := json.Unmarshal(line, &resp); err != nil {
		return Response{}, fmt.Errorf("decode response: %w", err)
	}
	return resp, nil
}

func (c *client) wrap(what string, err error) error {
	if ctxErr := c.ctx.Err(); ctxErr != nil {
		err = ctxErr
	}
	return fmt.Errorf("%s on %s: %w", what, c.sock, err)
}
