package ws

import (
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
