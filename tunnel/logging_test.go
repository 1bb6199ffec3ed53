package tunnel

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/tun/tuntest"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// spellings are the ways a log handler could write a 32-byte secret.
func spellings(k [32]byte) []string {
	return []string{
		base64.StdEncoding.EncodeToString(k[:]),
		base64.RawStdEncoding.EncodeToString(k[:]),
		base64.URLEncoding.EncodeToString(k[:]),
		base64.RawURLEncoding.EncodeToString(k[:]),
		hex.EncodeToString(k[:]),
		strings.ToUpper(hex.EncodeToString(k[:])),
		fmt.Sprint(k), // [1 2 3 ...]
		strings.ReplaceAll(fmt.Sprint(k), " ", ","), // JSON's [1,2,3,...]
		string(k[:]),
	}
}

// TestDebugLogHoldsNoSecret runs two tunnels on in-memory devices at debug level, as
// text and as JSON, carries packets both ways, and checks that neither the network
// seed nor a private key appears in the log in any spelling. (stt's
// TestLogsHoldNoKeyMaterial checks the session keys, which only stt can see.) It also
// checks that records naming a peer's underlay address, here that of a failed
// WebSocket dial, are debug records.
func TestDebugLogHoldsNoSecret(t *testing.T) {
	for _, format := range []string{config.LogText, config.LogJSON} {
		t.Run(format, func(t *testing.T) {
			var logs lockedBuffer
			opts := &slog.HandlerOptions{Level: slog.LevelDebug}
			var h slog.Handler = slog.NewTextHandler(&logs, opts)
			if format == config.LogJSON {
				h = slog.NewJSONHandler(&logs, opts)
			}
			log := slog.New(h)
			dir := t.TempDir()
			seed, _ := config.GenerateSeed()
			keyA, _ := config.GenerateKey()
			keyB, _ := config.GenerateKey()
			seedFile := writeSecret(t, dir, "seed", seed)
			start := func(name, addr, keyFile string, peers ...config.Peer) *memNode {
				cfg := &config.Config{
					Interface: config.Interface{
						Name: "mem-" + name, NodeName: name,
						Addresses: []netip.Prefix{netip.MustParsePrefix(addr)},
						MTU:       1420, SeedFile: seedFile, KeyFile: keyFile,
					},
					Peers:    peers,
					Advanced: config.Advanced{FallbackAfter: time.Second, ProbeInterval: time.Second},
				}
				dev := tuntest.NewMem(cfg.Interface.Name, 1420, 16)
				tu, err := Start(context.Background(), cfg, Options{Device: dev, Logger: log.With("node", name)})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = tu.Close() })
				return &memNode{t: tu, dev: dev}
			}
			b := start("b", "10.9.0.2/24", writeSecret(t, dir, "b.key", keyB), config.Peer{
				Name: "a", AllowedPrefixes: []netip.Prefix{netip.MustParsePrefix("10.9.0.1/32")},
			})
			// c never answers, on UDP or on WebSocket: a falls back, dials and fails,
			// and the error of the dial names c's address.
			silent, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer silent.Close()
			refused, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			wsAddr := refused.Addr().String()
			refused.Close()
			a := start("a", "10.9.0.1/24", writeSecret(t, dir, "a.key", keyA), config.Peer{
				Name: "b", Endpoint: fmt.Sprintf("127.0.0.1:%d", b.t.Node().Port()),
				AllowedPrefixes: []netip.Prefix{netip.MustParsePrefix("10.9.0.2/32")},
			}, config.Peer{
				Name: "c", Endpoint: silent.LocalAddr().String(), WSURL: "ws://" + wsAddr + "/stt",
				AllowedPrefixes: []netip.Prefix{netip.MustParsePrefix("10.9.0.3/32")},
			})
			out := ipv4UDP("10.9.0.1", "10.9.0.2", 1000, 2000, []byte("to b"))
			a.dev.Inject(out)
			expectPacket(t, b.dev, out)
			back := ipv4UDP("10.9.0.2", "10.9.0.1", 2000, 1000, []byte("to a"))
			b.dev.Inject(back)
			expectPacket(t, a.dev, back)
			a.t.Node().Peer("b").Rekey()
			a.dev.Inject(out)
			expectPacket(t, b.dev, out)
			a.dev.Inject(ipv4UDP("10.9.0.1", "10.9.0.3", 1000, 3000, []byte("to c")))
			deadline := time.Now().Add(15 * time.Second)
			for !strings.Contains(logs.String(), "websocket dial failed") {
				if time.Now().After(deadline) {
					t.Fatalf("no WebSocket dial to c failed:\n%s", logs.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
			a.t.Close()
			b.t.Close()

			text := logs.String()
			if !strings.Contains(text, "session established") || !strings.Contains(text, "tunnel up") {
				t.Fatalf("the debug log lacks the records this test is about:\n%s", text)
			}
			for name, k := range map[string][32]byte{"seed": seed, "a's private key": keyA, "b's private key": keyB} {
				for _, s := range spellings(k) {
					if strings.Contains(text, s) {
						t.Errorf("%s is in the log, written %q", name, s)
					}
				}
			}
			// Peers' underlay addresses are in debug records only.
			if !strings.Contains(text, wsAddr) {
				t.Errorf("no debug record names the address of c's failed dial, %s:\n%s", wsAddr, text)
			}
			addrs := []string{fmt.Sprintf("127.0.0.1:%d", b.t.Node().Port()), silent.LocalAddr().String(), wsAddr}
			for _, line := range strings.Split(text, "\n") {
				if strings.Contains(line, "level=DEBUG") || strings.Contains(line, `"level":"DEBUG"`) {
					continue
				}
				for _, addr := range addrs {
					if strings.Contains(line, addr) {
						t.Errorf("a peer's address %s in a record above debug level: %s", addr, line)
					}
				}
			}
		})
	}
}
