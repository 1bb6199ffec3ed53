//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/internal/nslab"
)

// The WebSocket connection flood: an attacker opens many TCP connections to beta's
// WebSocket listener and keeps them as long as beta lets it, each sending "GET /" every
// 20 s (which restarted net/http's idle timeout: the connection was kept for ever) and
// opening a new one 5 s after beta closes one. The figures of docs/reliability.md come
// from 20 000 connections against a daemon allowed 20 000 file descriptors:
//
//	sudo scripts/reliability.sh --run TestWebSocketConnectionFlood --flood 20000
//
// which sets STT_WSFLOOD_CONNS and STT_WSFLOOD_NOFILE; by default the test opens 4000
// against a daemon allowed 2048, which exhausts it the same way (before the bounds)
// in a fraction of the time.
const (
	floodConnsDefault  = 4000
	floodNoFileDefault = 2048
	floodSources       = 64 // attacker addresses: 64 × 32 per source > max_pending (512)
	floodHold          = 15 * time.Second
	floodRetry         = 5 * time.Second
	floodRequestEvery  = 20 * time.Second
	wsListenAll        = "0.0.0.0:8443"
	betaForAttacker    = "10.241.3.1"
	betaForGamma       = "10.241.4.1"
	gammaUnder         = "10.241.4.2"
	tunnelG            = "10.99.0.3"
	metricsB           = "127.0.0.1:9586"
	// wsFloodMemBound is how much beta's resident memory may grow during the flood: the
	// 512 pending connections' buffers and goroutines, twice for the garbage collector's
	// headroom. It does not grow with the number of connections the attacker opens
	// (before the bounds, 20 000 connections cost 420 MB).
	wsFloodMemBound = 96 << 10 // kB
)

func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive number", name, v)
	}
	return n
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// hwmKB is process pid's peak resident memory (VmHWM) in kB, or -1 once it is gone.
func hwmKB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err == nil {
				return kb
			}
		}
	}
	return -1
}

// fdCount is the number of file descriptors process pid has open, or -1 once it is gone.
func fdCount(pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return -1
	}
	return len(ents)
}

// flooder is the attacker: one goroutine per connection it wants open. It runs in
// helper processes (TestWebSocketFloodAttacker) inside the attacker's namespace, each
// holding at most floodPerProcess connections: one process may not have more file
// descriptors than its hard limit, which the test cannot raise.
type flooder struct {
	dst     string
	ctx     context.Context // cancelled when the flood stops
	open    atomic.Int64    // connections open now
	dialed  atomic.Uint64   // connections established
	closed  atomic.Uint64   // connections beta closed
	dialErr atomic.Uint64   // connection attempts that failed
	first   sync.WaitGroup
	wg      sync.WaitGroup
}

const floodPerProcess = 8000

// slot keeps one connection open from src for as long as it can: it sends GET / and
// again every floodRequestEvery, and replaces the connection floodRetry after beta
// closes it.
func (f *flooder) slot(src string) {
	defer f.wg.Done()
	firstDone := false
	done := func() {
		if !firstDone {
			firstDone = true
			f.first.Done()
		}
	}
	defer done()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	buf := make([]byte, 512)
	for f.ctx.Err() == nil {
		c, err := d.DialContext(f.ctx, "tcp", f.dst)
		done()
		if f.ctx.Err() != nil {
			if c != nil {
				c.Close()
			}
			return
		}
		if err != nil {
			f.dialErr.Add(1)
		} else {
			f.dialed.Add(1)
			f.open.Add(1)
			f.hold(c, buf)
			f.open.Add(-1)
		}
		select {
		case <-f.ctx.Done():
			return
		case <-time.After(floodRetry):
		}
	}
}

func (f *flooder) hold(c net.Conn, buf []byte) {
	defer c.Close()
	defer context.AfterFunc(f.ctx, func() { c.Close() })() // ends with the flood
	req := []byte("GET / HTTP/1.1\r\nHost: flood\r\n\r\n")
	next := time.Now()
	for {
		if !time.Now().Before(next) {
			if _, err := c.Write(req); err != nil {
				f.closed.Add(1)
				return
			}
			next = time.Now().Add(floodRequestEvery)
		}
		_ = c.SetReadDeadline(next)
		if _, err := c.Read(buf); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if f.ctx.Err() == nil {
				f.closed.Add(1)
			}
			return
		}
	}
}

// TestWebSocketFloodAttacker is the attacker's helper process of
// TestWebSocketConnectionFlood, which starts it inside the attacker's namespace; run
// otherwise, it skips. It opens STT_WSFLOOD_HELPER_CONNS connections to
// STT_WSFLOOD_HELPER_DST from the comma-separated STT_WSFLOOD_HELPER_SOURCES in turn,
// prints "first-done" once each has been tried, and on SIGTERM prints its counts.
func TestWebSocketFloodAttacker(t *testing.T) {
	if os.Getenv("STT_WSFLOOD_HELPER") != "1" {
		t.Skip("the attacker's helper process of TestWebSocketConnectionFlood")
	}
	conns := envInt(t, "STT_WSFLOOD_HELPER_CONNS", 1)
	sources := strings.Split(os.Getenv("STT_WSFLOOD_HELPER_SOURCES"), ",")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	f := &flooder{dst: os.Getenv("STT_WSFLOOD_HELPER_DST"), ctx: ctx}
	f.first.Add(conns)
	f.wg.Add(conns)
	for i := range conns {
		go f.slot(sources[i%len(sources)])
	}
	f.first.Wait()
	fmt.Printf("first-done open=%d\n", f.open.Load())
	<-ctx.Done()
	open := f.open.Load()
	f.wg.Wait()
	fmt.Printf("stats open=%d dialed=%d closed=%d dialerr=%d\n", open, f.dialed.Load(), f.closed.Load(), f.dialErr.Load())
}

// helperCount reads "name=N" from the line of out that starts with prefix; 0 without.
func helperCount(out, prefix, name string) int {
	for line := range strings.Lines(out) {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), prefix+" ")
		if !ok {
			continue
		}
		for _, kv := range strings.Fields(rest) {
			if v, ok := strings.CutPrefix(kv, name+"="); ok {
				n, _ := strconv.Atoi(v)
				return n
			}
		}
	}
	return 0
}

// TestWebSocketConnectionFlood: during the flood beta keeps its file descriptors and
// memory bounded, a WebSocket-only peer (gamma) that restarts gets a session, `status`
// and the metrics answer, and a UDP peer (alpha) keeps at least 99% of its probes.
//
// Not parallel: the flood keeps both CPUs of a small test machine busy for 15 s, which
// would cost the probes of other tests that count lost packets (and theirs this one's);
// a test that is not parallel runs while every parallel one waits.
func TestWebSocketConnectionFlood(t *testing.T) {
	conns := envInt(t, "STT_WSFLOOD_CONNS", floodConnsDefault)
	noFile := envInt(t, "STT_WSFLOOD_NOFILE", floodNoFileDefault)
	if _, err := os.Stat("/usr/bin/prlimit"); err != nil {
		t.Skip("no prlimit (util-linux)")
	}
	lab, a, b, seed := pair(t)
	nsG, x := lab.NS("g"), lab.NS("x")
	lab.Link(nsG, []string{gammaUnder + "/24"}, b.ns, []string{betaForGamma + "/24"})
	xDev, _ := lab.Link(x, []string{"10.241.3.2/24"}, b.ns, []string{betaForAttacker + "/24"})
	var sources []string
	for i := range floodSources {
		src := fmt.Sprintf("10.241.3.%d", 10+i)
		mustIn(t, x, "ip", "addr", "add", src+"/24", "dev", xDev)
		sources = append(sources, src)
	}
	g := newNode(t, nsG, "gamma")

	a.writeConfig(nodeConf{addresses: tunA, seedFile: seed, peers: []peerConf{
		{name: "beta", endpoint: endpointB, allowed: allowB},
	}})
	b.writeConfig(nodeConf{addresses: tunB, seedFile: seed, ws: wsConf{listen: wsListenAll},
		extra: "\n[metrics]\nlisten = \"" + metricsB + "\"\n",
		peers: []peerConf{{name: "alpha", allowed: allowA}, {name: "gamma", allowed: []string{tunnelG + "/32"}}}})
	g.writeConfig(nodeConf{addresses: []string{tunnelG + "/24"}, seedFile: seed, noUDP: true, peers: []peerConf{
		{name: "beta", wsURL: "ws://" + betaForGamma + ":8443/stt", allowed: allowB},
	}})
	b.startForeground()
	pid := b.proc.PID()
	mustIn(t, b.ns, "prlimit", "--pid", strconv.Itoa(pid), fmt.Sprintf("--nofile=%d:%d", noFile, noFile))
	a.startForeground()
	g.startForeground()
	waitPing(t, g.ns, tunnelB)
	startEcho(t, b.ns)
	p := startProber(t, a.ns, tunnelB, 20*time.Millisecond)
	p.waitRecovered(t, time.Now(), reachTimeout)

	// Sample beta's descriptors throughout.
	fd0, rss0 := fdCount(pid), vmKB(t, pid, "VmRSS")
	var fdPeak, hwmLast atomic.Int64
	fdPeak.Store(int64(fd0))
	sampleStop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if n := int64(fdCount(pid)); n > fdPeak.Load() {
				fdPeak.Store(n)
			}
			if kb := hwmKB(pid); kb > 0 {
				hwmLast.Store(int64(kb)) // the last read before the daemon is gone, if it goes
			}
			select {
			case <-sampleStop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()

	// The attacker: helper processes in its namespace, floodPerProcess connections each.
	var helpers []*nslab.Proc
	start, s0 := time.Now(), p.sent.Load()
	for left := conns; left > 0; left -= floodPerProcess {
		helpers = append(helpers, x.Start("env", "STT_WSFLOOD_HELPER=1",
			"STT_WSFLOOD_HELPER_CONNS="+strconv.Itoa(min(left, floodPerProcess)),
			"STT_WSFLOOD_HELPER_DST="+betaForAttacker+":8443",
			"STT_WSFLOOD_HELPER_SOURCES="+strings.Join(sources, ","),
			os.Args[0], "-test.run=^TestWebSocketFloodAttacker$", "-test.count=1", "-test.timeout=10m"))
	}
	stopFlood := sync.OnceFunc(func() {
		for _, h := range helpers {
			_ = h.Signal(syscall.SIGTERM)
		}
		for _, h := range helpers {
			_ = h.Wait()
		}
	})
	t.Cleanup(stopFlood)
	sum := func(prefix, name string) (n int) {
		for _, h := range helpers {
			n += helperCount(h.Output(), prefix, name)
		}
		return n
	}
	firstCtx, cancelFirst := context.WithTimeout(context.Background(), time.Minute)
	defer cancelFirst()
	if err := nslab.WaitFor(firstCtx, func() bool {
		return strings.Count(func() (all string) {
			for _, h := range helpers {
				all += h.Output()
			}
			return all
		}(), "first-done") == len(helpers)
	}); err != nil {
		t.Fatalf("the attacker did not try every connection within a minute")
	}
	opened := time.Since(start)
	openAfterFirst := sum("first-done", "open")

	// Gamma, reachable over WebSocket only, restarts in the middle of the flood.
	if err := g.proc.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = g.proc.Wait()
	g.proc = nil
	g.mustStt("down", "--leftovers", linkName)
	g.proc = g.ns.Start(binary(t), "--state-dir", g.stateDir, "up", "--foreground", "-c", g.cfgPath)
	restarted := time.Now()
	gammaBack := time.Duration(-1)
	for time.Since(restarted) < floodHold+10*time.Second {
		if g.ns.Ping(tunnelB) == nil {
			gammaBack = time.Since(restarted)
			break
		}
	}

	// Beta's control socket and metrics answer; the daemon is alive.
	var statusErr, metricsErr error
	var metrics string
	for range 3 {
		if _, err := b.status(); err != nil && statusErr == nil {
			statusErr = err
		}
		if m, err := scrapeIn(b.ns, metricsB); err != nil {
			if metricsErr == nil {
				metricsErr = err
			}
		} else {
			metrics = m
		}
	}
	if rest := floodHold - time.Since(start); rest > 0 {
		time.Sleep(rest) // the flood's duration: a figure, not a synchronisation
	}
	end, s1 := time.Now(), p.sent.Load()
	alive := fdCount(pid) > 0 // an exiting daemon, not yet reaped, has none
	if alive {
		select {
		case <-b.proc.Done():
			alive = false
		default:
		}
	}
	fdsAtEnd := fdCount(pid)
	close(sampleStop)
	<-sampled
	hwm := int(hwmLast.Load())
	stopFlood()
	openAtEnd := sum("stats", "open")
	// Let the probes of the flood's last moments come back before counting; a dead
	// beta answers none, which the figures record.
	recCtx, cancelRec := context.WithTimeout(context.Background(), 5*time.Second)
	_ = nslab.WaitFor(recCtx, func() bool { _, ok := p.firstAnswerSentAfter(end); return ok })
	cancelRec()
	sent := p.answeredSentIn(start, end)
	expected := int(s1 - s0)
	kept := float64(sent) / float64(max(expected, 1))

	t.Logf("%d connections (%d addresses) tried in %v: %d open after the first try, %d at the end; %d established, %d closed by beta, %d failed to connect",
		conns, len(sources), opened.Round(time.Millisecond), openAfterFirst, openAtEnd, sum("stats", "dialed"), sum("stats", "closed"), sum("stats", "dialerr"))
	t.Logf("beta: %d fds before, peak %d of %d, %d at the end; VmRSS %d kB before, VmHWM %d kB; alive %v; status err %v; metrics err %v",
		fd0, fdPeak.Load(), noFile, fdsAtEnd, rss0, hwm, alive, statusErr, metricsErr)
	back := "never"
	if gammaBack >= 0 {
		back = gammaBack.Round(time.Millisecond).String()
	}
	t.Logf("gamma back %s after its restart; alpha's probes: %d of %d answered (%.2f%%)", back, sent, expected, 100*kept)
	pending := map[string]string{}
	for line := range strings.Lines(metrics) {
		if strings.HasPrefix(line, "stt_websocket_pending_connections") || strings.HasPrefix(line, "stt_accept_errors_total") {
			k, v, _ := strings.Cut(strings.TrimSpace(line), " ")
			pending[k] = v
		}
	}
	t.Logf("beta's metrics: %v", pending)
	figure(t, "attack-websocket-connections", map[string]any{
		"connections": conns, "sources": len(sources), "fd_limit": noFile,
		"fds_before": fd0, "fds_peak": fdPeak.Load(), "rss_growth_kb": max(hwm-rss0, 0),
		"daemon_alive": b2i(alive), "status_ok": b2i(statusErr == nil), "metrics_ok": b2i(metricsErr == nil),
		"ws_peer_recovery_seconds": gammaBack.Seconds(), "udp_probes_kept_pct": 100 * kept,
		"attacker_open_end": openAtEnd, "closed_by_beta": sum("stats", "closed"),
	})

	if !alive {
		t.Fatalf("beta died during the flood:\n%s", b.proc.Output())
	}
	if statusErr != nil {
		t.Errorf("stt-tun status during the flood: %v", statusErr)
	}
	if metricsErr != nil {
		t.Errorf("metrics during the flood: %v", metricsErr)
	}
	if gammaBack < 0 {
		t.Errorf("gamma, WebSocket only, got no session within %v of its restart", floodHold+10*time.Second)
	}
	// 512 pending and 256 upgraded connections at most, plus the daemon's own.
	if peak := fdPeak.Load(); peak > int64(fd0)+512+256+64 {
		t.Errorf("beta's file descriptors peaked at %d (from %d): the pending connections are not bounded", peak, fd0)
	}
	if hwm-rss0 > wsFloodMemBound {
		t.Errorf("beta's memory grew from %d kB to a peak of %d kB during the flood", rss0, hwm)
	}
	if kept < 0.99 {
		t.Errorf("alpha's UDP probes: %.2f%% answered during the flood, want at least 99%%", 100*kept)
	}
}
