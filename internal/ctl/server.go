package ctl

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/stt-tun/stt-tun/internal/accept"
	"github.com/stt-tun/stt-tun/internal/statedir"
	"github.com/stt-tun/stt-tun/internal/status"
)

// Tunnel is what the control server needs from the daemon it serves.
type Tunnel interface {
	// Status reports the tunnel's current state.
	Status() status.Status
	// Shutdown asks the daemon to stop. It must not block, and may be called more than
	// once. The daemon then closes the tunnel and calls Server.CloseWithError.
	Shutdown()
}

// Reloader is implemented by a Tunnel that can read its configuration file again.
type Reloader interface {
	// Reload reads the configuration again and applies it, returning what changed, one
	// line each. On error the running configuration stays as it was.
	Reload() (changes []string, err error)
}

// Pinger is implemented by a Tunnel whose peers can be pinged.
type Pinger interface {
	// Ping sends one echo through the session with the named peer and waits for the
	// answer until ctx ends. An error wrapping status.ErrUnknownPeer means no such peer.
	Ping(ctx context.Context, peer string) (status.PingReply, error)
}

// Server is a daemon's control socket.
type Server struct {
	ln   *accept.Listener // retries failed accepts: EMFILE must not stop the daemon
	lock *os.File
	path string
	log  *slog.Logger

	done chan struct{} // closed by CloseWithError
	wg   sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	stopErr error                 // how the tunnel stopped, told to clients waiting in Down
	conns   map[net.Conn]struct{} // connections not waiting for the end of a down request
}

// Listen claims the control socket of interface name in state directory dir and binds it,
// without serving yet: clients that connect before Serve wait in the backlog. It creates
// dir (0700) if needed and holds an exclusive lock on <dir>/<name>.lock until Close, so
// two daemons never serve one interface; if another holds it, the error wraps ErrRunning.
// A socket left behind by a daemon that died is replaced.
func Listen(dir, name string, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := checkName(dir, name); err != nil {
		return nil, err
	}
	if err := statedir.Ensure(dir); err != nil {
		return nil, err
	}
	lock, err := tryLock(dir, name)
	if err != nil {
		return nil, err
	}
	path := SocketPath(dir, name)
	ln, err := bindPrivate(dir, name, path)
	if err != nil {
		lock.Close()
		return nil, err
	}
	return &Server{
		ln:    accept.Wrap(ln, accept.Control, log),
		lock:  lock,
		path:  path,
		log:   log,
		done:  make(chan struct{}),
		conns: make(map[net.Conn]struct{}),
	}, nil
}

// tryLock takes the interface's lock file without waiting. The lock file is never removed:
// removing it would let two processes hold locks on two different files of one name.
func tryLock(dir, name string) (*os.File, error) {
	p := filepath.Join(dir, name+lockSuffix)
	f, err := statedir.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock: %w", err)
	}
	for try := 1; ; try++ {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		// Held probes (status) take the lock shared for a moment: a daemon holds it
		// for good. Look again before concluding that one runs.
		if errors.Is(err, syscall.EWOULDBLOCK) && try < lockTries {
			time.Sleep(lockRetry)
			continue
		}
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: %w", name, ErrRunning)
		}
		return nil, fmt.Errorf("lock %s: %w", p, err)
	}
}

// A lock found taken is tried lockTries times, lockRetry apart.
const (
	lockTries = 5
	lockRetry = 10 * time.Millisecond
)

// bindPrivate binds the socket under a temporary name, restricts it to its owner and only
// then renames it into place, so that it is never reachable with the umask's mode.
func bindPrivate(dir, name, path string) (*net.UnixListener, error) {
	// Holding the lock, whatever socket is there belongs to a daemon that is gone.
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket; not replacing it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	tmp := tempSocketPath(dir, name)
	_ = os.Remove(tmp) // left over from a crashed process that had our pid
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on control socket: %w", err)
	}
	ln.SetUnlinkOnClose(false) // the socket is renamed; Close removes it by its final name
	// chmod follows links: make sure the name is still the socket just bound.
	if fi, err := os.Lstat(tmp); err != nil || fi.Mode().Type() != os.ModeSocket {
		ln.Close()
		return nil, fmt.Errorf("restrict control socket: %s is no longer the socket just bound", tmp)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("restrict control socket: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("install control socket: %w", err)
	}
	return ln, nil
}

// Path is the socket's file name.
func (s *Server) Path() string { return s.path }

// Serve answers requests on behalf of t until CloseWithError. It returns nil after a
// close, or the error that stopped accepting connections.
func (s *Server) Serve(t Tunnel) error {
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			// The listener retries every other error itself (counted, logged, with
			// backoff): out of file descriptors, the daemon keeps serving.
			if s.isClosed() {
				return nil
			}
			return fmt.Errorf("accept on control socket: %w", err)
		}
		if !s.track(conn) {
			conn.Close()
			return nil
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(conn, t)
		}()
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// track registers conn so that a close interrupts it; false if the server is closed.
func (s *Server) track(conn net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[conn] = struct{}{}
	return true
}

func (s *Server) untrack(conn net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, conn)
}

func (s *Server) handle(conn net.Conn, t Tunnel) {
	defer conn.Close()
	defer s.untrack(conn)
	br := bufio.NewReader(conn)
	for {
		if err := conn.SetDeadline(time.Now().Add(IdleTimeout)); err != nil {
			return
		}
		line, err := readLine(br, MaxRequestSize)
		if errors.Is(err, errTooLarge) {
			s.reply(conn, Response{Error: fmt.Sprintf("request larger than %d bytes", MaxRequestSize)})
			return
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !s.isClosed() {
				s.log.Debug("control connection", "err", err)
			}
			return
		}
		req, err := decodeRequest(line)
		if err != nil {
			s.reply(conn, Response{Error: err.Error()})
			return
		}
		switch req.Op {
		case OpStatus:
			st := t.Status()
			if !s.reply(conn, Response{OK: true, Status: &st}) {
				return
			}
		case OpDown:
			s.down(conn, t)
			return
		case OpReload:
			if !s.reply(conn, s.reload(t)) {
				return
			}
		case OpPing:
			if !s.reply(conn, s.ping(t, req)) {
				return
			}
		case OpStatement:
			if !s.reply(conn, s.statement(t, req)) {
				return
			}
		case OpRotate:
			if !s.reply(conn, s.rotate(t, req)) {
				return
			}
		default:
			if !s.reply(conn, Response{Error: fmt.Sprintf("unknown op %q", req.Op)}) {
				return
			}
		}
	}
}

// down acknowledges a down request, asks the daemon to stop and keeps the connection until
// the daemon has closed the tunnel, so that the client learns when (and whether) it is done.
func (s *Server) down(conn net.Conn, t Tunnel) {
	s.untrack(conn) // a close must not cut this connection before the final word
	if !s.reply(conn, Response{OK: true, PID: os.Getpid()}) {
		return
	}
	s.log.Info("shutdown requested over the control socket")
	t.Shutdown()
	<-s.done
	s.mu.Lock()
	stopErr := s.stopErr
	s.mu.Unlock()
	if stopErr != nil {
		s.reply(conn, Response{Error: stopErr.Error()})
		return
	}
	s.reply(conn, Response{OK: true, Stopped: true})
}

// reload answers a reload request.
func (s *Server) reload(t Tunnel) Response {
	r, ok := t.(Reloader)
	if !ok {
		return Response{Error: "this daemon cannot reload"}
	}
	s.log.Info("reload requested over the control socket")
	changes, err := r.Reload()
	if err != nil {
		return Response{Error: err.Error()}
	}
	return Response{OK: true, Changes: changes}
}

// ping answers a ping request. The wait ends early if the server closes.
func (s *Server) ping(t Tunnel, req Request) Response {
	p, ok := t.(Pinger)
	if !ok {
		return Response{Error: "this daemon cannot ping"}
	}
	if req.Peer == "" {
		return Response{Error: "ping: no peer named in the request"}
	}
	timeout := DefaultPingTimeout
	if req.TimeoutMS < 0 {
		return Response{Error: fmt.Sprintf("ping: timeout_ms %d is negative", req.TimeoutMS)}
	}
	if req.TimeoutMS > 0 {
		timeout = min(time.Duration(req.TimeoutMS)*time.Millisecond, MaxPingTimeout)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	go func() {
		select {
		case <-s.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	reply, err := p.Ping(ctx, req.Peer)
	switch {
	case errors.Is(err, status.ErrUnknownPeer):
		return Response{Error: err.Error()}
	case err != nil:
		reason := err.Error()
		if errors.Is(err, context.DeadlineExceeded) {
			reason = fmt.Sprintf("no reply within %v", timeout)
			if !strings.HasPrefix(err.Error(), "no reply") {
				reason += " (" + strings.TrimSuffix(err.Error(), ": "+context.DeadlineExceeded.Error()) + ")"
			}
		}
		return Response{OK: true, Ping: &PingResult{Peer: req.Peer, Reason: reason}}
	}
	return Response{OK: true, Ping: &PingResult{
		Peer:     req.Peer,
		Replied:  true,
		RTT:      float64(reply.RTT.Nanoseconds()) / 1e6,
		Path:     reply.Path,
		Endpoint: reply.Endpoint,
		Via:      reply.Via,
	}}
}

// reply writes one response line; false if the connection is no longer usable.
func (s *Server) reply(conn net.Conn, r Response) bool {
	b, err := json.Marshal(r)
	if err != nil {
		b, _ = json.Marshal(Response{Error: fmt.Sprintf("encode response: %v", err)})
	}
	b = append(b, '\n')
	if err := conn.SetWriteDeadline(time.Now().Add(IdleTimeout)); err != nil {
		return false
	}
	if _, err := conn.Write(b); err != nil {
		s.log.Debug("control reply", "err", err)
		return false
	}
	return true
}

// Close is CloseWithError(nil).
func (s *Server) Close() error { return s.CloseWithError(nil) }

// CloseWithError stops serving: it tells every client waiting in a down request how the
// tunnel stopped (stopErr; nil means cleanly), closes all connections, removes the socket
// and releases the interface's lock. It waits for the connection handlers to finish, each
// bounded by IdleTimeout. Later calls do nothing.
func (s *Server) CloseWithError(stopErr error) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.stopErr = stopErr
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()

	// Give up the socket and the lock before the final word to clients waiting in Down,
	// so that an `up` right after `down` finds the interface free.
	err := s.ln.Close()
	if rmErr := os.Remove(s.path); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) && err == nil {
		err = rmErr
	}
	if lockErr := s.lock.Close(); lockErr != nil && err == nil {
		err = lockErr
	}
	close(s.done)
	s.wg.Wait()
	if err != nil {
		return fmt.Errorf("close control socket: %w", err)
	}
	return nil
}

var errTooLarge = errors.New("request too large")

// decodeRequest parses one request line. Unknown fields are ignored so that newer clients
// can add optional ones.
func decodeRequest(line []byte) (Request, error) {
	var req Request
	if err := json.Unmarshal(line, &req); err != nil {
		return Request{}, fmt.Errorf("bad request: %w", err)
	}
	return req, nil
}

// readLine reads up to and including '\n', refusing lines longer than max. A final line
// without '\n' before EOF counts as a line.
func readLine(r *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		if len(line)+len(chunk) > max {
			return nil, errTooLarge
		}
		line = append(line, chunk...)
		switch {
		case err == nil:
			return line, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(line) > 0:
			return line, nil
		default:
			return nil, err
		}
	}
}

// Lock is an interface's lock, held by a process other than its daemon: while it is
// held no daemon runs for the interface and none can start, so what the last one left
// behind may be cleaned up.
type Lock struct {
	f         *os.File
	dir, name string
}

// TryLock takes the lock of interface name without waiting, as a daemon does. If a
// daemon holds it, the error wraps ErrRunning: that daemon is alive, whether or not its
// control socket answers.
func TryLock(dir, name string) (*Lock, error) {
	if err := checkName(dir, name); err != nil {
		return nil, err
	}
	if err := statedir.Check(dir); err != nil {
		return nil, err
	}
	f, err := tryLock(dir, name)
	if err != nil {
		return nil, err
	}
	return &Lock{f: f, dir: dir, name: name}, nil
}

// RemoveStale removes the socket a dead daemon left behind.
func (l *Lock) RemoveStale() error {
	if err := os.Remove(SocketPath(l.dir, l.name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	return nil
}

// Release gives the lock up.
func (l *Lock) Release() { l.f.Close() }

// Held reports whether a daemon holds the lock of interface name, without creating the
// lock file: a missing one means that no daemon ever ran for the interface in dir.
func Held(dir, name string) (bool, error) {
	if err := checkName(dir, name); err != nil {
		return false, err
	}
	p := filepath.Join(dir, name+lockSuffix)
	f, err := statedir.OpenFile(p, os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("open lock: %w", err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return true, nil
		}
		return false, fmt.Errorf("lock %s: %w", p, err)
	}
	return false, nil // closing f drops the shared lock
}
