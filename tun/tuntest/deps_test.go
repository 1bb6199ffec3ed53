package tuntest

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestDaemonDoesNotLinkTheTestDevice: the in-memory device is for tests only; no
// package the stt-tun binary is built from imports it.
func TestDaemonDoesNotLinkTheTestDevice(t *testing.T) {
	const self = "github.com/stt-tun/stt-tun/tun/tuntest"
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", "github.com/stt-tun/stt-tun/cmd/stt-tun").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, "github.com/stt-tun/stt-tun/tun") {
		t.Fatalf("go list -deps does not list tun, so it cannot tell: %v", deps)
	}
	if slices.Contains(deps, self) {
		t.Errorf("cmd/stt-tun is built with %s, a test double", self)
	}
}
