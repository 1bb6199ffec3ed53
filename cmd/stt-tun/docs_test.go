package main

import (
	"bufio"
	"bytes"
	"strings"
	"testing"
)

// operationsSection is the text of docs/operations.md from the heading "## title" to the next
// heading of that level.
func operationsSection(t *testing.T, title string) string {
	t.Helper()
	doc := string(readFile(t, "../../docs/operations.md"))
	_, rest, ok := strings.Cut(doc, "\n## "+title+"\n")
	if !ok {
		t.Fatalf("docs/operations.md has no section %q", title)
	}
	if i := strings.Index(rest, "\n## "); i >= 0 {
		rest = rest[:i]
	}
	return rest
}

// TestTroubleshootingCopiesCertificateFirst: the Troubleshooting walk-through gives
// alpha beta's self-signed certificate before its configuration names it as
// ws_ca_file; without the copy the reload it shows is refused.
func TestTroubleshootingCopiesCertificateFirst(t *testing.T) {
	const cert = "/etc/stt-tun/beta.crt"
	copied := false
	sc := bufio.NewScanner(strings.NewReader(operationsSection(t, "Troubleshooting")))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "alpha# ") || !strings.Contains(line, cert) {
			continue
		}
		if strings.Contains(line, "ws_ca_file") {
			if !copied {
				t.Errorf("alpha's configuration names %s before a step copies it there: %s", cert, line)
			}
			return
		}
		f := strings.Fields(line)
		if len(f) >= 4 && (f[1] == "scp" || f[1] == "cp" || f[1] == "install") && f[len(f)-1] == cert {
			copied = true
		}
	}
	t.Errorf("the Troubleshooting section no longer sets ws_ca_file = %q on alpha", cert)
}

// TestHardeningListNamesHiddenPaths: the unit's settings that hide parts of the file
// system from the daemon, where an administrator might keep keys and certificates, are
// each named in operations.md's list of the unit's hardening.
func TestHardeningListNamesHiddenPaths(t *testing.T) {
	unit := readFile(t, "../../scripts/stt-tun@.service")
	sec := operationsSection(t, "Running under systemd")
	_, hardening, ok := strings.Cut(sec, "- **Hardening.**")
	if !ok {
		t.Fatal("no Hardening item under Running under systemd")
	}
	hardening, _, _ = strings.Cut(hardening, "\n- ")
	hardening = strings.Join(strings.Fields(hardening), " ")
	n := 0
	for _, key := range []string{"ProtectHome", "PrivateTmp", "ProtectSystem", "InaccessiblePaths", "TemporaryFileSystem"} {
		sc := bufio.NewScanner(bytes.NewReader(unit))
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if !strings.HasPrefix(line, key+"=") {
				continue
			}
			n++
			// ProtectSystem=strict is described as "a read-only system".
			if key == "ProtectSystem" {
				if !strings.Contains(hardening, "read-only system") {
					t.Errorf("the hardening list does not describe %s", line)
				}
				continue
			}
			if !strings.Contains(hardening, "`"+line+"`") {
				t.Errorf("the hardening list does not name %s", line)
			}
		}
	}
	if n < 3 {
		t.Errorf("found %d path-hiding settings in the unit, want ProtectHome, PrivateTmp and ProtectSystem", n)
	}
}
