package main

import (
	"fmt"
	"io"
	"runtime"
)

// printTables prints the results as the Markdown tables of docs/benchmarks.md; the
// first result is the engine with no peers, the base of the per-peer figures.
func printTables(w io.Writer, rs []result) {
	if len(rs) == 0 {
		return
	}
	base := rs[0]
	per := func(v, b uint64, n int) string {
		return fmt.Sprintf("%.1f KiB", (float64(v)-float64(b))/float64(n)/1024)
	}
	mib := func(v uint64) string { return fmt.Sprintf("%.1f MiB", float64(v)/(1<<20)) }
	fmt.Fprintf(w, "engine alone: heap %s, RSS %s, %d goroutines, %.2f%% CPU, %.1f wake-ups/s (GOMAXPROCS %d, %s)\n\n",
		mib(base.Record.HeapBytes), mib(base.Record.RSSBytes), base.Record.Goroutines,
		base.Record.CPUPercent, base.Record.WakeupsPerSec, base.GOMAXPROCS, runtime.Version())

	fmt.Fprintln(w, "| peers | record: heap / peer | record: RSS / peer | session: heap / peer | session: RSS / peer | session: RSS / peer, free pages returned | active: heap | active: RSS |")
	fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range rs[1:] {
		fmt.Fprintf(w, "| %d | %s | %s | %s | %s | %s | %s (%d active) | %s |\n", r.N,
			per(r.Record.HeapBytes, base.Record.HeapBytes, r.N), per(r.Record.RSSBytes, base.Record.RSSBytes, r.N),
			per(r.Session.HeapBytes, base.Record.HeapBytes, r.N), per(r.Session.RSSBytes, base.Record.RSSBytes, r.N),
			per(r.Session.RSSReturned, base.Record.RSSReturned, r.N),
			mib(r.Active.HeapBytes), r.ActivePeers, mib(r.Active.RSSBytes))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| peers | goroutines (record / session / active) | at rest, record: CPU, wake-ups/s | at rest, sessions: CPU, wake-ups/s | active: CPU, packets/s |")
	fmt.Fprintln(w, "|---:|---:|---:|---:|---:|")
	for _, r := range rs[1:] {
		fmt.Fprintf(w, "| %d | %d / %d / %d | %.2f%%, %.1f | %.2f%%, %.1f | %.1f%%, %.0f |\n", r.N,
			r.Record.Goroutines, r.Session.Goroutines, r.Active.Goroutines,
			r.Record.CPUPercent, r.Record.WakeupsPerSec, r.Session.CPUPercent, r.Session.WakeupsPerSec,
			r.Active.CPUPercent, r.ActivePPS)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| peers | handshakes as responder: all up in | per second (wall) | per second of engine CPU | status JSON: time | size |")
	fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|")
	for _, r := range rs[1:] {
		fmt.Fprintf(w, "| %d | %.2f s | %.0f | %.0f | %.1f ms | %.1f KiB |\n", r.N,
			r.HSSeconds, r.HSPerSec, r.HSPerCPUSec, r.StatusMillis, float64(r.StatusBytes)/1024)
	}
}
