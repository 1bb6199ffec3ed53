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
	for _, c := range badCases {
		f.Add([]byte(c.src))
	}
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
