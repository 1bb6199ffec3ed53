package main

// seed.go is `stt-tun seed rotate`: the in-band rotation of the network seed
// (docs/operations.md, "Someone left: revoke and rotate"). The admin key signs a ROTATE
// statement here and never leaves this process; the daemon is given the statement and
// the next seed over its control socket, and hands the seed on to the members, sealed to
// each one.

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/internal/ctl"
	"github.com/stt-tun/stt-tun/internal/status"
	"github.com/stt-tun/stt-tun/stt/mesh"
)

// Defaults of seed rotate.
const (
	defaultRotateFrom    = "+2m"
	defaultRotateOverlap = 10 * time.Minute
	maxRotateOverlap     = 30 * 24 * time.Hour
	// minRotateOverlap covers the 30 s over which members move their sessions to the
	// next seed (stt's SeedRekeySpread), and some clock difference: a session not moved
	// by the end of the overlap is closed.
	minRotateOverlap = 45 * time.Second
)

func seedCommand(e *env) *cli.Command {
	return &cli.Command{
		Name:      "seed",
		Usage:     "change the network seed in band",
		UsageText: "stt-tun seed rotate --admin-key FILE [-I NAME] [--exclude MEMBER]... [--from WHEN] [--overlap DURATION]",
		Description: `seed rotate moves every member of the network to a new seed, without stopping
traffic, and leaves out the excluded and revoked ones (stt-tun seed rotate --help).
Without [membership] admins, rotate by hand: stt-tun genseed --next-of.

Example:
   stt-tun seed rotate --admin-key /root/admin.key --exclude mallory`,
		Subcommands: []*cli.Command{
			seedRotateCommand(e),
		},
	}
}

func seedRotateCommand(e *env) *cli.Command {
	return &cli.Command{
		Name:      "rotate",
		Usage:     "move the network to a new seed, leaving out the excluded and revoked members",
		UsageText: "stt-tun seed rotate --admin-key FILE [-I NAME] [--exclude MEMBER]... [--from WHEN] [--overlap DURATION]",
		Description: `seed rotate makes a new seed and gives it to every member of the network except
the ones excluded and the ones revoked, without stopping traffic. It signs a
rotation statement with the admin key, on this machine (the key never goes to the
daemon), and hands the statement and the new seed to the local daemon, which passes
the seed on to each member sealed to that member's key; a member that is away gets it
from the first member it meets while the rotation lasts.

From --from on, members start their sessions with the new seed and move the ones
they have to it (a rekey, no packet lost); until --from plus --overlap they still
accept the current one, then only the new one. An excluded or revoked member, even
under a fresh key, cannot join after that. MEMBER is a name as status shows it (a
revoked member's too) or a base64 public key.

Nothing is sent, and seed rotate fails with one line, when the daemon has no
[membership] admins, when the admin key is not one of them, or when an excluded
MEMBER is a name no member it knows goes by (a public key is taken as it is). -I NAME
picks the interface; it may be left out when one is up.
A member that was away for the whole rotation needs the new seed file by hand: copy
the seed file of any member.

Examples:
   stt-tun revoke --admin-key /root/admin.key mallory
   stt-tun seed rotate --admin-key /root/admin.key --exclude mallory
   stt-tun seed rotate --admin-key /root/admin.key --from 2026-12-06T22:00:00Z --overlap 1h`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "admin-key", Usage: "the admin key `FILE` (ed25519:base64, mode 0600)", TakesFile: true},
			&cli.StringFlag{Name: "interface", Aliases: []string{"I"}, Usage: "the interface `NAME` whose daemon hands the seed on"},
			&cli.StringSliceFlag{Name: "exclude", Usage: "leave out `MEMBER` (repeat for more); revoked members are always left out"},
			&cli.StringFlag{Name: "from", Usage: "when members switch to the new seed: `WHEN` is +DURATION from now or an RFC 3339 time", Value: defaultRotateFrom},
			durationFlag("overlap", nil, "how long after --from the current seed is still accepted (at least 45s)", defaultRotateOverlap),
			timeoutFlag(30 * time.Second),
		},
		Action: func(c *cli.Context) error { return seedRotate(c, e) },
	}
}

// rotatePlan is what seed rotate signs: checked flags, the excluded keys resolved.
type rotatePlan struct {
	from     time.Time
	overlap  time.Duration
	excluded [][32]byte
	names    []string // the excluded ones, for the summary line
	unlisted int      // revoked keys left off the list for room (refused as revoked all the same)
}

func seedRotate(c *cli.Context, e *env) error {
	if c.Args().Present() {
		return usageError("seed rotate: unexpected arguments %q (the interface is -I NAME, members to leave out --exclude MEMBER)", c.Args().Slice())
	}
	keyFile := c.String("admin-key")
	if keyFile == "" {
		return usageError("seed rotate: missing --admin-key FILE (the admin key that signs the rotation)")
	}
	now := time.Now()
	from, err := parseWhen(c.String("from"), now)
	if err != nil {
		return usageError("seed rotate: --from %q: %v", c.String("from"), err)
	}
	overlap := flagDuration(c, "overlap")
	if overlap < minRotateOverlap || overlap > maxRotateOverlap || overlap%time.Second != 0 {
		return usageError("seed rotate: --overlap %v: want whole seconds, from %v (members take up to 30s to move their sessions) to %v",
			overlap, minRotateOverlap, maxRotateOverlap)
	}
	ctx, cancel := context.WithTimeout(c.Context, flagDuration(c, "timeout"))
	defer cancel()
	a, err := openAdminCall(ctx, c, "seed rotate", keyFile)
	if err != nil {
		return err
	}
	defer clear(a.key)
	admin, link, sock, st := a.key, a.link, a.sock, a.st
	netID, err := rotationNetwork(st, admin.Public().(ed25519.PublicKey), keyFile)
	if err != nil {
		return err
	}
	plan := rotatePlan{from: from, overlap: overlap}
	if err := plan.exclude(st, c.StringSlice("exclude")); err != nil {
		return err
	}
	next, err := config.GenerateSeed()
	if err != nil {
		return fmt.Errorf("generate seed: %w", err)
	}
	defer clear(next[:])
	stmt := mesh.Statement{Kind: mesh.StatementRotate, Issued: uint64(time.Now().UnixNano()), Rotate: &mesh.Rotation{
		NextSeedID: mesh.SeedID(next), SwitchAt: uint64(from.Unix()), Overlap: uint32(overlap / time.Second),
		Excluded: plan.excluded}}
	raw, err := stmt.Marshal(admin, netID)
	if err != nil {
		return fmt.Errorf("seed rotate: sign: %w", err)
	}
	offered, err := ctl.Rotate(ctx, sock, raw, next)
	var de *ctl.DaemonError
	switch {
	case errors.Is(err, ctl.ErrNotRunning):
		return fmt.Errorf("seed rotate: %s is not up", link)
	case errors.As(err, &de):
		return fmt.Errorf("seed rotate: %s refused it: %s", link, de.Msg)
	case err != nil:
		return fmt.Errorf("seed rotate: %w", err)
	}
	id := mesh.SeedID(next)
	until := from.Add(overlap)
	fmt.Fprintf(e.stdout, "%s: next seed %x staged: members start with it at %s; the current seed is accepted until %s\n",
		link, id[:4], from.UTC().Format(time.RFC3339), until.UTC().Format(time.RFC3339))
	excl := "none"
	if len(plan.names) > 0 {
		excl = strings.Join(plan.names, ", ")
	}
	if plan.unlisted > 0 {
		excl += fmt.Sprintf(" (and %d older revoked keys, not listed for room: every member that holds their revocation refuses them)", plan.unlisted)
	}
	fmt.Fprintf(e.stdout, "%s: offered to %s now, to the others as they come up; excluded: %s\n", link,
		plural(offered, "member", "members"), excl)
	return nil
}

// rotationNetwork checks what the daemon's status says against the admin key: it
// returns the network id to sign the rotation for, or the one-line reason to send
// nothing.
func rotationNetwork(st status.Status, admin ed25519.PublicKey, keyFile string) ([16]byte, error) {
	var netID [16]byte
	m := st.Mesh
	if m == nil {
		return netID, fmt.Errorf("seed rotate: %s has no [discovery]: the seed is handed on between the members of a mesh; rotate by hand (stt-tun genseed --next-of)", st.Interface)
	}
	if len(m.Admins) == 0 {
		return netID, fmt.Errorf("seed rotate: %s has no [membership] admins, so no member obeys a rotation; rotate by hand (stt-tun genseed --next-of, docs/operations.md \"Someone left\")", st.Interface)
	}
	adminB64 := base64.StdEncoding.EncodeToString(admin)
	if !slices.Contains(m.Admins, adminB64) {
		return netID, fmt.Errorf("seed rotate: the key in %s (public key %s) is not one of the admins of %s", keyFile, adminB64, st.Interface)
	}
	id, err := hex.DecodeString(m.NetworkID)
	if err != nil || len(id) != len(netID) {
		return netID, fmt.Errorf("seed rotate: %s reports no network id (%q)", st.Interface, m.NetworkID)
	}
	return [16]byte(id), nil
}

// exclude resolves the --exclude values against the daemon's members (a name, or a
// base64 key) and adds every key an admin revoked.
func (p *rotatePlan) exclude(st status.Status, args []string) error {
	add := func(k [32]byte, name string) {
		if !slices.Contains(p.excluded, k) {
			p.excluded = append(p.excluded, k)
			p.names = append(p.names, name)
		}
	}
	revoked := statusRevoked(st)
	for _, a := range args {
		if k, err := config.DecodeKey(a); err == nil {
			add(k, a)
			continue
		}
		if a == st.NodeName {
			return usageError("seed rotate: --exclude %q is %s itself; rotate from another member", a, st.Interface)
		}
		k, ok := memberKey(st, revoked, a)
		if !ok {
			return usageError("seed rotate: --exclude %q: no member of that name is known to %s (give its public key)", a, st.Interface)
		}
		add(k, a)
	}
	for _, k := range p.excluded {
		if config.EncodeKey(k) == st.PublicKey {
			return usageError("seed rotate: --exclude names %s itself; rotate from another member", st.Interface)
		}
	}
	if len(p.excluded) > mesh.MaxExcludedSent {
		return usageError("seed rotate: %d members to exclude, at most %d fit in one rotation", len(p.excluded), mesh.MaxExcludedSent)
	}
	// The revoked keys too, while they fit (the newest revocations first): every member
	// holding a revocation refuses that key and offers it nothing anyway, so listing it
	// only covers members the revocation has not reached yet.
	slices.SortStableFunc(revoked, func(a, b revokedMember) int { return strings.Compare(b.issued, a.issued) })
	for _, r := range revoked {
		if len(p.excluded) >= mesh.MaxExcludedSent && !slices.Contains(p.excluded, r.key) {
			p.unlisted++
			continue
		}
		name := r.name
		if name == "" {
			name = config.EncodeKey(r.key)
		}
		if r.name != "" && slices.ContainsFunc(revoked, func(o revokedMember) bool { return o.name == r.name && o.key != r.key }) {
			name += " " + shortKey(config.EncodeKey(r.key)) // a name revoked under two keys
		}
		add(r.key, name+" (revoked)")
	}
	return nil
}

// statusRevoked lists the revocations the daemon holds.
func statusRevoked(st status.Status) []revokedMember {
	if st.Mesh == nil {
		return nil
	}
	var out []revokedMember
	for _, r := range st.Mesh.Revoked {
		if k, err := config.DecodeKey(r.Key); err == nil {
			out = append(out, revokedMember{key: k, name: r.Name, issued: r.Issued})
		}
	}
	return out
}

// revokedMember is one revocation the daemon holds.
type revokedMember struct {
	key    [32]byte
	name   string
	issued string // RFC 3339, UTC: sorts as text
}

// memberKey finds the key of the member named name: among the daemon's peers, then
// among the revoked members (which are no peers any more).
func memberKey(st status.Status, revoked []revokedMember, name string) ([32]byte, bool) {
	for _, p := range st.Peers {
		if p.Name == name && p.PublicKey != "" {
			if k, err := config.DecodeKey(p.PublicKey); err == nil {
				return k, true
			}
		}
	}
	for _, r := range revoked {
		if r.name == name {
			return r.key, true
		}
	}
	return [32]byte{}, false
}

// tunnelRotator is the part of *tunnel.Tunnel the `rotate` control op uses.
type tunnelRotator interface {
	Rotate(statement []byte, next [32]byte) (int, error)
}

// Rotate hands a signed ROTATE and its next seed to the running tunnel (ctl op `rotate`).
func (d *daemon) Rotate(statement []byte, next [32]byte) (int, error) {
	d.mu.Lock()
	t := d.tunnel
	d.mu.Unlock()
	if t == nil {
		return 0, errors.New("the interface is still starting")
	}
	r, ok := t.(tunnelRotator)
	if !ok {
		return 0, errors.New("this tunnel cannot rotate the seed")
	}
	return r.Rotate(statement, next)
}
