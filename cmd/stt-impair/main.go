// Command stt-impair runs the lab's UDP impairment relay (package internal/impair) as a
// process, for manual experiments in network namespaces:
//
//	stt-impair -a 10.241.1.254:40000 -b 10.241.2.254:40000 -to-b 10.241.2.1:51900 \
//	    -a2b 'loss=5% delay=20ms jitter=5ms' -b2a 'loss=5%' -control /tmp/impair.conf
//
// Datagrams arriving on -a go to -to-b from the -b socket; datagrams arriving on -b go
// to -to-a from the -a socket, or, without -to-a, to the last address -a heard from.
//
// The control file, re-read on SIGHUP, holds lines "a2b SETTINGS", "b2a SETTINGS" or
// "both SETTINGS" in the syntax of the -a2b flag ('#' starts a comment); directions it
// does not name keep their setting. SIGUSR1 prints the counters as JSON on stdout, and so
// does SIGINT or SIGTERM before the relay exits.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/stt-tun/stt-tun/internal/impair"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "stt-impair:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("stt-impair", flag.ContinueOnError)
	listenA := fs.String("a", "", "address of the A-side socket (ip:port)")
	listenB := fs.String("b", "", "address of the B-side socket (ip:port)")
	toA := fs.String("to-a", "", "where datagrams from B go (default: the last address A was heard from)")
	toB := fs.String("to-b", "", "where datagrams from A go (default: the last address B was heard from)")
	a2b := fs.String("a2b", "", "impairment from A to B, e.g. 'loss=5% delay=20ms'")
	b2a := fs.String("b2a", "", "impairment from B to A")
	seed := fs.Uint64("seed", 1, "seed of the random decisions")
	queue := fs.Int("queue", impair.DefaultMaxQueue, "datagrams held per direction at most")
	control := fs.String("control", "", "control file, re-read on SIGHUP")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *listenA == "" || *listenB == "" || fs.NArg() != 0 {
		fs.Usage()
		return errors.New("need -a and -b, and no arguments")
	}
	settings := map[impair.Dir]string{impair.AtoB: *a2b, impair.BtoA: *b2a}
	ims := map[impair.Dir]impair.Impairment{}
	for d, s := range settings {
		im, err := impair.ParseImpairment(s)
		if err != nil {
			return fmt.Errorf("-%s: %w", d, err)
		}
		ims[d] = im
	}
	r, err := impair.New(impair.Config{
		ListenA: *listenA, ListenB: *listenB, PeerA: *toA, PeerB: *toB,
		Seed: *seed, MaxQueue: *queue,
	})
	if err != nil {
		return err
	}
	defer r.Close()
	_ = r.SetA2B(ims[impair.AtoB])
	_ = r.SetB2A(ims[impair.BtoA])
	if *control != "" {
		if err := applyControl(r, *control); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "stt-impair: A %s, B %s; a2b: %s; b2a: %s\n",
		r.AddrA(), r.AddrB(), r.Impairment(impair.AtoB), r.Impairment(impair.BtoA))

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGINT, syscall.SIGTERM)
	enc := json.NewEncoder(os.Stdout)
	for sig := range sigs {
		switch sig {
		case syscall.SIGHUP:
			if *control == "" {
				fmt.Fprintln(os.Stderr, "stt-impair: SIGHUP without -control; nothing to re-read")
				continue
			}
			if err := applyControl(r, *control); err != nil {
				// A bad edit keeps the relay running on its previous settings.
				fmt.Fprintln(os.Stderr, "stt-impair:", err)
				continue
			}
			fmt.Fprintf(os.Stderr, "stt-impair: a2b: %s; b2a: %s\n", r.Impairment(impair.AtoB), r.Impairment(impair.BtoA))
		case syscall.SIGUSR1:
			_ = enc.Encode(r.Stats())
		default:
			_ = enc.Encode(r.Stats())
			return nil
		}
	}
	return nil
}

// applyControl reads the control file and applies it; nothing is applied when a line is
// wrong.
func applyControl(r *impair.Relay, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("control file: %w", err)
	}
	defer f.Close()
	set := map[impair.Dir]impair.Impairment{}
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text, _, _ := strings.Cut(sc.Text(), "#")
		dir, rest, _ := strings.Cut(strings.TrimSpace(text), " ")
		if dir == "" {
			continue
		}
		im, err := impair.ParseImpairment(rest)
		if err != nil {
			return fmt.Errorf("%s:%d: %w", path, line, err)
		}
		switch dir {
		case "a2b":
			set[impair.AtoB] = im
		case "b2a":
			set[impair.BtoA] = im
		case "both":
			set[impair.AtoB], set[impair.BtoA] = im, im
		default:
			return fmt.Errorf("%s:%d: %q: want a2b, b2a or both", path, line, dir)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("control file: %w", err)
	}
	for d, im := range set {
		if d == impair.AtoB {
			_ = r.SetA2B(im)
		} else {
			_ = r.SetB2A(im)
		}
	}
	return nil
}
