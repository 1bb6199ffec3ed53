package nslab

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseConntrackReadsTheTranslatedSource(t *testing.T) {
	text := "ipv4     2 udp      17 28 src=10.12.0.2 dst=198.18.1.2 sport=51900 dport=51900 src=198.18.1.2 dst=198.18.12.2 sport=51900 dport=46828 [ASSURED] mark=0 zone=0 use=2\n" +
		"ipv4     2 tcp      6 117 SYN_SENT src=10.12.0.2 dst=198.18.1.2 sport=4000 dport=8080 [UNREPLIED] src=198.18.1.2 dst=198.18.12.2 sport=8080 dport=4000 mark=0 zone=0 use=2\n" +
		"ipv4     2 udp      17 28 src=10.12.0.2 dst=198.18.1.2 sport=x dport=51900 src=198.18.1.2 dst=198.18.12.2 sport=51900 dport=1 mark=0\n" +
		"garbage\n"
	got := parseConntrack(text)
	want := Mapping{
		Inside:  netip.MustParseAddrPort("10.12.0.2:51900"),
		Remote:  netip.MustParseAddrPort("198.18.1.2:51900"),
		Outside: netip.MustParseAddrPort("198.18.12.2:46828"),
	}
	if len(got) != 1 || got[0] != want {
		t.Fatalf("parseConntrack = %+v, want [%+v]", got, want)
	}
}

// natProbe is what a host behind a router learns by sending UDP from one socket to two
// servers on the internet, each of which answers with the source address it saw, and
// by whether a datagram from a third server port it never sent to gets through.
type natProbe struct {
	seen        [2]netip.AddrPort // as each server saw the host; invalid if no answer
	unsolicited bool              // the third port's datagram arrived
}

const probeWait = 2 * time.Second

// probe runs the exchange from site's host to the reflectors in srvNS at
// 198.18.1.2:7001 and :7002.
func probe(t *testing.T, site *NATSite, srv *NS) natProbe {
	t.Helper()
	var conns [3]*net.UDPConn
	if err := srv.Do(func() error {
		for i := range conns {
			c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP("198.18.1.2"), Port: 7001 + i})
			if err != nil {
				return err
			}
			conns[i] = c
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, c := range conns {
		defer c.Close()
	}
	for _, c := range conns[:2] {
		go func(c *net.UDPConn) {
			buf := make([]byte, 64)
			for {
				_, from, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				_, _ = c.WriteToUDPAddrPort([]byte(from.String()), from)
			}
		}(c)
	}
	var host *net.UDPConn
	if err := site.Host.Do(func() (err error) {
		host, err = net.ListenUDP("udp4", &net.UDPAddr{Port: 5555})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	var p natProbe
	buf := make([]byte, 64)
	if site.Kind == NATEasy {
		// The second server sends first, to where the host's mapping will be, as a
		// peer does in a simultaneous open; the router must drop it without taking the
		// port, so that the host's packet to that server keeps its port.
		if _, err := conns[1].WriteToUDPAddrPort([]byte("early"), netip.AddrPortFrom(site.Public, 5555)); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := WaitFor(ctx, func() bool {
			out, err := site.Router.Run("nft", "list", "chain", "ip", "natlab", "input_filter")
			return err == nil && !strings.Contains(out, "counter packets 0 ")
		}); err != nil {
			t.Fatalf("easy: the early datagram never reached the router: %v", err)
		}
	}
	for i := 0; i < 2; i++ {
		if _, err := host.WriteToUDPAddrPort([]byte("?"), netip.MustParseAddrPort("198.18.1.2:700"+string(rune('1'+i)))); err != nil {
			t.Fatal(err)
		}
		_ = host.SetReadDeadline(time.Now().Add(probeWait))
		n, _, err := host.ReadFromUDPAddrPort(buf)
		if err == nil {
			p.seen[i], _ = netip.ParseAddrPort(string(buf[:n]))
		} else if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal(err)
		}
	}
	if !p.seen[0].IsValid() {
		return p
	}
	// The third port sends to where the first server saw the host, then the first
	// server sends there too: the link keeps order, so if the first datagram the host
	// reads is the second one, the router dropped the first.
	for _, c := range []*net.UDPConn{conns[2], conns[0]} {
		if _, err := c.WriteToUDPAddrPort([]byte("!"), p.seen[0]); err != nil {
			t.Fatal(err)
		}
	}
	_ = host.SetReadDeadline(time.Now().Add(probeWait))
	_, from, err := host.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("%s: the host did not get the first server's second datagram: %v", site.Kind, err)
	}
	p.unsolicited = from.Port() == 7003
	return p
}

// TestNATRouterKindsBehaveAsNamed checks each kind's mapping and filtering from
// outside, the way a reflector would see it.
func TestNATRouterKindsBehaveAsNamed(t *testing.T) {
	l := New(t)
	inet := l.NS("inet")
	inet.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	srv := l.NS("srv")
	l.Link(inet, []string{"198.18.1.1/24"}, srv, []string{"198.18.1.2/24"})
	srv.MustRun(t, "ip", "route", "add", "default", "via", "198.18.1.1")
	for i, kind := range NATKinds {
		site := l.NATRouter(inet, string(kind), kind, 10+i)
		p := probe(t, site, srv)
		t.Logf("%s: seen %v, unsolicited %v", kind, p.seen, p.unsolicited)
		if p.unsolicited != (kind == NATPublic) {
			t.Errorf("%s: a datagram from a port the host never sent to got through: %v, want %v", kind, p.unsolicited, kind == NATPublic)
		}
		if err := site.Host.Ping("198.18.1.2"); err != nil {
			t.Errorf("%s: host cannot ping the internet: %v", kind, err)
		}
		switch kind {
		case NATEasy:
			want := netip.AddrPortFrom(site.Public, 5555)
			if p.seen[0] != want || p.seen[1] != want {
				t.Errorf("easy: seen as %v, want %s by both (endpoint-independent, port kept even when the second server sent first)", p.seen, want)
			}
		case NATHardRandom, NATHardFullyRandom:
			for _, s := range p.seen {
				if s.Addr() != site.Public || s.Port() < hardPortMin || s.Port() > hardPortMax {
					t.Errorf("%s: seen as %v, want %s with ports in %d-%d", kind, p.seen, site.Public, hardPortMin, hardPortMax)
				}
			}
			if p.seen[0] == p.seen[1] {
				t.Errorf("%s: both servers saw %s, want a mapping per destination", kind, p.seen[0])
			}
		case NATFirewall, NATPublic:
			want := netip.AddrPortFrom(site.HostAddr, 5555)
			if p.seen[0] != want || p.seen[1] != want {
				t.Errorf("%s: seen as %v, want %s untranslated", kind, p.seen, want)
			}
			if err := srv.Ping(site.HostAddr.String()); (err == nil) != (kind == NATPublic) {
				t.Errorf("%s: the internet pings the host behind it: %v, want %v", kind, err == nil, kind == NATPublic)
			}
		case NATUDPBlocked:
			if p.seen[0].IsValid() || p.seen[1].IsValid() {
				t.Errorf("udp-blocked: UDP got through: seen as %v", p.seen)
			}
		}
	}
}

// TestNATHostsShareTheRouter: two hosts behind one easy router reach each other at
// their own addresses, untranslated, and the internet sees both at the router's
// address (the second with another port, the first holding the one both asked for).
func TestNATHostsShareTheRouter(t *testing.T) {
	l := New(t)
	inet := l.NS("inet")
	inet.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	srv := l.NS("srv")
	l.Link(inet, []string{"198.18.1.1/24"}, srv, []string{"198.18.1.2/24"})
	srv.MustRun(t, "ip", "route", "add", "default", "via", "198.18.1.1")
	site := l.NATRouter(inet, "lan", NATEasy, 10)
	second := l.NATHost(site, "lan2")
	if len(site.Hosts) != 2 || site.Hosts[1] != second || site.HostAddrs[0] == site.HostAddrs[1] {
		t.Fatalf("site hosts %v at %v", site.Hosts, site.HostAddrs)
	}
	// A UDP echo on the first host shows the second's source address as it arrives.
	var echo *net.UDPConn
	if err := site.Host.Do(func() (err error) {
		echo, err = net.ListenUDP("udp4", &net.UDPAddr{Port: 6000})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := echo.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = echo.WriteToUDPAddrPort([]byte(from.String()), from)
		}
	}()
	var c *net.UDPConn
	if err := second.Do(func() (err error) {
		c, err = net.ListenUDP("udp4", &net.UDPAddr{Port: 6001})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.WriteToUDPAddrPort([]byte("?"), netip.AddrPortFrom(site.HostAddrs[0], 6000)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(probeWait))
	buf := make([]byte, 64)
	n, _, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("the second host got no answer from the first: %v", err)
	}
	if got, want := string(buf[:n]), netip.AddrPortFrom(site.HostAddrs[1], 6001).String(); got != want {
		t.Errorf("the first host saw the second as %s, want %s (untranslated)", got, want)
	}
	for i, h := range site.Hosts {
		out, err := h.Run("ping", "-n", "-c", "1", "-W", "2", "198.18.1.2")
		if err != nil {
			t.Errorf("host %d cannot reach the internet: %v %s", i, err, out)
		}
	}
}

// TestFlushConntrackRemapsAHardNAT: after a flush, the next datagram of a flow through
// a hard router leaves from another port, and one from the far end that arrives before
// it is dropped: the router forgot the mapping.
func TestFlushConntrackRemapsAHardNAT(t *testing.T) {
	l := New(t)
	inet := l.NS("inet")
	inet.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	srv := l.NS("srv")
	l.Link(inet, []string{"198.18.1.1/24"}, srv, []string{"198.18.1.2/24"})
	srv.MustRun(t, "ip", "route", "add", "default", "via", "198.18.1.1")
	site := l.NATRouter(inet, "hard", NATHardRandom, 10)
	before := probe(t, site, srv)
	if !before.seen[0].IsValid() {
		t.Fatal("no answer before the flush")
	}
	n, err := site.FlushConntrack()
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Error("the router's table was empty before the flush")
	}
	if ms, err := site.UDPMappings(); err != nil || len(ms) != 0 {
		t.Errorf("after the flush the router still holds %v (%v)", ms, err)
	}
	after := probe(t, site, srv)
	t.Logf("seen before %v, after %v; %d entries flushed", before.seen, after.seen, n)
	// Without the flush the router would still hold the entry of the probe's flow to
	// the first server (same addresses and ports, well within UDP's 30 s) and map it
	// as before; after it, the mapping is a fresh random port, the same one again a 1
	// in 10 000 chance.
	if after.seen[0] == before.seen[0] {
		t.Errorf("the router mapped the flow to %s again after the flush", after.seen[0])
	}
}
