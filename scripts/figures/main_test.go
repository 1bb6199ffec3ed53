package main

import (
	"strings"
	"testing"
)

func TestTable(t *testing.T) {
	in := `{"scenario":"blackhole","recovery_seconds":0.5,"handshake_seconds":4,"bytes_intact":4194304,"relay_blackholed":900,"handshakes_started_in_hole":6}
{"scenario":"blackhole","recovery_seconds":0.1,"handshake_seconds":6,"bytes_intact":4194304,"relay_blackholed":1000,"handshakes_started_in_hole":6}
{"scenario":"blackhole","recovery_seconds":0.2,"handshake_seconds":5,"bytes_intact":4194304,"relay_blackholed":1100,"handshakes_started_in_hole":6}

{"scenario":"something-new","x":1}
`
	var out strings.Builder
	if err := run(strings.NewReader(in), &out); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{
		"| blackhole (3) |",
		"0.200 [0.100–0.500] s; new handshake after 5 [4–6] s",
		"4 MiB × 3 after",
		"1000 datagrams into the hole; 6 HELLOs",
		"| something-new (1) | (no row defined)",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if err := run(strings.NewReader("{\"x\":1}\n"), &out); err == nil {
		t.Error("a line without a scenario was accepted")
	}
}
