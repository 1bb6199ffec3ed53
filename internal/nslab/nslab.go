// Package nslab builds throw-away network labs out of Linux network
// namespaces for end-to-end tests.
//
// A Lab owns everything it creates: namespaces named "<prefix>-<name>" with a
// prefix unique to the process and the lab, veth pairs created directly inside
// those namespaces (the host namespace is never touched), and the processes
// started in them. All of it is removed by a t.Cleanup registered in New, so it
// goes away even when the test fails. Tests that need a lab are skipped when
// not running as root or when `ip netns` does not work.
package nslab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// StopGrace is how long Proc.Stop waits after SIGTERM before it sends SIGKILL.
const StopGrace = 5 * time.Second

// linkReadyTimeout bounds how long Link waits for both ends of a veth pair to
// be operationally up with no tentative addresses.
const linkReadyTimeout = 10 * time.Second

// Lab is a set of network namespaces, links and processes created for one
// test and removed when that test ends.
type Lab struct {
	t      testing.TB
	prefix string

	mu    sync.Mutex
	nss   []*NS
	procs []*Proc
	links int
}

// New returns an empty lab for t and registers its cleanup. It skips t when the
// process is not root or `ip netns` is unavailable.
func New(t testing.TB) *Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("nslab: needs root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("nslab: ip(8) not found")
	}
	if out, err := exec.Command("ip", "netns", "list").CombinedOutput(); err != nil {
		t.Skipf("nslab: ip netns unavailable: %v: %s", err, bytes.TrimSpace(out))
	}
	var rnd [3]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatalf("nslab: random prefix: %v", err)
	}
	SweepStale("stt")
	l := &Lab{t: t, prefix: fmt.Sprintf("stt-%d-%s", os.Getpid(), hex.EncodeToString(rnd[:]))}
	t.Cleanup(l.cleanup)
	return l
}

// SweepStale deletes the namespaces named "<kind>-<pid>-…" whose creating process pid
// is gone. A test binary that was killed (a timeout, SIGKILL) runs no cleanup, so what
// it made would stay; names carry the creator's PID so that a later run can tell.
// Namespaces of live processes, and names of another shape, are left alone. It sweeps
// once per kind and process.
func SweepStale(kind string) {
	swept.Lock()
	defer swept.Unlock()
	if swept.kinds[kind] {
		return
	}
	swept.kinds[kind] = true
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), kind+"-")
		if !ok {
			continue
		}
		pidText, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = netns.DeleteNamed(e.Name())
		}
	}
}

var swept = struct {
	sync.Mutex
	kinds map[string]bool
}{kinds: map[string]bool{}}

// Prefix returns the prefix shared by the names of all namespaces of the lab.
func (l *Lab) Prefix() string { return l.prefix }

// cleanup stops the lab's processes, newest first, then deletes its
// namespaces, which also removes the links inside them.
func (l *Lab) cleanup() {
	l.mu.Lock()
	procs, nss := l.procs, l.nss
	l.procs, l.nss = nil, nil
	l.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		p := procs[i]
		p.Stop()
		if l.t.Failed() {
			l.t.Logf("nslab: output of %s (pid %d), %v:\n%s", p.name, p.PID(), p.Wait(), tail(p.Output(), 8<<10))
		}
	}
	for i := len(nss) - 1; i >= 0; i-- {
		if out, err := exec.Command("ip", "netns", "delete", nss[i].name).CombinedOutput(); err != nil {
			l.t.Errorf("nslab: delete namespace %s: %v: %s", nss[i].name, err, bytes.TrimSpace(out))
		}
	}
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// NS creates the namespace "<prefix>-<name>" with its loopback up. It fails the
// test on error, so call it from the test goroutine.
func (l *Lab) NS(name string) *NS {
	l.t.Helper()
	if name == "" || strings.ContainsAny(name, "/ \t\n") {
		l.t.Fatalf("nslab: bad namespace name %q", name)
	}
	n := &NS{lab: l, name: l.prefix + "-" + name}
	if out, err := exec.Command("ip", "netns", "add", n.name).CombinedOutput(); err != nil {
		l.t.Fatalf("nslab: add namespace %s: %v: %s", n.name, err, bytes.TrimSpace(out))
	}
	l.mu.Lock()
	l.nss = append(l.nss, n)
	l.mu.Unlock()
	l.ip(n, "link", "set", "lo", "up")
	return n
}

// ip runs `ip -n <ns> args...` and fails the test on error.
func (l *Lab) ip(n *NS, args ...string) string {
	l.t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", n.name}, args...)...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("nslab: ip -n %s %s: %v: %s", n.name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out)
}

// Link connects a and b with a veth pair created directly inside them, assigns
// the given CIDR addresses (IPv6 ones without duplicate address detection),
// brings both ends up and waits until they are operationally up with no
// tentative address. It returns the interface names in a and in b. It fails
// the test on error, so call it from the test goroutine.
func (l *Lab) Link(a *NS, aAddrs []string, b *NS, bAddrs []string) (aDev, bDev string) {
	l.t.Helper()
	if a == b {
		l.t.Fatalf("nslab: link from %s to itself", a.name)
	}
	l.mu.Lock()
	dev := fmt.Sprintf("veth%d", l.links)
	l.links++
	l.mu.Unlock()
	l.ip(a, "link", "add", dev, "type", "veth", "peer", "name", dev, "netns", b.name)
	for _, end := range []struct {
		ns    *NS
		addrs []string
	}{{a, aAddrs}, {b, bAddrs}} {
		for _, s := range end.addrs {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				l.t.Fatalf("nslab: address %q: %v", s, err)
			}
			args := []string{"addr", "add", p.String(), "dev", dev}
			if p.Addr().Is6() {
				args = append(args, "nodad")
			}
			l.ip(end.ns, args...)
		}
		l.ip(end.ns, "link", "set", dev, "up")
	}
	ctx, cancel := context.WithTimeout(context.Background(), linkReadyTimeout)
	defer cancel()
	err := WaitFor(ctx, func() bool { return linkReady(a, dev) && linkReady(b, dev) })
	if err != nil {
		l.t.Fatalf("nslab: veth %s between %s and %s not ready: %v", dev, a.name, b.name, err)
	}
	return dev, dev
}

// linkReady reports whether dev in n is operationally up and has no tentative
// address. Operational state and IPv6 readiness follow carrier asynchronously
// (linkwatch), so a freshly raised veth is not usable at once.
func linkReady(n *NS, dev string) bool {
	out, err := exec.Command("ip", "-n", n.name, "-o", "link", "show", "dev", dev).Output()
	if err != nil || !strings.Contains(string(out), "state UP") {
		return false
	}
	out, err = exec.Command("ip", "-n", n.name, "-o", "addr", "show", "dev", dev, "tentative").Output()
	return err == nil && len(bytes.TrimSpace(out)) == 0
}

// NS is a network namespace owned by a Lab.
type NS struct {
	lab  *Lab
	name string
}

// Name returns the namespace's name as `ip netns` knows it.
func (n *NS) Name() string { return n.name }

// String returns the namespace's name.
func (n *NS) String() string { return n.name }

// Run runs `ip netns exec <ns> args...` and returns its combined output.
func (n *NS) Run(args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", n.name}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in %s: %s: %w: %s", n.name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// MustRun is Run that fails t on error.
func (n *NS) MustRun(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.Run(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Ping sends one ICMP echo to addr (IPv4 or IPv6) from n and waits at most two
// seconds for the reply.
func (n *NS) Ping(addr string) error {
	_, err := n.Run("ping", "-n", "-c", "1", "-W", "2", addr)
	return err
}

// Start runs args in the background inside n with stdout and stderr captured.
// The lab stops the process at cleanup; it fails the test if the process
// cannot be started, so call it from the test goroutine.
func (n *NS) Start(args ...string) *Proc {
	n.lab.t.Helper()
	if len(args) == 0 {
		n.lab.t.Fatal("nslab: Start without a command")
	}
	// `ip netns exec` switches namespace and then execs the command without
	// forking, so the PID we hold is the command's own.
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.name}, args...)...)
	p := &Proc{name: strings.Join(args, " "), cmd: cmd, done: make(chan struct{})}
	cmd.Stdout = &p.out
	cmd.Stderr = &p.out
	if err := cmd.Start(); err != nil {
		n.lab.t.Fatalf("nslab: start %s in %s: %v", p.name, n.name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	n.lab.mu.Lock()
	n.lab.procs = append(n.lab.procs, p)
	n.lab.mu.Unlock()
	return p
}

// Do runs fn on the calling goroutine with its OS thread switched into n, and
// switches the thread back afterwards. Sockets and devices created by fn stay
// in n for their whole life; goroutines started by fn do not run in n.
func (n *NS) Do(fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("nslab: current namespace: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(n.name)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("nslab: open namespace %s: %w", n.name, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("nslab: enter namespace %s: %w", n.name, err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: the runtime retires a thread that is
		// still locked when its goroutine exits, so the stray namespace
		// cannot leak into other goroutines.
		return errors.Join(ferr, fmt.Errorf("nslab: leave namespace %s: %w", n.name, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// Listen is net.Listen with the socket created inside n.
func (n *NS) Listen(network, address string) (net.Listener, error) {
	var ln net.Listener
	err := n.Do(func() (err error) {
		ln, err = net.Listen(network, address)
		return err
	})
	return ln, err
}

// ListenPacket is net.ListenPacket with the socket created inside n.
func (n *NS) ListenPacket(network, address string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := n.Do(func() (err error) {
		pc, err = net.ListenPacket(network, address)
		return err
	})
	return pc, err
}

// Dial is net.Dialer.DialContext with the socket created inside n.
func (n *NS) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// Proc is a background process started by NS.Start.
type Proc struct {
	name string
	cmd  *exec.Cmd
	out  syncBuffer
	done chan struct{}
	err  error // valid after done is closed
}

// PID returns the process id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited and been reaped.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Wait waits for the process to exit and returns its exit error, like
// exec.Cmd.Wait. It may be called any number of times.
func (p *Proc) Wait() error {
	<-p.done
	return p.err
}

// Signal sends sig to the process, unless it has already been reaped.
func (p *Proc) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Stop sends SIGTERM, waits up to StopGrace, then sends SIGKILL, and returns
// once the process has been reaped. It only ever signals this process's PID,
// and does nothing if the process has already exited.
func (p *Proc) Stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	timer := time.NewTimer(StopGrace)
	defer timer.Stop()
	select {
	case <-p.done:
		return
	case <-timer.C:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Output returns everything the process has written to stdout and stderr so far.
func (p *Proc) Output() string { return p.out.String() }

// syncBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// WaitFor polls cond, quickly at first and then every 100ms, until it returns
// true or ctx is done. Use it to wait for an observable condition instead of
// sleeping.
func WaitFor(ctx context.Context, cond func() bool) error {
	delay := 5 * time.Millisecond
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		if cond() {
			return nil
		}
		timer.Reset(delay)
		select {
		case <-ctx.Done():
			if cond() {
				return nil
			}
			return fmt.Errorf("condition not met: %w", context.Cause(ctx))
		case <-timer.C:
		}
		delay = min(2*delay, 100*time.Millisecond)
	}
}
