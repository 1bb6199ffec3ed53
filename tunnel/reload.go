package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/gaissmai/bart"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/stt"
)

// ErrRestartNeeded marks a reload refused because it changes a setting that only a
// restart of the interface can change.
var ErrRestartNeeded = errors.New("restart needed")

// sttPeerConfig is the node's view of a configured peer; p is the tunnel's peer, the
// node peer's Tag.
func sttPeerConfig(pc config.Peer, p *peer) stt.PeerConfig {
	return stt.PeerConfig{
		Name:                pc.Name,
		Endpoint:            pc.Endpoint,
		PublicKey:           pc.PublicKey,
		PersistentKeepalive: pc.PersistentKeepalive,
		Tag:                 p,
		WSURL:               pc.WSURL,
		WSProxy:             pc.WSProxy,
		WSCAFile:            pc.WSCAFile,
		WSInsecure:          pc.WSInsecure,
	}
}

// routesOf lists the OS routes a configuration asks for. A /0 means "any source" for
// a peer, and the default route only for the exit peer, where routing turns it into the
// policy-routed full tunnel.
func routesOf(cfg *config.Config) []netip.Prefix {
	var routes []netip.Prefix
	for _, pc := range cfg.Peers {
		if !pc.Route {
			continue
		}
		for _, pfx := range pc.AllowedPrefixes {
			if pfx.Bits() != 0 || pc.Name == cfg.Interface.ExitPeer {
				routes = append(routes, pfx)
			}
		}
	}
	return routes
}

// Reload applies a new configuration to the running tunnel; see ReloadChanges.
func (t *Tunnel) Reload(cfg *config.Config) error {
	_, err := t.ReloadChanges(cfg)
	return err
}

// ReloadFile reads the configuration file at path and applies it as ReloadChanges
// does. A file that does not load is refused, and counted, like any other refusal.
func (t *Tunnel) ReloadFile(path string) ([]string, error) {
	cfg, err := config.Load(path)
	if err != nil {
		t.reloadsRefused.Add(1)
		t.log.Warn("reload refused; the running configuration stays", "err", err)
		return nil, err
	}
	return t.ReloadChanges(cfg)
}

// ReloadChanges applies a new configuration to the running tunnel without tearing down
// what did not change, and describes what did, one line per change.
//
// Peers may be added and removed, and a peer's allowed_prefixes, route, endpoint,
// persistent_keepalive, public_key and WebSocket settings changed. The prefix table is
// swapped in one step, only the routes that differ are added or deleted, and the
// sessions of the peers whose settings did not change are untouched. A changed peer
// keeps its session too, unless its new public_key is not the key the session was made
// with. The metrics listener may move, and [interface] mss_clamp change. The seed file is
// read again and applied (seeds.go): a planned rotation, or a new seed, without a restart.
//
// Everything else is fixed while the tunnel runs, the private key and the network the
// seed file names among them: a configuration that changes it is refused with an error that wraps
// ErrRestartNeeded and names the keys ("restart needed: interface.mtu changed from 1420
// to 1380"). Whenever ReloadChanges returns an error, the tunnel runs on as it was.
//
// cfg must come from config.Load or config.Parse; it is checked again all the same.
func (t *Tunnel) ReloadChanges(cfg *config.Config) ([]string, error) {
	t.reloadMu.Lock()
	defer t.reloadMu.Unlock()
	changes, err := t.reload(cfg)
	if err != nil {
		t.reloadsRefused.Add(1)
		t.log.Warn("reload refused; the running configuration stays", "err", err)
		return nil, err
	}
	t.reloadsApplied.Add(1)
	if len(changes) == 0 {
		t.log.Info("reloaded: nothing changed")
	}
	for _, c := range changes {
		if w, ok := strings.CutPrefix(c, "warning: "); ok {
			t.log.Warn(w)
			continue
		}
		t.log.Info("reloaded: " + c)
	}
	return changes, nil
}

// peerPlan is what a reload does with one peer of the new configuration.
type peerPlan struct {
	cfg     config.Peer
	p       *peer    // the peer in the new table: the running one, or a new one
	added   bool     // not in the running configuration
	changed []string // keys that differ from the running configuration
	update  bool     // the node's settings for the peer change
}

func (t *Tunnel) reload(cfg *config.Config) ([]string, error) {
	if t.closing() {
		return nil, errors.New("reload: the tunnel is stopping")
	}
	if cfg == nil {
		return nil, errors.New("reload: no configuration")
	}
	if _, err := config.Parse([]byte(cfg.String()), cfg.Path); err != nil {
		return nil, fmt.Errorf("reload: invalid configuration: %w", err)
	}
	t.mu.RLock()
	old, running, oldMetrics := t.cfg, t.peers, t.metrics
	t.mu.RUnlock()
	if err := restartNeeded(old, cfg); err != nil {
		return nil, err
	}
	seeds, err := t.checkSecrets(cfg)
	if err != nil {
		return nil, err
	}

	// Plan: which peers are new, changed, the same or gone; the table and routes that
	// follow.
	byName := make(map[string]*peer, len(running))
	for _, p := range running {
		byName[p.cfg.Name] = p
	}
	changes := slices.Clone(seeds.changes)
	plans := make([]*peerPlan, 0, len(cfg.Peers))
	kept := make(map[string]bool, len(cfg.Peers))
	for _, pc := range cfg.Peers {
		pl := &peerPlan{cfg: pc, p: byName[pc.Name]}
		kept[pc.Name] = true
		if pl.p == nil {
			pl.added = true
			pl.p = &peer{cfg: pc}
			changes = append(changes, fmt.Sprintf("peer %q added", pc.Name))
		} else {
			var sttKeys []string
			pl.changed, sttKeys = peerDiff(pl.p.cfg, pc)
			pl.update = len(sttKeys) > 0
			if len(pl.changed) > 0 {
				line := fmt.Sprintf("peer %q: %s changed", pc.Name, strings.Join(pl.changed, ", "))
				if pc.PublicKey != nil {
					if k, ok := pl.p.sp.PublicKey(); ok && hasAnySession(pl.p.sp) && k != *pc.PublicKey {
						line += " (session closed: the new public_key is not the key it was made with)"
					}
				}
				changes = append(changes, line)
			}
		}
		plans = append(plans, pl)
	}
	var removed []*peer
	for _, p := range running {
		if !kept[p.cfg.Name] {
			removed = append(removed, p)
			changes = append(changes, fmt.Sprintf("peer %q removed", p.cfg.Name))
		}
	}
	var addRoutes, delRoutes []netip.Prefix
	if t.route != nil {
		addRoutes, delRoutes = diffPrefixes(routesOf(old), routesOf(cfg))
		for _, r := range addRoutes {
			changes = append(changes, "route "+r.String()+" added")
		}
		for _, r := range delRoutes {
			changes = append(changes, "route "+r.String()+" deleted")
		}
	}
	if cfg.Interface.MSSClamp != old.Interface.MSSClamp {
		changes = append(changes, fmt.Sprintf("interface.mss_clamp changed from %t to %t", old.Interface.MSSClamp, cfg.Interface.MSSClamp))
	}
	mc := &metricsChange{t: t, from: oldMetrics, to: cfg.Metrics.Listen}
	metricsMoves := cfg.Metrics.Listen != old.Metrics.Listen
	if metricsMoves {
		switch {
		case cfg.Metrics.Listen == "":
			changes = append(changes, "metrics listener on "+old.Metrics.Listen+" closed")
		default:
			changes = append(changes, "metrics listen "+cfg.Metrics.Listen)
		}
	}

	// Act, each step undone if a later one fails, up to the one step that cannot fail.
	var undo []func()
	fail := func(err error) ([]string, error) {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		return nil, fmt.Errorf("reload: %w", err)
	}
	if metricsMoves {
		if err := mc.prepare(); err != nil {
			return fail(err)
		}
		undo = append(undo, mc.abort)
	}
	for _, pl := range plans {
		if !pl.added {
			continue
		}
		// A [[peer]] always wins over a discovered member of the same name.
		t.yieldMemberName(pl.cfg.Name)
		sp, err := t.node.AddPeer(sttPeerConfig(pl.cfg, pl.p))
		if err != nil {
			return fail(fmt.Errorf("add peer %s: %w", pl.cfg.Name, err))
		}
		pl.p.sp = sp
		name := pl.cfg.Name
		undo = append(undo, func() { t.node.RemovePeer(name) })
	}
	for _, r := range addRoutes {
		if err := t.route.AddRoute(r); err != nil {
			return fail(err)
		}
		undo = append(undo, func() {
			if err := t.route.DelRoute(r); err != nil {
				t.log.Error("reload: undo route", "route", r, "err", err)
			}
		})
	}
	for _, r := range delRoutes {
		if err := t.route.DelRoute(r); err != nil {
			return fail(err)
		}
		undo = append(undo, func() {
			if err := t.route.AddRoute(r); err != nil {
				t.log.Error("reload: undo route deletion", "route", r, "err", err)
			}
		})
	}
	for _, pl := range plans {
		if !pl.update {
			continue
		}
		if err := pl.p.sp.Update(sttPeerConfig(pl.cfg, pl.p)); err != nil {
			return fail(err)
		}
		p, was := pl.p, pl.p.cfg
		undo = append(undo, func() {
			if err := p.sp.Update(sttPeerConfig(was, p)); err != nil {
				t.log.Error("reload: undo peer update", "peer", was.Name, "err", err)
			}
		})
	}

	// Commit: the table, the peer list and the configuration change together.
	table := new(bart.Table[*peer])
	peers := make([]*peer, 0, len(plans))
	for _, pl := range plans {
		for _, pfx := range pl.cfg.AllowedPrefixes {
			table.Insert(pfx, pl.p)
		}
		peers = append(peers, pl.p)
	}
	for _, pl := range plans {
		t.setWSURL(pl.p, pl.cfg.WSURL)
	}
	if t.mesh != nil {
		t.mesh.mu.Lock()
		t.addMembersToTable(table)
		t.mesh.mu.Unlock()
	}
	changes = append(changes, t.reloadAdmins(old, cfg)...)
	t.mu.Lock()
	t.table.Store(table)
	for _, pl := range plans {
		pl.p.cfg = pl.cfg
	}
	t.peers = peers
	t.cfg = cfg
	t.mssClamp.Store(cfg.Interface.MSSClamp)
	var stopMetrics *metricsServer
	if metricsMoves {
		stopMetrics = mc.commit()
	}
	t.mu.Unlock()

	for _, p := range removed {
		t.node.RemovePeer(p.cfg.Name)
	}
	changes = append(changes, t.applySeedReload(seeds)...)
	if t.mesh != nil {
		t.remesh()
	}
	if stopMetrics != nil {
		stopMetrics.close()
	}
	// As Start does, give new endpoint names a moment to answer, so that the peers
	// that can be reached are when reload returns.
	t.awaitLookups(context.Background())
	for _, w := range t.runningLoopWarnings(cfg, peers) {
		changes = append(changes, "warning: "+w)
	}
	return changes, nil
}

// peerDiff names the keys in which two configurations of one peer differ, and those
// of them that the node itself uses.
func peerDiff(a, b config.Peer) (all, node []string) {
	type key struct {
		name string
		same bool
		node bool
	}
	keys := []key{
		{"endpoint", a.Endpoint == b.Endpoint, true},
		{"allowed_prefixes", slices.Equal(a.AllowedPrefixes, b.AllowedPrefixes), false},
		{"public_key", (a.PublicKey == nil) == (b.PublicKey == nil) && (a.PublicKey == nil || *a.PublicKey == *b.PublicKey), true},
		{"persistent_keepalive", a.PersistentKeepalive == b.PersistentKeepalive, true},
		{"route", a.Route == b.Route, false},
		{"ws_url", a.WSURL == b.WSURL, true},
		{"ws_proxy", a.WSProxy == b.WSProxy, true},
		{"ws_ca_file", a.WSCAFile == b.WSCAFile, true},
		{"ws_insecure", a.WSInsecure == b.WSInsecure, true},
	}
	for _, k := range keys {
		if k.same {
			continue
		}
		all = append(all, k.name)
		if k.node {
			node = append(node, k.name)
		}
	}
	if len(all) == 0 && !reflect.DeepEqual(a, b) {
		// A field this function does not know yet: let the node take it.
		all, node = []string{"settings"}, []string{"settings"}
	}
	return all, node
}

// diffPrefixes returns what is in to but not in from, and what is in from but not in
// to, ignoring /0 prefixes (the full tunnel, which restartNeeded checks) and order.
func diffPrefixes(from, to []netip.Prefix) (add, del []netip.Prefix) {
	in := func(ps []netip.Prefix, p netip.Prefix) bool { return slices.Contains(ps, p) }
	for _, p := range to {
		if p.Bits() != 0 && !in(from, p) && !in(add, p) {
			add = append(add, p)
		}
	}
	for _, p := range from {
		if p.Bits() != 0 && !in(to, p) && !in(del, p) {
			del = append(del, p)
		}
	}
	return add, del
}

// restartNeeded compares the settings that cannot change while the tunnel runs: every
// field of every section but the peers and [metrics], found by reflection so that a key
// added to the format later is covered without being named here; and the exit peer's
// default prefixes, which make the full tunnel.
func restartNeeded(old, cfg *config.Config) error {
	var msgs []string
	ov, nv := reflect.ValueOf(*old), reflect.ValueOf(*cfg)
	ct := ov.Type()
	for i := range ct.NumField() {
		f := ct.Field(i)
		switch f.Name {
		case "Path", "Peers", "Metrics", "Membership":
			continue
		}
		section := tomlName(f.Name)
		a, b := ov.Field(i), nv.Field(i)
		if f.Name == "Discovery" && old.Discovery.Enabled != cfg.Discovery.Enabled {
			if cfg.Discovery.Enabled {
				msgs = append(msgs, "[discovery] added")
			} else {
				msgs = append(msgs, "[discovery] removed")
			}
			continue
		}
		if f.Type.Kind() != reflect.Struct {
			if f.IsExported() && !reflect.DeepEqual(a.Interface(), b.Interface()) {
				msgs = append(msgs, section+" changed")
			}
			continue
		}
		for j := range f.Type.NumField() {
			sf := f.Type.Field(j)
			if !sf.IsExported() || reloadable[f.Name+"."+sf.Name] {
				continue
			}
			x, y := a.Field(j).Interface(), b.Field(j).Interface()
			if reflect.DeepEqual(x, y) {
				continue
			}
			key := tomlName(sf.Name)
			if sf.Name == "DisableUDP" {
				// The file says udp = true/false; the field is its negation.
				x, y = !x.(bool), !y.(bool)
			}
			msgs = append(msgs, fmt.Sprintf("%s.%s changed from %s to %s", section, key, showValue(key, x), showValue(key, y)))
		}
	}
	if ex := old.Interface.ExitPeer; ex != "" && cfg.Interface.ExitPeer == ex {
		da, db := defaultPrefixes(old.Peer(ex)), defaultPrefixes(cfg.Peer(ex))
		if !slices.Equal(da, db) {
			msgs = append(msgs, fmt.Sprintf("peer %q allowed_prefixes: the full tunnel's default prefixes changed from [%s] to [%s]",
				ex, joinPrefixes(da), joinPrefixes(db)))
		}
	}
	if len(msgs) > 0 {
		return fmt.Errorf("%w: %s", ErrRestartNeeded, strings.Join(msgs, "; "))
	}
	return nil
}

// reloadable are the fields outside the peers and [metrics] that a reload changes
// (section field "." key field).
var reloadable = map[string]bool{"Interface.MSSClamp": true}

// tomlNames are the configuration keys whose names are not their Go field's in
// snake case.
var tomlNames = map[string]string{
	"DisableUDP": "udp",
	"FwMark":     "fwmark",
	"WebSocket":  "websocket",
	"MeshIPv6":   "mesh_ipv6",
	"MSSClamp":   "mss_clamp",
}

// tomlName is the configuration key of a Config field: "ListenPort" → "listen_port",
// "TLSCert" → "tls_cert", "MTU" → "mtu".
func tomlName(field string) string {
	if n, ok := tomlNames[field]; ok {
		return n
	}
	r := []rune(field)
	var b strings.Builder
	for i, c := range r {
		upper := unicode.IsUpper(c)
		if upper && i > 0 {
			prevLower := unicode.IsLower(r[i-1]) || unicode.IsDigit(r[i-1])
			acronymEnd := unicode.IsUpper(r[i-1]) && i+1 < len(r) && unicode.IsLower(r[i+1])
			if prevLower || acronymEnd {
				b.WriteByte('_')
			}
		}
		b.WriteRune(unicode.ToLower(c))
	}
	return b.String()
}

// showValue writes a setting as the configuration file would.
func showValue(key string, v any) string {
	switch v := v.(type) {
	case string:
		return strconv.Quote(v)
	case time.Duration:
		return strconv.Quote(v.String())
	case uint32:
		if key == "fwmark" {
			return fmt.Sprintf("0x%x", v)
		}
	case []netip.Prefix:
		return quoteAll(v)
	case []netip.AddrPort:
		return quoteAll(v)
	case []string:
		q := make([]string, len(v))
		for i, s := range v {
			q[i] = strconv.Quote(s)
		}
		return "[" + strings.Join(q, ", ") + "]"
	}
	return fmt.Sprint(v)
}

// quoteAll writes a list as the configuration file would: ["a", "b"].
func quoteAll[T fmt.Stringer](v []T) string {
	q := make([]string, len(v))
	for i, x := range v {
		q[i] = strconv.Quote(x.String())
	}
	return "[" + strings.Join(q, ", ") + "]"
}

func defaultPrefixes(pc *config.Peer) []netip.Prefix {
	var out []netip.Prefix
	if pc == nil {
		return nil
	}
	for _, p := range pc.AllowedPrefixes {
		if p.Bits() == 0 {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(x, y netip.Prefix) int { return x.Addr().Compare(y.Addr()) })
	return out
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

// checkSecrets plans what the reload does with the seed file (seeds.go) and refuses a
// private key other than the one the node runs with: a new file name is caught by
// restartNeeded, new contents in the same file here.
func (t *Tunnel) checkSecrets(cfg *config.Config) (*seedReload, error) {
	seeds, err := t.planSeedReload(cfg.Interface.SeedFile)
	if err != nil {
		return nil, err
	}
	// LoadOrCreateKey would make a missing key file; a reload creates nothing.
	if _, err := os.Stat(cfg.Interface.KeyFile); err != nil {
		return nil, fmt.Errorf("reload: key file: %w", err)
	}
	key, _, err := config.LoadOrCreateKey(cfg.Interface.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("reload: %w", err)
	}
	if key.PublicKey() != t.node.PublicKey() {
		return nil, fmt.Errorf("%w: the private key in interface.key_file %s changed", ErrRestartNeeded, cfg.Interface.KeyFile)
	}
	return seeds, nil
}

// hasAnySession reports whether the peer has a session a new pin would close, confirmed
// by the peer yet or not.
func hasAnySession(sp *stt.Peer) bool {
	_, ok := sp.SessionID()
	return ok
}
