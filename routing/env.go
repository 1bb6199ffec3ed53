package routing

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// osEnv is the network namespace this package acts in, captured once, with
// a netlink handle bound to it.
type osEnv struct {
	ns netns.NsHandle
	nl *netlink.Handle
	// own: every thread of the process is in ns, as in the daemon, so sockets and
	// /proc/sys opened on any thread are in it and no setns is needed. Entering a
	// namespace takes CAP_SYS_ADMIN, which the daemon does not otherwise need and
	// the systemd unit does not grant; only callers that move a thread into another
	// namespace (the tests) need it.
	own bool
}

// openEnv captures the calling thread's network namespace.
func openEnv() (*osEnv, error) {
	ns, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("get network namespace: %w", err)
	}
	own := allThreadsIn(ns)
	var nl *netlink.Handle
	if own {
		nl, err = netlink.NewHandle()
	} else {
		nl, err = netlink.NewHandleAt(ns)
	}
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("open netlink: %w", err)
	}
	return &osEnv{ns: ns, nl: nl, own: own}, nil
}

// allThreadsIn reports whether every thread of the process is in ns. Threads
// started later are clones of these, so they are in it too unless moved.
func allThreadsIn(ns netns.NsHandle) bool {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return false
	}
	for _, task := range tasks {
		h, err := netns.GetFromPath("/proc/self/task/" + task.Name() + "/ns/net")
		if errors.Is(err, fs.ErrNotExist) {
			continue // the thread has exited
		}
		if err != nil {
			return false
		}
		same := h.Equal(ns)
		h.Close()
		if !same {
			return false
		}
	}
	return true
}

func (e *osEnv) close() {
	e.nl.Close()
	e.ns.Close()
}

// inNS runs f on a fresh OS thread moved into the namespace. /proc/sys/net
// shows the namespace of the thread that opens a file, so sysctls need it.
// If the thread cannot be moved back it stays locked and dies with its
// goroutine rather than run other code in the wrong namespace.
func (e *osEnv) inNS(f func() error) error {
	if e.own {
		return f()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(e.ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leave network namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// The sysctls this package may change; a journal naming another key is
// corrupt, so a tampered journal cannot write elsewhere under /proc/sys.
const (
	sysctlIPForward    = "net/ipv4/ip_forward"
	sysctlIP6Forward   = "net/ipv6/conf/all/forwarding"
	sysctlSrcValidMark = "net/ipv4/conf/all/src_valid_mark"
)

func validSysctlKey(key string) bool {
	switch key {
	case sysctlIPForward, sysctlIP6Forward, sysctlSrcValidMark:
		return true
	}
	return false
}

func (e *osEnv) readSysctl(key string) (string, error) {
	var val string
	err := e.inNS(func() error {
		b, err := os.ReadFile("/proc/sys/" + key)
		val = strings.TrimSpace(string(b))
		return err
	})
	return val, err
}

func (e *osEnv) writeSysctl(key, val string) error {
	return e.inNS(func() error {
		return os.WriteFile("/proc/sys/"+key, []byte(val+"\n"), 0)
	})
}

// hasIPv6 reports whether IPv6 is enabled in the namespace.
func (e *osEnv) hasIPv6() bool {
	_, err := e.readSysctl(sysctlIP6Forward)
	return err == nil
}

func (e *osEnv) nft() (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if !e.own {
		opts = append(opts, nftables.WithNetNSFd(int(e.ns)))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables: %w", err)
	}
	return c, nil
}

// nftTableExists reports whether an inet table called name exists.
func (e *osEnv) nftTableExists(name string) (bool, error) {
	c, err := e.nft()
	if err != nil {
		return false, err
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == name {
			return true, nil
		}
	}
	return false, nil
}

// addMasquerade creates, in one transaction, the table
//
//	table inet <name> {
//		chain postrouting {
//			type nat hook postrouting priority srcnat;
//			iifname "<link>" oifname != "<link>" masquerade
//		}
//	}
//
// It fails if the table exists, so it never takes over someone else's.
func (e *osEnv) addMasquerade(name, link string) error {
	c, err := e.nft()
	if err != nil {
		return err
	}
	t := c.CreateTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: name})
	ch := c.AddChain(&nftables.Chain{
		Name:     "postrouting",
		Table:    t,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
	})
	ifname := ifnameBytes(link)
	c.AddRule(&nftables.Rule{
		Table: t,
		Chain: ch,
		Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname},
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname},
			&expr.Masq{},
		},
	})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("create nftables table %s: %w", name, err)
	}
	return nil
}

// delNFTTable deletes an inet table; an absent table is not an error.
func (e *osEnv) delNFTTable(name string) error {
	c, err := e.nft()
	if err != nil {
		return err
	}
	c.DelTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: name})
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete nftables table %s: %w", name, err)
	}
	return nil
}

// ifnameBytes is an interface name as nftables compares it: NUL-padded to
// IFNAMSIZ.
func ifnameBytes(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}
