package routing

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"reflect"
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

	// carried is how many changes at the start of the journal were taken
	// over from a dead run (takeOver); the first claimed of them have been
	// claimed by this Apply.
	carried, claimed int

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
// exists and its link is gone (the daemon that made it died), Apply takes it
// over (see takeOver); if its link still exists, Apply changes nothing and
// returns an error wrapping ErrJournalExists.
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
	path := StatePath(s.StateDir, s.Link)
	j, err := createJournal(path, s.Link, link.Attrs().Index)
	var carried int
	if errors.Is(err, ErrJournalExists) {
		var terr error
		j, carried, terr = takeOver(env, path, s.Link, link.Attrs().Index)
		if terr != nil {
			err = fmt.Errorf("%w; not taken over: %w", err, terr)
		} else {
			err = nil
		}
	}
	if err != nil {
		env.close()
		return nil, fmt.Errorf("routing: apply %s: %w", s.Link, err)
	}
	m := &Manager{spec: s, env: env, j: j, crashAt: crashAt, carried: carried}
	if err := m.apply(link); err != nil {
		err = fmt.Errorf("routing: apply %s: %w", s.Link, err)
		if errors.Is(err, errCrash) {
			env.close()
			return nil, err
		}
		// What was taken over from a dead run stays, in the journal, for
		// `down`: a failed up must not open the kill switch.
		if uerr := revertFrom(m.env, m.j, m.carried); uerr != nil {
			err = errors.Join(err, fmt.Errorf("routing: roll back %s: %w", s.Link, uerr))
		}
		env.close()
		return nil, err
	}
	if err := m.releaseCarried(); err != nil {
		// As for a failed step: the new configuration goes, what is left of
		// the old one stays in the journal for `down`.
		err = fmt.Errorf("routing: apply %s: remove what the previous run left: %w", s.Link, err)
		if uerr := revertFrom(m.env, m.j, m.carried); uerr != nil {
			err = errors.Join(err, fmt.Errorf("routing: roll back %s: %w", s.Link, uerr))
		}
		env.close()
		return nil, err
	}
	m.crashAt = 0
	return m, nil
}

// takeOver adopts the journal a dead run left for link, so that a new Apply
// replaces its configuration without a moment in which the full tunnel's
// traffic could leak: the rules, kill switch, sysctls and nftables table it
// recorded stay in effect, and Apply claims those it would make again
// (Manager.claim). It applies only when the journal's link is gone, as it
// is once the daemon that held the TUN has died; then the changes bound to
// that link (its state, addresses and routes) went with it and are
// forgotten. A journal whose link still exists is refused: another process
// may be using it, and `down` must decide. takeOver returns the journal,
// rewritten for the new link with the old changes that are still in effect
// first, and how many those are.
func takeOver(env *osEnv, path, link string, index int) (*journal, int, error) {
	j, err := readJournal(path)
	if err != nil {
		return nil, 0, err
	}
	if j.st.Link != link {
		return nil, 0, fmt.Errorf("%s: %w: it is for link %q", path, ErrJournalCorrupt, j.st.Link)
	}
	if j.st.Index == index {
		return nil, 0, fmt.Errorf("it was made for this very link (ifindex %d): the run that made it may still be going", index)
	}
	// After the namespace was made anew another link may have the old index; only
	// our own TUN device at that index means the run may still be going.
	if l, err := env.nl.LinkByIndex(j.st.Index); err == nil {
		if tun.IsOwn(l, j.st.Link) {
			return nil, 0, fmt.Errorf("the link it was made for (ifindex %d) still exists: the run that made it may still be going", j.st.Index)
		}
	} else if !errors.As(err, new(netlink.LinkNotFoundError)) && !errors.Is(err, unix.ENODEV) {
		return nil, 0, fmt.Errorf("find link %d: %w", j.st.Index, err)
	}
	var kept []change
	for _, c := range j.st.Changes {
		if !c.linkBound() {
			kept = append(kept, c)
		}
	}
	old := j.st
	j.st.Index = index
	j.st.Changes = append([]change{}, kept...)
	if err := j.save(); err != nil {
		j.st = old
		return nil, 0, err
	}
	return j, len(kept), nil
}

// linkBound reports whether the change lives and dies with the journal's
// link.
func (c change) linkBound() bool {
	return c.Link != nil || c.Addr != nil || c.Route != nil
}

// claim reports whether c, or for a sysctl a change setting the same key to
// the same value, is among the changes taken over from a dead run and not
// yet claimed. Such a change is in effect and in the journal already. A
// claimed change moves to just after those claimed before it, so that what
// is not claimed by the end of Apply is j.st.Changes[claimed:carried].
func (m *Manager) claim(c change) bool {
	for i := m.claimed; i < m.carried; i++ {
		o := m.j.st.Changes[i]
		same := reflect.DeepEqual(o, c)
		if c.Sysctl != nil && o.Sysctl != nil {
			same = o.Sysctl.Key == c.Sysctl.Key && o.Sysctl.New == c.Sysctl.New
		}
		if !same {
			continue
		}
		// Keep the carried changes in their recorded order, claimed first.
		cs := m.j.st.Changes
		copy(cs[m.claimed+1:i+1], cs[m.claimed:i])
		cs[m.claimed] = o
		m.claimed++
		return true
	}
	return false
}

// releaseCarried reverts what a dead run left and the new configuration did
// not claim, and drops it from the journal.
func (m *Manager) releaseCarried() error {
	if m.claimed == m.carried {
		return nil
	}
	var errs []error
	var failed []change
	for i := m.carried - 1; i >= m.claimed; i-- {
		c := m.j.st.Changes[i]
		if err := revert(m.env, m.j.st.Index, true, c); err != nil {
			errs = append(errs, err)
			failed = append([]change{c}, failed...)
		}
	}
	rest := append(append([]change{}, m.j.st.Changes[:m.claimed]...), failed...)
	m.j.st.Changes = append(rest, m.j.st.Changes[m.carried:]...)
	m.carried = m.claimed + len(failed)
	if err := m.j.save(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
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
// The routes go in before the rules, so that no packet is steered to the
// table while it is still empty (and would fall through to the uplink).
func (m *Manager) addFullTunnel(family int) error {
	def := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	if family == 6 {
		def = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	}
	if m.spec.KillSwitch {
		if err := m.addKillSwitch(family); err != nil {
			return err
		}
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
	if m.claim(c) {
		// Taken over from a dead run: in effect still, or not (the namespace was
		// made anew, someone removed it by hand). Made again; found there, fine.
		if err := op(); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("%s: %w", c.describe(), err)
		}
		return nil
	}
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

func (m *Manager) addKillSwitch(family int) error {
	kc := killSwitchChange{Family: family, Table: m.spec.Table}
	return m.do(change{KillSwitch: &kc}, func() error {
		if err := m.env.nl.RouteAdd(killSwitchRoute(kc)); err != nil {
			return fmt.Errorf("add ipv%d kill switch table %d: %w", family, kc.Table, err)
		}
		return nil
	})
}

// killSwitchRoute is "unreachable default proto 83 metric KillSwitchMetric"
// in the change's table. It names no link, so the kernel keeps it when the
// link goes; its deletion names its type, protocol and metric, so it cannot
// hit another route.
func killSwitchRoute(kc killSwitchChange) *netlink.Route {
	r := &netlink.Route{
		Dst:      ipNet(netip.PrefixFrom(netip.IPv4Unspecified(), 0)),
		Table:    kc.Table,
		Type:     unix.RTN_UNREACHABLE,
		Protocol: Protocol,
		Priority: KillSwitchMetric,
		Family:   unix.AF_INET,
	}
	if kc.Family == 6 {
		r.Dst = ipNet(netip.PrefixFrom(netip.IPv6Unspecified(), 0))
		r.Family = unix.AF_INET6
	}
	return r
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
	// Claimed first: a dead run set the value, and its record holds the value
	// to restore. Unless the value is not set any more (the namespace was made
	// anew, or someone changed it): then what is there now is what to restore.
	if m.claim(change{Sysctl: &sysctlChange{Key: key, New: val}}) {
		cur, err := m.env.readSysctl(key)
		if err != nil {
			return fmt.Errorf("read sysctl %s: %w", key, err)
		}
		if cur == val {
			return nil
		}
		rec := m.j.st.Changes[m.claimed-1].Sysctl
		rec.Old = cur
		if err := m.j.save(); err != nil {
			return fmt.Errorf("sysctl %s: %w", key, err)
		}
		if err := m.env.writeSysctl(key, val); err != nil {
			return fmt.Errorf("set sysctl %s=%s: %w", key, val, err)
		}
		return nil
	}
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
	// A dead run's table, taken over: made again if it is gone.
	if m.claim(change{NFT: &nftChange{Family: "inet", Name: name}}) {
		if exists {
			return nil
		}
		if err := m.env.addMasquerade(name, m.spec.Link); err != nil {
			return fmt.Errorf("masquerade: %w", err)
		}
		return nil
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

// HoldsKillSwitch reports whether the journal for link in stateDir (empty
// means DefaultStateDir) records a kill switch: then undoing it would let
// the full tunnel's traffic out by the uplink. A missing journal gives
// false and an error wrapping fs.ErrNotExist, a malformed one
// ErrJournalCorrupt.
func HoldsKillSwitch(stateDir, link string) (bool, error) {
	if err := checkLinkName(link); err != nil {
		return false, fmt.Errorf("routing: %w", err)
	}
	j, err := readJournal(StatePath(stateDir, link))
	if err != nil {
		return false, fmt.Errorf("routing: %s: %w", link, err)
	}
	for _, c := range j.st.Changes {
		if c.KillSwitch != nil {
			return true, nil
		}
	}
	return false, nil
}

// revertJournal reverts j's changes newest first. Changes that could not be
// reverted stay in the journal; if there are none, it is removed.
func revertJournal(env *osEnv, j *journal) error {
	return revertFrom(env, j, 0)
}

// revertFrom reverts j's changes from index from on, newest first. Those
// before from, and those that could not be reverted, stay in the journal;
// if there are none, it is removed.
func revertFrom(env *osEnv, j *journal, from int) error {
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
	for i := len(j.st.Changes) - 1; i >= from; i-- {
		c := j.st.Changes[i]
		if err := revert(env, j.st.Index, linkPresent, c); err != nil {
			errs = append(errs, err)
			failed = append([]change{c}, failed...)
		}
	}
	if len(errs) == 0 && from == 0 {
		return j.remove()
	}
	j.st.Changes = append(j.st.Changes[:from:from], failed...)
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
	case c.KillSwitch != nil:
		// Not bound to the link: after a crash it is the one route left.
		if err := env.nl.RouteDel(killSwitchRoute(*c.KillSwitch)); err != nil && !gone(err) {
			return fmt.Errorf("delete ipv%d kill switch table %d: %w", c.KillSwitch.Family, c.KillSwitch.Table, err)
		}
		return nil
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
