package stt

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"testing"

	"github.com/stt-tun/stt-tun/stt/handshake"
)

// recordLog keeps every record of a logger at debug level.
type recordLog struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (r *recordLog) Enabled(context.Context, slog.Level) bool { return true }
func (r *recordLog) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	r.recs = append(r.recs, rec.Clone())
	r.mu.Unlock()
	return nil
}
func (r *recordLog) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recordLog) WithGroup(string) slog.Handler      { return r }

func (r *recordLog) lines(msg string) []map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []map[string]string
	for _, rec := range r.recs {
		if rec.Message != msg {
			continue
		}
		m := map[string]string{}
		rec.Attrs(func(a slog.Attr) bool { m[a.Key] = fmt.Sprint(a.Value.Any()); return true })
		out = append(out, m)
	}
	return out
}

// Dropped handshakes are logged at debug level at most once per interval and reason,
// and the next line says how many drops went unlogged: a flood of bad handshakes does
// not become a flood of log lines.
func TestDroppedHandshakeLogIsRateLimitedPerReason(t *testing.T) {
	rl := &recordLog{}
	n, err := New(Config{Seed: fixedKey(1), PrivateKey: fixedKey(2), Name: "n", Handler: &countHandler{},
		Logger: slog.New(rl)})
	if err != nil {
		t.Fatal(err)
	}
	for range 1000 {
		n.dropHandshake(handshake.ErrBadMAC1, netip.MustParseAddrPort("192.0.2.7:1"))
		n.dropHandshake(handshake.ErrUnknownIndex, netip.MustParseAddrPort("192.0.2.7:1"))
	}
	lines := rl.lines("handshake dropped")
	if len(lines) != 2 || lines[0]["reason"] == lines[1]["reason"] {
		t.Fatalf("2000 drops of 2 reasons gave %d lines, want one per reason", len(lines))
	}
	if got := n.Stats().Drops[DropBadMAC1]; got != 1000 {
		t.Fatalf("counted %d bad-mac1 drops, want all 1000", got)
	}
	// Once the interval has passed, the next drop is logged with the count left out.
	n.dropLogs[DropBadMAC1].last.Add(-int64(2 * dropLogInterval))
	n.dropHandshake(handshake.ErrBadMAC1, netip.MustParseAddrPort("192.0.2.7:1"))
	lines = rl.lines("handshake dropped")
	if len(lines) != 3 || lines[2]["reason"] != DropBadMAC1.String() || lines[2]["suppressed"] != "999" {
		t.Fatalf("after the interval: %v, want a bad-mac1 line with suppressed=999", lines)
	}
}
