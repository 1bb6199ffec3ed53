package ws

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkThroughput sends batches of frames from a client to a server over loopback;
// one op is one batch, and MB/s counts frame bytes. Send drops on a full queue, so the
// benchmark backs off and resends, as a sender with flow control would.
func BenchmarkThroughput(b *testing.B) {
	for _, tc := range []struct {
		tls          bool
		size, frames int
	}{
		{false, 1400, 64},
		{false, 64, 128},
		{false, 16000, 32},
		{true, 1400, 64},
	} {
		name := fmt.Sprintf("ws/%dx%dB", tc.frames, tc.size)
		if tc.tls {
			name = fmt.Sprintf("wss/%dx%dB", tc.frames, tc.size)
		}
		b.Run(name, func(b *testing.B) { benchThroughput(b, tc.tls, tc.size, tc.frames) })
	}
}

func benchThroughput(b *testing.B, useTLS bool, size, nframes int) {
	var got atomic.Int64
	notify := make(chan struct{}, 1)
	var certFile, keyFile string
	if useTLS {
		certFile, keyFile = writeSelfSigned(b, b.TempDir())
	}
	srv, _ := startServer(b, func(c *ServerConfig) {
		c.CertFile, c.KeyFile = certFile, keyFile
		c.PingInterval = -1
		c.Receive = func(c *Conn, bufs [][]byte, sizes []int) {
			c.MarkAuthenticated()
			n := 0
			for _, s := range sizes {
				n += s
			}
			got.Add(int64(n))
			select {
			case notify <- struct{}{}:
			default:
			}
		}
	})
	cl := dial(b, DialConfig{URL: srv.URL(), CAFile: certFile, PingInterval: -1, SendQueue: 256})
	frames := make([][]byte, nframes)
	for i := range frames {
		frames[i] = frame(i, size)
	}
	b.SetBytes(int64(size * nframes))
	b.ReportAllocs()
	b.ResetTimer()
	retries := 0
	for range b.N {
		for cl.Send(frames) == ErrQueueFull {
			retries++
			time.Sleep(20 * time.Microsecond)
		}
	}
	want := int64(b.N) * int64(size*nframes)
	deadline := time.After(time.Minute)
	for got.Load() < want {
		select {
		case <-notify:
		case <-time.After(10 * time.Millisecond):
		case <-deadline:
			b.Fatalf("received %d of %d bytes", got.Load(), want)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(retries)/float64(b.N), "retries/op")
	b.ReportMetric(float64(cl.Stats().MessagesOut)/float64(b.N), "msgs/op")
}
