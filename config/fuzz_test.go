package config

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary documents to Parse. It must never panic; every error
// must be located in the file; and whatever parses must survive String and Parse
// unchanged.
func FuzzParse(f *testing.F) {
	f.Add([]byte(fullExample))
	f.Add([]byte(doc(baseLines...)))
	for _, c := range append(badCases, discoveryBadCases...) {
		f.Add([]byte(c.src))
	}
	f.Add([]byte(discoveryDoc(`bootstrap = ["h:1", "wss://h/stt"]`, `accept_prefixes = ["10.0.0.0/8"]`,
		`announce_prefixes = ["192.168.1.0/24"]`, `endpoints = ["192.0.2.1:1"]`, `idle_timeout = "1s"`, `mesh_ipv6 = true`,
		`[[peer]]`, `name = "b"`)))
	blocks, _ := docTOMLBlocks(f)
	for _, b := range blocks {
		f.Add([]byte(b))
	}
	const file = "/etc/stt-tun/fuzz.toml"
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data, file)
		if err != nil {
			var list ErrorList
			if !errors.As(err, &list) || len(list) == 0 {
				t.Fatalf("error is not an ErrorList: %T %v", err, err)
			}
			lines := strings.Count(string(data), "\n") + 1
			for _, e := range list {
				if e.Path != file || e.Line < 0 || e.Line > lines {
					t.Fatalf("badly located error (document has %d lines): %v", lines, e)
				}
				if !strings.HasPrefix(e.Error(), file+":") {
					t.Fatalf("error without file name: %v", e)
				}
			}
			return
		}
		out := cfg.String()
		again, err := Parse([]byte(out), file)
		if err != nil {
			t.Fatalf("String() does not parse: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(cfg, again) {
			t.Fatalf("round trip differs:\n%#v\n%#v", cfg, again)
		}
	})
}

// FuzzDecodeNodeKey feeds arbitrary key file text to DecodeNodeKey: it must never
// panic, an accepted key must encode back to text that decodes to the same key, and
// an error must not repeat the (secret) input.
func FuzzDecodeNodeKey(f *testing.F) {
	k, _ := GenerateNodeKey()
	x, _ := GenerateKey()
	for _, s := range []string{k.Encode(), EncodeKey(x), "ed25519:", "ed25519:" + EncodeKey(x)[:40], "x:y", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := DecodeNodeKey(s)
		if err != nil {
			if v := strings.TrimSpace(s); len(v) >= 12 && strings.Contains(err.Error(), v) {
				t.Fatalf("error repeats the input: %v", err)
			}
			return
		}
		again, err := DecodeNodeKey(got.Encode())
		if err != nil || again != got {
			t.Fatalf("%q: Encode does not round-trip: %v", s, err)
		}
		if !got.Legacy && got.X25519 != X25519FromEd25519Seed(got.Ed25519Seed) {
			t.Fatalf("%q: X25519 not derived from the seed", s)
		}
	})
}
