package ctl

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/stt-tun/stt-tun"

// TestControlSocketDoesNotDependOnTheEngine: the control-socket protocol and the
// status values it carries build without the engine and what the engine is made of,
// so that a change in the data path cannot ripple into the CLI's protocol, and the
// status package depends on nothing of this module at all.
func TestControlSocketDoesNotDependOnTheEngine(t *testing.T) {
	engine := []string{"/tunnel", "/stt", "/tun", "/routing", "/config"}
	for _, c := range []struct {
		pkg       string
		forbidden func(dep string) bool
	}{
		{module + "/internal/ctl", func(dep string) bool {
			for _, e := range engine {
				if dep == module+e || strings.HasPrefix(dep, module+e+"/") {
					return true
				}
			}
			return false
		}},
		{module + "/internal/status", func(dep string) bool {
			return strings.HasPrefix(dep, module+"/") && dep != module+"/internal/status"
		}},
	} {
		out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", c.pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", c.pkg, err)
		}
		var bad []string
		for dep := range strings.FieldsSeq(string(out)) {
			if c.forbidden(dep) {
				bad = append(bad, dep)
			}
		}
		if len(bad) > 0 {
			t.Errorf("%s depends on %s; it must stay independent of the engine (see the doc of package status)", c.pkg, strings.Join(bad, ", "))
		}
	}
}
