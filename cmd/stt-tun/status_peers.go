package main

import (
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/stt-tun/stt-tun/internal/status"
)

// statusQuietShown is how many peers without a session `status` lists by default,
// after every peer with one: a node with a thousand peers gets a screen, not a
// thousand lines (--all lists them all).
const statusQuietShown = 32

// peerView is what of an interface's peers `status` lists: every one (all), or those
// whose names match one of patterns (shell patterns, as in path.Match; a name without
// wildcards matches itself only), or by default every peer with a session and
// statusQuietShown of the others.
type peerView struct {
	all      bool
	patterns []string
}

// filtered reports whether the view lists only the peers its patterns match.
func (v peerView) filtered() bool { return len(v.patterns) > 0 }

// matches reports whether name matches one of the view's patterns.
func (v peerView) matches(name string) bool {
	for _, pat := range v.patterns {
		if ok, err := path.Match(pat, name); (err == nil && ok) || pat == name {
			return true
		}
	}
	return false
}

// stateRank orders the states as status.PeerStates lists them.
func stateRank(p status.Peer) int { return slices.Index(status.PeerStates, status.PeerState(p)) }

// selectPeers is the peers the view lists, in the order it lists them: those with a
// session first, then the others by state (status.PeerStates), each group in the
// daemon's order (the configuration's, then the members' by name); and how many of
// the view's candidates it leaves out.
func (v peerView) selectPeers(ps []status.Peer) (shown []status.Peer, hidden int) {
	for _, p := range ps {
		if !v.filtered() || v.matches(p.Name) {
			shown = append(shown, p)
		}
	}
	slices.SortStableFunc(shown, func(a, b status.Peer) int { return stateRank(a) - stateRank(b) })
	if v.all || v.filtered() {
		return shown, 0
	}
	up := 0
	for up < len(shown) && status.PeerState(shown[up]) == status.PeerUp {
		up++
	}
	if keep := up + statusQuietShown; len(shown) > keep {
		return shown[:keep], len(shown) - keep
	}
	return shown, 0
}

// peerSummary is the line that counts an interface's peers by state and path:
// "1000 total, 12 up (10 udp, 1 ws, 1 relay), 2 refused, 986 never connected". Zero
// counts are left out.
func peerSummary(c status.PeerCounts) string {
	var parts []string
	add := func(n int, what string) {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, what))
		}
	}
	up := fmt.Sprintf("%d up", c.Up)
	var paths []string
	for _, p := range []struct {
		n    int
		name string
	}{{c.UDP, "udp"}, {c.WS, "ws"}, {c.Relay, "relay"}} {
		if p.n > 0 {
			paths = append(paths, fmt.Sprintf("%d %s", p.n, p.name))
		}
	}
	if len(paths) > 0 {
		up += " (" + strings.Join(paths, ", ") + ")"
	}
	parts = append(parts, up)
	add(c.Refused, "refused")
	add(c.Unresolved, "endpoint unresolved")
	add(c.Idle, "idle")
	add(c.Never, "never connected")
	return fmt.Sprintf("%d total, %s", c.Total, strings.Join(parts, ", "))
}

// filterPeers keeps the peers of st that the view's patterns match (all without
// patterns), for `status --json --peer`.
func (v peerView) filterPeers(st status.Status) status.Status {
	if !v.filtered() {
		return st
	}
	ps := []status.Peer{} // an array even when nothing matches, as forJSON promises
	for _, p := range st.Peers {
		if v.matches(p.Name) {
			ps = append(ps, p)
		}
	}
	st.Peers = ps
	return st
}

// anyPeerMatches reports whether a peer of one of all matches the view's patterns.
func (v peerView) anyPeerMatches(all []status.Status) bool {
	for _, st := range all {
		for _, p := range st.Peers {
			if v.matches(p.Name) {
				return true
			}
		}
	}
	return false
}
