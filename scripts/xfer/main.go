// Command xfer moves random bytes over one TCP connection and prints their SHA-256, so
// that the demo can show a transfer through the tunnel arrived intact without needing
// iperf3 or netcat on the machine.
//
//	xfer recv ADDR          accept one connection on ADDR, read it to the end
//	xfer send ADDR BYTES    connect to ADDR (retrying while nothing listens yet), send BYTES
//
// Each prints one line, "<bytes> bytes sha256 <hex> in <duration> (<rate>)". Both give
// up after -timeout (default 60s), so the demo cannot hang on them.
package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"syscall"
	"time"
)

func main() {
	timeout := flag.Duration("timeout", 60*time.Second, "give up after this long")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: xfer [-timeout D] recv ADDR | send ADDR BYTES")
	}
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	args := flag.Args()
	var err error
	switch {
	case len(args) == 2 && args[0] == "recv":
		err = recv(ctx, args[1])
	case len(args) == 3 && args[0] == "send":
		var n int64
		n, err = strconv.ParseInt(args[2], 10, 64)
		if err == nil && n < 0 {
			err = errors.New("negative size")
		}
		if err == nil {
			err = send(ctx, args[1], n)
		}
	default:
		flag.Usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "xfer: %v\n", err)
		os.Exit(1)
	}
}

func recv(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	defer ln.Close()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	c, err := ln.Accept()
	if err != nil {
		return fmt.Errorf("accept on %s: %w", addr, context.Cause(ctx))
	}
	defer c.Close()
	stopC := context.AfterFunc(ctx, func() { c.Close() })
	defer stopC()
	start := time.Now()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		return fmt.Errorf("receive: %w", err)
	}
	report(n, h.Sum(nil), time.Since(start))
	return nil
}

func send(ctx context.Context, addr string, size int64) error {
	var c net.Conn
	var err error
	for {
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp", addr)
		if err == nil || !errors.Is(err, syscall.ECONNREFUSED) {
			break
		}
		// The receiver is not listening yet: try again shortly.
		select {
		case <-ctx.Done():
			return fmt.Errorf("connect to %s: %w", addr, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if err != nil {
		return fmt.Errorf("connect to %s: %w", addr, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	start := time.Now()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(c, h), io.LimitReader(rand.Reader, size))
	if err != nil {
		return fmt.Errorf("send: %w", err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	// Wait for the receiver to close, so the time covers delivery, not just buffering.
	if _, err := io.Copy(io.Discard, c); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	report(n, h.Sum(nil), time.Since(start))
	return nil
}

func report(n int64, sum []byte, d time.Duration) {
	fmt.Printf("%d bytes sha256 %x in %v (%.0f Mbit/s)\n", n, sum, d.Round(time.Millisecond), float64(n)*8/d.Seconds()/1e6)
}
