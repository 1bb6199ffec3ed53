package tun

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
	wgtun "golang.zx2c4.com/wireguard/tun"
)

const cloneDevicePath = "/dev/net/tun"

// Create creates the TUN interface name (the kernel picks tunN for "") with
// the given MTU, in the network namespace of the calling OS thread, with TSO
// and GRO on where the kernel supports them, and marks it with LinkAlias. The
// interface is left down and without addresses; it disappears when the Device
// is closed. If a link called name exists, Create changes nothing and returns
// an error wrapping ErrLinkExists.
//
// It performs the same open and TUNSETIFF as wireguard's CreateTUN, but closes
// the descriptor on every failure, which CreateTUN does not.
func Create(name string, mtu int) (Device, error) {
	if mtu < MinMTU || mtu > MaxMTU {
		return nil, fmt.Errorf("create tun %s: mtu %d outside [%d, %d]", name, mtu, MinMTU, MaxMTU)
	}
	if len(name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("create tun %s: name longer than %d bytes", name, unix.IFNAMSIZ-1)
	}
	// Never attach to a device that exists (a persistent TUN, say): set up as ours,
	// its addresses and MTU would be changed, and `down` would undo what it did not do.
	// IFF_TUN_EXCL below closes the race; this check names what is there.
	if name != "" {
		if err := CheckFree(name); err != nil {
			return nil, err
		}
	}
	fd, err := unix.Open(cloneDevicePath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("create tun %s: open %s: %w", name, cloneDevicePath, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err == nil {
		// IFF_VNET_HDR asks for offloads; wireguard/tun then enables
		// TSO/USO with TUNSETOFFLOAD and sizes batches to 128.
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR | unix.IFF_TUN_EXCL)
		err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
		if errors.Is(err, unix.EBUSY) {
			unix.Close(fd)
			if cerr := CheckFree(name); cerr != nil {
				return nil, cerr
			}
			return nil, fmt.Errorf("create tun %s: %w (%v)", name, ErrLinkExists, err)
		}
	}
	if err == nil {
		// The device is ours from now on: it goes away with fd. Mark it so.
		err = mark(ifr.Name())
	}
	if err == nil {
		// Non-blocking before os.NewFile, so the runtime poller owns it and
		// Close can interrupt a blocked Read.
		err = unix.SetNonblock(fd, true)
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("create tun %s: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), cloneDevicePath)
	dev, err := wgtun.CreateTUNFromFile(f, mtu)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("create tun %s: %w", name, err)
	}
	return &device{Device: dev}, nil
}

// device makes every Read and Write that fails once Close has begun report
// os.ErrClosed. Upstream may otherwise hand the Read that Close interrupts its
// netlink listener's shutdown error ("netlink socket closed: ...") instead.
type device struct {
	wgtun.Device
	closed atomic.Bool
}

func (d *device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := d.Device.Read(bufs, sizes, offset)
	return n, d.closedErr(err)
}

func (d *device) Write(bufs [][]byte, offset int) (int, error) {
	n, err := d.Device.Write(bufs, offset)
	return n, d.closedErr(err)
}

func (d *device) Close() error {
	d.closed.Store(true)
	return d.Device.Close()
}

func (d *device) closedErr(err error) error {
	if err != nil && d.closed.Load() && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("%w (%v)", os.ErrClosed, err)
	}
	return err
}
