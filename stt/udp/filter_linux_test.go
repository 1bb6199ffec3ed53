package udp

import (
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// TestFilterSeesUDPHeader confirms what filterProgram assumes: the length a UDP socket
// filter loads is the UDP header (8 bytes) plus the payload — neither the payload
// alone nor with the IP header. A filter with a threshold of k must drop payloads of
// k-1 bytes and keep those of k, on both families.
func TestFilterSeesUDPHeader(t *testing.T) {
	for _, fam := range []struct{ network, lo string }{{"udp4", "127.0.0.1"}, {"udp6", "::1"}} {
		for _, k := range []int{1, 5, 32} {
			rx, err := net.ListenUDP(fam.network, &net.UDPAddr{IP: net.ParseIP(fam.lo)})
			if err != nil {
				if fam.network == "udp6" {
					t.Skip("no IPv6")
				}
				t.Fatal(err)
			}
			defer rx.Close()
			rc, err := rx.SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var aerr error
			if err := rc.Control(func(fd uintptr) { aerr = attachFilter(int(fd), k) }); err != nil || aerr != nil {
				t.Fatal(err, aerr)
			}
			tx, err := net.ListenUDP(fam.network, &net.UDPAddr{IP: net.ParseIP(fam.lo)})
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Close()
			dst := rx.LocalAddr().(*net.UDPAddr).AddrPort()
			sent := []int{k - 1, k, k + 1, 0, 100}
			for _, n := range sent {
				if _, err := tx.WriteToUDPAddrPort(make([]byte, n), dst); err != nil {
					t.Fatal(err)
				}
			}
			var got []int
			buf := make([]byte, 200)
			for len(got) == 0 || got[len(got)-1] != 100 {
				_ = rx.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, _, err := rx.ReadFromUDPAddrPort(buf)
				if err != nil {
					t.Fatalf("%s, k=%d: %v after %v", fam.network, k, err, got)
				}
				got = append(got, n)
			}
			if want := []int{k, k + 1, 100}; !slices.Equal(got, want) {
				t.Errorf("%s, threshold %d: sent payloads of %v bytes, %v passed, want %v", fam.network, k, sent, got, want)
			}
		}
	}
}

// TestFilterKeepsCoalesced: a GRO-coalesced datagram is judged once, by its total
// length, so the filter keeps all of its segments, even short ones.
func TestFilterKeepsCoalesced(t *testing.T) {
	a, _, _ := open(t, options{})
	b, fns, port := open(t, options{})
	if !a.v4.Load().gso.Load() || !b.v4.Load().gro {
		t.Skip("no GSO or GRO")
	}
	c := collect(t, fns[0], 100)
	bufs := [][]byte{{1}, {2}, {3}, {4}}
	if err := a.Send(bufs, &Endpoint{dst: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)}); err != nil {
		t.Fatal(err)
	}
	for i := range bufs {
		if g := c.next(t); len(g.data) != 1 || g.data[0] != byte(i+1) {
			t.Fatalf("segment %d: %v", i, g.data)
		}
	}
	if b.v4.Load().groMsgs.Load() != 1 {
		t.Errorf("%d coalesced datagrams, want 1", b.v4.Load().groMsgs.Load())
	}
}
