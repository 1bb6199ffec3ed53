//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stt-tun/stt-tun/internal/nslab"
)

// leakWatch is a UDP listener in the "internet" namespace that reports every
// datagram it receives, with the address it came from.
type leakWatch struct {
	got  chan datagram
	port int
}

type datagram struct {
	payload string
	from    netip.Addr
}

func watchLeaks(t *testing.T, inet *nslab.NS) *leakWatch {
	t.Helper()
	pc, err := inet.ListenPacket("udp", ":0") // both families
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	w := &leakWatch{got: make(chan datagram, 64), port: pc.LocalAddr().(*net.UDPAddr).Port}
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				close(w.got)
				return
			}
			ap, _ := netip.ParseAddrPort(from.String())
			select {
			case w.got <- datagram{string(buf[:n]), ap.Addr().Unmap()}:
			default:
			}
		}
	}()
	return w
}

// sendUDP sends payload from a new socket in ns to dst, with SO_MARK mark
// unless it is 0, and returns the error of the send itself.
func sendUDP(ns *nslab.NS, dst, payload string, mark int) error {
	return ns.Do(func() error {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			if mark == 0 {
				return nil
			}
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, mark)
			}); err != nil {
				return err
			}
			return serr
		}}
		pc, err := lc.ListenPacket(context.Background(), "udp", ":0")
		if err != nil {
			return err
		}
		defer pc.Close()
		addr, err := net.ResolveUDPAddr("udp", dst)
		if err != nil {
			return err
		}
		_, err = pc.WriteTo([]byte(payload), addr)
		return err
	})
}

// probe sends an unmarked datagram from alpha to dst in the internet, which
// with the tunnel gone can only leave by the uplink, then a marked one, which
// the policy rules send by the uplink whatever happens, on the same path. It
// returns the error of the unmarked send and whether that datagram arrived,
// from alpha's own uplink address (not masqueraded by beta, so it did not
// go through the tunnel), before the marked one did.
func (w *leakWatch) probe(t *testing.T, alpha *nslab.NS, host, tag string) (sendErr error, leaked bool) {
	t.Helper()
	dst := net.JoinHostPort(host, fmt.Sprint(w.port))
	leak, marker := "leak "+tag, "marker "+tag
	sendErr = sendUDP(alpha, dst, leak, 0)
	if err := sendUDP(alpha, dst, marker, 0x5354); err != nil {
		t.Fatalf("send the marked datagram to %s: %v", dst, err)
	}
	deadline := time.After(reachTimeout) // a failure guard, not a wait
	for {
		select {
		case p, ok := <-w.got:
			if !ok {
				t.Fatal("leak watcher closed")
			}
			switch {
			case p.payload == leak && (p.from == uplinkA4 || p.from == uplinkA6):
				leaked = true
			case p.payload == marker:
				return sendErr, leaked
			}
		case <-deadline:
			t.Fatalf("the marked datagram to %s never reached the internet; the probe cannot tell", dst)
		}
	}
}

// alpha's uplink addresses, underA.
var uplinkA4, uplinkA6 = netip.MustParseAddr("10.231.0.1"), netip.MustParseAddr("fd00:231::1")

// killAlpha SIGKILLs alpha's foreground daemon and waits until the kernel has
// deleted its TUN device.
func killAlpha(t *testing.T, a *node) {
	t.Helper()
	if err := a.proc.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := a.proc.Wait(); err == nil {
		t.Fatal("alpha's daemon exited cleanly on SIGKILL?")
	}
	a.proc = nil
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if err := nslab.WaitFor(ctx, func() bool { return runIn(a.ns, "ip", "link", "show", "dev", linkName).err != nil }); err != nil {
		t.Fatalf("%s still exists after its daemon was killed", linkName)
	}
	if _, err := os.Stat(filepath.Join(a.stateDir, linkName+".json")); err != nil {
		t.Fatalf("no routing journal after the daemon was killed: %v", err)
	}
}

// TestKillSwitch: alpha sends everything through the exit peer beta. Its
// uplink's far end, beta's namespace, forwards to the "internet" as well, so
// a packet that leaks out of the full tunnel reaches the internet. With the
// default kill switch, after a SIGKILL of alpha's daemon, the packets the
// tunnel carried are refused at the sender (IPv4 and IPv6) and none arrive,
// while alpha's marked packets still leave by the uplink and the LAN is
// reachable; `down` restores
// every dump exactly. A new `up` after a SIGKILL takes over without `down`
// and carries the traffic again. With kill_switch = false the same probe
// sees the leak, which shows the probe can see one.
func TestKillSwitch(t *testing.T) {
	t.Parallel()
	lab, a, b, seed := pair(t)
	inet := lab.NS("inet")
	lab.Link(b.ns, []string{"198.51.100.1/24", "2001:db8:51::1/64"}, inet, []string{"198.51.100.2/24", "2001:db8:51::2/64"})
	const publicB = "10.233.0.2"
	mustIn(t, b.ns, "ip", "addr", "add", publicB+"/32", "dev", "lo")
	mustIn(t, a.ns, "ip", "route", "add", "default", "via", "10.231.0.2")
	mustIn(t, a.ns, "ip", "-6", "route", "add", "default", "via", "fd00:231::2")
	conf := func(killSwitch string) nodeConf {
		return nodeConf{addresses: tunA, seedFile: seed, exitPeer: "beta", killSwitch: killSwitch, peers: []peerConf{
			{name: "beta", endpoint: publicB + ":51900", allowed: append([]string{"0.0.0.0/0", "::/0"}, allowB...)},
		}}
	}
	b.writeConfig(nodeConf{addresses: tunB, seedFile: seed, forwarding: true, masquerade: true, peers: []peerConf{
		{name: "alpha", allowed: allowA},
	}})
	beforeA := takeSnapshot(t, a.ns)
	b.startForeground() // turns forwarding on in beta's namespace: leaks would get through
	w := watchLeaks(t, inet)
	hosts := []string{"198.51.100.2", "2001:db8:51::2"}

	// The probe's control: without a full tunnel the unmarked datagram takes
	// the uplink and arrives.
	for _, h := range hosts {
		if err, leaked := w.probe(t, a.ns, h, "no tunnel "+h); err != nil || !leaked {
			t.Fatalf("without a tunnel, the datagram to %s: send error %v, arrived %v; the probe cannot see leaks", h, err, leaked)
		}
	}

	a.writeConfig(conf(""))
	a.startForeground()
	for _, fam := range []string{"-4", "-6"} {
		if got := mustIn(t, a.ns, "ip", fam, "route", "show", "table", "5354"); !strings.Contains(got, "unreachable default") {
			t.Errorf("alpha `ip %s route show table 5354` has no kill switch:\n%s", fam, got)
		}
	}
	waitPing(t, a.ns, "198.51.100.2")
	waitPing(t, a.ns, "2001:db8:51::2")
	for _, h := range hosts {
		if err, leaked := w.probe(t, a.ns, h, "tunnel up "+h); err != nil || leaked {
			t.Errorf("with the tunnel up, the datagram to %s: send error %v, arrived unencrypted %v", h, err, leaked)
		}
	}

	killAlpha(t, a)
	for _, h := range hosts {
		err, leaked := w.probe(t, a.ns, h, "killed "+h)
		if leaked {
			t.Errorf("after SIGKILL, a datagram to %s left by the uplink", h)
		}
		if !errors.Is(err, unix.EHOSTUNREACH) && !errors.Is(err, unix.ENETUNREACH) {
			t.Errorf("after SIGKILL, sending to %s: %v, want the kill switch's host unreachable", h, err)
		}
	}
	if r := runIn(a.ns, "ping", "-c", "1", "-W", "1", "198.51.100.2"); r.err == nil {
		t.Errorf("after SIGKILL, ping to the internet got an answer:\n%s", r.stdout)
	}
	// The LAN, which the main table routes more specifically, is not the tunnel's.
	for _, lan := range []string{"10.231.0.2", "fd00:231::2"} {
		if r := runIn(a.ns, "ping", "-c", "1", "-W", "5", lan); r.err != nil {
			t.Errorf("after SIGKILL, the kill switch blocks the LAN: ping %s: %v\n%s%s", lan, r.err, r.stdout, r.stderr)
		}
	}
	stderr := a.down()
	if !strings.Contains(stderr, "journal") {
		t.Errorf("down after SIGKILL: stderr %q does not say it undid the routing from the journal", stderr)
	}
	sameSnapshot(t, a.ns, "alpha after SIGKILL and down", beforeA)

	// A new up after a SIGKILL replaces what the dead daemon left, without down.
	a.startForeground()
	killAlpha(t, a)
	a.startForeground()
	waitPing(t, a.ns, "198.51.100.2")
	waitPing(t, a.ns, "2001:db8:51::2")
	for _, fam := range []string{"-4", "-6"} {
		if got := strings.Count(mustIn(t, a.ns, "ip", fam, "rule"), "lookup 5354"); got != 1 {
			t.Errorf("alpha `ip %s rule` has %d rules for table 5354 after the new up, want 1", fam, got)
		}
	}
	a.down()
	sameSnapshot(t, a.ns, "alpha after SIGKILL, up and down", beforeA)

	// Opted out: the traffic falls back to the uplink, as before the kill switch.
	a.writeConfig(conf("false"))
	a.startForeground()
	if got := mustIn(t, a.ns, "ip", "route", "show", "table", "5354"); strings.Contains(got, "unreachable") {
		t.Errorf("kill_switch = false, yet alpha's table 5354 has:\n%s", got)
	}
	killAlpha(t, a)
	for _, h := range hosts {
		if err, leaked := w.probe(t, a.ns, h, "opted out "+h); err != nil || !leaked {
			t.Errorf("kill_switch = false, after SIGKILL the datagram to %s: send error %v, arrived %v; want it by the uplink", h, err, leaked)
		}
	}
	a.down()
	sameSnapshot(t, a.ns, "alpha without kill switch after SIGKILL and down", beforeA)
	b.down()
}
