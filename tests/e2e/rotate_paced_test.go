//go:build e2e

package e2e

import (
	"context"
	crand "crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"time"

	"github.com/stt-tun/stt-tun/internal/nslab"
)

// pacedTransfer is nslab.Transfer spread over a duration: it sends size random bytes
// over TCP from src to a listener in dst on host in chunks paced so that the last one
// goes about span after the first, so that the transfer is certainly in flight during
// whatever the test does meanwhile (a rotation of the seed). The pacing is a rate, not
// a synchronisation: the result is checked by its SHA-256 alone.
func pacedTransfer(ctx context.Context, src, dst *nslab.NS, host string, size int64, span time.Duration) (nslab.TransferResult, error) {
	var res nslab.TransferResult
	ln, err := dst.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return res, fmt.Errorf("listen in %s: %w", dst.Name(), err)
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
			r.err = err
			return
		}
		defer c.Close()
		stop := context.AfterFunc(ctx, func() { c.Close() })
		defer stop()
		h := sha256.New()
		r.n, r.err = io.Copy(h, c)
		h.Sum(r.sum[:0])
	}()
	stopLn := context.AfterFunc(ctx, func() { ln.Close() })
	defer stopLn()

	sendErr := func() error {
		c, err := src.Dial(ctx, "tcp", ln.Addr().String())
		if err != nil {
			return err
		}
		defer c.Close()
		stop := context.AfterFunc(ctx, func() { c.Close() })
		defer stop()
		var seed [32]byte
		crand.Read(seed[:])
		data := rand.NewChaCha8(seed)
		h := sha256.New()
		w := io.MultiWriter(c, h)
		const chunks = 200
		start := time.Now()
		for i := range int64(chunks) {
			n := size / chunks
			if i == chunks-1 {
				n = size - res.SentBytes
			}
			m, err := io.Copy(w, io.LimitReader(data, n))
			res.SentBytes += m
			if err != nil {
				return err
			}
			if d := time.Until(start.Add(span * time.Duration(i+1) / chunks)); d > 0 {
				time.Sleep(d) // pacing, not synchronisation
			}
		}
		h.Sum(res.SentSHA256[:0])
		return c.(*net.TCPConn).CloseWrite()
	}()
	if sendErr != nil {
		ln.Close()
	}
	r := <-got
	res.ReceivedBytes, res.ReceivedSHA256 = r.n, r.sum
	if err := errors.Join(sendErr, r.err); err != nil {
		return res, fmt.Errorf("paced transfer %s -> %s: %w", src.Name(), dst.Name(), err)
	}
	return res, nil
}
