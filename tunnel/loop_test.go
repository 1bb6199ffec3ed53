package tunnel

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/internal/status"
	"github.com/stt-tun/stt-tun/stt"
	"github.com/stt-tun/stt-tun/tun/tuntest"
)

// loopPair is memPair with a's prefixes for b covering b's endpoint (127.0.0.1) and a
// logging to log.
func loopPair(t testing.TB, log *lockedBuffer) (a, b *memNode) {
	t.Helper()
	seed, _ := config.GenerateSeed()
	seedFile := writeSecret(t, t.TempDir(), "seed", seed)
	b = startMem(t, seedFile, "b", "10.9.0.2/24", []config.Peer{{
		Name: "a", AllowedPrefixes: []netip.Prefix{netip.MustParsePrefix("10.9.0.1/32"), netip.MustParsePrefix("192.168.5.0/24")},
	}})
	cfg := memConfig(t, seedFile, "a", "10.9.0.1/24", []config.Peer{{
		Name:     "b",
		Endpoint: endpointOf(b),
		AllowedPrefixes: []netip.Prefix{
			netip.MustParsePrefix("10.9.0.2/32"), netip.MustParsePrefix("127.0.0.0/8"),
		},
	}})
	dev := tuntest.NewMem(cfg.Interface.Name, 1420, 16)
	tu, err := Start(context.Background(), cfg, Options{Device: dev, Logger: slog.New(slog.NewTextHandler(log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tu.Close() })
	return &memNode{t: tu, dev: dev}, b
}

// ipv4TCP is ipv4UDP with protocol TCP: only the ports matter to the tunnel.
func ipv4TCP(src, dst string, sport, dport uint16) []byte {
	p := ipv4UDP(src, dst, sport, dport, make([]byte, 12))
	p[9] = protoTCP
	return p
}

// TestRoutingLoopDropped: packets read from the TUN device that are the node's own
// underlay traffic to the peer they would go to (a UDP datagram to its endpoint, or one
// from the listen port and the interface's own address) are dropped and counted as
// routing_loop, in the counters, the status and the peer's drops, and logged once at
// warn. Packets of other hosts on the same ports still go through.
func TestRoutingLoopDropped(t *testing.T) {
	var log lockedBuffer
	a, b := loopPair(t, &log)
	if got := log.String(); !strings.Contains(got, `level=WARN msg="peer \"b\": its own allowed_prefixes 127.0.0.0/8 cover its endpoint`) {
		t.Errorf("Start does not warn that b's prefixes cover its endpoint:\n%s", got)
	}
	first := ipv4UDP("10.9.0.1", "10.9.0.2", 1, 2, []byte("session"))
	a.dev.Inject(first)
	expectPacket(t, b.dev, first)

	bPort := b.t.Node().Port()
	aPort := a.t.Node().Port()
	loops := [][]byte{
		// The node's datagram to b's endpoint, routed into the tunnel.
		ipv4UDP("10.9.0.1", "127.0.0.1", aPort, bPort, []byte("frame")),
		// The same from another source port (a handshake from a fresh socket).
		ipv4UDP("192.0.2.1", "127.0.0.1", 40000, bPort, []byte("frame")),
		// The node's own datagram, from its address and port, to b through b.
		ipv4UDP("10.9.0.1", "10.9.0.2", aPort, 7, []byte("frame")),
	}
	// A host behind this node that happens to use the node's port, and TCP to b's UDP
	// port: not the node's own traffic.
	passes := [][]byte{
		ipv4UDP("192.168.5.9", "10.9.0.2", aPort, 7, []byte("lan host")),
		ipv4TCP("10.9.0.1", "127.0.0.1", 40000, bPort),
	}
	for _, p := range loops {
		a.dev.Inject(p)
	}
	a.dev.Inject(passes...)
	// Flows may overtake each other: collect what arrives.
	want := map[string]bool{}
	for _, p := range passes {
		want[string(p)] = true
	}
	for range passes {
		select {
		case got := <-b.dev.Written():
			if !want[string(got)] {
				t.Fatalf("b received %x, want one of the packets that are no loop", got)
			}
			delete(want, string(got))
		case <-time.After(5 * time.Second):
			t.Fatalf("%d packets that are no loop did not arrive", len(want))
		}
	}
	if got := a.t.Counters().RoutingLoop; got != uint64(len(loops)) {
		t.Fatalf("routing_loop = %d, want %d", got, len(loops))
	}
	st := a.t.Status()
	if got := st.Counters["tunnel_routing_loop"]; got != uint64(len(loops)) {
		t.Errorf("status counter tunnel_routing_loop = %d, want %d", got, len(loops))
	}
	if got := st.Peers[0].Drops; got < uint64(len(loops)) {
		t.Errorf("peer b's drops = %d, want at least the %d routing loops", got, len(loops))
	}
	if got := b.t.Node().Peer("a").Stats().RxPackets; got != 1+uint64(len(passes)) {
		t.Errorf("b received %d packets from a, want %d: a looped packet was sent", got, 1+len(passes))
	}
	if n := strings.Count(log.String(), "routing loop:"); n != 1 {
		t.Errorf("%d routing loop warnings for one peer, want 1:\n%s", n, log.String())
	}
}

// TestRoutingLoopWebSocketURL: TCP to a peer's ws_url (an IP address, its port or the
// scheme's) is the node's own WebSocket traffic; TCP elsewhere is not.
func TestRoutingLoopWebSocketURL(t *testing.T) {
	var log lockedBuffer
	a, _ := loopPair(t, &log)
	p, _ := a.t.table.Load().Lookup(netip.MustParseAddr("10.9.0.2"))
	a.t.resolver = func(context.Context, string) (netip.AddrPort, error) {
		return netip.AddrPort{}, errors.New("no such host")
	}
	for _, tc := range []struct {
		url  string
		pkt  []byte
		loop bool
	}{
		{"wss://10.9.0.2/stt", ipv4TCP("10.9.0.1", "10.9.0.2", 40000, 443), true},
		{"ws://10.9.0.2:8080/stt", ipv4TCP("10.9.0.1", "10.9.0.2", 40000, 8080), true},
		{"ws://10.9.0.2:8080/stt", ipv4TCP("10.9.0.1", "10.9.0.2", 40000, 80), false},
		{"ws://relay.example:8080/stt", ipv4TCP("10.9.0.1", "10.9.0.2", 40000, 8080), false},
		{"", ipv4TCP("10.9.0.1", "10.9.0.2", 40000, 443), false},
	} {
		a.t.setWSURL(p, tc.url)
		<-p.ws.Load().looked
		if got := a.t.loopsBack(tc.pkt, p); got != tc.loop {
			t.Errorf("ws_url %q: loop %v, want %v", tc.url, got, tc.loop)
		}
	}
}

// reloadBeta reloads node a with peer beta given betaPrefixes and the extra
// lines, and delta as it was; it returns the changes the reload reports.
func (l *reloadLab) reloadBeta(t *testing.T, betaPrefixes []string, extra ...string) []string {
	t.Helper()
	cfg := l.na.config(t, "",
		peerSection("beta", endpointOf(l.b), betaPrefixes, extra...),
		peerSection("delta", endpointOf(l.d), []string{"10.9.0.4/32"}))
	changes, err := l.a.t.ReloadChanges(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return changes
}

// hasChangeWithPrefix reports whether one of changes begins with prefix.
func hasChangeWithPrefix(changes []string, prefix string) bool {
	return slices.ContainsFunc(changes, func(c string) bool { return strings.HasPrefix(c, prefix) })
}

// TestReloadWarnsOfRoutingLoop: a reload that makes a peer's prefixes cover its
// endpoint is applied, with a warning among its changes.
func TestReloadWarnsOfRoutingLoop(t *testing.T) {
	l := newReloadLab(t)
	changes := l.reloadBeta(t, []string{"10.9.0.2/32", "127.0.0.1/32"})
	if !hasChangeWithPrefix(changes, `warning: peer "beta": its own allowed_prefixes 127.0.0.1/32 cover its endpoint`) {
		t.Errorf("reload changes %q lack the routing loop warning", changes)
	}
}

// TestRoutingLoopCheckAllocatesNothing: the per-packet check allocates nothing.
func TestRoutingLoopCheckAllocatesNothing(t *testing.T) {
	var log lockedBuffer
	a, b := loopPair(t, &log)
	p := a.t.table.Load()
	pb, _ := p.Lookup(netip.MustParseAddr("10.9.0.2"))
	pkts := [][]byte{
		ipv4UDP("10.9.0.1", "127.0.0.1", 1, b.t.Node().Port(), nil),
		ipv4UDP("10.9.0.1", "10.9.0.2", 1, 2, nil),
		ipv4TCP("10.9.0.1", "10.9.0.2", 1, 2),
	}
	verdicts := func() []bool {
		var v []bool
		for _, pkt := range pkts {
			v = append(v, a.t.loopsBack(pkt, pb))
		}
		return v
	}
	// AllocsPerRun counts every allocation in the process, and both tunnels' own
	// goroutines (timers, receive loops, logging) allocate when they please: on a loaded
	// machine enough of that fell inside the measurement to fail it. Measure in a quiet
	// process, the tunnels closed; the check reads only what Close leaves in place, and
	// the verdicts show it still takes the same paths.
	want := verdicts()
	if !slices.Equal(want, []bool{true, false, false}) {
		t.Fatalf("verdicts %v, want the first packet (to b's endpoint) alone looping", want)
	}
	_ = a.t.Close()
	_ = b.t.Close()
	if got := verdicts(); !slices.Equal(got, want) {
		t.Fatalf("verdicts %v after Close, %v before", got, want)
	}
	if n := testing.AllocsPerRun(100, func() {
		for _, pkt := range pkts {
			a.t.loopsBack(pkt, pb)
		}
	}); n != 0 {
		t.Fatalf("%v allocations per check", n)
	}
}

// TestLoopWarnings: a prefix other than /0 that covers a peer's endpoint, its own or
// another peer's, is warned about; a /0 (the exit peer's) is not.
func TestLoopWarnings(t *testing.T) {
	pfx := func(s ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, x := range s {
			out = append(out, netip.MustParsePrefix(x))
		}
		return out
	}
	cfg := &config.Config{Peers: []config.Peer{
		{Name: "exit", Endpoint: "192.0.2.1:51820", AllowedPrefixes: pfx("0.0.0.0/0", "::/0")},
		{Name: "site", Endpoint: "198.51.100.7:51820", AllowedPrefixes: pfx("10.1.0.0/16", "192.0.2.0/24")},
		{Name: "ws", WSURL: "wss://[2001:db8::5]:443/stt", AllowedPrefixes: pfx("2001:db8::/64")},
		{Name: "named", Endpoint: "stt.example:51820", AllowedPrefixes: pfx("10.2.0.0/16")},
	}}
	got := ConfigLoopWarnings(cfg)
	want := []string{
		`peer "exit": peer "site"'s allowed_prefixes 192.0.2.0/24 cover its endpoint`,
		`peer "ws": its own allowed_prefixes 2001:db8::/64 cover its endpoint`,
	}
	if len(got) != len(want) {
		t.Fatalf("warnings %q, want %d", got, len(want))
	}
	for i, w := range want {
		if !strings.HasPrefix(got[i], w) || !strings.Contains(got[i], "routing_loop") {
			t.Errorf("warning %d = %q, want it to start %q and name routing_loop", i, got[i], w)
		}
	}
}

// TestUnresolvablePeerStopsNoOther: a peer whose endpoint name does not resolve, or
// whose lookup hangs (a silent DNS server), does not keep the tunnel from starting or
// the other peers from working. Start returns once the interface is configured; the
// peer runs without an address, status says why, and the name is looked up again.
func TestUnresolvablePeerStopsNoOther(t *testing.T) {
	seed, _ := config.GenerateSeed()
	seedFile := writeSecret(t, t.TempDir(), "seed", seed)
	c := startMem(t, seedFile, "c", "10.9.0.3/24", []config.Peer{{
		Name: "a", AllowedPrefixes: []netip.Prefix{netip.MustParsePrefix("10.9.0.1/32")},
	}})
	cfg := memConfig(t, seedFile, "a", "10.9.0.1/24", []config.Peer{
		{Name: "b", Endpoint: "b.invalid:51900", AllowedPrefixes: []netip.Prefix{netip.MustParsePrefix("10.9.0.2/32")}},
		{Name: "silent", Endpoint: "silent.invalid:51900", AllowedPrefixes: []netip.Prefix{netip.MustParsePrefix("10.9.0.4/32")}},
		{Name: "c", Endpoint: endpointOf(c), AllowedPrefixes: []netip.Prefix{netip.MustParsePrefix("10.9.0.3/32")}},
	})
	lookups := make(chan string, 64)
	resolver := func(ctx context.Context, hostport string) (netip.AddrPort, error) {
		lookups <- hostport
		if hostport == "silent.invalid:51900" {
			<-ctx.Done() // a DNS server that never answers
			return netip.AddrPort{}, fmt.Errorf("lookup silent.invalid: %w", ctx.Err())
		}
		return netip.AddrPort{}, fmt.Errorf("lookup %s: no such host", hostport)
	}
	dev := tuntest.NewMem(cfg.Interface.Name, 1420, 16)
	tu, err := Start(context.Background(), cfg, Options{Device: dev, Resolver: resolver})
	if err != nil {
		t.Fatalf("Start with peers whose names do not resolve: %v", err)
	}
	t.Cleanup(func() { _ = tu.Close() })
	a := &memNode{t: tu, dev: dev}

	st := a.t.Status()
	if st.State != status.StateUp {
		t.Errorf("state %q after Start, want %q", st.State, status.StateUp)
	}
	if pb := st.Peers[0]; pb.Endpoint != "" || !strings.Contains(pb.EndpointError, "no such host") {
		t.Errorf("peer b: endpoint %q, endpoint_error %q; want none, and why", pb.Endpoint, pb.EndpointError)
	}
	out := ipv4UDP("10.9.0.1", "10.9.0.3", 1, 2, []byte("c is reachable"))
	a.dev.Inject(out)
	expectPacket(t, c.dev, out)
	// b's name is looked up again in the background.
	deadline := time.After(10 * time.Second)
	for seen := 0; seen < 2; {
		select {
		case h := <-lookups:
			if h == "b.invalid:51900" {
				seen++
			}
		case <-deadline:
			t.Fatal("b's name is not looked up again")
		}
	}
}

// BenchmarkRoutingLoopCheck is the per-packet cost of the check, for a UDP packet
// that is no loop (the common case, and the most work).
func BenchmarkRoutingLoopCheck(b *testing.B) {
	var log lockedBuffer
	a, _ := loopPair(b, &log)
	p, _ := a.t.table.Load().Lookup(netip.MustParseAddr("10.9.0.2"))
	pkt := ipv4UDP("10.9.0.1", "10.9.0.2", 1, 2, make([]byte, 1200))
	for b.Loop() {
		if a.t.loopsBack(pkt, p) {
			b.Fatal("loop")
		}
	}
}

// TestRoutingLoopIPv6: the check reads IPv6 packets too: UDP to the peer's IPv6
// endpoint is a loop, UDP to another port of it is not.
func TestRoutingLoopIPv6(t *testing.T) {
	var log lockedBuffer
	a, _ := loopPair(t, &log)
	p, _ := a.t.table.Load().Lookup(netip.MustParseAddr("10.9.0.2"))
	if err := p.sp.Update(stt.PeerConfig{Name: "b", Endpoint: "[2001:db8::2]:51820"}); err != nil {
		t.Fatal(err)
	}
	if !a.t.loopsBack(ipv6UDP("2001:db8::1", "2001:db8::2", 40000, 51820, nil), p) {
		t.Error("UDP to the peer's IPv6 endpoint is not a loop")
	}
	if a.t.loopsBack(ipv6UDP("2001:db8::1", "2001:db8::2", 40000, 51821, nil), p) {
		t.Error("UDP to another port of the peer's IPv6 address is a loop")
	}
}

// ipv6Frag is ipv6UDP as the kernel fragments it: the first fragment (offset 0, more
// to come) of the datagram, with a fragment header between the IPv6 and UDP headers,
// or, with offset > 0, a later fragment that carries no UDP header.
func ipv6Frag(src, dst string, sport, dport uint16, offset uint16) []byte {
	whole := ipv6UDP(src, dst, sport, dport, make([]byte, 32))
	p := make([]byte, 0, len(whole)+8)
	p = append(p, whole[:40]...)
	p[6] = 44 // fragment header follows
	p = append(p, protoUDP, 0, byte(offset<<3>>8), byte(offset<<3)|1, 0, 0, 0, 7)
	if offset == 0 {
		p = append(p, whole[40:]...)
	} else {
		p = append(p, make([]byte, 16)...)
	}
	binary.BigEndian.PutUint16(p[4:], uint16(len(p)-40))
	return p
}

// TestRoutingLoopIPv6Fragments: the node's own UDP datagram to the peer's IPv6
// endpoint that the kernel fragmented on its way into the TUN device (larger than the
// MTU) is a loop too: its first fragment, whose ports sit behind a fragment header, is
// dropped, as is one behind a hop-by-hop header. Without this, a large datagram looped
// for ever (each re-encapsulation fragmented again: 1 GiB in 10 s in a lab).
func TestRoutingLoopIPv6Fragments(t *testing.T) {
	var log lockedBuffer
	a, _ := loopPair(t, &log)
	p, _ := a.t.table.Load().Lookup(netip.MustParseAddr("10.9.0.2"))
	if err := p.sp.Update(stt.PeerConfig{Name: "b", Endpoint: "[2001:db8::2]:51820"}); err != nil {
		t.Fatal(err)
	}
	if !a.t.loopsBack(ipv6Frag("2001:db8::1", "2001:db8::2", 40000, 51820, 0), p) {
		t.Error("the first fragment of UDP to the peer's IPv6 endpoint is not a loop")
	}
	if a.t.loopsBack(ipv6Frag("2001:db8::1", "2001:db8::2", 40000, 51821, 0), p) {
		t.Error("the first fragment of UDP to another port is a loop")
	}
	if a.t.loopsBack(ipv6Frag("2001:db8::1", "2001:db8::2", 40000, 51820, 100), p) {
		t.Error("a later fragment, which has no ports, is a loop")
	}
	hbh := ipv6UDP("2001:db8::1", "2001:db8::2", 40000, 51820, nil)
	hbh = append(hbh[:40:40], append([]byte{protoUDP, 0, 1, 4, 0, 0, 0, 0}, hbh[40:]...)...)
	hbh[6] = 0 // hop-by-hop options (a PadN) before the UDP header
	if !a.t.loopsBack(hbh, p) {
		t.Error("UDP to the peer's IPv6 endpoint behind a hop-by-hop header is not a loop")
	}
	if n := allocsPerCall(100, func() { a.t.loopsBack(hbh, p) }); n != 0 {
		t.Errorf("%v allocations per check", n)
	}
}

// TestRoutingLoopWebSocketHostName: a ws_url whose host is a name is looked up too.
// Reload (as up) then warns when an allowed prefix covers the address it resolved to,
// and the TCP of a new WebSocket connection that the system routes into the tunnel
// is recognised as the node's own before anything is connected. Without the lookup,
// such a peer never connected and nothing said why: no warning, "dropped: none".
func TestRoutingLoopWebSocketHostName(t *testing.T) {
	l := newReloadLab(t)
	var asked []string
	l.a.t.resolver = func(_ context.Context, hostport string) (netip.AddrPort, error) {
		asked = append(asked, hostport) // read after the lookup is done
		if hostport == "beta.test:8080" {
			return netip.MustParseAddrPort("192.0.2.77:8080"), nil
		}
		return netip.AddrPort{}, errors.New("no such host")
	}
	changes := l.reloadBeta(t, []string{"10.9.0.2/32", "192.0.2.0/24"}, `ws_url = "ws://beta.test:8080/stt"`)
	if !hasChangeWithPrefix(changes, `warning: peer "beta": its own allowed_prefixes 192.0.2.0/24 cover its endpoint`) {
		t.Errorf("reload changes %q lack the routing loop warning for the ws_url host", changes)
	}
	p, _ := l.a.t.table.Load().Lookup(netip.MustParseAddr("10.9.0.2"))
	<-p.ws.Load().looked
	if !slices.Equal(asked, []string{"beta.test:8080"}) {
		t.Errorf("looked up %q, want the ws_url host once", asked)
	}
	if !l.a.t.loopsBack(ipv4TCP("10.9.0.1", "192.0.2.77", 40000, 8080), p) {
		t.Error("TCP to the address the ws_url host resolved to is not a loop")
	}
	if l.a.t.loopsBack(ipv4TCP("10.9.0.1", "192.0.2.77", 40000, 80), p) {
		t.Error("TCP to another port of the ws_url host is a loop")
	}
}

// TestExitPeerCarriesTCPToItsWebSocketHost: under a full tunnel the exit peer's /0
// covers the host of its ws_url, and TCP to that host and port that reaches the tunnel
// by the /0 is the users' (the node's own is marked and takes the uplink): a web site
// on the server that carries the WebSocket. It goes through; only a narrower prefix
// over the host makes such TCP the node's own. Dropping it as routing_loop made the
// site unreachable through the tunnel (curl timed out in a lab, "routing loop"
// warned).
func TestExitPeerCarriesTCPToItsWebSocketHost(t *testing.T) {
	l := newReloadLab(t)
	pkt := ipv4TCP("10.9.0.1", "198.51.100.9", 40000, 8080)
	for _, tc := range []struct {
		prefixes []string
		loop     bool
	}{
		{[]string{"10.9.0.2/32", "0.0.0.0/0"}, false},
		{[]string{"10.9.0.2/32", "0.0.0.0/0", "198.51.100.0/24"}, true},
	} {
		l.reloadBeta(t, tc.prefixes, `ws_url = "ws://198.51.100.9:8080/stt"`)
		p, _ := l.a.t.table.Load().Lookup(netip.MustParseAddr("198.51.100.9"))
		if got := l.a.t.loopsBack(pkt, p); got != tc.loop {
			t.Errorf("prefixes %v: TCP to the ws_url host is a loop: %v, want %v", tc.prefixes, got, tc.loop)
		}
		if n := allocsPerCall(100, func() { l.a.t.loopsBack(pkt, p) }); n != 0 {
			t.Errorf("prefixes %v: %v allocations per check", tc.prefixes, n)
		}
	}
}
