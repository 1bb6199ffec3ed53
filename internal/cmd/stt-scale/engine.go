package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/tun/tuntest"
	"github.com/stt-tun/stt-tun/tunnel"
)

const (
	rest0   = 10 * time.Second
	settle  = 12 * time.Second // past KeepaliveTimeout: the keepalives answering the first packets are out
	pktRate = 20               // packets per second each way per active peer
	pktSize = 200
)

// phase is what the engine measured in one state.
type phase struct {
	HeapBytes uint64 `json:"heap_bytes"` // HeapAlloc after two collections
	RSSBytes  uint64 `json:"rss_bytes"`  // VmRSS
	// RSSReturned is VmRSS once the runtime has returned its free pages to the
	// system (debug.FreeOSMemory): RSSBytes less the garbage of the phase before.
	RSSReturned   uint64  `json:"rss_returned_bytes"`
	Goroutines    int     `json:"goroutines"`
	Sessions      int     `json:"sessions"`
	CPUPercent    float64 `json:"cpu_percent"`     // of one core, over the window
	WakeupsPerSec float64 `json:"wakeups_per_sec"` // context switches of all the engine's threads
}

// result is one engine run.
type result struct {
	N            int     `json:"n"`
	ActivePeers  int     `json:"active_peers"`
	GOMAXPROCS   int     `json:"gomaxprocs"`
	RestSeconds  float64 `json:"rest_seconds"`
	Record       phase   `json:"record"`
	Session      phase   `json:"session"`
	Active       phase   `json:"active"`
	HSSeconds    float64 `json:"handshake_seconds"`      // first packet sent to last session up
	HSPerSec     float64 `json:"handshakes_per_sec"`     // N / HSSeconds
	HSPerCPUSec  float64 `json:"handshakes_per_cpu_sec"` // N / the engine's CPU time meanwhile
	StatusMillis float64 `json:"status_ms"`              // Status() and its JSON, median of 5
	StatusBytes  int     `json:"status_bytes"`
	ActivePPS    float64 `json:"active_pps"` // packets per second through the TUN, both ways
}

// peerAddr is the inner address of peer i.
func peerAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 80, byte(1 + i/250), byte(1 + i%250)})
}

// heapProfile is the -memprofile flag of the engine.
var heapProfile string

// oneSource is the -one-source flag, passed on to the peers process.
var oneSource bool

var engineAddr = netip.MustParseAddr("10.80.0.1")

func engineMain(args []string) int {
	fs := flag.NewFlagSet("engine", flag.ExitOnError)
	n := fs.Int("n", 10, "peers")
	rest := fs.Duration("rest", rest0, "window at rest")
	activeN := fs.Int("active", 100, "peers active at once")
	procs := fs.Int("procs", 1, "GOMAXPROCS")
	fs.BoolVar(&oneSource, "one-source", false, "the peers all send from 127.0.0.1")
	fs.StringVar(&heapProfile, "memprofile", "", "write heap profiles to FILE.record, FILE.session, FILE.active")
	_ = fs.Parse(args)
	runtime.GOMAXPROCS(*procs)
	if heapProfile != "" {
		runtime.MemProfileRate = 64 // every allocation of note, for the profiles
	}
	r, err := runEngine(*n, *rest, min(*activeN, *n), *procs)
	if err != nil {
		fmt.Fprintln(os.Stderr, "stt-scale engine:", err)
		return 1
	}
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
	return 0
}

func runEngine(n int, rest time.Duration, activeN, procs int) (*result, error) {
	dir, err := os.MkdirTemp("", "stt-scale-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	seed := randomKey()
	seedFile := filepath.Join(dir, "seed")
	if err := os.WriteFile(seedFile, []byte(config.EncodeKey(seed)+"\n"), 0o600); err != nil {
		return nil, err
	}
	cfg := &config.Config{
		Interface: config.Interface{
			Name: "scale0", NodeName: "engine",
			Addresses: []netip.Prefix{netip.PrefixFrom(engineAddr, 16)},
			MTU:       1420, SeedFile: seedFile, KeyFile: filepath.Join(dir, "engine.key"),
		},
	}
	for i := range n {
		cfg.Peers = append(cfg.Peers, config.Peer{
			Name:            fmt.Sprintf("peer%d", i),
			AllowedPrefixes: []netip.Prefix{netip.PrefixFrom(peerAddr(i), 32)},
		})
	}
	dev := tuntest.NewMem("scale0", 1420, 64)
	t, err := tunnel.Start(context.Background(), cfg, tunnel.Options{Device: dev, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, err
	}
	defer t.Close()
	var written atomic.Uint64
	go func() {
		for p := range dev.Written() {
			written.Add(1)
			dev.Recycle(p)
		}
	}()
	r := &result{N: n, ActivePeers: activeN, GOMAXPROCS: procs, RestSeconds: rest.Seconds()}

	var peers *exec.Cmd
	var toPeers io.WriteCloser
	var fromPeers <-chan string
	if n > 0 {
		self, err := os.Executable()
		if err != nil {
			return nil, err
		}
		peers = exec.Command(self, "peers", "-n", strconv.Itoa(n), "-engine",
			fmt.Sprintf("127.0.0.1:%d", t.Node().Port()), "-seed", seedFile, fmt.Sprintf("-one-source=%v", oneSource))
		peers.Stderr = os.Stderr
		if toPeers, err = peers.StdinPipe(); err != nil {
			return nil, err
		}
		out, err := peers.StdoutPipe()
		if err != nil {
			return nil, err
		}
		if err := peers.Start(); err != nil {
			return nil, err
		}
		defer func() {
			_ = toPeers.Close() // the peers process exits at the end of its input
			_ = peers.Wait()
		}()
		fromPeers = lines(out)
		if err := expect(fromPeers, "ready", 5*time.Minute); err != nil {
			return nil, err
		}
	}
	time.Sleep(2 * time.Second) // the tunnel and the peers' nodes settle
	r.Record = measure(t, "record", rest)
	if n == 0 {
		r.Session, r.Active = r.Record, r.Record
		r.StatusMillis, r.StatusBytes = statusFigures(t)
		return r, nil
	}

	// Every peer sends one packet: n handshakes with the engine as responder.
	if heapProfile != "" {
		if f, err := os.Create(heapProfile + ".handshakes.cpu"); err == nil {
			_ = pprof.StartCPUProfile(f)
			defer f.Close()
		}
	}
	c0, _ := cpuAndSwitches()
	t0 := time.Now()
	fmt.Fprintln(toPeers, "hs")
	for sessions(t) < n {
		if time.Since(t0) > 5*time.Minute {
			return nil, fmt.Errorf("%d of %d sessions after 5 minutes", sessions(t), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	r.HSSeconds = time.Since(t0).Seconds()
	c1, _ := cpuAndSwitches()
	r.HSPerSec = float64(n) / r.HSSeconds
	r.HSPerCPUSec = float64(n) / (c1 - c0).Seconds()
	if heapProfile != "" {
		pprof.StopCPUProfile()
	}
	time.Sleep(settle)
	r.Session = measure(t, "session", rest)
	r.StatusMillis, r.StatusBytes = statusFigures(t)

	// activeN peers exchange packets both ways.
	fmt.Fprintf(toPeers, "active %d %d %d\n", activeN, pktRate, pktSize)
	stop := make(chan struct{})
	go injectLoop(dev, activeN, stop)
	time.Sleep(2 * time.Second)
	w0 := written.Load()
	r.Active = measure(t, "active", rest)
	r.ActivePPS = 2 * float64(written.Load()-w0) / rest.Seconds() // what came in went out about as much
	close(stop)
	fmt.Fprintln(toPeers, "quiet")
	return r, nil
}

// injectLoop writes one packet to each of the first activeN peers pktRate times a
// second into the device, until stop.
func injectLoop(dev *tuntest.Mem, activeN int, stop <-chan struct{}) {
	pkts := make([][]byte, activeN)
	for i := range pkts {
		pkts[i] = ipv4UDP(engineAddr, peerAddr(i), pktSize)
	}
	tk := time.NewTicker(time.Second / pktRate)
	defer tk.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tk.C:
			dev.Inject(pkts...)
		}
	}
}

// ipv4UDP is an IPv4/UDP packet of size bytes from src to dst (no checksums: the
// tunnel does not read them).
func ipv4UDP(src, dst netip.Addr, size int) []byte {
	p := make([]byte, size)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(size))
	p[8] = 64
	p[9] = 17
	s, d := src.As4(), dst.As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[20:], 40000)
	binary.BigEndian.PutUint16(p[22:], 9)
	binary.BigEndian.PutUint16(p[24:], uint16(size-20))
	return p
}

// sessions is how many of the tunnel's peers have a session.
func sessions(t *tunnel.Tunnel) int {
	k := 0
	for _, p := range t.Node().Peers() {
		if p.HasSession() {
			k++
		}
	}
	return k
}

// measure reads the engine's memory at rest, then its CPU and wake-ups over rest.
func measure(t *tunnel.Tunnel, name string, rest time.Duration) phase {
	var ph phase
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	ph.HeapBytes = ms.HeapAlloc
	ph.RSSBytes = rss()
	ph.Goroutines = runtime.NumGoroutine()
	if heapProfile != "" {
		f, err := os.Create(fmt.Sprintf("%s.%s", heapProfile, name))
		if err == nil {
			_ = pprof.WriteHeapProfile(f)
			_ = f.Close()
		}
	}
	debug.FreeOSMemory()
	ph.RSSReturned = rss()
	ph.Sessions = sessions(t)
	if heapProfile != "" {
		if f, err := os.Create(fmt.Sprintf("%s.%s.cpu", heapProfile, name)); err == nil {
			_ = pprof.StartCPUProfile(f)
			defer f.Close()
			defer pprof.StopCPUProfile()
		}
	}
	c0, s0 := cpuAndSwitches()
	t0 := time.Now()
	time.Sleep(rest)
	c1, s1 := cpuAndSwitches()
	el := time.Since(t0).Seconds()
	ph.CPUPercent = 100 * (c1 - c0).Seconds() / el
	ph.WakeupsPerSec = float64(s1-s0) / el
	return ph
}

// statusFigures times the tunnel's Status and its JSON (as `status --json` prints
// it), median of five, and its size.
func statusFigures(t *tunnel.Tunnel) (ms float64, size int) {
	var times []time.Duration
	for range 5 {
		t0 := time.Now()
		st := t.Status()
		b, err := json.MarshalIndent(st, "", "  ")
		if err != nil {
			panic(err)
		}
		times = append(times, time.Since(t0))
		size = len(b) + 1
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	return float64(times[2].Microseconds()) / 1000, size
}

// cpuAndSwitches is the process's CPU time (user and system) and context switches
// (voluntary and not) so far, over all its threads.
func cpuAndSwitches() (time.Duration, int64) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return cpu, ru.Nvcsw + ru.Nivcsw
}

// rss is the process's resident memory (VmRSS).
func rss() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// expect waits for line want on ch.
func expect(ch <-chan string, want string, d time.Duration) error {
	select {
	case l, ok := <-ch:
		if !ok {
			return fmt.Errorf("the peers process ended before %q", want)
		}
		if l != want {
			return fmt.Errorf("the peers process said %q, want %q", l, want)
		}
		return nil
	case <-time.After(d):
		return fmt.Errorf("no %q from the peers process in %v", want, d)
	}
}
