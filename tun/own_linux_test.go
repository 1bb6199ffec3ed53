package tun

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/stt-tun/stt-tun/internal/nslab"
)

func needTUN(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(cloneDevicePath); err != nil {
		t.Skipf("no %s: %v", cloneDevicePath, err)
	}
}

// TestCreateMarksItsLink: the link Create makes carries LinkAlias, and IsOwn knows it.
func TestCreateMarksItsLink(t *testing.T) {
	needTUN(t)
	ns := nslab.New(t).NS("mark")
	var dev Device
	if err := ns.Do(func() (err error) { dev, err = Create("stt0", 1420); return err }); err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	if out := ns.MustRun(t, "ip", "link", "show", "stt0"); !strings.Contains(out, "alias "+LinkAlias) {
		t.Errorf("stt0 lacks alias %q:\n%s", LinkAlias, out)
	}
	var own bool
	if err := ns.Do(func() error {
		l, err := netlink.LinkByName("stt0")
		own = err == nil && IsOwn(l, "stt0") && !IsOwn(l, "stt1")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !own {
		t.Error("IsOwn does not recognise the link Create made (or takes another name)")
	}
}

// TestCreateRefusesExistingLink: a persistent TUN device or a veth of the name is never
// adopted: Create fails with one line naming what is there, and the link keeps its
// MTU, state and alias.
func TestCreateRefusesExistingLink(t *testing.T) {
	needTUN(t)
	ns := nslab.New(t).NS("exists")
	ns.MustRun(t, "ip", "tuntap", "add", "dev", "stt9", "mode", "tun")
	ns.MustRun(t, "ip", "link", "add", "eth-net", "type", "veth", "peer", "name", "eth-peer")
	ns.MustRun(t, "ip", "tuntap", "add", "dev", "tap7", "mode", "tap")
	ns.MustRun(t, "ip", "link", "property", "add", "dev", "eth-peer", "altname", "stt7")
	for _, c := range []struct{ name, want string }{
		{"stt9", "a link named stt9 already exists (tun, not created by stt-tun)"},
		{"eth-net", "a link named eth-net already exists (veth, not created by stt-tun)"},
		{"tap7", "a link named tap7 already exists (tap, not created by stt-tun)"},
		{"stt7", "a link named stt7 already exists (veth eth-peer, not created by stt-tun)"},
	} {
		before := ns.MustRun(t, "ip", "-d", "link", "show", c.name)
		err := ns.Do(func() error {
			d, err := Create(c.name, 1420)
			if err == nil {
				d.Close()
			}
			return err
		})
		if !errors.Is(err, ErrLinkExists) || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("Create(%q) over an existing link: %v, want one line with %q", c.name, err, c.want)
		}
		if after := ns.MustRun(t, "ip", "-d", "link", "show", c.name); after != before {
			t.Errorf("%s changed:\n--- before\n%s--- after\n%s", c.name, before, after)
		}
	}
}
