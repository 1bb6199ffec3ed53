package routing

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/stt-tun/stt-tun/internal/nslab"
	stttun "github.com/stt-tun/stt-tun/tun"
)

// testNS is a named network namespace owned by one test.
type testNS struct {
	name string
	h    netns.NsHandle
}

// newNS creates a uniquely named namespace and deletes it when the test
// ends. Only root can run these tests.
func newNS(t *testing.T) *testNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, netlink, nftables)")
	}
	// Named with this process's PID, so that a later run deletes what a killed one
	// left (nslab.SweepStale).
	nslab.SweepStale("stt-rt")
	var rnd [4]byte
	rand.Read(rnd[:])
	n := &testNS{name: fmt.Sprintf("stt-rt-%d-%s", os.Getpid(), hex.EncodeToString(rnd[:]))}
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with the goroutine instead of
		// running other code inside the test namespace.
		runtime.LockOSThread()
		h, err := netns.NewNamed(n.name)
		n.h = h
		errc <- err
	}()
	err := <-errc
	t.Cleanup(func() {
		if n.h.IsOpen() {
			n.h.Close()
		}
		if err := netns.DeleteNamed(n.name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("delete netns %s: %v", n.name, err)
		}
	})
	if err != nil {
		t.Fatalf("create netns %s: %v", n.name, err)
	}
	return n
}

// do runs f on an OS thread inside the namespace.
func (n *testNS) do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked, as in newNS
		if err := netns.Set(n.h); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	return <-errc
}

func (n *testNS) run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (n *testNS) ip(t *testing.T, args ...string) string {
	t.Helper()
	return n.run(t, "ip", append([]string{"-n", n.name}, args...)...)
}

func (n *testNS) nft(t *testing.T, args ...string) string {
	t.Helper()
	return n.run(t, "ip", append([]string{"netns", "exec", n.name, "nft"}, args...)...)
}

// sysctls reads the forwarding and src_valid_mark knobs of every device,
// since writing the "all" values propagates to each of them.
func (n *testNS) sysctls(t *testing.T) string {
	t.Helper()
	var lines []string
	err := n.do(func() error {
		paths := []string{"/proc/sys/" + sysctlIPForward}
		for _, pat := range []string{
			"/proc/sys/net/ipv4/conf/*/forwarding",
			"/proc/sys/net/ipv4/conf/*/src_valid_mark",
			"/proc/sys/net/ipv6/conf/*/forwarding",
		} {
			m, err := filepath.Glob(pat)
			if err != nil {
				return err
			}
			paths = append(paths, m...)
		}
		for _, p := range paths {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			lines = append(lines, p+"="+strings.TrimSpace(string(b)))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func (n *testNS) sysctl(t *testing.T, key string) string {
	t.Helper()
	var val string
	if err := n.do(func() error {
		b, err := os.ReadFile("/proc/sys/" + key)
		val = strings.TrimSpace(string(b))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return val
}

// dump is everything `down` must restore, as an administrator sees it.
func (n *testNS) dump(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{
		{"addr"},
		{"route", "show", "table", "all"},
		{"-6", "route", "show", "table", "all"},
		{"rule"},
		{"-6", "rule"},
	} {
		fmt.Fprintf(&b, "### ip %s\n%s", strings.Join(args, " "), n.ip(t, args...))
	}
	fmt.Fprintf(&b, "### nft list ruleset\n%s", n.nft(t, "list", "ruleset"))
	fmt.Fprintf(&b, "### sysctl\n%s\n", n.sysctls(t))
	return b.String()
}

// createTUN makes a TUN device in the namespace, as the tunnel engine does.
// It is closed when the test ends.
func (n *testNS) createTUN(t *testing.T, name string) tun.Device {
	t.Helper()
	var dev tun.Device
	if err := n.do(func() error {
		var err error
		dev, err = tun.CreateTUN(name, 1500)
		if err != nil {
			return err
		}
		// Marked as stt-tun's own tun.Create does, or Apply refuses it.
		l, err := netlink.LinkByName(name)
		if err == nil {
			err = netlink.LinkSetAlias(l, stttun.LinkAlias)
		}
		return err
	}); err != nil {
		t.Fatalf("create tun %s: %v", name, err)
	}
	// Drain the link events as the tunnel does: an undrained channel blocks the
	// device's netlink listener for good, and every test leaked it and its socket.
	// The range ends when Close makes the listener close the channel.
	go func() {
		for range dev.Events() {
		}
	}()
	t.Cleanup(func() { dev.Close() })
	return dev
}

// link opens a netlink handle in the namespace and looks up the link name
// with it; the caller closes the handle.
func (n *testNS) link(t *testing.T, name string) (*netlink.Handle, netlink.Link) {
	t.Helper()
	h, err := netlink.NewHandleAt(n.h)
	if err != nil {
		t.Fatal(err)
	}
	l, err := h.LinkByName(name)
	if err != nil {
		h.Close()
		t.Fatal(err)
	}
	return h, l
}

// deleteLink removes a link synchronously, as the kernel does when the
// process holding a TUN dies.
func (n *testNS) deleteLink(t *testing.T, name string) {
	t.Helper()
	h, l := n.link(t, name)
	defer h.Close()
	if err := h.LinkDel(l); err != nil {
		t.Fatalf("delete link %s: %v", name, err)
	}
}

// underlay gives the namespace a physical-like uplink: a second TUN with
// addresses and default routes in the main table, which full tunnel must
// bypass for marked packets and leave intact.
func (n *testNS) underlay(t *testing.T) {
	t.Helper()
	n.createTUN(t, "under0")
	n.ip(t, "link", "set", "under0", "up")
	n.ip(t, "addr", "add", "192.0.2.1/24", "dev", "under0")
	n.ip(t, "addr", "add", "2001:db8:ffff::1/64", "dev", "under0", "nodad")
	n.ip(t, "route", "add", "default", "via", "192.0.2.2", "dev", "under0")
	n.ip(t, "-6", "route", "add", "default", "via", "2001:db8:ffff::2", "dev", "under0")
	n.settle(t, "under0")
}

// settle waits until every IPv6 address on link has its local route. The
// kernel adds that route from a work queue once duplicate address detection
// is over (even for nodad), so a dump taken too early would lack it.
func (n *testNS) settle(t *testing.T, link string) {
	t.Helper()
	h, l := n.link(t, link)
	defer h.Close()
	// Subscribe before listing addresses, so no route can slip between.
	ch := make(chan netlink.RouteUpdate, 64)
	done := make(chan struct{})
	defer func() {
		close(done)
		for range ch { // until the subscription's goroutine has gone
		}
	}()
	ns := n.h
	if err := netlink.RouteSubscribeWithOptions(ch, done, netlink.RouteSubscribeOptions{
		Namespace:    &ns,
		ListExisting: true,
	}); err != nil {
		t.Fatal(err)
	}
	addrs, err := h.AddrList(l, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	want := make(map[string]bool)
	for _, a := range addrs {
		want[a.IP.String()] = true
	}
	deadline := time.After(time.Minute) // a failure guard, not a wait
	for len(want) > 0 {
		select {
		case u, ok := <-ch:
			if !ok {
				t.Fatal("route subscription ended")
			}
			if u.Type == unix.RTM_NEWROUTE && u.Table == unix.RT_TABLE_LOCAL && u.Dst != nil {
				delete(want, u.Dst.IP.String())
			}
		case <-deadline:
			t.Fatalf("%s: no local route for %v", link, want)
		}
	}
}

// apply calls Apply from inside the namespace.
func (n *testNS) apply(spec Spec) (*Manager, error) {
	var m *Manager
	err := n.do(func() error {
		var err error
		m, err = Apply(spec)
		return err
	})
	return m, err
}

func (n *testNS) undoFromState(stateDir, link string) error {
	return n.do(func() error { return UndoFromState(stateDir, link) })
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func fullSpec(stateDir string) Spec {
	return Spec{
		Link:       "stt0",
		MTU:        1420,
		Addresses:  []netip.Prefix{pfx("10.77.0.1/24"), pfx("fd77::1/64")},
		Routes:     []netip.Prefix{pfx("10.78.0.0/16"), pfx("fd78::/48"), pfx("0.0.0.0/0"), pfx("::/0")},
		FullTunnel: true,
		KillSwitch: true,
		Forwarding: true,
		Masquerade: true,
		StateDir:   stateDir,
	}
}

func mustContain(t *testing.T, what, out string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(out, w) {
			t.Errorf("%s: missing %q in:\n%s", what, w, out)
		}
	}
}

func mustNotContain(t *testing.T, what, out string, unwanted ...string) {
	t.Helper()
	for _, w := range unwanted {
		if strings.Contains(out, w) {
			t.Errorf("%s: unexpected %q in:\n%s", what, w, out)
		}
	}
}

func sameDump(t *testing.T, before, after string) {
	t.Helper()
	if before != after {
		t.Errorf("state not restored\n--- before\n%s\n--- after\n%s", before, after)
	}
}

func noJournal(t *testing.T, stateDir string) {
	t.Helper()
	if _, err := os.Stat(StatePath(stateDir, "stt0")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("journal left behind: stat: %v", err)
	}
}

// checkApplied verifies everything fullSpec asks for is in place.
func checkApplied(t *testing.T, n *testNS) {
	t.Helper()
	mustContain(t, "link", n.ip(t, "link", "show", "stt0"), "mtu 1420", ",UP")
	mustContain(t, "addresses", n.ip(t, "addr", "show", "stt0"), "inet 10.77.0.1/24", "inet6 fd77::1/64")
	mustContain(t, "v4 main", n.ip(t, "route", "show", "table", "main"), "10.78.0.0/16 dev stt0 proto 83 scope link")
	mustContain(t, "v6 main", n.ip(t, "-6", "route", "show", "table", "main"), "fd78::/48 dev stt0 proto 83")
	mustContain(t, "v4 table", n.ip(t, "route", "show", "table", "5354"), "default dev stt0 proto 83 scope link")
	mustContain(t, "v6 table", n.ip(t, "-6", "route", "show", "table", "5354"), "default dev stt0 proto 83")
	mustContain(t, "v4 kill switch", n.ip(t, "route", "show", "table", "5354"), "unreachable default proto 83 metric 4294967295")
	mustContain(t, "v6 kill switch", n.ip(t, "-6", "route", "show", "table", "5354"), "unreachable default dev lo proto 83 metric 4294967295")
	for _, fam := range []string{"-4", "-6"} {
		mustContain(t, "rules "+fam, n.ip(t, fam, "rule"),
			"32764:\tfrom all lookup main suppress_prefixlength 0 proto 83",
			"32765:\tnot from all fwmark 0x5354 lookup 5354 proto 83")
	}
	for _, k := range []string{sysctlIPForward, sysctlIP6Forward, sysctlSrcValidMark} {
		if v := n.sysctl(t, k); v != "1" {
			t.Errorf("sysctl %s = %s, want 1", k, v)
		}
	}
	mustContain(t, "nft", n.nft(t, "list", "table", "inet", "stt-tun-stt0"),
		"type nat hook postrouting priority srcnat", `iifname "stt0" oifname != "stt0" masquerade`)
}

// checkDecisions asks the kernel where packets go: unmarked traffic into
// the tunnel, the node's own marked traffic and the local subnet to the
// underlay.
func checkDecisions(t *testing.T, n *testNS) {
	t.Helper()
	mustContain(t, "unmarked v4", n.ip(t, "route", "get", "198.51.100.1"), "dev stt0 table 5354")
	mustContain(t, "marked v4", n.ip(t, "route", "get", "198.51.100.1", "mark", "0x5354"), "via 192.0.2.2 dev under0")
	mustContain(t, "allowed v4", n.ip(t, "route", "get", "10.78.1.1"), "dev stt0")
	mustContain(t, "local subnet", n.ip(t, "route", "get", "192.0.2.9"), "dev under0")
	mustContain(t, "unmarked v6", n.ip(t, "-6", "route", "get", "2001:db8:1::1"), "dev stt0 table 5354")
	mustContain(t, "marked v6", n.ip(t, "-6", "route", "get", "2001:db8:1::1", "mark", "0x5354"), "via 2001:db8:ffff::2 dev under0")
}

func TestApplyUndo(t *testing.T) {
	for _, initiallyUp := range []bool{false, true} {
		t.Run(fmt.Sprintf("up=%v", initiallyUp), func(t *testing.T) {
			n := newNS(t)
			n.underlay(t)
			n.createTUN(t, "stt0")
			if initiallyUp {
				n.ip(t, "link", "set", "stt0", "up")
				n.settle(t, "stt0")
			} else {
				// A link that was never up has no qdisc yet; the first up
				// attaches one for good. That is the kernel's doing, not a
				// change to undo, so the baseline starts after it.
				n.ip(t, "link", "set", "stt0", "up")
				n.ip(t, "link", "set", "stt0", "down")
			}
			stateDir := filepath.Join(t.TempDir(), "state")
			before := n.dump(t)

			m, err := n.apply(fullSpec(stateDir))
			if err != nil {
				t.Fatalf("Apply: %v", err)
			}
			checkApplied(t, n)
			checkDecisions(t, n)

			st, err := os.Stat(StatePath(stateDir, "stt0"))
			if err != nil {
				t.Fatalf("journal: %v", err)
			}
			if st.Mode().Perm() != 0o600 {
				t.Errorf("journal mode %v, want 0600", st.Mode().Perm())
			}
			if st, err := os.Stat(stateDir); err != nil || st.Mode().Perm() != 0o700 {
				t.Errorf("state dir: %v, mode %v, want 0700", err, st.Mode().Perm())
			}

			// A reload: one route added, one removed, the full tunnel's /0
			// accepted as already covered.
			if err := m.AddRoute(pfx("10.79.0.0/16")); err != nil {
				t.Fatalf("AddRoute: %v", err)
			}
			if err := m.AddRoute(pfx("10.79.0.0/16")); err != nil {
				t.Fatalf("AddRoute again: %v", err)
			}
			if err := m.AddRoute(pfx("0.0.0.0/0")); err != nil {
				t.Fatalf("AddRoute /0: %v", err)
			}
			if err := m.DelRoute(pfx("10.78.0.0/16")); err != nil {
				t.Fatalf("DelRoute: %v", err)
			}
			if err := m.DelRoute(pfx("10.78.0.0/16")); err == nil {
				t.Error("DelRoute of a removed route: no error")
			}
			if err := m.AddRoute(pfx("10.80.0.1/16")); err == nil {
				t.Error("AddRoute with host bits: no error")
			}
			main4 := n.ip(t, "route", "show", "table", "main")
			mustContain(t, "after reload", main4, "10.79.0.0/16 dev stt0")
			mustNotContain(t, "after reload", main4, "10.78.0.0/16")
			got := m.Routes()
			want := []netip.Prefix{pfx("fd78::/48"), pfx("10.79.0.0/16")}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("Routes() = %v, want %v", got, want)
			}

			if err := m.Undo(); err != nil {
				t.Fatalf("Undo: %v", err)
			}
			sameDump(t, before, n.dump(t))
			noJournal(t, stateDir)
			if err := m.Undo(); err != nil {
				t.Errorf("second Undo: %v", err)
			}
			if err := m.AddRoute(pfx("10.81.0.0/16")); !errors.Is(err, ErrUndone) {
				t.Errorf("AddRoute after Undo: %v, want ErrUndone", err)
			}
		})
	}
}

// TestCrashUndoFromState drops the Manager as a SIGKILL would and reverts
// from the journal alone.
func TestCrashUndoFromState(t *testing.T) {
	cases := []struct {
		name string
		// crash runs after Apply; it returns the state that UndoFromState
		// must reproduce ("" to skip the comparison).
		crash func(t *testing.T, n *testNS, beforeTUN, beforeApply string) string
	}{
		{"link vanishes", func(t *testing.T, n *testNS, beforeTUN, _ string) string {
			n.deleteLink(t, "stt0")
			return beforeTUN
		}},
		{"link survives", func(t *testing.T, n *testNS, _, beforeApply string) string {
			return beforeApply
		}},
		// After a crash and the namespace made anew, another link may have the
		// old ifindex: its addresses, routes, MTU and state are not ours.
		{"index reused by a veth of the same name", func(t *testing.T, n *testNS, _, _ string) string {
			return foreignAtIndex(t, n, "stt0")
		}},
		{"index reused by another link", func(t *testing.T, n *testNS, _, _ string) string {
			return foreignAtIndex(t, n, "eth0")
		}},
		{"link replaced", func(t *testing.T, n *testNS, _, _ string) string {
			// A new daemon's TUN with the same name, already configured:
			// the old journal must not touch it.
			n.deleteLink(t, "stt0")
			n.createTUN(t, "stt0")
			n.ip(t, "link", "set", "stt0", "up")
			n.ip(t, "addr", "add", "10.77.0.1/24", "dev", "stt0")
			n.ip(t, "route", "add", "10.78.0.0/16", "dev", "stt0", "proto", "83")
			return ""
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n := newNS(t)
			n.underlay(t)
			beforeTUN := n.dump(t)
			n.createTUN(t, "stt0")
			n.ip(t, "link", "set", "stt0", "up")
			n.ip(t, "link", "set", "stt0", "down")
			beforeApply := n.dump(t)
			stateDir := filepath.Join(t.TempDir(), "state")

			m, err := n.apply(fullSpec(stateDir))
			if err != nil {
				t.Fatalf("Apply: %v", err)
			}
			if err := m.AddRoute(pfx("10.79.0.0/16")); err != nil {
				t.Fatalf("AddRoute: %v", err)
			}
			checkApplied(t, n)
			want := tc.crash(t, n, beforeTUN, beforeApply)
			// The Manager is dropped without Undo; its journal is all
			// that is left.

			if err := n.undoFromState(stateDir, "stt0"); err != nil {
				t.Fatalf("UndoFromState: %v", err)
			}
			switch {
			case strings.HasPrefix(want, "link "):
				name := strings.TrimPrefix(want, "link ")
				mustContain(t, "link at the old index", n.ip(t, "addr", "show", name), "mtu 1420", ",UP", "inet 10.77.0.1/24", "inet6 fd77::1/64")
				mustContain(t, "its route", n.ip(t, "route", "show", "table", "main"), "10.78.0.0/16 dev "+name+" proto 83")
				mustContain(t, "its route", n.ip(t, "-6", "route", "show", "table", "main"), "fd78::/48 dev "+name+" proto 83")
				mustNotContain(t, "rules", n.ip(t, "rule"), "proto 83")
				mustNotContain(t, "nft", n.nft(t, "list", "ruleset"), "stt-tun-stt0")
			case want != "":
				sameDump(t, want, n.dump(t))
			default:
				mustContain(t, "replacement link", n.ip(t, "addr", "show", "stt0"), "mtu 1500", ",UP", "inet 10.77.0.1/24")
				mustContain(t, "replacement route", n.ip(t, "route", "show", "table", "main"), "10.78.0.0/16 dev stt0 proto 83")
				mustNotContain(t, "rules", n.ip(t, "rule"), "proto 83")
				mustNotContain(t, "rules", n.ip(t, "-6", "rule"), "proto 83")
				mustNotContain(t, "nft", n.nft(t, "list", "ruleset"), "stt-tun-stt0")
				if v := n.sysctl(t, sysctlIPForward); v != "0" {
					t.Errorf("ip_forward = %s, want 0", v)
				}
			}
			noJournal(t, stateDir)

			err = n.undoFromState(stateDir, "stt0")
			if !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("second UndoFromState: %v, want fs.ErrNotExist", err)
			}
			m.Close()
		})
	}
}

// foreignAtIndex deletes stt0 and gives its ifindex to a veth link called name, set
// up as the tunnel was: MTU 1420, up, its addresses and routes (proto 83). It returns
// "link NAME" for TestCrashUndoFromState.
func foreignAtIndex(t *testing.T, n *testNS, name string) string {
	t.Helper()
	h, l := n.link(t, "stt0")
	index := l.Attrs().Index
	h.Close()
	n.deleteLink(t, "stt0")
	n.ip(t, "link", "add", name, "index", fmt.Sprint(index), "mtu", "1420", "type", "veth", "peer", "name", name+"-p")
	n.ip(t, "link", "set", name+"-p", "up")
	n.ip(t, "link", "set", name, "up")
	n.ip(t, "addr", "add", "10.77.0.1/24", "dev", name)
	n.ip(t, "addr", "add", "fd77::1/64", "dev", name, "nodad")
	n.ip(t, "route", "add", "10.78.0.0/16", "dev", name, "proto", "83")
	n.ip(t, "-6", "route", "add", "fd78::/48", "dev", name, "proto", "83")
	n.settle(t, name)
	if h, l := n.link(t, name); l.Attrs().Index != index {
		h.Close()
		t.Fatalf("%s got ifindex %d, want %d", name, l.Attrs().Index, index)
	} else {
		h.Close()
	}
	return "link " + name
}

// TestCrashDuringApply kills Apply right after it records each change in
// turn (before making it, the worst moment) and reverts from the journal.
func TestCrashDuringApply(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, netlink, nftables)")
	}
	completed, ran, tried := false, 0, 0
	for k := 1; k < 50 && !completed; k++ {
		tried++
		t.Run(fmt.Sprintf("change%d", k), func(t *testing.T) {
			ran++
			n := newNS(t)
			n.underlay(t)
			n.createTUN(t, "stt0")
			n.ip(t, "link", "set", "stt0", "up")
			n.ip(t, "link", "set", "stt0", "down")
			stateDir := filepath.Join(t.TempDir(), "state")
			before := n.dump(t)
			var m *Manager
			err := n.do(func() error {
				var err error
				m, err = apply(fullSpec(stateDir), k)
				return err
			})
			if err == nil {
				// Fewer than k changes: every crash point was covered.
				completed = true
				if k < 10 {
					t.Errorf("Apply made only %d changes", k-1)
				}
				if err := m.Undo(); err != nil {
					t.Fatalf("Undo: %v", err)
				}
				sameDump(t, before, n.dump(t))
				return
			}
			if !errors.Is(err, errCrash) {
				t.Fatalf("Apply: %v, want simulated crash", err)
			}
			j, err := readJournal(StatePath(stateDir, "stt0"))
			if err != nil {
				t.Fatalf("journal after crash: %v", err)
			}
			// Routes are recorded as one batch, so a crash inside it
			// leaves more records than changes made.
			if len(j.st.Changes) < k {
				t.Errorf("journal holds %d changes, want at least %d", len(j.st.Changes), k)
			}
			if err := n.undoFromState(stateDir, "stt0"); err != nil {
				t.Fatalf("UndoFromState: %v", err)
			}
			sameDump(t, before, n.dump(t))
			noJournal(t, stateDir)
		})
	}
	if ran == tried && !completed && !t.Failed() { // not when -run filters
		t.Error("Apply never completed")
	}
}

// TestApplyFailsHalfway makes a late step fail and checks that the steps
// before it were rolled back and that no journal is left.
func TestApplyFailsHalfway(t *testing.T) {
	cases := []struct {
		name    string
		setup   func(t *testing.T, n *testNS, stateDir string)
		spec    func(s Spec) Spec
		wantErr string
		is      error
	}{
		{
			name: "route conflict",
			setup: func(t *testing.T, n *testNS, _ string) {
				n.ip(t, "-6", "route", "add", "fd78::/48", "via", "2001:db8:ffff::3")
			},
			wantErr: "add route fd78::/48 table 254",
		},
		{
			name: "rule conflict",
			setup: func(t *testing.T, n *testNS, _ string) {
				// An identical rule, as another instance with the same
				// settings would have made; it must survive the rollback.
				n.ip(t, "-6", "rule", "add", "pref", "32765", "not", "fwmark", "0x5354", "table", "5354", "proto", "83")
			},
			wantErr: "add ipv6 rule priority 32765",
		},
		{
			name: "nft table exists",
			setup: func(t *testing.T, n *testNS, _ string) {
				n.nft(t, "add", "table", "inet", "stt-tun-stt0")
			},
			wantErr: "masquerade: nftables table inet stt-tun-stt0 already exists",
		},
		{
			name: "address exists",
			setup: func(t *testing.T, n *testNS, _ string) {
				n.ip(t, "addr", "add", "fd77::1/64", "dev", "stt0", "nodad")
				// The dump below must hold the address's local route, which the kernel
				// adds from a work queue: under load it came only after the dump, and
				// the rollback looked like it had left a route behind.
				n.settle(t, "stt0")
			},
			wantErr: "add address fd77::1/64",
		},
		{
			name:    "no such link",
			spec:    func(s Spec) Spec { s.Link = "nosuch0"; return s },
			wantErr: "find link",
		},
		{
			name:    "invalid spec",
			spec:    func(s Spec) Spec { s.Routes = append(s.Routes, pfx("10.1.2.3/16")); return s },
			wantErr: "host bits set",
		},
		{
			name: "journal exists",
			setup: func(t *testing.T, n *testNS, stateDir string) {
				if err := os.MkdirAll(stateDir, 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(StatePath(stateDir, "stt0"), []byte("{}"), 0o600); err != nil {
					t.Fatal(err)
				}
			},
			is: ErrJournalExists,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n := newNS(t)
			n.underlay(t)
			n.createTUN(t, "stt0")
			n.ip(t, "link", "set", "stt0", "up")
			n.ip(t, "link", "set", "stt0", "down")
			stateDir := filepath.Join(t.TempDir(), "state")
			if tc.setup != nil {
				tc.setup(t, n, stateDir)
			}
			before := n.dump(t)
			spec := fullSpec(stateDir)
			if tc.spec != nil {
				spec = tc.spec(spec)
			}
			m, err := n.apply(spec)
			if err == nil {
				m.Undo()
				t.Fatal("Apply succeeded")
			}
			if tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not name the step %q", err, tc.wantErr)
			}
			if tc.is != nil {
				if !errors.Is(err, tc.is) {
					t.Errorf("error %v is not %v", err, tc.is)
				}
				return // the existing journal is not Apply's to remove
			}
			sameDump(t, before, n.dump(t))
			noJournal(t, stateDir)
		})
	}
}

// TestAddRouteConflict checks that a failed incremental route leaves the
// journal as it was, so Undo does not delete the other owner's route.
func TestAddRouteConflict(t *testing.T) {
	n := newNS(t)
	n.underlay(t)
	n.createTUN(t, "stt0")
	n.ip(t, "link", "set", "stt0", "up")
	n.ip(t, "link", "set", "stt0", "down")
	n.ip(t, "route", "add", "10.90.0.0/16", "via", "192.0.2.3")
	before := n.dump(t)
	stateDir := filepath.Join(t.TempDir(), "state")
	m, err := n.apply(Spec{Link: "stt0", MTU: 1400, Addresses: []netip.Prefix{pfx("10.77.0.1/24")}, StateDir: stateDir})
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if err := m.AddRoute(pfx("10.90.0.0/16")); err == nil || !strings.Contains(err.Error(), "add route 10.90.0.0/16") {
		t.Errorf("AddRoute over an existing route: %v", err)
	}
	if got := m.Routes(); len(got) != 0 {
		t.Errorf("Routes() = %v after failed AddRoute", got)
	}
	if err := m.Undo(); err != nil {
		t.Fatalf("Undo: %v", err)
	}
	sameDump(t, before, n.dump(t))
}

// TestJournalCorrupt needs no privileges: a bad journal is refused before
// anything is touched, and left in place for a human.
func TestJournalCorrupt(t *testing.T) {
	valid := `{"version":1,"link":"stt0","ifindex":7,"changes":[]}`
	cases := map[string]string{
		"garbage":        "not json at all",
		"truncated":      valid[:20],
		"trailing data":  valid + valid,
		"unknown field":  `{"version":1,"link":"stt0","ifindex":7,"changes":[],"extra":1}`,
		"bad version":    `{"version":9,"link":"stt0","ifindex":7,"changes":[]}`,
		"no ifindex":     `{"version":1,"link":"stt0","changes":[]}`,
		"other link":     `{"version":1,"link":"stt1","ifindex":7,"changes":[]}`,
		"bad link":       `{"version":1,"link":"../x","ifindex":7,"changes":[]}`,
		"empty change":   `{"version":1,"link":"stt0","ifindex":7,"changes":[{}]}`,
		"two kinds":      `{"version":1,"link":"stt0","ifindex":7,"changes":[{"addr":"10.0.0.1/24","nft":{"family":"inet","name":"x"}}]}`,
		"bad prefix":     `{"version":1,"link":"stt0","ifindex":7,"changes":[{"addr":"10.0.0.300/24"}]}`,
		"foreign sysctl": `{"version":1,"link":"stt0","ifindex":7,"changes":[{"sysctl":{"key":"kernel/panic","old":"0","new":"1"}}]}`,
		"bad rule":       `{"version":1,"link":"stt0","ifindex":7,"changes":[{"rule":{"family":5,"priority":1,"table":1}}]}`,
		// Only what Apply makes: a tampered journal must not delete anything else.
		"foreign nft table":      `{"version":1,"link":"stt0","ifindex":7,"changes":[{"nft":{"family":"inet","name":"filter"}}]}`,
		"other link's nft table": `{"version":1,"link":"stt0","ifindex":7,"changes":[{"nft":{"family":"inet","name":"stt-tun-stt1"}}]}`,
		"nft family ip":          `{"version":1,"link":"stt0","ifindex":7,"changes":[{"nft":{"family":"ip","name":"stt-tun-stt0"}}]}`,
		"route in local table":   `{"version":1,"link":"stt0","ifindex":7,"changes":[{"route":{"dst":"10.0.0.0/8","table":255}}]}`,
		"route in other table":   `{"version":1,"link":"stt0","ifindex":7,"changes":[{"route":{"dst":"10.0.0.0/8","table":100}}]}`,
		"default in main":        `{"version":1,"link":"stt0","ifindex":7,"changes":[{"route":{"dst":"0.0.0.0/0","table":254}}]}`,
		"route host bits":        `{"version":1,"link":"stt0","ifindex":7,"changes":[{"route":{"dst":"10.0.0.1/8","table":254}}]}`,
		"rule lookup main":       `{"version":1,"link":"stt0","ifindex":7,"changes":[{"rule":{"family":4,"priority":100,"table":254}}]}`,
		"rule lookup local":      `{"version":1,"link":"stt0","ifindex":7,"changes":[{"rule":{"family":4,"priority":100,"table":255,"suppress_prefixlength":0}}]}`,
		"rule after main":        `{"version":1,"link":"stt0","ifindex":7,"changes":[{"rule":{"family":4,"priority":32766,"table":254,"suppress_prefixlength":0}}]}`,
		"rule without mark":      `{"version":1,"link":"stt0","ifindex":7,"changes":[{"rule":{"family":4,"priority":100,"table":5354}}]}`,
		"sysctl set to 0":        `{"version":1,"link":"stt0","ifindex":7,"changes":[{"sysctl":{"key":"net/ipv4/ip_forward","old":"1","new":"0"}}]}`,
		"sysctl odd old value":   `{"version":1,"link":"stt0","ifindex":7,"changes":[{"sysctl":{"key":"net/ipv4/ip_forward","old":"1 2","new":"1"}}]}`,
		"link mtu 0":             `{"version":1,"link":"stt0","ifindex":7,"changes":[{"link":{"old_mtu":0,"was_up":false}}]}`,
	}
	for name, content := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := StatePath(dir, "stt0")
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			err := UndoFromState(dir, "stt0")
			if !errors.Is(err, ErrJournalCorrupt) {
				t.Fatalf("UndoFromState: %v, want ErrJournalCorrupt", err)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the file", err)
			}
			if _, err := os.Stat(path); err != nil {
				t.Errorf("corrupt journal removed: %v", err)
			}
		})
	}
}

func TestUndoFromStateMissing(t *testing.T) {
	err := UndoFromState(t.TempDir(), "stt0")
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("UndoFromState without journal: %v, want fs.ErrNotExist", err)
	}
	if err := UndoFromState(t.TempDir(), "../etc"); err == nil {
		t.Error("UndoFromState accepted a path as link name")
	}
}

func TestSpecNormalize(t *testing.T) {
	base := Spec{Link: "stt0"}
	s, err := base.normalize()
	if err != nil {
		t.Fatal(err)
	}
	if s.FwMark != DefaultFwMark || s.Table != DefaultTable || s.RulePriority != DefaultRulePriority || s.StateDir != DefaultStateDir {
		t.Errorf("defaults not applied: %+v", s)
	}
	bad := map[string]func(s *Spec){
		"empty link":         func(s *Spec) { s.Link = "" },
		"long link":          func(s *Spec) { s.Link = "abcdefghijklmnop" },
		"slash in link":      func(s *Spec) { s.Link = "a/b" },
		"main table":         func(s *Spec) { s.Table = 254 },
		"local table":        func(s *Spec) { s.Table = 255 },
		"negative table":     func(s *Spec) { s.Table = -1 },
		"priority too late":  func(s *Spec) { s.RulePriority = 32765 },
		"tiny mtu":           func(s *Spec) { s.MTU = 60 },
		"v6 small mtu":       func(s *Spec) { s.MTU = 1200; s.Addresses = []netip.Prefix{pfx("fd00::1/64")} },
		"v6 route small mtu": func(s *Spec) { s.MTU = 1200; s.Routes = []netip.Prefix{pfx("fd00::/64")} },
		"full w/o default":   func(s *Spec) { s.FullTunnel = true; s.Routes = []netip.Prefix{pfx("10.0.0.0/8")} },
		"host bits":          func(s *Spec) { s.Routes = []netip.Prefix{pfx("10.0.0.1/8")} },
		"default w/o full":   func(s *Spec) { s.Routes = []netip.Prefix{pfx("0.0.0.0/0")} },
		"mapped address":     func(s *Spec) { s.Addresses = []netip.Prefix{pfx("::ffff:10.0.0.1/120")} },
		"duplicate address":  func(s *Spec) { s.Addresses = []netip.Prefix{pfx("10.0.0.1/24"), pfx("10.0.0.1/24")} },
		"duplicate route":    func(s *Spec) { s.Routes = []netip.Prefix{pfx("10.0.0.0/8"), pfx("10.0.0.0/8")} },
		"invalid route":      func(s *Spec) { s.Routes = []netip.Prefix{{}} },
	}
	for name, mutate := range bad {
		s := base
		mutate(&s)
		if _, err := s.normalize(); err == nil {
			t.Errorf("%s: accepted %+v", name, s)
		}
	}
	ok := base
	ok.FullTunnel = true
	ok.Routes = []netip.Prefix{pfx("0.0.0.0/0"), pfx("::/0")}
	ok.MTU = 1280
	ok.Addresses = []netip.Prefix{pfx("fd00::1/64")}
	if _, err := ok.normalize(); err != nil {
		t.Errorf("valid full-tunnel spec refused: %v", err)
	}
}

// TestFullTunnelOneFamily: an exit peer with only 0.0.0.0/0 takes IPv4 and
// leaves IPv6 (and the sysctls it was not asked for) alone.
func TestFullTunnelOneFamily(t *testing.T) {
	n := newNS(t)
	n.underlay(t)
	n.createTUN(t, "stt0")
	n.ip(t, "link", "set", "stt0", "up")
	n.ip(t, "link", "set", "stt0", "down")
	before := n.dump(t)
	stateDir := filepath.Join(t.TempDir(), "state")
	m, err := n.apply(Spec{
		Link:       "stt0",
		Addresses:  []netip.Prefix{pfx("10.77.0.1/24")},
		Routes:     []netip.Prefix{pfx("0.0.0.0/0")},
		FullTunnel: true,
		StateDir:   stateDir,
	})
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	mustContain(t, "v4", n.ip(t, "route", "get", "198.51.100.1"), "dev stt0 table 5354")
	mustContain(t, "v6", n.ip(t, "-6", "route", "get", "2001:db8:1::1"), "dev under0")
	mustNotContain(t, "v6 rules", n.ip(t, "-6", "rule"), "proto 83")
	for k, want := range map[string]string{sysctlSrcValidMark: "1", sysctlIPForward: "0", sysctlIP6Forward: "0"} {
		if v := n.sysctl(t, k); v != want {
			t.Errorf("sysctl %s = %s, want %s", k, v, want)
		}
	}
	if err := m.AddRoute(pfx("0.0.0.0/0")); err != nil {
		t.Errorf("AddRoute 0.0.0.0/0 with its full tunnel: %v", err)
	}
	if err := m.AddRoute(pfx("::/0")); err == nil {
		t.Error("AddRoute ::/0 without its full tunnel: no error")
	}
	if err := m.DelRoute(pfx("0.0.0.0/0")); err == nil {
		t.Error("DelRoute 0.0.0.0/0: no error")
	}
	if err := m.Undo(); err != nil {
		t.Fatalf("Undo: %v", err)
	}
	sameDump(t, before, n.dump(t))
	noJournal(t, stateDir)
}

// routeGet asks the kernel for a route to args and returns its answer, or
// its error message.
func (n *testNS) routeGet(args ...string) string {
	out, err := exec.Command("ip", append([]string{"-n", n.name}, args...)...).CombinedOutput()
	if err != nil {
		return "error: " + string(out)
	}
	return string(out)
}

// TestKillSwitchBlocksAfterCrash kills the link as a SIGKILL of the daemon
// does and checks that the traffic the full tunnel carried is refused, not
// routed to the underlay, while the node's own marked packets and the local
// subnet still reach the underlay; then that UndoFromState removes the kill
// switch and the machine is as before.
func TestKillSwitchBlocksAfterCrash(t *testing.T) {
	n := newNS(t)
	n.underlay(t)
	beforeTUN := n.dump(t)
	n.createTUN(t, "stt0")
	n.ip(t, "link", "set", "stt0", "up")
	n.ip(t, "link", "set", "stt0", "down")
	stateDir := filepath.Join(t.TempDir(), "state")
	m, err := n.apply(fullSpec(stateDir))
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	defer m.Close()
	checkApplied(t, n)
	checkDecisions(t, n) // the kill switch does not take over while the link is there

	n.deleteLink(t, "stt0")
	for _, args := range [][]string{
		{"route", "get", "198.51.100.1"},
		{"route", "get", "10.78.1.1"}, // a peer's prefix, gone with the link
		{"-6", "route", "get", "2001:db8:1::1"},
		{"-6", "route", "get", "fd78::1"},
	} {
		if got := n.routeGet(args...); !strings.Contains(got, "No route to host") {
			t.Errorf("ip %s after the link vanished: %q, want the unreachable route's No route to host", strings.Join(args, " "), got)
		}
	}
	mustContain(t, "marked v4", n.routeGet("route", "get", "198.51.100.1", "mark", "0x5354"), "via 192.0.2.2 dev under0")
	mustContain(t, "marked v6", n.routeGet("-6", "route", "get", "2001:db8:1::1", "mark", "0x5354"), "via 2001:db8:ffff::2 dev under0")
	mustContain(t, "local subnet", n.routeGet("route", "get", "192.0.2.9"), "dev under0")
	mustContain(t, "local subnet v6", n.routeGet("-6", "route", "get", "2001:db8:ffff::9"), "dev under0")

	if err := n.undoFromState(stateDir, "stt0"); err != nil {
		t.Fatalf("UndoFromState: %v", err)
	}
	sameDump(t, beforeTUN, n.dump(t))
	noJournal(t, stateDir)
	mustContain(t, "after down", n.routeGet("route", "get", "198.51.100.1"), "via 192.0.2.2 dev under0")
}

// TestKillSwitchOptOut: without KillSwitch, a vanished link leaves the
// traffic to the main table's default route, as before the kill switch, and
// no unreachable route is made.
func TestKillSwitchOptOut(t *testing.T) {
	n := newNS(t)
	n.underlay(t)
	n.createTUN(t, "stt0")
	stateDir := filepath.Join(t.TempDir(), "state")
	spec := fullSpec(stateDir)
	spec.KillSwitch = false
	m, err := n.apply(spec)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	defer m.Close()
	mustNotContain(t, "v4 table", n.ip(t, "route", "show", "table", "5354"), "unreachable")
	mustNotContain(t, "v6 table", n.ip(t, "-6", "route", "show", "table", "5354"), "unreachable")
	n.deleteLink(t, "stt0")
	mustContain(t, "v4 without kill switch", n.routeGet("route", "get", "198.51.100.1"), "via 192.0.2.2 dev under0")
	if err := n.undoFromState(stateDir, "stt0"); err != nil {
		t.Fatalf("UndoFromState: %v", err)
	}
}

// crashed applies spec, then deletes the link as the kernel does when the
// daemon holding the TUN is killed, and makes a new TUN of the same name,
// as a new daemon does before it applies its routing again.
func (n *testNS) crashed(t *testing.T, spec Spec) {
	t.Helper()
	n.createTUN(t, "stt0")
	m, err := n.apply(spec)
	if err != nil {
		t.Fatalf("first Apply: %v", err)
	}
	m.Close()
	n.deleteLink(t, "stt0")
	mustContain(t, "after the crash", n.routeGet("route", "get", "198.51.100.1"), "No route to host")
	n.createTUN(t, "stt0")
}

// crashedNS makes a namespace with an underlay, notes its state before any
// run (for Undo to be compared against), and leaves in it what a run of
// fullSpec that died without undoing leaves: its journal in stateDir and its
// changes in effect, with the link made anew.
func crashedNS(t *testing.T) (n *testNS, before, stateDir string) {
	t.Helper()
	n = newNS(t)
	n.underlay(t)
	before = n.dump(t)
	stateDir = filepath.Join(t.TempDir(), "state")
	n.crashed(t, fullSpec(stateDir))
	return n, before, stateDir
}

// killSwitchDeletions watches the namespace's routing table for the removal
// of a kill switch route until stop is called, which returns how many it
// saw.
func (n *testNS) killSwitchDeletions(t *testing.T) (stop func() int) {
	t.Helper()
	ch := make(chan netlink.RouteUpdate, 256)
	done := make(chan struct{})
	ns := n.h
	if err := netlink.RouteSubscribeWithOptions(ch, done, netlink.RouteSubscribeOptions{Namespace: &ns}); err != nil {
		t.Fatal(err)
	}
	count := make(chan int, 1)
	go func() {
		deleted := 0
		for u := range ch {
			if u.Type == unix.RTM_DELROUTE && u.Route.Type == unix.RTN_UNREACHABLE && u.Table == DefaultTable {
				deleted++
			}
		}
		count <- deleted
	}()
	// A marker route added and deleted after the work tells the watcher it
	// has seen everything before it: netlink delivers in order.
	return func() int {
		n.ip(t, "route", "add", "blackhole", "203.0.113.0/24", "table", "99")
		n.ip(t, "route", "del", "blackhole", "203.0.113.0/24", "table", "99")
		close(done)
		return <-count
	}
}

// TestApplyTakesOverAfterCrash: a new Apply after a crash replaces the
// journal the dead run left, without first taking the kill switch, the
// rules or the sysctls away (so nothing leaks while it works), and a later
// Undo restores the machine as it was before the first run.
func TestApplyTakesOverAfterCrash(t *testing.T) {
	n, before, stateDir := crashedNS(t)

	stop := n.killSwitchDeletions(t)
	m, err := n.apply(fullSpec(stateDir))
	if err != nil {
		t.Fatalf("Apply after the crash: %v", err)
	}
	if d := stop(); d != 0 {
		t.Errorf("the new Apply removed a kill switch route %d times; traffic could leak meanwhile", d)
	}
	checkApplied(t, n)
	checkDecisions(t, n)
	for _, fam := range []string{"-4", "-6"} {
		if got := strings.Count(n.ip(t, fam, "rule"), "proto 83"); got != 2 {
			t.Errorf("ip %s rule: %d rules of ours, want 2", fam, got)
		}
	}
	j, err := readJournal(StatePath(stateDir, "stt0"))
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, c := range j.st.Changes {
		kinds[c.describe()]++
	}
	for k, v := range kinds {
		if v != 1 {
			t.Errorf("journal records %q %d times", k, v)
		}
	}

	if err := m.Undo(); err != nil {
		t.Fatalf("Undo: %v", err)
	}
	n.deleteLink(t, "stt0")
	sameDump(t, before, n.dump(t))
	noJournal(t, stateDir)
}

// TestApplyTakeOverReleasesWhatIsNotWanted: the new run has no kill switch,
// forwarding or masquerade; what the dead run left of them goes.
func TestApplyTakeOverReleasesWhatIsNotWanted(t *testing.T) {
	n, before, stateDir := crashedNS(t)

	spec := fullSpec(stateDir)
	spec.KillSwitch, spec.Forwarding, spec.Masquerade = false, false, false
	m, err := n.apply(spec)
	if err != nil {
		t.Fatalf("Apply after the crash: %v", err)
	}
	mustNotContain(t, "v4 table", n.ip(t, "route", "show", "table", "5354"), "unreachable")
	mustNotContain(t, "v6 table", n.ip(t, "-6", "route", "show", "table", "5354"), "unreachable")
	mustNotContain(t, "nft", n.nft(t, "list", "ruleset"), "stt-tun-stt0")
	if v := n.sysctl(t, sysctlIPForward); v != "0" {
		t.Errorf("ip_forward = %s after a run without forwarding, want 0", v)
	}
	checkDecisions(t, n)
	if err := m.Undo(); err != nil {
		t.Fatalf("Undo: %v", err)
	}
	n.deleteLink(t, "stt0")
	sameDump(t, before, n.dump(t))
}

// TestApplyTakeOverFails: when the new Apply fails, it undoes only its own
// changes; the kill switch stays, and so does the journal, for `down`.
func TestApplyTakeOverFails(t *testing.T) {
	n, before, stateDir := crashedNS(t)
	n.ip(t, "-6", "route", "add", "fd78::/48", "via", "2001:db8:ffff::3")

	if m, err := n.apply(fullSpec(stateDir)); err == nil {
		m.Undo()
		t.Fatal("Apply over a conflicting route succeeded")
	}
	mustContain(t, "after the failed Apply", n.routeGet("route", "get", "198.51.100.1"), "No route to host")
	mustContain(t, "after the failed Apply", n.routeGet("-6", "route", "get", "2001:db8:1::1"), "No route to host")
	if err := n.undoFromState(stateDir, "stt0"); err != nil {
		t.Fatalf("UndoFromState: %v", err)
	}
	n.deleteLink(t, "stt0")
	n.ip(t, "-6", "route", "del", "fd78::/48", "via", "2001:db8:ffff::3")
	sameDump(t, before, n.dump(t))
	noJournal(t, stateDir)
}

// TestApplyRefusesJournalOfLiveLink: a journal whose link still exists is
// not a dead run's; Apply leaves it and its changes alone.
func TestApplyRefusesJournalOfLiveLink(t *testing.T) {
	n := newNS(t)
	n.underlay(t)
	n.createTUN(t, "stt0")
	stateDir := filepath.Join(t.TempDir(), "state")
	m, err := n.apply(fullSpec(stateDir))
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	defer m.Undo()
	applied := n.dump(t)
	if m2, err := n.apply(fullSpec(stateDir)); !errors.Is(err, ErrJournalExists) {
		if err == nil {
			m2.Close()
		}
		t.Fatalf("second Apply on the same live link: %v, want ErrJournalExists", err)
	} else if strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "may still be going") {
		t.Errorf("second Apply on the same live link: error %q is not one line saying why", err)
	}
	sameDump(t, applied, n.dump(t))
}

// TestApplyTakeOverRemakesWhatIsGone: a dead run's journal names rules, kill switch,
// sysctls and an nftables table that are no longer in effect (the namespace was made
// anew after the crash, or someone removed them by hand). The new Apply, taking the
// journal over, makes them again instead of believing the journal: else the full
// tunnel ran without its rules, and all traffic left by the uplink while status said
// up. Undo then restores the machine as it was.
func TestApplyTakeOverRemakesWhatIsGone(t *testing.T) {
	n, before, stateDir := crashedNS(t)
	for _, fam := range []string{"-4", "-6"} {
		n.ip(t, fam, "rule", "del", "priority", "32764")
		n.ip(t, fam, "rule", "del", "priority", "32765")
		n.ip(t, fam, "route", "flush", "table", "5354")
	}
	n.nft(t, "delete", "table", "inet", "stt-tun-stt0")
	for _, k := range []string{sysctlIPForward, sysctlIP6Forward, sysctlSrcValidMark} {
		if err := n.do(func() error { return os.WriteFile("/proc/sys/"+k, []byte("0"), 0o644) }); err != nil {
			t.Fatal(err)
		}
	}

	m, err := n.apply(fullSpec(stateDir))
	if err != nil {
		t.Fatalf("Apply after the crash: %v", err)
	}
	checkApplied(t, n)
	checkDecisions(t, n)
	if err := m.Undo(); err != nil {
		t.Fatalf("Undo: %v", err)
	}
	n.deleteLink(t, "stt0")
	sameDump(t, before, n.dump(t))
	noJournal(t, stateDir)
}
