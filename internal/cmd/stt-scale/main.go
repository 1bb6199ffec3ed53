// Command stt-scale measures one daemon's engine (an stt node and a tunnel on an
// in-memory TUN device) with many peers: `make bench-scale` runs it
// (docs/benchmarks.md, "Scale").
//
// For each N it starts an engine process with N configured peers, and a peers process
// holding N stt nodes on loopback, one per peer. The engine reports, each from its own
// process so that the figures are its own:
//
//   - record: the N peers are configured, no traffic, no session;
//   - session: every peer has sent the engine one packet, so each has an established
//     session, and everything is idle again;
//   - active: A of them (100, or N when fewer) exchange packets both ways at once.
//
// For each: Go heap in use (after two collections), resident memory, goroutines, CPU
// time and context switches (wake-ups) per second over a window at rest; the rate of
// handshakes the engine completed as responder (wall clock, and per second of the
// engine's CPU); and the time and size of the status JSON. An engine with no peers is
// run first, and per-peer figures are the difference divided by N.
package main

import (
	"bufio"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "engine":
			os.Exit(engineMain(os.Args[2:]))
		case "peers":
			os.Exit(peersMain(os.Args[2:]))
		}
	}
	os.Exit(runMain(os.Args[1:]))
}

// runMain runs an engine per N and prints the tables.
func runMain(args []string) int {
	fs := flag.NewFlagSet("stt-scale", flag.ExitOnError)
	sizes := fs.String("n", "10,100,1000", "peer counts, comma-separated")
	rest := fs.Duration("rest", rest0, "window at rest over which CPU and wake-ups are measured")
	active := fs.Int("active", 100, "peers active at once in the active phase")
	procs := fs.Int("procs", 1, "GOMAXPROCS of the engine (one core by default)")
	jsonOut := fs.String("json", "", "also write every result to this file")
	oneSource := fs.Bool("one-source", false, "the peers all send from 127.0.0.1 (the engine's per-source handshake limit then applies to them all)")
	memprofile := fs.String("memprofile", "", "write the engines' heap profiles to FILE.N.PHASE")
	_ = fs.Parse(args)
	ns := []int{0}
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			fmt.Fprintf(os.Stderr, "stt-scale: -n: %q is not a peer count\n", s)
			return 2
		}
		ns = append(ns, n)
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "stt-scale:", err)
		return 1
	}
	var results []result
	for _, n := range ns {
		fmt.Fprintf(os.Stderr, "stt-scale: engine with %d peers...\n", n)
		cmd := exec.Command(self, "engine", "-n", strconv.Itoa(n), "-rest", rest.String(),
			"-active", strconv.Itoa(*active), "-procs", strconv.Itoa(*procs))
		if *oneSource {
			cmd.Args = append(cmd.Args, "-one-source")
		}
		if *memprofile != "" {
			cmd.Args = append(cmd.Args, "-memprofile", fmt.Sprintf("%s.%d", *memprofile, n))
		}
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			fmt.Fprintf(os.Stderr, "stt-scale: engine with %d peers: %v\n", n, err)
			return 1
		}
		var r result
		if err := json.Unmarshal(out, &r); err != nil {
			fmt.Fprintf(os.Stderr, "stt-scale: engine with %d peers: %v\n", n, err)
			return 1
		}
		results = append(results, r)
	}
	printTables(os.Stdout, results)
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(results, "", "  ")
		if err := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "stt-scale:", err)
			return 1
		}
	}
	return 0
}

// randomKey is 32 random bytes.
func randomKey() [32]byte {
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		panic(err)
	}
	return k
}

// lines reads the lines of r into a channel.
func lines(r io.Reader) <-chan string {
	ch := make(chan string, 16)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			ch <- sc.Text()
		}
	}()
	return ch
}
