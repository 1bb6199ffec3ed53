package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestDaemonLogging runs the daemon in the foreground with [logging] settings, and
// with --log-level overriding them.
func TestDaemonLogging(t *testing.T) {
	for _, tc := range []struct {
		name, logging string
		flags         []string
		json          bool
		wantUp        bool // the info record "up" is logged
	}{
		{"defaults", "", nil, false, true},
		{"json", "[logging]\nformat = \"json\"\n", nil, true, true},
		{"warn hides info", "[logging]\nlevel = \"warn\"\n", nil, false, false},
		{"flag overrides", "[logging]\nlevel = \"error\"\nformat = \"json\"\n", []string{"--log-level", "info"}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			cfg := h.writeConfig("alpha", "stt9", "alpha")
			h.write("alpha.toml", strings.Replace(readConfig(t, cfg), "[interface]", tc.logging+"[interface]", 1))
			_, exited := h.foreground(append(tc.flags, "-c", cfg)...)
			if r := h.run("", "down", "stt9"); r.code != 0 {
				t.Fatalf("down: %+v", r)
			}
			r := <-exited
			if r.code != 0 {
				t.Fatalf("daemon: %+v", r)
			}
			up := false
			for _, line := range strings.Split(strings.TrimSpace(r.stderr), "\n") {
				if line == "" {
					continue
				}
				var rec map[string]any
				isJSON := json.Unmarshal([]byte(line), &rec) == nil
				if isJSON != tc.json {
					t.Errorf("record %q: JSON %v, want %v", line, isJSON, tc.json)
				}
				if rec["msg"] == "up" || strings.Contains(line, " msg=up ") {
					up = true
				}
			}
			if up != tc.wantUp {
				t.Errorf("info record \"up\" logged: %v, want %v:\n%s", up, tc.wantUp, r.stderr)
			}
		})
	}
}

func readConfig(t *testing.T, path string) string {
	t.Helper()
	return string(readFile(t, path))
}
