package stt

import (
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/stt-tun/stt-tun/stt/wire"
)

// TestRelayEndReceiveAllocatesNothing: at an end, a batch of RELAY messages carrying
// the peer's data frames is unwrapped, opened and delivered without an allocation.
func TestRelayEndReceiveAllocatesNothing(t *testing.T) {
	counter := &countHandler{}
	// No path MTU probes: AllocsPerRun counts the whole process, and the timer loops
	// seal probes (allocating, off the packet path) while the search runs.
	l := newRelayLab(t, labOpts{timers: Limits{Tick: 20 * time.Millisecond, PMTUDisable: true}, noCap: true, handlerB: counter})
	l.open(t)
	sendOne(t, l.ab, 1, []byte("up"))
	waitFor(t, 10*time.Second, "the first datagram", func() bool { return counter.n.Load() >= 1 })
	waitFor(t, 10*time.Second, "b on the relay", func() bool { return l.ba.Path() == PathRelay })
	s := l.ba.keys.current.Load()
	if s == nil {
		t.Fatal("b has no session")
	}
	// a's side of the session seals what b opens: a's current session.
	sa := l.ab.keys.current.Load()
	const batch, runs = 16, 51
	payload := string(datagram(make([]byte, 1200)))
	msgs := make([][]byte, batch*runs*allocAttempts) // enough for every measurement allocsPerCall takes
	for i := range msgs {
		f := sealed(sa, 1, uint64(1000+i), payload)
		m := make([]byte, wire.RelayHeaderLen+len(f))
		wire.PutRelayHeader(m, l.idAB)
		copy(m[wire.RelayHeaderLen:], f)
		msgs[i] = m
	}
	bufs, rx, eps := make([][]byte, batch), make([][]byte, batch), make([]conn.Endpoint, batch)
	sizes := make([]int, batch)
	for i := range bufs {
		bufs[i] = make([]byte, BufferSize)
		rx[i] = bufs[i][recvBase:]
	}
	from := *l.br.path.udp.Load()
	in := &Inbound{Bufs: make([][]byte, batch), Sizes: make([]int, batch), Peers: make([]*Peer, batch), Scratch: make([][]byte, 0, batch)}
	fw := &relayFwd{frames: make([][]byte, 0, batch)}
	nonce, hsOut := new([12]byte), make([]byte, 0, 256)
	got := counter.n.Load()
	run := 0
	allocs := allocsPerCall(runs-1, func() {
		for i := range bufs {
			m := msgs[run*batch+i]
			sizes[i] = copy(rx[i], m)
			eps[i] = from
		}
		run++
		l.b.receiveBatch(bufs, rx, sizes, eps, in, nonce, hsOut, fw)
	})
	if d := counter.n.Load() - got; d < int64((runs-1)*batch) {
		t.Fatalf("delivered %d of %d; drops %v", d, runs*batch, l.b.Stats().Drops)
	}
	if allocs != 0 && !raceEnabled {
		t.Errorf("%.1f allocations per relayed batch received", allocs)
	}
}

// TestFollowerRelayPathCarriesNothingUntilFollowed: a relay path this node did not ask
// for (a follower's) carries none of its traffic before an authenticated frame of the
// peer's came through it, not even as the only way to a peer without a direct address:
// else a member that sends an unsolicited RELAY_GRANT takes the handshakes with that
// peer to itself, where the candidates would have had them.
func TestFollowerRelayPathCarriesNothingUntilFollowed(t *testing.T) {
	l := newRelayLab(t, labOpts{timers: Limits{Tick: 20 * time.Millisecond}})
	// r opened no route; a takes a follower path through it anyway.
	if err := l.ab.SetRelay(l.ar, 5, 6, false); err != nil {
		t.Fatal(err)
	}
	if p := l.ab.Path(); p == PathRelay || l.ab.RelayVia() != nil {
		t.Fatalf("a follower path nothing came through is a's path to b (%s)", p)
	}
	relayed := len(l.a.bind.ofType(wire.TypeRelay))
	sendOne(t, l.ab, 1, []byte("for b"))
	if n := len(l.a.bind.ofType(wire.TypeRelay)) - relayed; n != 0 {
		t.Fatalf("a sent %d RELAY messages through a path it did not ask for and nothing came through", n)
	}
	// The chooser's own path is the way when there is no other.
	if err := l.ab.SetRelay(l.ar, 5, 6, true); err != nil {
		t.Fatal(err)
	}
	if l.ab.RelayVia() != l.ar {
		t.Fatal("the chooser's relay path is not the way to a peer without a direct path")
	}
}

// TestFollowerMovesOnlyOnFramesThroughANewRelay: a follower on a relay whose path is
// replaced by another relay's (a new grant) leaves the traffic off the new relay until
// a frame of the peer's comes through it; the relay it was on no longer carries it
// either.
func TestFollowerMovesOnlyOnFramesThroughANewRelay(t *testing.T) {
	l := newRelayLab(t, labOpts{timers: Limits{Tick: 20 * time.Millisecond}})
	l.open(t)
	l.exchange(t, "relayed")
	if l.ba.RelayVia() != l.br {
		t.Fatal("b is not on the relay")
	}
	m, err := l.b.AddPeer(PeerConfig{Name: "m", Endpoint: "127.0.0.1:9"})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.ba.SetRelay(m, 7, 8, false); err != nil {
		t.Fatal(err)
	}
	if via := l.ba.RelayVia(); via == m {
		t.Fatal("b's traffic to a went to a new relay before anything came through it")
	}
}

// TestPunchDoesNotReplaceARekeyInFlight: a punch (which any member may trigger with a
// PUNCH, once a second) does not take the place of a handshake that renews a live
// session: else PUNCHes repeated faster than a rekey completes keep the session from
// ever being renewed, and it dies at RejectAfter.
func TestPunchDoesNotReplaceARekeyInFlight(t *testing.T) {
	l := newRelayLab(t, labOpts{timers: Limits{Tick: 20 * time.Millisecond}})
	l.open(t)
	l.exchange(t, "relayed")
	// The renewal cannot get through: it stays in flight.
	l.a.bind.cutTo(l.r.Port(), true)
	l.ab.Rekey()
	inFlight := func() *initiation {
		l.ab.mu.Lock()
		defer l.ab.mu.Unlock()
		return l.ab.handshake.init
	}
	waitFor(t, 10*time.Second, "a's rekey in flight", func() bool { return inFlight() != nil })
	rekey := inFlight()
	if rekey.punch != nil {
		t.Fatal("the rekey is a punch")
	}
	l.ab.Punch([]netip.AddrPort{netip.MustParseAddrPort(loopback(l.b.Node))})
	// (A retransmission makes a new initiation of the same series: compare the kind.)
	if got := inFlight(); got == nil || got.punch != nil {
		t.Fatal("a punch replaced the rekey in flight")
	}
}

// TestRelayChurnDuringTraffic: relay paths and routes set, cleared, reopened and
// punched over while datagrams flow both ways through the relay: the tables the
// receive and send paths read without a lock stay consistent (run with -race), nothing
// panics, and once the churn stops the ends talk through the relay again.
func TestRelayChurnDuringTraffic(t *testing.T) {
	l := newRelayLab(t, labOpts{timers: Limits{Tick: 10 * time.Millisecond}})
	l.open(t)
	l.exchange(t, "before")
	stop := make(chan struct{})
	done := make(chan struct{}, 3)
	send := func(p *Peer) {
		defer func() { done <- struct{}{} }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			_ = p.Send([][]byte{datagram([]byte("churn"))}, []uint16{1})
			time.Sleep(time.Millisecond)
		}
	}
	go send(l.ab)
	go send(l.ba)
	go func() {
		defer func() { done <- struct{}{} }()
		to := []netip.AddrPort{netip.MustParseAddrPort(loopback(l.b.Node))}
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			switch i % 5 {
			case 0:
				l.r.RelayClose(l.ra, l.rb)
			case 1:
				l.ab.ClearRelay()
				l.ba.ClearRelay()
			case 2:
				l.ab.Punch(to)
			default:
				if ab, ba, err := l.r.RelayOpen(l.ra, l.rb); err == nil {
					_ = l.ba.SetRelay(l.br, ba, ab, false)
					_ = l.ab.SetRelay(l.ar, ab, ba, true)
				}
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	time.Sleep(500 * time.Millisecond) // the churn's length; nothing waits on it
	close(stop)
	for range 3 {
		<-done
	}
	l.open(t)
	l.exchange(t, "after")
}
