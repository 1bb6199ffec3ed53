package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/stt-tun/stt-tun/internal/status"
)

// tunnelStatements is the part of *tunnel.Tunnel the `statement` control op uses.
type tunnelStatements interface {
	OfferStatement(raw []byte) (accepted bool, reason string, err error)
}

// OfferStatement hands a signed statement to the running tunnel (ctl op `statement`).
func (d *daemon) OfferStatement(raw []byte) (bool, string, error) {
	d.mu.Lock()
	t := d.tunnel
	d.mu.Unlock()
	if t == nil {
		return false, "", errors.New("the interface is still starting")
	}
	s, ok := t.(tunnelStatements)
	if !ok {
		return false, "", errors.New("this tunnel takes no statements")
	}
	return s.OfferStatement(raw)
}

// renderRevoked writes the admin keys the node obeys, the statements it holds and
// refused (from the counters c, when the daemon sent them; not the stale ones: a copy
// of a statement already held is the normal echo of its spreading, as for records),
// and the members revoked:
//
//	admins: 1 key, 1 statement held, refused: 2 unknown_admin
//	revoked: kappa b1Xq9Vd0…= by F0VTtFbd… at 2026-05-01T10:00:00Z
func renderRevoked(b *strings.Builder, m *status.Mesh, c map[string]uint64) {
	var refused []count
	for k, n := range c {
		if r, ok := strings.CutPrefix(k, "mesh_statement_"); ok && r != "accepted" && r != "stale" && n > 0 {
			refused = append(refused, count{r, n})
		}
	}
	if len(m.Admins) == 0 && m.Statements == 0 && len(refused) == 0 {
		fmt.Fprintf(b, "  admins: none (no revocation or rotation is obeyed)\n")
		return
	}
	fmt.Fprintf(b, "  admins: %s, %s held, refused: %s\n", plural(len(m.Admins), "key", "keys"),
		plural(m.Statements, "statement", "statements"), countList(refused))
	for _, r := range m.Revoked {
		name := r.Name
		if name == "" {
			name = "-"
		}
		fmt.Fprintf(b, "  revoked: %s %s by %s at %s\n", name, r.Key, shortKey(r.By), r.Issued)
	}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// shortKey shortens a base64 key for a status line: its first 8 characters and "…".
func shortKey(k string) string {
	if len(k) <= 8 {
		return k
	}
	return k[:8] + "…"
}
