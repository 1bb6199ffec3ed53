package ws

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
)

// maxCork bounds what a corked connection gathers before it writes anyway.
const maxCork = 256 << 10

// corkConn gathers a connection's writes while the write loop sends a run of
// messages, and hands them to the kernel in one write when the run ends.
//
// The WebSocket library writes through a 4 KiB buffer and, on the client side (whose
// frames are masked), flushes it every 4 KiB: a 90 KB message of records became 22
// write system calls, each its own TCP send. Corked, it is one. Writes outside a run
// (pings, the close handshake) go straight through.
type corkConn struct {
	net.Conn
	mu     sync.Mutex
	corked bool
	buf    []byte
}

// Write writes p, or keeps it for uncork while corked.
func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.corked {
		return c.Conn.Write(p)
	}
	if len(c.buf)+len(p) > maxCork {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		if len(p) >= maxCork {
			return c.Conn.Write(p)
		}
	}
	c.buf = append(c.buf, p...)
	return len(p), nil
}

// cork starts a run: writes are gathered until uncork.
func (c *corkConn) cork() {
	c.mu.Lock()
	c.corked = true
	c.mu.Unlock()
}

// uncork ends a run and writes what it gathered.
func (c *corkConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	return c.flushLocked()
}

func (c *corkConn) flushLocked() error {
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	c.buf = c.buf[:0]
	return err
}

// corkListener makes every accepted connection a corkConn.
type corkListener struct{ net.Listener }

func (l corkListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &corkConn{Conn: nc}, nil
}

type corkKey struct{}

// withCork is the HTTP server's ConnContext: it keeps the request's corkConn, under
// TLS if there is TLS, where the upgrade handler finds it with corkOf.
func withCork(ctx context.Context, nc net.Conn) context.Context {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	if cc, ok := nc.(*corkConn); ok {
		return context.WithValue(ctx, corkKey{}, cc)
	}
	return ctx
}

// corkOf returns the corkConn withCork kept, or nil.
func corkOf(ctx context.Context) *corkConn {
	cc, _ := ctx.Value(corkKey{}).(*corkConn)
	return cc
}
