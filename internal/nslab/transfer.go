package nslab

import (
	"context"
	crand "crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
)

// TransferResult describes one Transfer: what was sent and what arrived.
type TransferResult struct {
	SentBytes, ReceivedBytes   int64
	SentSHA256, ReceivedSHA256 [sha256.Size]byte
}

// OK reports whether everything sent arrived intact.
func (r TransferResult) OK() bool {
	return r.SentBytes == r.ReceivedBytes && r.SentSHA256 == r.ReceivedSHA256
}

// String summarises r for test failure messages.
func (r TransferResult) String() string {
	return fmt.Sprintf("sent %d bytes sha256 %x, received %d bytes sha256 %x",
		r.SentBytes, r.SentSHA256[:8], r.ReceivedBytes, r.ReceivedSHA256[:8])
}

// Transfer sends size bytes of random data over TCP from src to a listener it
// opens in dst on host (an IP literal of dst, any free port), and returns the
// byte counts and SHA-256 digests of what was sent and what was received. ctx
// bounds the whole transfer.
func Transfer(ctx context.Context, src, dst *NS, host string, size int64) (TransferResult, error) {
	return TransferMid(ctx, src, dst, host, size, nil)
}

// TransferMid is Transfer that calls mid, when not nil, once the sender has written
// half of the bytes, and writes the other half once mid has returned: a fault injected
// by mid hits a transfer in flight. An error from mid ends the transfer and is
// returned.
func TransferMid(ctx context.Context, src, dst *NS, host string, size int64, mid func() error) (TransferResult, error) {
	var res TransferResult
	ln, err := dst.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return res, fmt.Errorf("transfer: listen in %s: %w", dst.name, err)
	}
	defer ln.Close()

	type recv struct {
		n   int64
		sum [sha256.Size]byte
		err error
	}
	got := make(chan recv, 1)
	go func() {
		var r recv
		defer func() { got <- r }()
		c, err := ln.Accept()
		if err != nil {
			r.err = fmt.Errorf("accept: %w", err)
			return
		}
		defer c.Close()
		stop := context.AfterFunc(ctx, func() { c.Close() })
		defer stop()
		h := sha256.New()
		r.n, r.err = io.Copy(h, c)
		h.Sum(r.sum[:0])
	}()
	// Accept returns once the listener is closed; so does Copy once its
	// connection is.
	stopLn := context.AfterFunc(ctx, func() { ln.Close() })
	defer stopLn()

	sendErr := send(ctx, src, ln.Addr().String(), size, mid, &res)
	if sendErr != nil {
		ln.Close() // the receiver may still be waiting for a connection
	}
	r := <-got
	res.ReceivedBytes, res.ReceivedSHA256 = r.n, r.sum
	if err := errors.Join(sendErr, r.err); err != nil {
		return res, fmt.Errorf("transfer %s -> %s: %w", src.name, dst.name, err)
	}
	return res, nil
}

// send dials addr from src and writes size random bytes, recording their
// count and digest in res; mid, if not nil, runs between the two halves.
func send(ctx context.Context, src *NS, addr string, size int64, mid func() error, res *TransferResult) error {
	c, err := src.Dial(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("dial from %s: %w", src.name, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	h := sha256.New()
	var seed [32]byte
	crand.Read(seed[:])
	data := rand.NewChaCha8(seed)
	w := io.MultiWriter(c, h)
	first := size
	if mid != nil {
		first = size / 2
	}
	res.SentBytes, err = io.Copy(w, io.LimitReader(data, first))
	if err == nil && mid != nil {
		if err = mid(); err != nil {
			err = fmt.Errorf("mid-transfer: %w", err)
		} else {
			var n int64
			n, err = io.Copy(w, io.LimitReader(data, size-first))
			res.SentBytes += n
		}
	}
	h.Sum(res.SentSHA256[:0])
	if err != nil {
		return fmt.Errorf("send: %w", err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return fmt.Errorf("close write: %w", err)
	}
	return nil
}
