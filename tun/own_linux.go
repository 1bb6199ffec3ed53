package tun

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// LinkAlias is the alias (IFLA_IFALIAS, `ip link show` "alias") Create gives every
// device it makes. It marks the link as stt-tun's: routing changes bound to a link are
// made and undone only on a TUN device of the expected name that carries it.
const LinkAlias = "stt-tun"

// ErrLinkExists means a link of the name to create is already there: stt-tun never
// adopts a link it did not create.
var ErrLinkExists = errors.New("link already exists")

// IsOwn reports whether l is a TUN device named name that Create made: kind tun, in
// tun (not tap) mode, with LinkAlias.
func IsOwn(l netlink.Link, name string) bool {
	tt, ok := l.(*netlink.Tuntap)
	return ok && tt.Mode == netlink.TUNTAP_MODE_TUN && l.Attrs().Alias == LinkAlias && l.Attrs().Name == name
}

// CheckFree returns nil if no link called name exists in the calling thread's network
// namespace, else one line saying what is there, wrapping ErrLinkExists.
func CheckFree(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		if errors.As(err, new(netlink.LinkNotFoundError)) || errors.Is(err, unix.ENODEV) {
			return nil
		}
		return fmt.Errorf("look up link %s: %w", name, err)
	}
	return existsError(l, name)
}

func existsError(l netlink.Link, name string) error {
	kind := l.Type()
	if tt, ok := l.(*netlink.Tuntap); ok {
		kind = tt.Mode.String()
		if kind == "unknown" {
			kind = "tun"
		}
	}
	if l.Attrs().Name != name { // found by an alternative name
		kind = fmt.Sprintf("%s %s", kind, l.Attrs().Name)
	}
	whose := "not created by stt-tun"
	if IsOwn(l, name) {
		whose = "created by stt-tun: is it up under another --state-dir?"
	}
	return existsErr(fmt.Sprintf("a link named %s already exists (%s, %s)", name, kind, whose))
}

// existsErr is an error that says what is there, and is ErrLinkExists.
type existsErr string

func (e existsErr) Error() string        { return string(e) }
func (e existsErr) Is(target error) bool { return target == ErrLinkExists }

// mark gives the link name, just created, LinkAlias.
func mark(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find new link: %w", err)
	}
	if err := netlink.LinkSetAlias(l, LinkAlias); err != nil {
		return fmt.Errorf("set alias %q: %w", LinkAlias, err)
	}
	return nil
}
