package mesh

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"
)

func TestIsNATMessageCoversExactlyTheSixTypes(t *testing.T) {
	for typ := range 256 {
		want := typ >= 0x86 && typ <= 0x8B
		if IsNATMessage(byte(typ)) != want {
			t.Errorf("IsNATMessage(%#x) = %v", typ, !want)
		}
	}
}

func TestNATMessagesRoundTrip(t *testing.T) {
	var k [32]byte
	for i := range k {
		k[i] = byte(0xa0 + i)
	}
	got, err := ParseKey(AppendKey(nil, k))
	if err != nil || got != k {
		t.Fatalf("key: %x, %v", got, err)
	}
	p := Punch{Peer: k, Addrs: []netip.AddrPort{
		netip.MustParseAddrPort("198.51.100.7:40000"), netip.MustParseAddrPort("[2001:db8::7]:51900")}}
	b, err := AppendPunch(nil, p)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 33+7+19 {
		t.Fatalf("punch of %d bytes", len(b))
	}
	q, err := ParsePunch(b)
	if err != nil || q.Peer != k || !slices.Equal(q.Addrs, p.Addrs) {
		t.Fatalf("punch %+v, %v", q, err)
	}
	// No address (the requester's session to the coordinator is not on UDP).
	b, _ = AppendPunch(nil, Punch{Peer: k})
	if q, err := ParsePunch(b); err != nil || q.Addrs != nil || len(b) != 33 {
		t.Fatalf("empty punch %x: %+v, %v", b, q, err)
	}
	// A dual-stack socket's view of an IPv4 sender goes on the wire as IPv4.
	b, _ = AppendPunch(nil, Punch{Peer: k, Addrs: []netip.AddrPort{netip.MustParseAddrPort("[::ffff:198.51.100.7]:40000")}})
	if q, err := ParsePunch(b); err != nil || q.Addrs[0] != netip.MustParseAddrPort("198.51.100.7:40000") {
		t.Fatalf("mapped punch address: %+v, %v", q, err)
	}
	g := RelayGrant{Peer: k, SendID: 0x01020304, RecvID: 0xfffffffe}
	b, err = AppendRelayGrant(nil, g)
	if err != nil {
		t.Fatal(err)
	}
	if h, err := ParseRelayGrant(b); err != nil || h != g {
		t.Fatalf("grant %+v, %v", h, err)
	}
	for reason := RefuseNotRelay; reason <= RefuseNotAllowed; reason++ {
		r := RelayRefused{Target: k, Reason: reason}
		b, err = AppendRelayRefused(nil, r)
		if err != nil {
			t.Fatal(err)
		}
		if s, err := ParseRelayRefused(b); err != nil || s != r {
			t.Fatalf("refused %+v, %v", s, err)
		}
	}
}

// Each parser refuses what breaks a rule of docs/protocol.md 10.5, and each Append
// refuses to write it.
func TestNATMessagesRefuseMalformedBodies(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	v4 := func(a0, a1, a2, a3 byte, port uint16) []byte {
		return []byte{4, a0, a1, a2, a3, byte(port), byte(port >> 8)}
	}
	v6 := func(a string, port uint16) []byte {
		x := netip.MustParseAddr(a).As16()
		return cat([]byte{6}, x[:], []byte{byte(port), byte(port >> 8)})
	}
	good := v4(198, 51, 100, 7, 40000)
	for name, b := range map[string][]byte{
		"key short": key[:31], "key long": cat(key, []byte{0}), "key empty": nil,
	} {
		if _, err := ParseKey(b); err == nil {
			t.Errorf("ParseKey(%s) accepted", name)
		}
	}
	nine := cat(key, []byte{9})
	for range 9 {
		nine = append(nine, good...)
	}
	for name, b := range map[string][]byte{
		"no count":        key,
		"count over":      cat(key, []byte{2}, good),
		"count under":     cat(key, []byte{1}, good, good),
		"trailing byte":   cat(key, []byte{1}, good, []byte{0}),
		"nine addresses":  nine,
		"port zero":       cat(key, []byte{1}, v4(198, 51, 100, 7, 0)),
		"unspecified v4":  cat(key, []byte{1}, v4(0, 0, 0, 0, 1)),
		"multicast v4":    cat(key, []byte{1}, v4(224, 0, 0, 1, 1)),
		"unspecified v6":  cat(key, []byte{1}, v6("::", 1)),
		"multicast v6":    cat(key, []byte{1}, v6("ff02::1", 1)),
		"ipv4-mapped":     cat(key, []byte{1}, v6("::ffff:198.51.100.7", 1)),
		"family 5":        cat(key, []byte{1}, []byte{5, 1, 2, 3, 4, 1, 0}),
		"truncated v6":    cat(key, []byte{1}, v6("2001:db8::1", 1)[:18]),
		"oversize":        make([]byte, MaxPunchBody+1),
		"count 255 short": cat(key, []byte{255}, good),
	} {
		if p, err := ParsePunch(b); err == nil {
			t.Errorf("ParsePunch(%s) accepted: %+v", name, p)
		}
	}
	for name, b := range map[string][]byte{
		"short":     cat(key, make([]byte, 7)),
		"long":      cat(key, []byte{1, 0, 0, 0, 2, 0, 0, 0, 0}),
		"send zero": cat(key, []byte{0, 0, 0, 0, 2, 0, 0, 0}),
		"recv zero": cat(key, []byte{1, 0, 0, 0, 0, 0, 0, 0}),
		"same ids":  cat(key, []byte{5, 0, 0, 0, 5, 0, 0, 0}),
	} {
		if g, err := ParseRelayGrant(b); err == nil {
			t.Errorf("ParseRelayGrant(%s) accepted: %+v", name, g)
		}
	}
	for name, b := range map[string][]byte{
		"no reason": key, "reason 0": cat(key, []byte{0}), "reason 6": cat(key, []byte{6}),
		"long": cat(key, []byte{1, 0}),
	} {
		if r, err := ParseRelayRefused(b); err == nil {
			t.Errorf("ParseRelayRefused(%s) accepted: %+v", name, r)
		}
	}
	var k [32]byte
	if _, err := AppendPunch(nil, Punch{Peer: k, Addrs: make([]netip.AddrPort, 9)}); err == nil {
		t.Error("AppendPunch wrote nine addresses")
	}
	for _, a := range []string{"0.0.0.0:1", "198.51.100.7:0", "[ff02::1]:1", "[::]:1"} {
		if _, err := AppendPunch(nil, Punch{Peer: k, Addrs: []netip.AddrPort{netip.MustParseAddrPort(a)}}); err == nil {
			t.Errorf("AppendPunch wrote %s", a)
		}
	}
	if _, err := AppendPunch(nil, Punch{Peer: k, Addrs: []netip.AddrPort{{}}}); err == nil {
		t.Error("AppendPunch wrote an invalid address")
	}
	for _, g := range []RelayGrant{{SendID: 0, RecvID: 1}, {SendID: 1, RecvID: 0}, {SendID: 3, RecvID: 3}} {
		if _, err := AppendRelayGrant(nil, g); err == nil {
			t.Errorf("AppendRelayGrant wrote %+v", g)
		}
	}
	for _, r := range []uint8{0, 6, 255} {
		if _, err := AppendRelayRefused(nil, RelayRefused{Reason: r}); err == nil {
			t.Errorf("AppendRelayRefused wrote reason %d", r)
		}
	}
}

// The fixed-size parsers allocate nothing; PUNCH allocates its address list once.
func TestNATParsersAllocateOnlyTheAddressList(t *testing.T) {
	var k [32]byte
	kb := AppendKey(nil, k)
	gb, _ := AppendRelayGrant(nil, RelayGrant{Peer: k, SendID: 1, RecvID: 2})
	rb, _ := AppendRelayRefused(nil, RelayRefused{Target: k, Reason: RefuseFull})
	pb, _ := AppendPunch(nil, Punch{Peer: k, Addrs: []netip.AddrPort{
		netip.MustParseAddrPort("198.51.100.7:1"), netip.MustParseAddrPort("198.51.100.8:1")}})
	p0, _ := AppendPunch(nil, Punch{Peer: k})
	for name, c := range map[string]struct {
		f    func()
		want float64
	}{
		"key":     {func() { ParseKey(kb) }, 0},
		"grant":   {func() { ParseRelayGrant(gb) }, 0},
		"refused": {func() { ParseRelayRefused(rb) }, 0},
		"punch 0": {func() { ParsePunch(p0) }, 0},
		"punch 2": {func() { ParsePunch(pb) }, 1},
	} {
		if n := testing.AllocsPerRun(100, c.f); n != c.want {
			t.Errorf("%s: %v allocations, want %v", name, n, c.want)
		}
	}
}

// The engine leaves the NAT messages to its caller: given one, it neither answers nor
// counts it as unknown or malformed.
func TestEngineLeavesNATMessagesToTheCaller(t *testing.T) {
	var sent int
	e := New(Config{Identity: NewIdentity(testEdSeed), Network: NetworkOf(testSeed), Now: func() time.Time { return testNow },
		Send: func([32]byte, byte, []byte) error { sent++; return nil }})
	for typ := TypePunchRequest; typ <= TypeRelayClose; typ++ {
		e.Handle([32]byte{1}, netip.MustParseAddrPort("192.0.2.1:1"), false, typ, []byte{1, 2, 3})
	}
	if st := e.Stats(); st.UnknownTypes != 0 || st.BadMessages != 0 || sent != 0 {
		t.Fatalf("NAT messages: %d unknown, %d bad, %d sent", st.UnknownTypes, st.BadMessages, sent)
	}
	e.Handle([32]byte{1}, netip.MustParseAddrPort("192.0.2.1:1"), false, 0xF0, nil)
	if st := e.Stats(); st.UnknownTypes != 1 {
		t.Fatalf("0xF0 counted %d unknown, want 1", st.UnknownTypes)
	}
}

type observeRig struct {
	e    *Engine
	now  time.Time
	sent []outMsg
}

func newObserveRig() *observeRig {
	r := &observeRig{now: testNow}
	r.e = New(Config{Identity: NewIdentity(testEdSeed), Network: NetworkOf(testSeed), Now: func() time.Time { return r.now },
		Send: func(to [32]byte, typ byte, body []byte) error {
			r.sent = append(r.sent, outMsg{to: to, typ: typ, body: append([]byte(nil), body...)})
			return nil
		}})
	return r
}

func (r *observeRig) observed(by byte, from string, viaWS bool, addr string) {
	t := byte(TransportUDP)
	if viaWS {
		t = TransportWebSocket
	}
	body, err := AppendObserved(nil, Observed{Transport: t, Addr: netip.MustParseAddrPort(addr)})
	if err != nil {
		panic(err)
	}
	r.e.Handle([32]byte{by}, netip.MustParseAddrPort(from), false, MsgObserved, body)
}

// A member that sees this node over both UDP and WebSocket leaves two observations: the
// WebSocket one does not replace the UDP one (which the NAT type needs), and a new
// report replaces only the one of its transport.
func TestObservationsKeptPerMemberAndTransport(t *testing.T) {
	r := newObserveRig()
	r.observed(1, "192.0.2.1:51900", false, "198.51.100.7:40000")
	r.observed(1, "192.0.2.1:51900", true, "198.51.100.7:33333")
	obs := r.e.Observed()
	if len(obs) != 2 || obs[0].ViaWS || obs[0].Addr.Port() != 40000 || !obs[1].ViaWS {
		t.Fatalf("observations %+v; want the UDP and the WebSocket one", obs)
	}
	r.now = r.now.Add(time.Second)
	r.observed(1, "192.0.2.1:51900", false, "198.51.100.7:40001")
	obs = r.e.Observed()
	if len(obs) != 2 || obs[0].Addr.Port() != 40001 || !obs[0].At.Equal(r.now) || !obs[1].ViaWS || obs[1].Addr.Port() != 33333 {
		t.Fatalf("after a new UDP report, observations %+v", obs)
	}
	if got := ClassifyNAT(obs, nil, r.now); got != NATUnknown {
		t.Fatalf("one observer: %s", got)
	}
}

// Many keys at one IP (one holder of the seed) fill the observation slots, but push out
// only their own: the observations of members at other IPs stay.
func TestObservationsFromOneIPCannotPushOutOthers(t *testing.T) {
	r := newObserveRig()
	honest := []string{"192.0.2.1:1", "192.0.2.2:1", "192.0.2.3:1"}
	for i, from := range honest {
		r.observed(byte(100+i), from, false, "198.51.100.7:40000")
	}
	for i := range 3 * MaxObservations {
		r.now = r.now.Add(time.Millisecond)
		r.observed(byte(i), "203.0.113.66:1", false, fmt.Sprintf("203.0.113.9:%d", 1000+i))
	}
	obs := r.e.Observed()
	if len(obs) != MaxObservations {
		t.Fatalf("%d observations kept, want %d", len(obs), MaxObservations)
	}
	for i := range honest {
		if !slices.ContainsFunc(obs, func(o Observation) bool { return o.By == [32]byte{byte(100 + i)} }) {
			t.Fatalf("the observation of honest member %d was pushed out: %+v", i, obs)
		}
	}
	if got := ClassifyNAT(obs, nil, r.now); got != NATEasy {
		t.Fatalf("three honest observers agreeing and one IP of liars: %s, want easy", got)
	}
}

// The engine asks its connected members again every ObserveInterval, so observations
// stay younger than MaxObservationAge; a session that just came up was asked already.
func TestEngineReobservesConnectedMembers(t *testing.T) {
	r := newObserveRig()
	a, b := [32]byte{1}, [32]byte{2}
	observes := func() (to [][32]byte) {
		for _, m := range r.sent {
			if m.typ == MsgObserve {
				to = append(to, m.to)
			}
		}
		r.sent = nil
		slices.SortFunc(to, func(x, y [32]byte) int { return compareKeys(&x, &y) })
		return to
	}
	r.e.SessionUp(a)
	if got := observes(); !slices.Equal(got, [][32]byte{a}) {
		t.Fatalf("SessionUp sent OBSERVE to %x", got)
	}
	r.e.Tick(r.now, [][32]byte{a, b})
	if got := observes(); !slices.Equal(got, [][32]byte{b}) {
		t.Fatalf("first tick sent OBSERVE to %x, want only the member not asked yet", got)
	}
	r.now = r.now.Add(ObserveInterval - time.Second)
	r.e.Tick(r.now, [][32]byte{a, b})
	if got := observes(); len(got) != 0 {
		t.Fatalf("OBSERVE again before ObserveInterval, to %x", got)
	}
	r.now = r.now.Add(time.Second)
	r.e.Tick(r.now, [][32]byte{a, b})
	if got := observes(); !slices.Equal(got, [][32]byte{a, b}) {
		t.Fatalf("after ObserveInterval OBSERVE went to %x, want both", got)
	}
	if ObserveInterval >= MaxObservationAge {
		t.Fatal("observations would go stale between two OBSERVEs")
	}
}

// A message that came through a relay has no address of its sender: OBSERVE is not
// answered (the answer would name the relay), and OBSERVED is kept without From, so it
// names no NAT observer.
func TestObserveThroughRelayIsNotAnsweredNorCounted(t *testing.T) {
	r := newObserveRig()
	r.e.Handle([32]byte{1}, netip.AddrPort{}, false, MsgObserve, nil)
	if len(r.sent) != 0 || r.e.Stats().BadMessages != 0 {
		t.Fatalf("OBSERVE through a relay: sent %+v, %d bad", r.sent, r.e.Stats().BadMessages)
	}
	body, _ := AppendObserved(nil, Observed{Transport: TransportUDP, Addr: netip.MustParseAddrPort("198.51.100.7:40000")})
	r.e.Handle([32]byte{1}, netip.AddrPort{}, false, MsgObserved, body)
	r.observed(2, "192.0.2.2:1", false, "198.51.100.7:40000")
	if got := ClassifyNAT(r.e.Observed(), nil, r.now); got != NATUnknown {
		t.Fatalf("one direct observer and one through a relay: %s, want unknown", got)
	}
}

func TestClassifyNAT(t *testing.T) {
	ap := netip.MustParseAddrPort
	type o struct {
		from, addr string
		ws         bool
		age        time.Duration
	}
	own := []netip.AddrPort{ap("192.168.1.2:51900"), ap("[2001:db8:1::2]:51900")}
	cases := []struct {
		name string
		obs  []o
		want NATType
	}{
		{"nothing", nil, NATUnknown},
		{"one observer, mapped", []o{{from: "192.0.2.1:1", addr: "198.51.100.7:40000"}}, NATUnknown},
		{"one observer sees an own address", []o{{from: "192.0.2.1:1", addr: "192.168.1.2:51900"}}, NATPublic},
		{"all see own addresses", []o{{from: "192.0.2.1:1", addr: "192.168.1.2:51900"}, {from: "192.0.2.2:1", addr: "192.168.1.2:51900"}}, NATPublic},
		{"two at distinct IPs agree", []o{{from: "192.0.2.1:1", addr: "198.51.100.7:40000"}, {from: "192.0.2.2:1", addr: "198.51.100.7:40000"}}, NATEasy},
		{"two at distinct IPs differ", []o{{from: "192.0.2.1:1", addr: "198.51.100.7:40000"}, {from: "192.0.2.2:1", addr: "198.51.100.7:40001"}}, NATHard},
		{"two differ but at one IP", []o{{from: "192.0.2.1:1", addr: "198.51.100.7:40000"}, {from: "192.0.2.1:2", addr: "198.51.100.7:40001"}}, NATUnknown},
		{"one liar against two who agree", []o{
			{from: "192.0.2.1:1", addr: "198.51.100.7:40000"}, {from: "192.0.2.2:1", addr: "198.51.100.7:40000"},
			{from: "203.0.113.66:1", addr: "198.51.100.7:666"}}, NATEasy},
		{"a liar's many keys at one IP are one vote", []o{
			{from: "192.0.2.1:1", addr: "198.51.100.7:40000"}, {from: "192.0.2.2:1", addr: "198.51.100.7:40000"},
			{from: "203.0.113.66:1", addr: "198.51.100.7:666"}, {from: "203.0.113.66:2", addr: "198.51.100.7:667"},
			{from: "203.0.113.66:3", addr: "198.51.100.7:668"}}, NATEasy},
		{"two agree, two others each differ: no majority", []o{
			{from: "192.0.2.1:1", addr: "198.51.100.7:40000"}, {from: "192.0.2.2:1", addr: "198.51.100.7:40000"},
			{from: "192.0.2.3:1", addr: "198.51.100.7:40001"}, {from: "192.0.2.4:1", addr: "198.51.100.7:40002"}}, NATHard},
		{"three all different", []o{
			{from: "192.0.2.1:1", addr: "198.51.100.7:40000"}, {from: "192.0.2.2:1", addr: "198.51.100.7:40001"},
			{from: "192.0.2.3:1", addr: "198.51.100.7:40002"}}, NATHard},
		{"a liar claiming an own address against two who agree", []o{
			{from: "192.0.2.1:1", addr: "198.51.100.7:40000"}, {from: "192.0.2.2:1", addr: "198.51.100.7:40000"},
			{from: "203.0.113.66:1", addr: "192.168.1.2:51900"}}, NATEasy},
		{"a LAN member sees the own address, two outside agree", []o{
			{from: "192.168.1.3:1", addr: "192.168.1.2:51900"},
			{from: "192.0.2.1:1", addr: "198.51.100.7:40000"}, {from: "192.0.2.2:1", addr: "198.51.100.7:40000"}}, NATEasy},
		{"stale observations are ignored", []o{
			{from: "192.0.2.1:1", addr: "198.51.100.7:40000", age: 3 * time.Minute}, {from: "192.0.2.2:1", addr: "198.51.100.7:40001"}}, NATUnknown},
		{"the latest report of an IP counts", []o{
			{from: "192.0.2.1:1", addr: "198.51.100.7:40001", age: time.Minute}, {from: "192.0.2.1:1", addr: "198.51.100.7:40000"},
			{from: "192.0.2.2:1", addr: "198.51.100.7:40000"}}, NATEasy},
		{"WebSocket only", []o{{from: "192.0.2.1:1", addr: "198.51.100.7:40000", ws: true}}, NATUDPBlocked},
		{"stale WebSocket only", []o{{from: "192.0.2.1:1", addr: "198.51.100.7:40000", ws: true, age: 3 * time.Minute}}, NATUnknown},
		{"WebSocket does not vote", []o{
			{from: "192.0.2.1:1", addr: "198.51.100.7:40000"}, {from: "192.0.2.2:1", addr: "198.51.100.7:1", ws: true}}, NATUnknown},
		{"IPv4 decides over IPv6", []o{
			{from: "[2001:db8:2::1]:1", addr: "[2001:db8:1::2]:51900"}, {from: "[2001:db8:3::1]:1", addr: "[2001:db8:1::2]:51900"},
			{from: "[2001:db8:4::1]:1", addr: "[2001:db8:1::2]:51900"},
			{from: "192.0.2.1:1", addr: "198.51.100.7:40000"}, {from: "192.0.2.2:1", addr: "198.51.100.7:40001"}}, NATHard},
		{"IPv6 only", []o{
			{from: "[2001:db8:2::1]:1", addr: "[2001:db8:1::2]:51900"}, {from: "[2001:db8:3::1]:1", addr: "[2001:db8:1::2]:51900"}}, NATPublic},
		{"mapped IPv4 forms are one IP", []o{
			{from: "[::ffff:192.0.2.1]:1", addr: "198.51.100.7:40000"}, {from: "192.0.2.1:2", addr: "198.51.100.7:40001"}}, NATUnknown},
	}
	for _, c := range cases {
		var obs []Observation
		for i, x := range c.obs {
			obs = append(obs, Observation{By: [32]byte{byte(i)}, From: ap(x.from), Addr: ap(x.addr), ViaWS: x.ws, At: testNow.Add(-x.age)})
		}
		if got := ClassifyNAT(obs, own, testNow); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
}
