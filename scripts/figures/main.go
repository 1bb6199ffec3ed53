// Command figures turns the measurements of the lab's fault and attack scenarios (JSON
// lines, one per scenario and run, written by tests/e2e when STT_FIGURES is set) into the
// Markdown table of docs/reliability.md. scripts/reliability.sh runs it:
//
//	go run ./scripts/figures < figures.jsonl
//
// Each cell is a template: {key} is the median of key over the runs, {key:r} the median
// with [min–max], {runs} the number of runs of the scenario.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// row describes one scenario's line of the table.
type row struct {
	scenario  string
	fault     string
	recovery  string
	delivered string
	drops     string
}

var rows = []row{
	{"lossy", "5% loss, 5% reordering, 5% duplication, 1 ms + 0–1 ms delay, both ways; TCP transfer",
		"none needed (transfer {seconds:r} s)", "8 MiB × {runs}, SHA-256 equal", "replay {replay_drops} (relay duplicated {relay_duplicated}), auth {auth_drops}"},
	{"corrupt", "1 byte changed in 2% of datagrams, both ways; UDP stream without checksum",
		"none needed", "{datagrams_intact} of {datagrams_sent} datagrams intact, {datagrams_damaged} damaged", "{drops_counted} counted for {relay_corrupted} corrupted (auth {auth_drops})"},
	{"blackhole", "every datagram dropped, both ways, for 30 s; probes every 100 ms",
		"{recovery_seconds:r} s; new handshake after {handshake_seconds:r} s", "4 MiB × {runs} after", "{relay_blackholed} datagrams into the hole; {handshakes_started_in_hole} HELLOs sent into it"},
	{"restart-responder", "responder (no endpoint for the initiator) SIGKILLed, restarted like the systemd unit",
		"{recovery_seconds:r} s after the restart", "4 MiB × {runs} after", "{restarted_unknown_index_drops} frames for the dead session (unknown index)"},
	{"restart-initiator", "initiator SIGKILLed, restarted like the systemd unit",
		"{recovery_seconds:r} s after the restart", "4 MiB × {runs} after", "{restarted_unknown_index_drops}"},
	{"roaming-rebind", "mid-transfer, the initiator's address as the responder sees it moves (NAT rebinding)",
		"{recovery_seconds:r} s", "16 MiB × {runs} across the move", "0 asserted: transfer intact"},
	{"roaming-readdress", "mid-transfer, the initiator's own underlay address changes",
		"{recovery_seconds:r} s", "16 MiB × {runs} across the move", "0 asserted: transfer intact"},
	{"rekey", "rekey_after_messages = 2000 under a 32 MiB transfer; clean path",
		"longest probe silence {longest_silence_seconds:r} s", "32 MiB × {runs}, {rekeys} rekeys each", "{drops}"},
	{"handshake-loss-hello", "the first HELLO lost", "{recovery_seconds:r} s", "", ""},
	{"handshake-loss-challenge", "the first CHALLENGE lost", "{recovery_seconds:r} s", "", ""},
	{"handshake-loss-auth_proof", "the first AUTH_PROOF lost", "{recovery_seconds:r} s", "", ""},
	{"handshake-loss-final", "the first FINAL lost", "{recovery_seconds:r} s", "", ""},
	{"handshake-loss-rekey_auth_proof", "a rekey's AUTH_PROOF lost under an 8 MiB transfer (rekey_after 20 s)",
		"longest probe silence {longest_silence_seconds:r} s", "8 MiB × {runs} (in {seconds:r} s)", ""},
	{"attack-replay", "all captured frames of a session replayed from the attacker",
		"", "0 of {replayed_data} replayed frames", "replay {replay_drops}, HELLO replay {handshake_replay_drops}, DH operations {dh_ops}"},
	{"attack-flood-nonmember", "50 000 HELLOs with a wrong seed",
		"longest probe silence {longest_silence_seconds:r} s", "", "bad mac1 {bad_mac1_drops}, DH operations {dh_ops}, answers {answers}; memory +{rss_growth_kb} kB"},
	{"attack-flood-member", "4000 HELLOs with the seed, then 3000 with a valid cookie over 2 s, one address",
		"longest probe silence {longest_silence_seconds:r} s", "", "answered with DH {processed} + {processed_with_cookie} (cookie); cookie replies {cookie_replies}; rate-limited {rate_limited}; memory +{rss_growth_kb} kB"},
	{"attack-handshake-replay-peer-address", "alpha's HELLO and AUTH_PROOF recorded, replayed from alpha's address once beta forgot them (handshake_replay_window 3 s), 460 a second (about 60 HELLOs), 5 s before and during alpha's restart",
		"{recovery_seconds:r} s after the restart", "", "DH operations before the restart {dh_ops_before_restart}; {cookie_replies} cookie replies for {replayed} replayed; beta's CPU {cpu_seconds_per_second:r} s/s"},
	{"attack-handshake-replay-spoofed-4300", "the same from 4300 spoofed addresses, 5000 a second (400 AUTH_PROOFs)",
		"{recovery_seconds:r} s after the restart", "", "DH operations before the restart {dh_ops_before_restart}; {cookie_replies} cookie replies for {replayed} replayed; beta's CPU {cpu_seconds_per_second:r} s/s"},
	{"attack-member-many-sources", "64 addresses × 22 HELLOs a second with the seed and valid cookies: 3 s ending each handshake at once, then 40 addresses leaving theirs half-open while the pinned alpha restarts",
		"{recovery_seconds:r} s after the restart", "", "X25519 {dh_ops_per_second_phase1:r}/s while handshakes end at once, {dh_ops_per_second:r}/s over the whole flood; cookie replies {cookie_replies}"},
	{"attack-malformed", "every type byte × 22 lengths, wrong versions, forged DATA",
		"", "", "{drops_counted} counted for {messages} sent; {answers} answered"},
	{"attack-empty-datagrams", "2 s of empty UDP datagrams (vs. 2-byte garbage) while probes flow",
		"", "probes lost: {empty_probe_loss_pct:r}% (garbage: {garbage_probe_loss_pct:r}%)", "{empty_counted} of {empty_sent} empty counted (garbage: {garbage_counted} of {garbage_sent})"},
	{"attack-version-log", "20 000 handshakes of another protocol version",
		"", "", "{counted} counted; {log_lines} log lines"},
	{"attack-websocket-connections", "{connections} TCP connections from {sources} addresses to the WebSocket listener for 15 s, each sending GET / every 20 s, re-opened 5 s after beta closes it; beta allowed {fd_limit} file descriptors",
		"a WebSocket-only peer restarted mid-flood has a session after {ws_peer_recovery_seconds:r} s; status and metrics answer ({status_ok}, {metrics_ok}; 1 = yes)",
		"UDP probes answered: {udp_probes_kept_pct:r}%", "beta's file descriptors peak at {fds_peak:r} (from {fds_before}); memory +{rss_growth_kb:r} kB; {closed_by_beta} connections closed by beta"},
}

var placeholder = regexp.MustCompile(`\{([a-z0-9_]+)(:r)?\}`)

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "figures:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	data := map[string]map[string][]float64{}
	runs := map[string]int{}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for line := 1; sc.Scan(); line++ {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			return fmt.Errorf("line %d: %w", line, err)
		}
		name, _ := m["scenario"].(string)
		if name == "" {
			return fmt.Errorf("line %d: no scenario", line)
		}
		if data[name] == nil {
			data[name] = map[string][]float64{}
		}
		runs[name]++
		for k, v := range m {
			if f, ok := v.(float64); ok {
				data[name][k] = append(data[name][k], f)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	fmt.Fprintln(out, "| Scenario | Fault | Recovery | Delivered intact | Drops counted |")
	fmt.Fprintln(out, "|---|---|---|---|---|")
	seen := map[string]bool{}
	for _, r := range rows {
		d := data[r.scenario]
		if d == nil {
			continue
		}
		seen[r.scenario] = true
		cell := func(tmpl string) string {
			if tmpl == "" {
				return "—"
			}
			return placeholder.ReplaceAllStringFunc(tmpl, func(p string) string {
				m := placeholder.FindStringSubmatch(p)
				if m[1] == "runs" {
					return strconv.Itoa(runs[r.scenario])
				}
				return summary(d[m[1]], m[2] != "")
			})
		}
		fmt.Fprintf(out, "| %s (%d) | %s | %s | %s | %s |\n", r.scenario, runs[r.scenario], cell(r.fault),
			cell(r.recovery), cell(r.delivered), cell(r.drops))
	}
	var other []string
	for name := range data {
		if !seen[name] {
			other = append(other, name)
		}
	}
	slices.Sort(other)
	for _, name := range other {
		fmt.Fprintf(out, "| %s (%d) | (no row defined) | | | |\n", name, runs[name])
	}
	return nil
}

// summary formats the median of vs, and with rng its [min–max] when they differ.
func summary(vs []float64, rng bool) string {
	if len(vs) == 0 {
		return "?"
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	if !rng || s[0] == s[len(s)-1] {
		return num(med)
	}
	return fmt.Sprintf("%s [%s–%s]", num(med), num(s[0]), num(s[len(s)-1]))
}

// num writes integers as integers and other values with three significant digits.
func num(v float64) string {
	if v == math.Trunc(v) && math.Abs(v) < 1e15 {
		return strconv.FormatInt(int64(v), 10)
	}
	switch a := math.Abs(v); {
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'f', 3, 64)
	}
}
