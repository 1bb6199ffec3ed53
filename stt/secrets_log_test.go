package stt

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/stt/wire"
)

// syncBuffer is a log destination that two nodes' goroutines write to at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var (
	base64RunRE = regexp.MustCompile(`[A-Za-z0-9+/_-]{43,}=*`)
	hexRunRE    = regexp.MustCompile(`[0-9a-fA-F]{64,}`)
	decimalRE   = regexp.MustCompile(`\[(\d{1,3}(?:[ ,]\d{1,3}){31})\]`) // [32]byte by fmt or JSON
)

// keyCandidates returns every 32-byte value that text spells out in a form a log
// handler could give a key: base64 (standard or URL alphabet, padded or not), hex, a
// Go array of decimal bytes, or the raw bytes themselves.
func keyCandidates(text string) [][]byte {
	var out [][]byte
	add := func(b []byte, err error) {
		if err == nil && len(b) == 32 {
			out = append(out, b)
		}
	}
	for _, run := range base64RunRE.FindAllString(text, -1) {
		run = strings.TrimRight(run, "=")
		for i := 0; i+43 <= len(run); i++ {
			w := run[i : i+43]
			add(base64.RawStdEncoding.DecodeString(w))
			add(base64.RawURLEncoding.DecodeString(w))
		}
	}
	for _, run := range hexRunRE.FindAllString(text, -1) {
		for i := 0; i+64 <= len(run); i++ {
			add(hex.DecodeString(run[i : i+64]))
		}
	}
	for _, m := range decimalRE.FindAllStringSubmatch(text, -1) {
		var b []byte
		for _, f := range strings.FieldsFunc(m[1], func(r rune) bool { return r == ' ' || r == ',' }) {
			v, err := strconv.Atoi(f)
			if err != nil || v > 255 {
				b = nil
				break
			}
			b = append(b, byte(v))
		}
		add(b, nil)
	}
	for i := 0; i+32 <= len(text); i++ {
		out = append(out, []byte(text[i:i+32]))
	}
	return out
}

// keyOracle tells whether a candidate is one of a session's keys without knowing the
// keys: a frame sealed under the session's key opens under the candidate only if they
// are the same key, whichever cipher the session negotiated.
type keyOracle struct {
	sealed [][]byte
}

func (o *keyOracle) addSession(s *session) {
	var nonce [12]byte
	for _, a := range []interface {
		Seal(dst, nonce, plaintext, ad []byte) []byte
	}{s.send, s.recv} {
		o.sealed = append(o.sealed, a.Seal(nil, nonce[:], []byte("oracle"), nil))
	}
}

func (o *keyOracle) isSessionKey(k []byte) bool {
	var nonce [12]byte
	for _, id := range []wire.CipherID{wire.CipherChaCha20Poly1305, wire.CipherAES256GCM} {
		a, err := newAEAD(id, k)
		if err != nil {
			continue
		}
		for _, ct := range o.sealed {
			if _, err := a.Open(nil, nonce[:], ct, nil); err == nil {
				return true
			}
		}
	}
	return false
}

// TestLogsHoldNoKeyMaterial runs two nodes at debug level, with text and JSON
// handlers, through handshakes, a rekey and traffic both ways, and checks that no
// form of the seed, a static private key or any session key reaches the log.
func TestLogsHoldNoKeyMaterial(t *testing.T) {
	// The oracle finds a key it is shown, however it is written.
	known := randKey(t)
	self, err := newSession(nil, 1, 2, true, wire.CipherAES256GCM, &known, &known, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var probe keyOracle
	probe.addSession(self)
	for _, spelt := range []string{hex.EncodeToString(known[:]), base64.StdEncoding.EncodeToString(known[:]), fmt.Sprint(known), strings.ReplaceAll(fmt.Sprint(known), " ", ",")} {
		found := false
		for _, c := range keyCandidates(`msg=x key="` + spelt + `"`) {
			found = found || probe.isSessionKey(c)
		}
		if !found {
			t.Fatalf("the oracle misses a key written %s", spelt)
		}
	}

	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			var logs syncBuffer
			opts := &slog.HandlerOptions{Level: slog.LevelDebug}
			var h slog.Handler = slog.NewTextHandler(&logs, opts)
			if format == "json" {
				h = slog.NewJSONHandler(&logs, opts)
			}
			log := slog.New(h)
			seed := randKey(t)
			a := startNode(t, nodeOpts{seed: seed, name: "a", logger: log.With("node", "a")})
			b := startNode(t, nodeOpts{seed: seed, name: "b", logger: log.With("node", "b")})
			if _, err := b.AddPeer(PeerConfig{Name: "a"}); err != nil {
				t.Fatal(err)
			}
			if _, err := a.AddPeer(PeerConfig{Name: "b", Endpoint: loopback(b.Node)}); err != nil {
				t.Fatal(err)
			}
			// A member of another network, to log a refused handshake too.
			stranger := startNode(t, nodeOpts{seed: randKey(t), name: "a", logger: log.With("node", "stranger")})
			if _, err := stranger.AddPeer(PeerConfig{Name: "b", Endpoint: loopback(b.Node)}); err != nil {
				t.Fatal(err)
			}
			sendOne(t, stranger.Peer("b"), 0, []byte("let me in"))

			var oracle keyOracle
			established(t, a, b)
			oracle.addSession(a.Peer("b").keys.current.Load())
			oracle.addSession(b.Peer("a").keys.current.Load())
			s1 := a.Peer("b").keys.current.Load()
			a.Peer("b").Rekey()
			waitFor(t, 5*time.Second, "rekey", func() bool { return a.Peer("b").keys.current.Load() != s1 })
			sendOne(t, a.Peer("b"), 1, []byte("after the rekey"))
			sendOne(t, b.Peer("a"), 2, []byte("and back"))
			b.h.waitCount(t, 2, 5*time.Second)
			a.h.waitCount(t, 1, 5*time.Second)
			oracle.addSession(a.Peer("b").keys.current.Load())
			oracle.addSession(b.Peer("a").keys.current.Load())

			text := logs.String()
			if !strings.Contains(text, "session established") {
				t.Fatalf("the debug log lacks the records this test is about:\n%s", text)
			}
			secrets := map[string][32]byte{"seed": seed, "a's private key": a.key, "b's private key": b.key, "the stranger's private key": stranger.key}
			for _, c := range keyCandidates(text) {
				for name, s := range secrets {
					if bytes.Equal(c, s[:]) {
						t.Errorf("%s is in the log", name)
					}
				}
				if oracle.isSessionKey(c) {
					t.Errorf("a session key is in the log: %x", c)
				}
			}
			t.Logf("%d bytes of %s log checked, %d sealed probes", len(text), format, len(oracle.sealed))
		})
	}
}
