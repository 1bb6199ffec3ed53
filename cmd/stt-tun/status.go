package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/stt-tun/stt-tun/internal/ctl"
	"github.com/stt-tun/stt-tun/internal/statedir"
	"github.com/stt-tun/stt-tun/internal/status"
	"github.com/stt-tun/stt-tun/routing"
)

func statusCommand(e *env) *cli.Command {
	return &cli.Command{
		Name:      "status",
		Usage:     "show running interfaces and their peers",
		UsageText: "stt-tun status [--json] [--all] [--peer PATTERN]... [NAME]",
		Description: `Without NAME, shows every interface that has a daemon, and every one whose daemon
is gone (killed) but left its routing behind ("stt0: daemon gone, run 'stt-tun down
stt0'"); with NAME, only that one, and the exit status is 1 if its daemon is gone.
A NAME that is no interface's but a peer's (or a pattern such as 'web*' matching
peers' names) shows those peers on every running interface, as --peer does.
--json prints tunnel status objects: an array without NAME, one object with NAME;
"state" is "up", "starting" or "daemon_gone".

Each interface's peers are counted by state and path ("peers: 1000 total, 12 up (10
udp, 2 ws), 988 never connected") and listed with those that have a session first; past
those, 32 more are listed and the rest counted: --all lists every peer, --peer
PATTERN only those whose names match (in JSON too; peer_counts always counts all).

Examples:
   stt-tun status
   stt-tun status alpha
   stt-tun status --peer 'web*'
   stt-tun status --json | jq '.[].peers[] | {name, rx_bytes}'`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print JSON"},
			&cli.BoolFlag{Name: "all", Usage: "list every peer, not only those with a session and a few more"},
			&cli.StringSliceFlag{Name: "peer", Usage: "list only the peers whose names match `PATTERN` (a shell pattern; repeatable)"},
			timeoutFlag(5 * time.Second),
		},
		Action: func(c *cli.Context) error { return showStatus(c, e) },
	}
}

// showStatus is the status command: one interface's status, or every running one's.
func showStatus(c *cli.Context, e *env) error {
	dir := stateDir(c)
	ctx, cancel := context.WithTimeout(c.Context, flagDuration(c, "timeout"))
	defer cancel()
	dirErr := statedir.Check(dir)
	if dirErr != nil && !errors.Is(dirErr, fs.ErrNotExist) {
		return dirErr
	}

	view := peerView{all: c.Bool("all"), patterns: c.StringSlice("peer")}
	if c.Args().Present() {
		link, err := linkName(c, "status")
		if err != nil {
			return err
		}
		if dirErr != nil {
			return fmt.Errorf("%s is not up", link)
		}
		st, err := ctl.Status(ctx, ctl.SocketPath(dir, link))
		if errors.Is(err, ctl.ErrNotRunning) {
			gone, gerr := daemonGone(dir, link)
			switch {
			case gerr != nil:
				return fmt.Errorf("status %s: %w", link, gerr)
			case !gone:
				// Not an interface: perhaps peers' names.
				if name := c.Args().First(); name == link && len(view.patterns) == 0 {
					byPeer := peerView{all: view.all, patterns: []string{name}}
					all, failed, err := allStatus(ctx, dir)
					if err == nil && len(failed) == 0 && byPeer.anyPeerMatches(all) {
						return printStatus(c, e, dir, all, nil, byPeer)
					}
				}
				return fmt.Errorf("%s is not up", link)
			}
			if c.Bool("json") {
				if err := writeJSON(e.stdout, forJSON(goneStatus(link))); err != nil {
					return err
				}
			}
			return errors.New(goneLine(link, dir))
		}
		if err != nil {
			return fmt.Errorf("status %s: %w", link, err)
		}
		if c.Bool("json") {
			return writeJSON(e.stdout, view.filterPeers(forJSON(st)))
		}
		return renderStatusView(e.stdout, []status.Status{st}, dir, time.Now(), view)
	}
	if dirErr != nil {
		return printStatus(c, e, dir, []status.Status{}, nil, view)
	}
	all, failed, err := allStatus(ctx, dir)
	if err != nil {
		return err
	}
	return printStatus(c, e, dir, all, failed, view)
}

// allStatus asks every interface with a daemon for its status, and makes one up for
// every one whose daemon is gone; failed lists those that could not tell.
func allStatus(ctx context.Context, dir string) (all []status.Status, failed []string, err error) {
	socks, err := ctl.List(dir)
	if err != nil {
		return nil, nil, err
	}
	journals, err := routing.Journals(dir)
	if err != nil {
		return nil, nil, err
	}
	names := append(socks, journals...)
	slices.Sort(names)
	names = slices.Compact(names)
	all = []status.Status{}
	for _, name := range names {
		st, err := ctl.Status(ctx, ctl.SocketPath(dir, name))
		if errors.Is(err, ctl.ErrNotRunning) {
			g, gerr := daemonGone(dir, name)
			switch {
			case gerr != nil:
				failed = append(failed, fmt.Sprintf("%s: %v", name, gerr))
			case g:
				all = append(all, goneStatus(name))
			}
			// Else a socket without journal or daemon: nothing to undo; `down` removes it.
			continue
		}
		if err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", name, err))
			continue
		}
		all = append(all, st)
	}
	return all, failed, nil
}

// printStatus prints all as `status` does, through the view, then fails with the
// interfaces in failed.
func printStatus(c *cli.Context, e *env, dir string, all []status.Status, failed []string, view peerView) error {
	var err error
	if c.Bool("json") {
		out := make([]status.Status, len(all))
		for i, st := range all {
			out[i] = view.filterPeers(forJSON(st))
		}
		err = writeJSON(e.stdout, out)
	} else {
		err = renderStatusView(e.stdout, all, dir, time.Now(), view)
	}
	if err != nil {
		return err
	}
	if len(failed) > 0 {
		return errors.New(strings.Join(failed, "; "))
	}
	return nil
}

// daemonGone reports whether link's daemon died and left its routing behind: its
// routing journal is there and no process holds its lock.
func daemonGone(dir, link string) (bool, error) {
	fi, err := os.Lstat(routing.StatePath(dir, link))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if !fi.Mode().IsRegular() {
		return false, fmt.Errorf("%s is not a regular file", routing.StatePath(dir, link))
	}
	held, err := ctl.Held(dir, link)
	if err != nil {
		return false, err
	}
	if held {
		return false, fmt.Errorf("its daemon holds the lock but does not answer on %s", ctl.SocketPath(dir, link))
	}
	return true, nil
}

// goneStatus is what status shows of an interface whose daemon is gone.
func goneStatus(link string) status.Status {
	return status.Status{Interface: link, State: status.StateDaemonGone}
}

// goneLine is the one line that tells of an interface whose daemon is gone, with the
// command that cleans up after it: in state directory dir, named when not the default.
func goneLine(link, dir string) string {
	down := "stt-tun down " + link
	if filepath.Clean(dir) != DefaultStateDir {
		down = fmt.Sprintf("stt-tun --state-dir %s down %s", dir, link)
	}
	return fmt.Sprintf("%s: daemon gone, run '%s'", link, down)
}

// forJSON stamps a status with the schema version this program prints (the JSON is
// encoded here, from this program's types, whatever daemon version sent it) and turns
// absent lists into empty ones, so that scripts always find an array where
// docs/status-schema.md promises one.
func forJSON(st status.Status) status.Status {
	st.SchemaVersion = status.SchemaVersion
	st.State = state(st)
	if st.State == status.StateUp {
		c := status.CountPeers(st.Peers)
		st.PeerCounts = &c
	}
	if st.Addresses == nil {
		st.Addresses = []string{}
	}
	peers := make([]status.Peer, len(st.Peers))
	for i, p := range st.Peers {
		if p.AllowedPrefixes == nil {
			p.AllowedPrefixes = []string{}
		}
		peers[i] = p
	}
	st.Peers = peers
	if st.Mesh != nil {
		m := *st.Mesh
		if m.Reflected == nil {
			m.Reflected = []status.Reflection{}
		}
		if m.Bootstrap == nil {
			m.Bootstrap = []status.Bootstrap{}
		}
		if m.Admins == nil {
			m.Admins = []string{}
		}
		if m.Revoked == nil {
			m.Revoked = []status.Revoked{}
		}
		st.Mesh = &m
	}
	return st
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("write status: %w", err)
	}
	return nil
}

// renderStatus writes a human-readable view of each interface and its peers, relative
// to now, through the default view.
func renderStatus(w io.Writer, all []status.Status, dir string, now time.Time) error {
	return renderStatusView(w, all, dir, now, peerView{})
}

// renderStatusView writes a human-readable view of each interface and its peers,
// relative to now: the peers the view selects (peerView.selectPeers), and a count of
// those it leaves out.
func renderStatusView(w io.Writer, all []status.Status, dir string, now time.Time, view peerView) error {
	var b strings.Builder
	var gone []string
	n := 0
	for _, st := range all {
		if st.State == status.StateDaemonGone {
			gone = append(gone, st.Interface)
			continue
		}
		if n > 0 {
			b.WriteString("\n")
		}
		n++
		fmt.Fprintf(&b, "interface: %s\n", st.Interface)
		if state(st) == status.StateStarting {
			// Nothing else is known yet: no zeros that would read as settings.
			fmt.Fprintf(&b, "  state: starting\n")
			fmt.Fprintf(&b, "  node name: %s\n", orDash(st.NodeName))
			continue
		}
		fmt.Fprintf(&b, "  node name: %s\n", orDash(st.NodeName))
		fmt.Fprintf(&b, "  public key: %s\n", orDash(st.PublicKey))
		fmt.Fprintf(&b, "  listening port: %s\n", port(st.ListenPort))
		fmt.Fprintf(&b, "  mtu: %d\n", st.MTU)
		fmt.Fprintf(&b, "  addresses: %s\n", orDash(strings.Join(st.Addresses, ", ")))
		if st.Counters != nil {
			fmt.Fprintf(&b, "  handshakes: %s\n", handshakes(st.Counters))
			fmt.Fprintf(&b, "  dropped: %s\n", drops(st.Counters))
		}
		if st.Seed != nil {
			renderSeed(&b, st.Seed, st.Peers)
		}
		if st.Mesh != nil {
			renderMesh(&b, st.Mesh, st.Counters)
		}
		if len(st.Peers) == 0 {
			b.WriteString("  peers: none\n")
			continue
		}
		fmt.Fprintf(&b, "  peers: %s\n", peerSummary(status.CountPeers(st.Peers)))
		peers, hidden := view.selectPeers(st.Peers)
		if len(peers) == 0 {
			fmt.Fprintf(&b, "  no peer matches %s\n", strings.Join(view.patterns, ", "))
			continue
		}
		b.WriteString("\n")
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  PEER\tPATH\tHANDSHAKE\tRTT\tPATH MTU\tTX\tRX\tDROPS\tALLOWED")
		for _, p := range peers {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n",
				p.Name,
				peerPath(p),
				ago(p.LastHandshake, now),
				rtt(p.RTT),
				pathMTU(p),
				traffic(p.TxBytes, p.TxPackets),
				traffic(p.RxBytes, p.RxPackets),
				p.Drops,
				orDash(strings.Join(p.AllowedPrefixes, ",")),
			)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if hidden > 0 {
			fmt.Fprintf(&b, "  ... and %d more without a session (--all lists every peer, --peer PATTERN some)\n", hidden)
		}
		if st.Mesh != nil {
			if err := renderMembers(&b, peers); err != nil {
				return err
			}
		}
		for _, p := range peers {
			if p.EndpointError != "" {
				fmt.Fprintf(&b, "  peer %s: endpoint does not resolve (%s); looked up again in the background\n", p.Name, p.EndpointError)
			}
			if p.Refused != "" {
				fmt.Fprintf(&b, "  refused by %s: %s\n", p.Name, refusal(p.Refused))
			}
			for _, r := range p.Refusals {
				fmt.Fprintf(&b, "  refused from %s: %s\n", p.Name, r)
			}
			if p.PathReason != "" {
				fmt.Fprintf(&b, "  path to %s: %s\n", p.Name, p.PathReason)
			}
		}
	}
	// Routing a dead daemon left behind, after the running interfaces.
	for i, name := range gone {
		if i == 0 && n > 0 {
			b.WriteString("\n")
		}
		b.WriteString(goneLine(name, dir) + "\n")
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("write status: %w", err)
	}
	return nil
}

// renderMesh writes the mesh lines of an interface: its key-derived address and
// network, the members it knows, the addresses other members see it from, each
// bootstrap address, the gossip traffic and what it refused of the records members
// sent (from the counters c, when the daemon sent them).
func renderMesh(b *strings.Builder, m *status.Mesh, c map[string]uint64) {
	fmt.Fprintf(b, "  mesh address: %s in %s\n", orDash(m.Address), orDash(m.Network))
	fmt.Fprintf(b, "  members: %d known, %d connected\n", m.Members, m.Connected)
	fmt.Fprintf(b, "  seen from: %s\n", reflections(m.Reflected))
	fmt.Fprintf(b, "  nat: %s\n", natLine(m.NAT))
	if m.Relay {
		fmt.Fprintf(b, "  relay: on, forwarding between %d pairs of members\n", m.Relaying)
	}
	for _, bs := range m.Bootstrap {
		switch {
		case bs.Self:
			fmt.Fprintf(b, "  bootstrap %s: this node itself\n", bs.Target)
		case bs.Reached != "":
			fmt.Fprintf(b, "  bootstrap %s: reached %s\n", bs.Target, bs.Reached)
		default:
			fmt.Fprintf(b, "  bootstrap %s: not reached yet\n", bs.Target)
		}
	}
	renderRevoked(b, m, c)
	if c != nil {
		fmt.Fprintf(b, "  gossip: %d messages in (%s), %d out (%s)\n",
			c["mesh_messages_in"], humanBytes(c["mesh_bytes_in"]), c["mesh_messages_out"], humanBytes(c["mesh_bytes_out"]))
		fmt.Fprintf(b, "  mesh refused: %s\n", meshRefusals(c))
	}
}

// reflections lists the addresses other members see this node from, each once with
// the members that saw it: "203.0.113.5:51900 by beta, gamma; 198.51.100.9:443 (ws) by delta".
func reflections(rs []status.Reflection) string {
	if len(rs) == 0 {
		return "- (no member has told this node yet)"
	}
	type seen struct {
		where string
		by    []string
	}
	var all []*seen
	for _, r := range rs {
		where := r.Address
		if r.Transport != "" && r.Transport != "udp" {
			where += " (" + r.Transport + ")"
		}
		i := slices.IndexFunc(all, func(s *seen) bool { return s.where == where })
		if i < 0 {
			all = append(all, &seen{where: where})
			i = len(all) - 1
		}
		if !slices.Contains(all[i].by, r.By) {
			all[i].by = append(all[i].by, r.By)
		}
	}
	parts := make([]string, len(all))
	for i, s := range all {
		parts[i] = s.where + " by " + strings.Join(s.by, ", ")
	}
	return strings.Join(parts, "; ")
}

// count is one named counter of a status line.
type count struct {
	name string
	n    uint64
}

// countList writes counters largest first, "12 bad_mac1, 3 replay", or "none".
func countList(cs []count) string {
	if len(cs) == 0 {
		return "none"
	}
	slices.SortFunc(cs, func(a, b count) int {
		if a.n != b.n {
			return cmp.Compare(b.n, a.n)
		}
		return strings.Compare(a.name, b.name)
	})
	parts := make([]string, len(cs))
	for i, c := range cs {
		parts[i] = fmt.Sprintf("%d %s", c.n, c.name)
	}
	return strings.Join(parts, ", ")
}

// meshRefusals lists what the node refused of the records members sent, largest
// first: the records dropped, by outcome (every mesh_record_ counter but accepted and
// stale: a stale record is the normal echo of a flood, already held), and the claims
// and names policy refused: "2 claims, 1 bad_signature".
func meshRefusals(c map[string]uint64) string {
	var cs []count
	for k, n := range c {
		if n == 0 {
			continue
		}
		if name, ok := strings.CutPrefix(k, "mesh_record_"); ok && name != "accepted" && name != "stale" {
			cs = append(cs, count{name, n})
		}
	}
	for _, k := range []struct{ key, one, many string }{
		{"mesh_claims_refused", "claim", "claims"},
		{"mesh_names_refused", "name", "names"},
	} {
		switch n := c[k.key]; n {
		case 0:
		case 1:
			cs = append(cs, count{k.one, n})
		default:
			cs = append(cs, count{k.many, n})
		}
	}
	return countList(cs)
}

// renderMembers writes the mesh's table of an interface's peers, one row each: how
// the node learned of it, its key-derived address and the endpoints its record
// announces. The peers' paths are in the table above it.
func renderMembers(b *strings.Builder, peers []status.Peer) error {
	b.WriteString("\n")
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  MEMBER\tLEARNED\tMESH ADDRESS\tCANDIDATES")
	for _, p := range peers {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", p.Name, orDash(p.Source), orDash(p.MeshAddress), orDash(strings.Join(p.Candidates, ", ")))
	}
	return tw.Flush()
}

// state is the status' state; a daemon older than the field sends none, and is
// starting while it has no counters.
func state(st status.Status) string {
	switch {
	case st.State != "":
		return st.State
	case st.Counters == nil:
		return status.StateStarting
	}
	return status.StateUp
}

// refusal says in words why a peer refuses this node (docs/status-schema.md, refused).
func refusal(name string) string {
	switch name {
	case "unknown_peer":
		return "not a configured peer"
	case "pin_mismatch":
		return "our key is not the public_key it pins for us"
	}
	return name
}

// port is the UDP listening port, "none" when the node has no UDP socket.
func port(p int) string {
	if p == 0 {
		return "none (WebSocket only)"
	}
	return strconv.Itoa(p)
}

// handshakes summarises the node's handshake counters.
func handshakes(c map[string]uint64) string {
	s := fmt.Sprintf("%d completed, %d started", c["handshakes_completed"], c["handshakes_started"])
	if n := c["cookie_replies_sent"]; n > 0 {
		s += fmt.Sprintf(", %d cookie replies (under load)", n)
	}
	return s
}

// drops lists the non-zero drop counters, largest first: "12 bad_mac1, 3 replay". The
// node's reasons are "drop_<reason>"; the tunnel layer's are "tunnel_<reason>".
func drops(c map[string]uint64) string {
	var cs []count
	for k, n := range c {
		if n == 0 {
			continue
		}
		if name, ok := strings.CutPrefix(k, "drop_"); ok {
			cs = append(cs, count{name, n})
		} else if strings.HasPrefix(k, "tunnel_") {
			cs = append(cs, count{k, n})
		}
	}
	return countList(cs)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// peerPath is the transport and the underlay address, as "udp 192.0.2.7:51820".
func peerPath(p status.Peer) string {
	if p.Path == "relay" {
		return "relay via " + orDash(p.RelayVia)
	}
	path := orDash(p.Path)
	if p.Endpoint != "" {
		path += " " + p.Endpoint
	}
	return path
}

// natLine explains the NAT type in a few words.
func natLine(nat string) string {
	switch nat {
	case "public":
		return "public (members see this node at its own address)"
	case "easy":
		return "easy (one mapping for every destination: punching works)"
	case "hard":
		return "hard (a mapping per destination: members behind NAT are reached through a relay)"
	case "udp-blocked":
		return "udp-blocked (members are reached over WebSocket, through a relay)"
	case "":
		return "-"
	}
	return nat + " (fewer than two members have reported where they see this node from)"
}

// ago is how long before now t was, to the two largest units: "12s ago", "3m 4s ago".
func ago(t, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	if d < time.Second {
		return "now"
	}
	s := int64(d / time.Second)
	const (
		minute = 60
		hour   = 60 * minute
		day    = 24 * hour
	)
	switch {
	case s < minute:
		return fmt.Sprintf("%ds ago", s)
	case s < hour:
		return fmt.Sprintf("%dm %ds ago", s/minute, s%minute)
	case s < day:
		return fmt.Sprintf("%dh %dm ago", s/hour, s%hour/minute)
	default:
		return fmt.Sprintf("%dd %dh ago", s/day, s%day/hour)
	}
}

// pathMTU shows a peer's path MTU: the inner packet size, with the discovery's state
// unless it is confirmed; "-" when none is known or needed.
func pathMTU(p status.Peer) string {
	switch {
	case p.PathMTU == 0:
		return "-"
	case p.PathMTUState == "" || p.PathMTUState == "confirmed":
		return strconv.Itoa(p.PathMTU)
	}
	return fmt.Sprintf("%d (%s)", p.PathMTU, p.PathMTUState)
}

func rtt(ms float64) string {
	switch {
	case ms <= 0:
		return "-"
	case ms < 10:
		return fmt.Sprintf("%.2f ms", ms)
	case ms < 100:
		return fmt.Sprintf("%.1f ms", ms)
	default:
		return fmt.Sprintf("%.0f ms", ms)
	}
}

// traffic is bytes in binary units and the packet count: "1.50 MiB (1200 pkts)".
func traffic(bytes, packets uint64) string {
	unit := "pkts"
	if packets == 1 {
		unit = "pkt"
	}
	return fmt.Sprintf("%s (%d %s)", humanBytes(bytes), packets, unit)
}

func humanBytes(n uint64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v := float64(n)
	for _, u := range []string{"KiB", "MiB", "GiB", "TiB", "PiB"} {
		v /= 1024
		if v < 1024 {
			return fmt.Sprintf("%.2f %s", v, u)
		}
	}
	return fmt.Sprintf("%.2f EiB", v/1024)
}

// renderSeed writes the seed line: the seed in use by its short id and, during a
// rotation, the next one, when it takes over, until when the current one is accepted,
// and how many peers' sessions are under each.
func renderSeed(b *strings.Builder, sd *status.Seed, peers []status.Peer) {
	defer func() {
		if sd.Superseded != "" {
			fmt.Fprintf(b, "  rotation to %s: superseded here by the seed file (reload); not offered, not taken from offers\n", sd.Superseded)
		}
	}()
	if sd.NextID == "" {
		fmt.Fprintf(b, "  seed: %s\n", sd.ID)
		return
	}
	clock := func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05 UTC") }
	grace := ""
	if sd.Transient {
		grace = ", not after a restart"
	}
	fmt.Fprintf(b, "  seed: %s (next %s from %s, %s accepted until %s%s)\n", sd.ID, sd.NextID, clock(sd.From), sd.ID, clock(sd.Until), grace)
	var cur, next int
	for _, p := range peers {
		switch p.Seed {
		case sd.ID:
			cur++
		case sd.NextID:
			next++
		}
	}
	fmt.Fprintf(b, "  sessions by seed: %d on %s, %d on %s (next)\n", cur, sd.ID, next, sd.NextID)
	if r := sd.Rotation; r != nil {
		fmt.Fprintf(b, "  rotation: signed by %s at %s, %d excluded, offered to %s\n", shortKey(r.Admin),
			r.Issued.UTC().Format(time.RFC3339), r.Excluded, plural(r.Offered, "member", "members"))
	}
}
