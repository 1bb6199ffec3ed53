package mesh

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

// sim runs engines in one goroutine: Send appends to a queue that pump delivers in
// order, over the links of a graph.
type sim struct {
	t        testing.TB
	now      time.Time
	seed     [32]byte
	nodes    []*simNode
	byKey    map[[32]byte]*simNode
	queue    []simMsg
	lifetime time.Duration
	interval time.Duration
}

type simNode struct {
	i     int
	id    Identity
	eng   *Engine
	links map[[32]byte]bool
	down  bool
	sent  uint64 // bytes (3 + body) this node sent
	// reliableIn counts the messages sent to this node by Send (not SendOnce) that it
	// received, by type (less MsgSummary): each costs it an ACK.
	reliableIn [16]uint64
	byType     [6]uint64
	changes    []change
}

type simMsg struct {
	from, to [32]byte
	typ      byte
	body     []byte
	once     bool // sent by SendOnce
}

func newSim(t testing.TB, n int, lifetime time.Duration) *sim {
	s := &sim{t: t, now: testNow, seed: testSeed, byKey: make(map[[32]byte]*simNode),
		lifetime: lifetime, interval: DefaultInterval}
	for i := range n {
		s.add(NewIdentity(edSeedN(i + 1)))
	}
	return s
}

// add creates a node with identity id (unlinked).
func (s *sim) add(id Identity) *simNode {
	nd := &simNode{i: len(s.nodes), id: id, links: make(map[[32]byte]bool)}
	send := func(to [32]byte, typ byte, body []byte, once bool) error {
		nd.sent += uint64(3 + len(body))
		if typ >= MsgSummary && typ <= MsgObserved {
			nd.byType[typ-MsgSummary] += uint64(3 + len(body))
		}
		s.queue = append(s.queue, simMsg{from: id.Public, to: to, typ: typ, body: append([]byte(nil), body...), once: once})
		return nil
	}
	nd.eng = New(Config{
		Identity: id,
		Network:  NetworkOf(s.seed),
		Send:     func(to [32]byte, typ byte, body []byte) error { return send(to, typ, body, false) },
		SendOnce: func(to [32]byte, typ byte, body []byte) error { return send(to, typ, body, true) },
		OnChange: func(old, cur *Record) { nd.changes = append(nd.changes, change{old, cur}) },
		Lifetime: s.lifetime,
		Interval: s.interval,
		Now:      func() time.Time { return s.now },
	})
	s.nodes = append(s.nodes, nd)
	s.byKey[id.Public] = nd
	return nd
}

// addr is the UDP address node nd is seen from.
func (nd *simNode) addr() netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(nd.i + 1)}), uint16(40000+nd.i))
}

func (s *sim) link(a, b *simNode) {
	a.links[b.id.Public], b.links[a.id.Public] = true, true
}

// sparse links the nodes in a ring and adds a chord from every third node, so each has 2
// or 3 links (rarely 4) and the graph is connected.
func (s *sim) sparse(rng *rand.Rand) {
	n := len(s.nodes)
	for i := range n {
		s.link(s.nodes[i], s.nodes[(i+1)%n])
	}
	for i := 0; i < n; i += 3 {
		for range 10 {
			j := rng.IntN(n)
			b := s.nodes[j]
			if j != i && !s.nodes[i].links[b.id.Public] && len(b.links) < 3 {
				s.link(s.nodes[i], b)
				break
			}
		}
	}
}

// sessionsUp tells both ends of every link that their session is up.
func (s *sim) sessionsUp() {
	for _, nd := range s.nodes {
		for k := range nd.links {
			nd.eng.SessionUp(k)
		}
	}
}

// pump delivers queued messages until none is left; it fails the test on a message
// storm.
func (s *sim) pump() int {
	n := 0
	for len(s.queue) > 0 {
		m := s.queue[0]
		s.queue = s.queue[1:]
		n++
		if n > 10_000_000 {
			s.t.Fatal("message storm: the queue does not drain")
		}
		from, to := s.byKey[m.from], s.byKey[m.to]
		if to == nil || to.down || from.down || !from.links[m.to] {
			continue
		}
		if !m.once && m.typ >= MsgSummary && int(m.typ-MsgSummary) < len(to.reliableIn) {
			to.reliableIn[m.typ-MsgSummary]++
		}
		to.eng.Handle(m.from, from.addr(), false, m.typ, m.body)
	}
	return n
}

// tick advances the clock by one interval, ticks every live node with its live links,
// and pumps.
func (s *sim) tick() {
	s.now = s.now.Add(s.interval)
	for _, nd := range s.nodes {
		if nd.down {
			continue
		}
		var conn [][32]byte
		for k := range nd.links {
			if !s.byKey[k].down {
				conn = append(conn, k)
			}
		}
		nd.eng.Tick(s.now, conn)
	}
	s.pump()
}

func (s *sim) setSelves() {
	for _, nd := range s.nodes {
		if err := nd.eng.SetSelf(Record{Name: fmt.Sprint("node", nd.i)}); err != nil {
			s.t.Fatal(err)
		}
	}
}

// missing counts, over every live node, the live members whose current record it does
// not hold.
func (s *sim) missing() int {
	n := 0
	for _, a := range s.nodes {
		if a.down {
			continue
		}
		for _, b := range s.nodes {
			if b == a || b.down {
				continue
			}
			if r := a.eng.Member(b.id.Public); r == nil || r.Version != b.eng.Self().Version {
				n++
			}
		}
	}
	return n
}
