package tun

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stt-tun/stt-tun/internal/nslab"
)

// csum is the Internet checksum of b, folded, not complemented, starting from sum.
func csum(b []byte, sum uint32) uint16 {
	for ; len(b) >= 2; b = b[2:] {
		sum += uint32(b[0])<<8 | uint32(b[1])
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return uint16(sum)
}

// udp4 builds an IPv4/UDP packet with valid checksums.
func udp4(src, dst netip.AddrPort, payload []byte) []byte {
	p := make([]byte, 28+len(payload))
	p[0], p[8], p[9] = 0x45, 64, unix.IPPROTO_UDP
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[10:], ^csum(p[:20], 0))
	u := p[20:]
	binary.BigEndian.PutUint16(u[0:], src.Port())
	binary.BigEndian.PutUint16(u[2:], dst.Port())
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	copy(u[8:], payload)
	pseudo := uint32(csum(p[12:20], 0)) + unix.IPPROTO_UDP + uint32(len(u))
	c := ^csum(u, pseudo)
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], c)
	return p
}

// TestCreateInNamespace creates a real TUN inside a private namespace and
// moves packets through it both ways.
func TestCreateInNamespace(t *testing.T) {
	if _, err := os.Stat(cloneDevicePath); err != nil {
		t.Skipf("no %s: %v", cloneDevicePath, err)
	}
	lab := nslab.New(t)
	ns := lab.NS("tun")
	const name, mtu, off = "stt0", 1400, 16
	var dev Device
	if err := ns.Do(func() (err error) { dev, err = Create(name, mtu); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	go func() {
		for range dev.Events() {
		}
	}()

	if got, err := dev.Name(); err != nil || got != name {
		t.Errorf("Name = %q, %v; want %q", got, err, name)
	}
	var gotMTU int
	if err := ns.Do(func() (err error) { gotMTU, err = dev.MTU(); return err }); err != nil || gotMTU != mtu {
		t.Errorf("MTU = %d, %v; want %d", gotMTU, err, mtu)
	}
	offloads, batch := hasOffloads(dev), dev.BatchSize()
	t.Logf("offloads %v, batch size %d", offloads, batch)
	if offloads != (batch > 1) {
		t.Errorf("Offloads = %v but BatchSize = %d", offloads, batch)
	}
	if offloads && batch != 128 {
		t.Errorf("BatchSize = %d with offloads, want 128", batch)
	}

	ns.MustRun(t, "ip", "addr", "add", "10.200.9.1/24", "dev", name)
	ns.MustRun(t, "ip", "link", "set", name, "up")
	local := netip.MustParseAddrPort("10.200.9.1:0")
	peer := netip.MustParseAddrPort("10.200.9.2:4000")
	pc, err := ns.ListenPacket("udp4", local.String())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	local = pc.LocalAddr().(*net.UDPAddr).AddrPort()

	t.Run("write", func(t *testing.T) {
		payload := []byte("into the tun")
		buf := append(make([]byte, off, MaxWriteCap(off)), udp4(peer, local, payload)...)
		if _, err := dev.Write([][]byte{buf}, off); err != nil {
			t.Fatal(err)
		}
		pc.SetReadDeadline(time.Now().Add(5 * time.Second))
		got := make([]byte, 100)
		n, from, err := pc.ReadFrom(got)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[:n], payload) || from.(*net.UDPAddr).AddrPort() != peer {
			t.Errorf("socket got %q from %v, want %q from %v", got[:n], from, payload, peer)
		}
		if offloads {
			bad := append(make([]byte, MinOffset-1), udp4(peer, local, payload)...)
			if _, err := dev.Write([][]byte{bad}, MinOffset-1); err == nil {
				t.Errorf("Write at offset %d succeeded with offloads on", MinOffset-1)
			}
		}
	})

	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, off+mtu) // offset + MTU: see Read's rules
	}
	sizes := make([]int, len(bufs))
	// readUDP reads from the device until it has n UDP datagrams to peer's
	// port, skipping anything else the kernel sends (IPv6 router
	// solicitations and the like), and returns their payload sizes and the
	// largest batch one Read returned.
	readUDP := func(t *testing.T, n int) (got []int, maxBatch int) {
		t.Helper()
		dev.File().SetReadDeadline(time.Now().Add(5 * time.Second))
		defer dev.File().SetReadDeadline(time.Time{})
		for len(got) < n {
			k, err := dev.Read(bufs, sizes, off)
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			maxBatch = max(maxBatch, k)
			for i := range k {
				p := bufs[i][off : off+sizes[i]]
				if len(p) >= 28 && p[0] == 0x45 && p[9] == unix.IPPROTO_UDP && binary.BigEndian.Uint16(p[22:]) == peer.Port() {
					got = append(got, len(p)-28)
				}
			}
		}
		return got, maxBatch
	}

	t.Run("read", func(t *testing.T) {
		if _, err := pc.WriteTo([]byte("out of the tun"), net.UDPAddrFromAddrPort(peer)); err != nil {
			t.Fatal(err)
		}
		if got, _ := readUDP(t, 1); got[0] != len("out of the tun") {
			t.Errorf("read a %d-byte payload, want %d", got[0], len("out of the tun"))
		}
	})

	// A UDP_SEGMENT send becomes one super-packet on the TUN when USO is on,
	// which one Read splits into a batch.
	t.Run("read split", func(t *testing.T) {
		const seg, nseg = 1000, 10
		sc, err := pc.(*net.UDPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var serr error
		sc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_SEGMENT, seg) })
		if serr != nil {
			t.Skipf("UDP_SEGMENT: %v", serr)
		}
		if _, err := pc.WriteTo(make([]byte, seg*nseg), net.UDPAddrFromAddrPort(peer)); err != nil {
			t.Fatal(err)
		}
		got, maxBatch := readUDP(t, nseg)
		for i, n := range got {
			if n != seg {
				t.Errorf("segment %d carries %d bytes, want %d", i, n, seg)
			}
		}
		t.Logf("%d segments, largest batch from one Read: %d", len(got), maxBatch)
		if maxBatch == 1 {
			return // USO not active on this kernel; nothing more to see
		}

		if _, err := pc.WriteTo(make([]byte, seg*nseg), net.UDPAddrFromAddrPort(peer)); err != nil {
			t.Fatal(err)
		}
		dev.File().SetReadDeadline(time.Now().Add(5 * time.Second))
		defer dev.File().SetReadDeadline(time.Time{})
		for {
			n, err := dev.Read(bufs[:4], sizes, off)
			if err == nil && n == 1 && sizes[0]-28 != seg {
				continue // something else the kernel sent
			}
			if !errors.Is(err, ErrTooManySegments) || n > 4 {
				t.Errorf("Read of %d segments into 4 bufs = %d, %v; want ErrTooManySegments", nseg, n, err)
			} else {
				t.Logf("Read into 4 bufs: %d packets, %v", n, err)
			}
			break
		}
	})

	t.Run("close unblocks read", func(t *testing.T) {
		errc := make(chan error, 1)
		go func() {
			for {
				if _, err := dev.Read(bufs, sizes, off); err != nil {
					errc <- err
					return
				}
			}
		}()
		dev.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		select {
		case err := <-errc:
			if !errors.Is(err, os.ErrClosed) {
				t.Errorf("Read after Close = %v, want os.ErrClosed", err)
			}
		case <-ctx.Done():
			t.Fatal("Close did not unblock Read")
		}
	})
}

func TestCreateRejects(t *testing.T) {
	// In a private namespace, so a broken check cannot leave a device on the host.
	ns := nslab.New(t).NS("rejects")
	for _, c := range []struct {
		name string
		mtu  int
	}{{"stt0", MinMTU - 1}, {"stt0", MaxMTU + 1}, {"a-name-far-too-long", 1400}} {
		err := ns.Do(func() error {
			d, err := Create(c.name, c.mtu)
			if err == nil {
				d.Close()
			}
			return err
		})
		if err == nil {
			t.Errorf("Create(%q, %d) succeeded", c.name, c.mtu)
		}
	}
}

// hasOffloads reports whether d exchanges virtio-net headers with the kernel,
// which is what enables TSO and GRO (and USO/UDP GRO on Linux ≥ 6.2) on it, as
// the device's own flags say, to check BatchSize against.
func hasOffloads(d Device) bool {
	f := d.File()
	if f == nil {
		return false
	}
	sc, err := f.SyscallConn()
	if err != nil {
		return false
	}
	var flags uint16
	cerr := sc.Control(func(fd uintptr) {
		var ifr *unix.Ifreq
		if ifr, err = unix.NewIfreq(""); err != nil {
			return
		}
		if err = unix.IoctlIfreq(int(fd), unix.TUNGETIFF, ifr); err == nil {
			flags = ifr.Uint16()
		}
	})
	if err := errors.Join(cerr, err); err != nil {
		return false
	}
	return flags&unix.IFF_VNET_HDR != 0
}
