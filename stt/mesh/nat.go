package mesh

// nat.go tells, from what members observed of this node (OBSERVED), how the NAT in
// front of it maps: docs/protocol.md 10.5, "NAT type".

import (
	"net/netip"
	"slices"
	"time"
)

// NATType is what a node learnt of the NAT in front of it.
type NATType string

// NAT types.
const (
	NATUnknown    NATType = "unknown"     // too few observers to tell
	NATPublic     NATType = "public"      // members see this node at one of its own addresses
	NATEasy       NATType = "easy"        // members at different IPs see one address: the mapping is endpoint-independent
	NATHard       NATType = "hard"        // they see different addresses: the mapping depends on the destination
	NATUDPBlocked NATType = "udp-blocked" // members observed this node over WebSocket only
)

// MaxObservationAge is how old an observation ClassifyNAT still uses. The engine asks
// its connected members again every ObserveInterval, so theirs stay younger.
const MaxObservationAge = 2 * time.Minute

// ClassifyNAT tells the NAT type from the observations obs (Engine.Observed) and this
// node's own UDP addresses (interface address and listening port), at time now.
//
// Members can report anything, and one holder of the seed can be many members, so
// observers are counted by the IP this node sees them at (Observation.From), not by
// key: every IP with an observation votes once (the first MaxObservations IPs), for the address of its latest UDP
// observation younger than MaxObservationAge. Only the family that matters for NAT
// votes: IPv4 when any voter saw an IPv4 address, else IPv6. Then:
//
//   - no voter: udp-blocked if a WebSocket observation is that young, else unknown;
//   - public if more voters saw one of own than saw any other address (one voter that
//     saw an own address is enough, as the only witness);
//   - otherwise only the voters that saw other addresses decide: fewer than two is
//     unknown; easy when more than half of them saw one address; else hard.
//
// A minority of voters cannot change the verdict of the others: to make a node behind an
// easy NAT believe "hard", liars need as many distinct IPs as the honest observers that
// agree. With exactly two voters one can: that is all two can tell.
func ClassifyNAT(obs []Observation, own []netip.AddrPort, now time.Time) NATType {
	type vote struct {
		from netip.Addr
		addr netip.AddrPort
		at   time.Time
	}
	var votes [MaxObservations]vote
	n, v4, ws := 0, false, false
	fresh := func(o *Observation) bool { return now.Sub(o.At) <= MaxObservationAge }
	for i := range obs {
		o := &obs[i]
		if !fresh(o) {
			continue
		}
		if o.ViaWS {
			ws = true
			continue
		}
		if o.Addr.Addr().Unmap().Is4() {
			v4 = true
		}
	}
	for i := range obs {
		o := &obs[i]
		from := o.From.Addr().Unmap()
		addr := netip.AddrPortFrom(o.Addr.Addr().Unmap(), o.Addr.Port())
		if o.ViaWS || !fresh(o) || !from.IsValid() || !addr.IsValid() || addr.Addr().Is4() != v4 {
			continue
		}
		j := slices.IndexFunc(votes[:n], func(v vote) bool { return v.from == from })
		switch {
		case j < 0 && n < len(votes):
			votes[n] = vote{from, addr, o.At}
			n++
		case j >= 0 && (o.At.After(votes[j].at) || o.At.Equal(votes[j].at) && addr.Compare(votes[j].addr) < 0):
			votes[j].addr, votes[j].at = addr, o.At
		}
	}
	if n == 0 {
		if ws {
			return NATUDPBlocked
		}
		return NATUnknown
	}
	owned := 0
	var others [MaxObservations]netip.AddrPort
	m := 0
	for _, v := range votes[:n] {
		if slices.ContainsFunc(own, func(a netip.AddrPort) bool {
			return a.Port() == v.addr.Port() && a.Addr().Unmap() == v.addr.Addr()
		}) {
			owned++
		} else {
			others[m] = v.addr
			m++
		}
	}
	if owned > m {
		return NATPublic
	}
	if m < 2 {
		return NATUnknown
	}
	best := 0
	for i := range m {
		c := 0
		for j := range m {
			if others[j] == others[i] {
				c++
			}
		}
		best = max(best, c)
	}
	if 2*best > m {
		return NATEasy
	}
	return NATHard
}
