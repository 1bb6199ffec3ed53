package accept

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// failingListener fails its first fails accepts with err, then hands out conns until
// closed.
type failingListener struct {
	mu     sync.Mutex
	fails  int
	err    error
	closed chan struct{}
	once   sync.Once
}

func newFailing(fails int, err error) *failingListener {
	return &failingListener{fails: fails, err: err, closed: make(chan struct{})}
}

func (l *failingListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if l.fails > 0 {
		l.fails--
		l.mu.Unlock()
		return nil, l.err
	}
	l.mu.Unlock()
	select {
	case <-l.closed:
		return nil, net.ErrClosed
	default:
	}
	a, b := net.Pipe()
	b.Close()
	return a, nil
}

func (l *failingListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *failingListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1} }

// syncBuffer is a log destination safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Out of file descriptors, Accept counts each failure, logs one line and keeps trying
// until a connection comes.
func TestAcceptRetriesEMFILE(t *testing.T) {
	const fails = 6
	var logs syncBuffer
	ln := Wrap(newFailing(fails, syscall.EMFILE), Metrics, slog.New(slog.NewTextHandler(&logs, nil)))
	defer ln.Close()
	before := Errors(Metrics)
	c, err := ln.Accept()
	if err != nil {
		t.Fatalf("Accept: %v, want a connection after %d failures", err, fails)
	}
	c.Close()
	if got := Errors(Metrics) - before; got != fails {
		t.Fatalf("%d errors counted, want %d", got, fails)
	}
	if n := strings.Count(logs.String(), "accept failed"); n != 1 {
		t.Fatalf("%d log lines for %d errors in a burst, want 1:\n%s", n, fails, logs.String())
	}
	if !strings.Contains(logs.String(), "too many open files") || !strings.Contains(logs.String(), "listener=metrics") {
		t.Fatalf("log line does not name the error and listener:\n%s", logs.String())
	}
}

// Close ends an Accept that is waiting out its backoff.
func TestCloseEndsBackoff(t *testing.T) {
	ln := Wrap(newFailing(1<<30, syscall.ENFILE), Control, nil)
	done := make(chan error, 1)
	go func() {
		_, err := ln.Accept()
		done <- err
	}()
	before := Errors(Control)
	deadline := time.Now().Add(10 * time.Second)
	for Errors(Control)-before < 3 { // let it back off a few times
		if time.Now().After(deadline) {
			t.Fatal("Accept is not retrying")
		}
		time.Sleep(time.Millisecond)
	}
	ln.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
}
