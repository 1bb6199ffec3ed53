package routing

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/stt-tun/stt-tun/tun"
)

// ErrUndone is returned by a Manager's methods after Undo or Close.
var ErrUndone = errors.New("routing manager already undone or closed")

// Manager holds the configuration Apply made for one link and its journal.
// Its methods are safe for concurrent use.
type Manager struct {
	mu   sync.Mutex
	spec Spec // normalized
	env  *osEnv
	j    *journal // its ifindex is the link's
	done bool

	// crashAt, if positive, makes the change with that number (from 1)
	// stop right after it is recorded, without rollback: a test's SIGKILL.
	crashAt int
}

// errCrash is what a simulated crash returns.
var errCrash = errors.New("simulated crash")

// Apply configures spec.Link: MTU and up, addresses, routes, the
// full-tunnel table and rules, sysctls and the masquerade table, in that
// order. Each change is recorded durably in the journal
// (StatePath(spec.StateDir, spec.Link)) before it is made. If a step fails,
// Apply reverts what it did, removes the journal and returns an error naming
// the step; should the rollback itself fail, the journal keeps what is left
// for UndoFromState and the error says so. If a journal for the link already
// exists, Apply changes nothing and returns an error wrapping
// ErrJournalExists.
//
// Apply acts in the calling OS thread's network namespace.
func Apply(spec Spec) (*Manager, error) {
	return apply(spec, 0)
}

func apply(spec Spec, crashAt int) (*Manager, error) {
	s, err := spec.normalize()
	if err != nil {
		return nil, fmt.Errorf("routing: invalid spec: %w", err)
	}
	env, err := openEnv()
	if err != nil {
		return nil, fmt.Errorf("routing: apply %s: %w", s.Link, err)
	}
	link, err := env.nl.LinkByName(s.Link)
	if err != nil {
		env.close()
		return nil, fmt.Errorf("routing: apply %s: find link: %w", s.Link, err)
	}
	if !tun.IsOwn(link, s.Link) {
		env.close()
		return nil, fmt.Errorf("routing: apply %s: not a TUN device created by stt-tun (kind %s, alias %q); not touching it",
			s.Link, link.Type(), link.Attrs().Alias)
	}
	j, err := createJournal(StatePath(s.StateDir, s.Link), s.Link, link.Attrs().Index)
	if err != nil {
		env.close()
		return nil, fmt.Errorf("routing: apply %s: %w", s.Link, err)
	}
	m := &Manager{spec: s, env: env, j: j, crashAt: crashAt}
	if err := m.apply(link); err != nil {
		err = fmt.Errorf("routing: apply %s: %w", s.Link, err)
		if errors.Is(err, errCrash) {
			env.close()
			return nil, err
		}
		if uerr := m.revertAll(); uerr != nil {
			err = errors.Join(err, fmt.Errorf("routing: roll back %s: %w", s.Link, uerr))
		}
		env.close()
		return nil, err
	}
	m.crashAt = 0
	return m, nil
}

func (m *Manager) apply(link netlink.Link) error {
	s := m.spec
	// Checked before the link goes up: setting it down again in a rollback
	// would make the kernel flush IPv6 addresses someone else configured.
	if err := m.checkAddrsFree(link); err != nil {
		return err
	}
	if err := m.setLink(link); err != nil {
		return err
	}
	for _, a := range s.Addresses {
		if err := m.addAddr(link, a); err != nil {
			return err
		}
	}
	if err := m.addRoutes(s.Routes); err != nil {
		return err
	}
	if s.fullTunnel(4) {
		// The kernel's reverse-path filter must see the mark, or replies to
		// the node's own marked packets are dropped.
		if err := m.setSysctl(sysctlSrcValidMark, "1"); err != nil {
			return err
		}
	}
	for _, fam := range []int{4, 6} {
		if !s.fullTunnel(fam) || (fam == 6 && !m.env.hasIPv6()) {
			continue
		}
		if err := m.addFullTunnel(fam); err != nil {
			return err
		}
	}
	if s.Forwarding {
		if err := m.setSysctl(sysctlIPForward, "1"); err != nil {
			return err
		}
		if m.env.hasIPv6() {
			if err := m.setSysctl(sysctlIP6Forward, "1"); err != nil {
				return err
			}
		}
	}
	if s.Masquerade {
		if err := m.addMasquerade(); err != nil {
			return err
		}
	}
	return nil
}

// addFullTunnel routes family's traffic into Table, except packets with the
// mark and destinations the main table knows more specifically than /0.
// The route goes in before the rules, so that no packet is steered to the
// table while it is still empty (and would fall through to the uplink).
func (m *Manager) addFullTunnel(family int) error {
	def := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	if family == 6 {
		def = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	}
	if err := m.addRoute(def, m.spec.Table); err != nil {
		return err
	}
	zero := 0
	if err := m.addRule(ruleChange{Family: family, Priority: m.spec.RulePriority, Table: tableMain, Suppress: &zero}); err != nil {
		return err
	}
	return m.addRule(ruleChange{Family: family, Priority: m.spec.RulePriority + 1, Table: m.spec.Table, Mark: m.spec.FwMark, Invert: true})
}

// do records c, then runs op. If op fails the change did not happen, so
// its record is dropped rather than reverted.
func (m *Manager) do(c change, op func() error) error {
	if err := m.j.record(c); err != nil {
		return fmt.Errorf("%s: %w", c.describe(), err)
	}
	if len(m.j.st.Changes) == m.crashAt {
		return fmt.Errorf("%s: %w", c.describe(), errCrash)
	}
	if err := op(); err != nil {
		if derr := m.j.drop(len(m.j.st.Changes) - 1); derr != nil {
			return errors.Join(err, derr)
		}
		return err
	}
	return nil
}

func (m *Manager) setLink(link netlink.Link) error {
	attrs := link.Attrs()
	lc := linkChange{OldMTU: attrs.MTU, WasUp: attrs.Flags&net.FlagUp != 0}
	if m.spec.MTU != 0 && m.spec.MTU != attrs.MTU {
		lc.MTU = m.spec.MTU
	}
	if lc.MTU == 0 && lc.WasUp {
		return nil
	}
	return m.do(change{Link: &lc}, func() error {
		if lc.MTU != 0 {
			if err := m.env.nl.LinkSetMTU(link, lc.MTU); err != nil {
				return fmt.Errorf("set mtu %d: %w", lc.MTU, err)
			}
		}
		if !lc.WasUp {
			if err := m.env.nl.LinkSetUp(link); err != nil {
				return fmt.Errorf("set link up: %w", err)
			}
		}
		return nil
	})
}

// checkAddrsFree refuses addresses already on the link, so the journal
// never claims (and an undo never deletes) one that someone else configured.
func (m *Manager) checkAddrsFree(link netlink.Link) error {
	if len(m.spec.Addresses) == 0 {
		return nil
	}
	existing, err := m.env.nl.AddrList(link, unix.AF_UNSPEC)
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range m.spec.Addresses {
		ip := a.Addr().AsSlice()
		for _, e := range existing {
			if e.IPNet.IP.Equal(ip) {
				return fmt.Errorf("add address %s: %s already on %s", a, e.IPNet, m.spec.Link)
			}
		}
	}
	return nil
}

func (m *Manager) addAddr(link netlink.Link, a netip.Prefix) error {
	return m.do(change{Addr: &a}, func() error {
		if err := m.env.nl.AddrAdd(link, &netlink.Addr{IPNet: ipNet(a)}); err != nil {
			return fmt.Errorf("add address %s: %w", a, err)
		}
		return nil
	})
}

// addRoutes adds main-table routes with one journal write for all of them:
// a subnet router may have thousands, and rewriting the journal per route
// would be quadratic. Recording a route that is then not added is
// harmless; its revert finds nothing to delete, and the deletion names our
// protocol and link, so it cannot hit someone else's route.
func (m *Manager) addRoutes(prefixes []netip.Prefix) error {
	var cs []change
	for _, p := range prefixes {
		if p.Bits() == 0 {
			continue // covered by the full-tunnel table
		}
		cs = append(cs, change{Route: &routeChange{Dst: p, Table: tableMain}})
	}
	if len(cs) == 0 {
		return nil
	}
	first := len(m.j.st.Changes)
	if err := m.j.recordAll(cs); err != nil {
		return fmt.Errorf("routes: %w", err)
	}
	for i, c := range cs {
		if first+i+1 == m.crashAt {
			return fmt.Errorf("%s: %w", c.describe(), errCrash)
		}
		if err := m.env.nl.RouteAdd(netlinkRoute(m.j.st.Index, *c.Route)); err != nil {
			err = fmt.Errorf("add route %s table %d: %w", c.Route.Dst, c.Route.Table, err)
			// Routes from i on were not added.
			m.j.st.Changes = m.j.st.Changes[:first+i]
			if serr := m.j.save(); serr != nil {
				return errors.Join(err, serr)
			}
			return err
		}
	}
	return nil
}

func (m *Manager) addRoute(p netip.Prefix, table int) error {
	rc := routeChange{Dst: p, Table: table}
	return m.do(change{Route: &rc}, func() error {
		if err := m.env.nl.RouteAdd(netlinkRoute(m.j.st.Index, rc)); err != nil {
			return fmt.Errorf("add route %s table %d: %w", p, table, err)
		}
		return nil
	})
}

// netlinkRoute is rc as a route via the link with the given index. Scope
// link for IPv4 is what `ip route add ... dev` gives a route without a
// gateway.
func netlinkRoute(index int, rc routeChange) *netlink.Route {
	r := &netlink.Route{
		LinkIndex: index,
		Dst:       ipNet(rc.Dst),
		Table:     rc.Table,
		Protocol:  Protocol,
		Family:    family(rc.Dst),
	}
	if rc.Dst.Addr().Is4() {
		r.Scope = netlink.SCOPE_LINK
	}
	return r
}

func (m *Manager) addRule(rc ruleChange) error {
	return m.do(change{Rule: &rc}, func() error {
		if err := m.env.nl.RuleAdd(netlinkRule(rc)); err != nil {
			return fmt.Errorf("add ipv%d rule priority %d: %w", rc.Family, rc.Priority, err)
		}
		return nil
	})
}

func netlinkRule(rc ruleChange) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = unix.AF_INET
	if rc.Family == 6 {
		r.Family = unix.AF_INET6
	}
	r.Priority = rc.Priority
	r.Table = rc.Table
	r.Mark = rc.Mark
	r.Invert = rc.Invert
	if rc.Suppress != nil {
		r.SuppressPrefixlen = *rc.Suppress
	}
	r.Protocol = Protocol
	return r
}

func (m *Manager) setSysctl(key, val string) error {
	old, err := m.env.readSysctl(key)
	if err != nil {
		return fmt.Errorf("read sysctl %s: %w", key, err)
	}
	if old == val {
		return nil
	}
	return m.do(change{Sysctl: &sysctlChange{Key: key, Old: old, New: val}}, func() error {
		if err := m.env.writeSysctl(key, val); err != nil {
			return fmt.Errorf("set sysctl %s=%s: %w", key, val, err)
		}
		return nil
	})
}

func (m *Manager) addMasquerade() error {
	name := NFTTableName(m.spec.Link)
	// A table of that name that is not ours must survive our undo, so it is
	// refused before the journal could claim it.
	exists, err := m.env.nftTableExists(name)
	if err != nil {
		return fmt.Errorf("masquerade: %w", err)
	}
	if exists {
		return fmt.Errorf("masquerade: nftables table inet %s already exists", name)
	}
	return m.do(change{NFT: &nftChange{Family: "inet", Name: name}}, func() error {
		if err := m.env.addMasquerade(name, m.spec.Link); err != nil {
			return fmt.Errorf("masquerade: %w", err)
		}
		return nil
	})
}

// AddRoute routes p via the link in the main table and records it, for a
// configuration reload. A route already added is not an error. A /0 prefix
// is accepted, as a no-op, only if Apply set up the full tunnel for its
// family.
func (m *Manager) AddRoute(p netip.Prefix) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.done {
		return ErrUndone
	}
	if err := checkRoute(p, m.spec.FullTunnel); err != nil {
		return fmt.Errorf("routing: %w", err)
	}
	if p.Bits() == 0 {
		return m.checkDefault(p)
	}
	if m.findRoute(p) >= 0 {
		return nil
	}
	if err := m.addRoute(p, tableMain); err != nil {
		return fmt.Errorf("routing: %s: %w", m.spec.Link, err)
	}
	return nil
}

// DelRoute removes a route that Apply or AddRoute added. Removing one that
// is not there is an error, and so is a /0: the full tunnel lives as long
// as the Manager.
func (m *Manager) DelRoute(p netip.Prefix) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.done {
		return ErrUndone
	}
	if err := checkRoute(p, m.spec.FullTunnel); err != nil {
		return fmt.Errorf("routing: %w", err)
	}
	if p.Bits() == 0 {
		return fmt.Errorf("routing: %s: delete route %s: the full tunnel is switched off by Undo and a new Apply", m.spec.Link, p)
	}
	i := m.findRoute(p)
	if i < 0 {
		return fmt.Errorf("routing: %s: delete route %s: not added by this manager", m.spec.Link, p)
	}
	if err := revertRoute(m.env, m.j.st.Index, *m.j.st.Changes[i].Route); err != nil {
		return fmt.Errorf("routing: %s: %w", m.spec.Link, err)
	}
	if err := m.j.drop(i); err != nil {
		return fmt.Errorf("routing: %s: delete route %s: %w", m.spec.Link, p, err)
	}
	return nil
}

// Routes returns the main-table routes currently managed, in the order
// they were added.
func (m *Manager) Routes() []netip.Prefix {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []netip.Prefix
	for _, c := range m.j.st.Changes {
		if c.Route != nil && c.Route.Table == tableMain {
			out = append(out, c.Route.Dst)
		}
	}
	return out
}

// checkDefault accepts a /0 only if Apply set up the full tunnel for its
// family; switching a family's full tunnel on takes a new Apply.
func (m *Manager) checkDefault(p netip.Prefix) error {
	for _, c := range m.j.st.Changes {
		if c.Route != nil && c.Route.Table == m.spec.Table && c.Route.Dst == p {
			return nil
		}
	}
	return fmt.Errorf("routing: %s: add route %s: no full tunnel for this family; Undo and Apply again with it", m.spec.Link, p)
}

func (m *Manager) findRoute(p netip.Prefix) int {
	for i, c := range m.j.st.Changes {
		if c.Route != nil && c.Route.Table == tableMain && c.Route.Dst == p {
			return i
		}
	}
	return -1
}

// Undo reverts every recorded change in reverse order and removes the
// journal. If some revert fails, the others are still attempted, the failed
// changes stay in the journal (so UndoFromState can retry) and the error
// names them. Undo after a successful Undo returns nil.
func (m *Manager) Undo() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.done {
		return nil
	}
	err := m.revertAll()
	if err != nil {
		return fmt.Errorf("routing: undo %s: %w", m.spec.Link, err)
	}
	m.done = true
	m.env.close()
	return nil
}

// Close releases the Manager's OS handles without reverting anything: the
// configuration and its journal stay, for UndoFromState. A daemon that
// leaves its routes in place on exit calls Close instead of Undo.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.done {
		return nil
	}
	m.done = true
	m.env.close()
	return nil
}

func (m *Manager) revertAll() error {
	return revertJournal(m.env, m.j)
}

// UndoFromState reverts the changes recorded in the journal for link in
// stateDir (empty means DefaultStateDir) and removes it, for `stt-tun down`
// when the daemon is gone. Objects that are already gone are fine: when the
// link vanished with its process, so did its addresses and routes, and only
// rules, sysctls and the nftables table are left to revert. It is
// idempotent in effect; a second call finds no journal. A missing journal
// gives an error wrapping fs.ErrNotExist, a malformed one ErrJournalCorrupt.
//
// UndoFromState acts in the calling OS thread's network namespace.
func UndoFromState(stateDir, link string) error {
	if err := checkLinkName(link); err != nil {
		return fmt.Errorf("routing: undo: %w", err)
	}
	j, err := readJournal(StatePath(stateDir, link))
	if err != nil {
		return fmt.Errorf("routing: undo %s: %w", link, err)
	}
	if j.st.Link != link {
		return fmt.Errorf("routing: undo %s: %s: %w: it is for link %q", link, j.path, ErrJournalCorrupt, j.st.Link)
	}
	env, err := openEnv()
	if err != nil {
		return fmt.Errorf("routing: undo %s: %w", link, err)
	}
	defer env.close()
	if err := revertJournal(env, j); err != nil {
		return fmt.Errorf("routing: undo %s: %w", link, err)
	}
	return nil
}

// revertJournal reverts j's changes newest first. Changes that could not be
// reverted stay in the journal; if there are none, it is removed.
func revertJournal(env *osEnv, j *journal) error {
	// Link-bound changes died with the link if it is gone. The ifindex is
	// looked up because a new link may carry the old name; the name, kind and
	// mark are compared because after the namespace was made anew another link
	// may have the old index. Only on our own link are its addresses, routes
	// and state ours to undo.
	linkPresent := true
	l, err := env.nl.LinkByIndex(j.st.Index)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) && !errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("find link %d: %w", j.st.Index, err)
		}
		linkPresent = false
	} else if !tun.IsOwn(l, j.st.Link) {
		linkPresent = false
	}
	var errs []error
	var failed []change
	for i := len(j.st.Changes) - 1; i >= 0; i-- {
		c := j.st.Changes[i]
		if err := revert(env, j.st.Index, linkPresent, c); err != nil {
			errs = append(errs, err)
			failed = append([]change{c}, failed...)
		}
	}
	if len(errs) == 0 {
		return j.remove()
	}
	j.st.Changes = failed
	if err := j.save(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// gone reports an error saying the object to remove is not there.
func gone(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) ||
		errors.Is(err, unix.ENODEV) || errors.Is(err, unix.EADDRNOTAVAIL)
}

func revert(env *osEnv, index int, linkPresent bool, c change) error {
	switch {
	case c.Link != nil:
		if !linkPresent {
			return nil
		}
		return revertLink(env, index, *c.Link)
	case c.Addr != nil:
		if !linkPresent {
			return nil
		}
		a := &netlink.Addr{IPNet: ipNet(*c.Addr)}
		link := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: index}}
		if err := env.nl.AddrDel(link, a); err != nil && !gone(err) {
			return fmt.Errorf("delete address %s: %w", *c.Addr, err)
		}
		return nil
	case c.Route != nil:
		if !linkPresent {
			return nil
		}
		return revertRoute(env, index, *c.Route)
	case c.Rule != nil:
		if err := env.nl.RuleDel(netlinkRule(*c.Rule)); err != nil && !gone(err) {
			return fmt.Errorf("delete ipv%d rule priority %d: %w", c.Rule.Family, c.Rule.Priority, err)
		}
		return nil
	case c.Sysctl != nil:
		return revertSysctl(env, *c.Sysctl)
	case c.NFT != nil:
		return env.delNFTTable(c.NFT.Name)
	}
	return fmt.Errorf("%w: empty change", ErrJournalCorrupt)
}

func revertLink(env *osEnv, index int, lc linkChange) error {
	link, err := env.nl.LinkByIndex(index)
	if err != nil {
		if gone(err) || errors.As(err, new(netlink.LinkNotFoundError)) {
			return nil
		}
		return fmt.Errorf("restore link: %w", err)
	}
	if link.Attrs().Alias != tun.LinkAlias {
		return nil // not ours (any more); see revertJournal
	}
	if !lc.WasUp && link.Attrs().Flags&net.FlagUp != 0 {
		if err := env.nl.LinkSetDown(link); err != nil && !gone(err) {
			return fmt.Errorf("set link down: %w", err)
		}
	}
	// Restore the MTU only if it is still ours, so a later change stands.
	if lc.MTU != 0 && link.Attrs().MTU == lc.MTU {
		if err := env.nl.LinkSetMTU(link, lc.OldMTU); err != nil && !gone(err) {
			return fmt.Errorf("restore mtu %d: %w", lc.OldMTU, err)
		}
	}
	return nil
}

func revertRoute(env *osEnv, index int, rc routeChange) error {
	if err := env.nl.RouteDel(netlinkRoute(index, rc)); err != nil && !gone(err) {
		return fmt.Errorf("delete route %s table %d: %w", rc.Dst, rc.Table, err)
	}
	return nil
}

func revertSysctl(env *osEnv, sc sysctlChange) error {
	cur, err := env.readSysctl(sc.Key)
	if err != nil {
		if gone(err) {
			return nil
		}
		return fmt.Errorf("read sysctl %s: %w", sc.Key, err)
	}
	if cur != sc.New {
		return nil // changed by someone else since; theirs stands
	}
	if err := env.writeSysctl(sc.Key, sc.Old); err != nil {
		return fmt.Errorf("restore sysctl %s=%s: %w", sc.Key, sc.Old, err)
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{
		IP:   p.Addr().AsSlice(),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}
}

func family(p netip.Prefix) int {
	if p.Addr().Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}
