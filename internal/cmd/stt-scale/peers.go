package main

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/stt"
	"github.com/stt-tun/stt-tun/stt/wire"
)

// discard is the peers' Handler: what the engine sends them is dropped.
type discard struct{}

func (discard) Deliver(*stt.Inbound) {}

// peersMain runs n stt nodes, peer0..peer<n-1>, each with the engine as its one peer,
// and obeys the lines of its input: "hs" (each sends the engine one packet), "active A
// RATE SIZE" (the first A send RATE packets of SIZE bytes a second each), "quiet"
// (they stop). It prints "ready" once every node is up, and exits at the end of its
// input.
func peersMain(args []string) int {
	fs := flag.NewFlagSet("peers", flag.ExitOnError)
	n := fs.Int("n", 10, "nodes")
	engine := fs.String("engine", "", "the engine's UDP address")
	seedFile := fs.String("seed", "", "the network seed file")
	oneSource := fs.Bool("one-source", false, "every node on 127.0.0.1 rather than an address of its own")
	_ = fs.Parse(args)
	raw, err := os.ReadFile(*seedFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "stt-scale peers:", err)
		return 1
	}
	seed, err := config.DecodeKey(strings.TrimSpace(string(raw)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "stt-scale peers:", err)
		return 1
	}
	ps := make([]*stt.Peer, *n)
	for i := range *n {
		nd, err := stt.New(stt.Config{
			Seed: seed, PrivateKey: randomKey(), Name: fmt.Sprintf("peer%d", i),
			Handler: discard{},
			// A slower timer loop keeps a thousand nodes in one process cheap; the
			// handshake retry (1 s) is still honoured within a tick.
			Limits: stt.Limits{Tick: 250 * time.Millisecond},
			Bind:   bindFor(i, *oneSource),
		})
		if err == nil {
			err = nd.Start()
		}
		if err == nil {
			ps[i], err = nd.AddPeer(stt.PeerConfig{Name: "engine", Endpoint: *engine})
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "stt-scale peers:", err)
			return 1
		}
	}
	fmt.Println("ready")
	var stop chan struct{}
	var wg sync.WaitGroup
	quiet := func() {
		if stop != nil {
			close(stop)
			wg.Wait()
			stop = nil
		}
	}
	defer quiet()
	for l := range lines(os.Stdin) {
		f := strings.Fields(l)
		switch {
		case len(f) == 1 && f[0] == "hs":
			for i, p := range ps {
				send(p, i, 64)
			}
		case len(f) == 4 && f[0] == "active":
			var a, rate, size int
			fmt.Sscan(f[1], &a)
			fmt.Sscan(f[2], &rate)
			fmt.Sscan(f[3], &size)
			quiet()
			stop = make(chan struct{})
			for i := range min(a, len(ps)) {
				wg.Add(1)
				go func() {
					defer wg.Done()
					tk := time.NewTicker(time.Second / time.Duration(rate))
					defer tk.Stop()
					for {
						select {
						case <-stop:
							return
						case <-tk.C:
							send(ps[i], i, size)
						}
					}
				}()
			}
		case len(f) == 1 && f[0] == "quiet":
			quiet()
		}
	}
	return 0
}

// bindFor is node i's bind: on 127.0.0.1 with oneSource, else on an address of its
// own in 127.1.0.0/16.
func bindFor(i int, oneSource bool) *loopBind {
	if oneSource {
		return &loopBind{addr: netip.MustParseAddr("127.0.0.1")}
	}
	return &loopBind{addr: netip.AddrFrom4([4]byte{127, 1, byte(i / 250), byte(1 + i%250)})}
}

// send sends the engine one IPv4 packet of size bytes from peer i.
func send(p *stt.Peer, i, size int) {
	buf := make([]byte, wire.HeaderLen+size, wire.HeaderLen+size+wire.TagLen)
	copy(buf[wire.HeaderLen:], ipv4UDP(peerAddr(i), engineAddr, size))
	_ = p.Send([][]byte{buf}, nil)
}
