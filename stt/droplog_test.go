package stt

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"testing"

	"github.com/stt-tun/stt-tun/stt/handshake"
	"github.com/stt-tun/stt-tun/stt/udp"
	"github.com/stt-tun/stt-tun/stt/wire"
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
	n.dropLogs[DropBadMAC1].Expire()
	n.dropHandshake(handshake.ErrBadMAC1, netip.MustParseAddrPort("192.0.2.7:1"))
	lines = rl.lines("handshake dropped")
	if len(lines) != 3 || lines[2]["reason"] != DropBadMAC1.String() || lines[2]["suppressed"] != "999" {
		t.Fatalf("after the interval: %v, want a bad-mac1 line with suppressed=999", lines)
	}
}

// A member that completes handshakes under a pinned peer's name with its own key is
// refused each time, and each refusal is counted; the warning says so at most once per
// interval, with the number left out: at the handshake budget (up to 200 a second) it
// would otherwise be a warn-level line each.
func TestPinMismatchWarningIsRateLimited(t *testing.T) {
	rl := &recordLog{}
	b := &sinkBind{Bind: udp.New()}
	n, err := New(Config{Seed: fixedKey(1), PrivateKey: fixedKey(2), Name: "n", Handler: &recordHandler{}, Bind: b,
		Logger: slog.New(rl)})
	if err != nil {
		t.Fatal(err)
	}
	pinned := fixedKey(0x60)
	p, err := n.AddPeer(PeerConfig{Name: "peer", PublicKey: &pinned})
	if err != nil {
		t.Fatal(err)
	}
	ep, _ := b.ParseEndpoint("127.0.0.1:9")
	const msg = "handshake with a key other than the pinned one; refusing"
	for i := range 1000 {
		p.completeResponder(handshake.Result{
			LocalIndex: n.index.reserve(), RemoteIndex: uint32(i + 1),
			SendKey: fixedKey(3), RecvKey: fixedKey(4), Cipher: wire.CipherChaCha20Poly1305,
			PeerStatic: fixedKey(0x70), PeerName: "peer",
		}, ep)
	}
	if got := n.Stats().Drops[DropPinMismatch]; got != 1000 {
		t.Fatalf("counted %d pin mismatches, want 1000", got)
	}
	if lines := rl.lines(msg); len(lines) != 1 {
		t.Fatalf("1000 refused handshakes gave %d warnings, want 1", len(lines))
	}
	n.warnLogs[DropPinMismatch].Expire()
	p.completeResponder(handshake.Result{
		LocalIndex: n.index.reserve(), RemoteIndex: 5000,
		SendKey: fixedKey(3), RecvKey: fixedKey(4), Cipher: wire.CipherChaCha20Poly1305,
		PeerStatic: fixedKey(0x70), PeerName: "peer",
	}, ep)
	if lines := rl.lines(msg); len(lines) != 2 || lines[1]["suppressed"] != "999" || lines[1]["peer"] != "peer" {
		t.Fatalf("after the interval: %v, want a line for the peer with suppressed=999", lines)
	}
}
