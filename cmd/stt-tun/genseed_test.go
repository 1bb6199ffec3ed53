package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/stt/mesh"
)

// genseed --next-of prints a seed file that keeps the current seed and network and
// plans a fresh next seed from --from for --overlap.
func TestGenseedNextOfPlansARotationKeepingTheNetwork(t *testing.T) {
	h := newHarness(t)
	path := filepath.Join(h.dir, "seed")
	cur, err := config.LoadSeed(path)
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	r := h.run("", "genseed", "--next-of", path)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("%+v", r)
	}
	plan, err := config.ParseSeedFile("stdout", []byte(r.stdout))
	if err != nil {
		t.Fatal(err)
	}
	if plan.Seed != cur || plan.Network != mesh.NetworkOf(cur) || !plan.NetworkExplicit || plan.Next == nil || *plan.Next == cur {
		t.Fatalf("plan %+v", plan)
	}
	if d := plan.From.Sub(before); d < 9*time.Minute || d > 11*time.Minute || plan.Until.Sub(plan.From) != time.Hour {
		t.Fatalf("from %v until %v, want now+10m and an hour later", plan.From, plan.Until)
	}
	if !strings.Contains(r.stdout, config.EncodeKey(*plan.Next)) {
		t.Fatal("next seed not printed in its file form")
	}

	// An absolute --from and an --overlap; the plan's next seed becomes current once
	// the plan's rotation is over, and the network stays the first seed's.
	from := time.Now().Add(48 * time.Hour).UTC().Truncate(time.Second)
	r = h.run("", "genseed", "--next-of", path, "--from", from.Format(time.RFC3339), "--overlap", "10m")
	if r.code != 0 {
		t.Fatalf("%+v", r)
	}
	if plan, err = config.ParseSeedFile("stdout", []byte(r.stdout)); err != nil || !plan.From.Equal(from) || !plan.Until.Equal(from.Add(10*time.Minute)) {
		t.Fatalf("plan %+v, %v", plan, err)
	}
	over := config.SeedFile{Seed: cur, Network: plan.Network, Next: plan.Next, From: time.Now().Add(-2 * time.Hour), Until: time.Now().Add(-time.Hour)}
	if err := config.WriteSeedFile(path, over); err != nil {
		t.Fatal(err)
	}
	r = h.run("", "genseed", "--next-of", path)
	if r.code != 0 {
		t.Fatalf("%+v", r)
	}
	next, err := config.ParseSeedFile("stdout", []byte(r.stdout))
	if err != nil || next.Seed != *plan.Next || next.Network != mesh.NetworkOf(cur) {
		t.Fatalf("after a finished rotation: %+v, %v", next, err)
	}
}

func TestGenseedNextOfRefusesBadPlansWithOneLine(t *testing.T) {
	h := newHarness(t)
	path := filepath.Join(h.dir, "seed")
	checkOneLineError(t, h.run("", "genseed", "--from", "+5m"), 2, "--from plans a rotation: it needs --next-of SEED-FILE")
	checkOneLineError(t, h.run("", "genseed", "--next-of", path, "--from", "2001-01-01T00:00:00Z"), 2, "--from: 2001-01-01T00:00:00Z is in the past")
	checkOneLineError(t, h.run("", "genseed", "--next-of", path, "--from", "soon"), 2, `--from: "soon" is neither`)
	checkOneLineError(t, h.run("", "genseed", "--next-of", path, "--overlap", "0s"), 2, "--overlap 0s: want whole seconds, from 45s")
	// Shorter than the 30 s members take to move their sessions, or not whole seconds:
	// refused, as seed rotate refuses it, rather than planned to tear sessions down.
	checkOneLineError(t, h.run("", "genseed", "--next-of", path, "--overlap", "10s"), 2, "--overlap 10s: want whole seconds, from 45s")
	checkOneLineError(t, h.run("", "genseed", "--next-of", path, "--overlap", "90.5"), 2, "--overlap 1m30.5s: want whole seconds")
	checkOneLineError(t, h.run("", "genseed", "--next-of", filepath.Join(h.dir, "nope")), 1, "--next-of: seed file: open")
	r := h.run("", "genseed", "--next-of", path)
	h.write("seed", r.stdout)
	checkOneLineError(t, h.run("", "genseed", "--next-of", path), 2, "already plans a rotation")
}
