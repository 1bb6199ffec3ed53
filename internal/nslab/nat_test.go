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
		if p.unsolicited {
			t.Errorf("%s: a datagram from a port the host never sent to got through", kind)
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
		case NATFirewall:
			want := netip.AddrPortFrom(site.HostAddr, 5555)
			if p.seen[0] != want || p.seen[1] != want {
				t.Errorf("firewall: seen as %v, want %s untranslated", p.seen, want)
			}
			if err := srv.Ping(site.HostAddr.String()); err == nil {
				t.Errorf("firewall: the internet pings the host behind it")
			}
		case NATUDPBlocked:
			if p.seen[0].IsValid() || p.seen[1].IsValid() {
				t.Errorf("udp-blocked: UDP got through: seen as %v", p.seen)
			}
		}
	}
}
