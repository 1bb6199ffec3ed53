package config

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/stt/mesh"
)

func seedN(b byte) [32]byte {
	var s [32]byte
	for i := range s {
		s[i] = b + byte(i)
	}
	return s
}

func TestSeedFileReadsAllLineKinds(t *testing.T) {
	cur, next, orig := seedN(1), seedN(2), seedN(3)
	raw := mesh.NetworkOf(orig).Raw()
	text := "# the network seed\n\n  " + EncodeKey(cur) + "  \r\n" +
		"network " + base64.StdEncoding.EncodeToString(raw[:]) + "\n" +
		"# planned\nnext " + EncodeKey(next) + " from 2026-12-06T12:00:00Z until 2026-12-06T14:00:00+01:00\n"
	path := filepath.Join(t.TempDir(), "seed")
	writeFile(t, path, text, 0o600)
	sf, err := LoadSeedFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if sf.Seed != cur || sf.Next == nil || *sf.Next != next || !sf.NetworkExplicit || sf.Network != mesh.NetworkOf(orig) {
		t.Fatalf("parsed %+v", sf)
	}
	if !sf.From.Equal(time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)) || !sf.Until.Equal(time.Date(2026, 12, 6, 13, 0, 0, 0, time.UTC)) {
		t.Fatalf("from %v until %v", sf.From, sf.Until)
	}
}

func TestSeedFileWithoutNetworkLineKeepsTheSeedDerivedNetwork(t *testing.T) {
	cur := seedN(1)
	sf, err := ParseSeedFile("s", []byte(EncodeKey(cur)+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if sf.NetworkExplicit || sf.Network != mesh.NetworkOf(cur) || sf.Next != nil {
		t.Fatalf("parsed %+v", sf)
	}
	if got := sf.SeedsAt(time.Now()); !slices.Equal(got, [][32]byte{cur}) {
		t.Fatalf("SeedsAt = %x", got)
	}
}

// The seeds a node holds are a function of the file and the clock: current first until
// from, next first until until, then next alone.
func TestSeedsAtFollowsTheRotationTimeline(t *testing.T) {
	cur, next := seedN(1), seedN(2)
	from := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	until := from.Add(time.Hour)
	sf := SeedFile{Seed: cur, Network: mesh.NetworkOf(cur), Next: &next, From: from, Until: until}
	cases := []struct {
		at   time.Time
		want [][32]byte
		bnd  time.Time
	}{
		{from.Add(-time.Minute), [][32]byte{cur, next}, from},
		{from, [][32]byte{next, cur}, until},
		{until.Add(-time.Nanosecond), [][32]byte{next, cur}, until},
		{until, [][32]byte{next}, time.Time{}},
	}
	for _, c := range cases {
		if got := sf.SeedsAt(c.at); !slices.Equal(got, c.want) {
			t.Errorf("at %v: %x, want %x", c.at, got, c.want)
		}
		b, ok := sf.NextBoundary(c.at)
		if ok != !c.bnd.IsZero() || !b.Equal(c.bnd) {
			t.Errorf("at %v: next boundary %v %v, want %v", c.at, b, ok, c.bnd)
		}
	}
}

func TestSeedFileErrorsNameTheLineAndNeverTheSecret(t *testing.T) {
	cur, next := seedN(1), seedN(2)
	c64, n64 := EncodeKey(cur), EncodeKey(next)
	net := mesh.NetworkOf(cur).Raw()
	net64 := base64.StdEncoding.EncodeToString(net[:])
	ok := "next " + n64 + " from 2026-12-06T12:00:00Z until 2026-12-06T13:00:00Z"
	cases := []struct{ content, want string }{
		{"", ":1: no seed: key is empty"},
		{"# only a comment\n", ":2: no seed"},
		{c64 + " extra\n", ":1: the first line must be the seed alone"},
		{"\n" + c64[:40] + "\n", ":2: seed: key is 40 characters long"},
		{c64 + "\n" + n64 + "\n", ":2: not a seed file line"},
		{c64 + "\nnetwork " + net64 + "\nnetwork " + net64 + "\n", ":3: a second network line"},
		{c64 + "\nnetwork " + c64 + "\n", ":2: network: not 21 bytes of base64"},
		{c64 + "\n" + ok + "\n" + ok + "\n", ":3: a second next line"},
		{c64 + "\nnext " + n64 + " from 2026-12-06T12:00:00Z\n", ":2: want: next <base64 seed> from"},
		{c64 + "\nnext " + n64[:43] + " from 2026-12-06T12:00:00Z until 2026-12-06T13:00:00Z\n", ":2: next seed: key is 43 characters"},
		{c64 + "\nnext " + n64 + " from 12:00 until 2026-12-06T13:00:00Z\n", ":2: from: not an RFC 3339 time"},
		{c64 + "\nnext " + n64 + " from 2026-12-06T12:00:00Z until tomorrow\n", ":2: until: not an RFC 3339 time"},
		{c64 + "\nnext " + n64 + " from 2026-12-06T12:00:00Z until 2026-12-06T12:00:00Z\n", ":2: until 2026-12-06T12:00:00Z is not after from"},
		{c64 + "\nnext " + c64 + " from 2026-12-06T12:00:00Z until 2026-12-06T13:00:00Z\n", ":2: the next seed is the current seed"},
	}
	path := filepath.Join(t.TempDir(), "seed")
	for _, c := range cases {
		writeFile(t, path, c.content, 0o600)
		_, err := LoadSeedFile(path)
		if err == nil {
			t.Errorf("%.30q accepted", c.content)
			continue
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, "seed file "+path+":") || !strings.Contains(msg, c.want) {
			t.Errorf("%.30q: %q, want %q", c.content, msg, c.want)
		}
		for _, secret := range []string{c64, n64, c64[:40], n64[:43]} {
			if strings.Contains(msg, secret) {
				t.Errorf("%.30q: the message quotes a secret: %q", c.content, msg)
			}
		}
	}
}

// WriteSeedFile replaces the file whole (no temporary left behind), mode 0600 whatever
// the old file's mode, with the network line explicit so that it survives the next
// rotation, and what it writes reads back the same.
func TestWriteSeedFileRoundTripsAtomicallyWithExplicitNetwork(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "seed")
	cur, next := seedN(1), seedN(2)
	writeFile(t, path, EncodeKey(cur)+"\n", 0o400)
	sf, err := LoadSeedFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sf.Next, sf.From, sf.Until = &next, time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC), time.Date(2026, 12, 6, 13, 0, 0, 0, time.UTC)
	if err := WriteSeedFile(path, sf); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v", fi.Mode(), err)
	}
	back, err := LoadSeedFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sf.NetworkExplicit = true
	if back.Seed != sf.Seed || *back.Next != next || !back.From.Equal(sf.From) || !back.Until.Equal(sf.Until) ||
		back.Network != sf.Network || !back.NetworkExplicit {
		t.Fatalf("read back %+v, wrote %+v", back, sf)
	}
	// After the rotation the next seed becomes line 1; the network stays.
	after := SeedFile{Seed: next, Network: back.Network}
	if err := WriteSeedFile(path, after); err != nil {
		t.Fatal(err)
	}
	if back, err = LoadSeedFile(path); err != nil || back.Network != mesh.NetworkOf(cur) || back.Next != nil {
		t.Fatalf("after rotation %+v, %v", back, err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("left behind: %v", ents)
	}
}

// Whatever the bytes, parsing does not panic, and what parses encodes to a file that
// parses back the same.
func FuzzParseSeedFile(f *testing.F) {
	cur, next := seedN(1), seedN(2)
	raw := mesh.NetworkOf(cur).Raw()
	f.Add([]byte(EncodeKey(cur) + "\n"))
	f.Add([]byte("# c\n" + EncodeKey(cur) + "\nnetwork " + base64.StdEncoding.EncodeToString(raw[:]) +
		"\nnext " + EncodeKey(next) + " from 2026-12-06T12:00:00Z until 2026-12-06T13:00:00Z\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		sf, err := ParseSeedFile("f", b)
		if err != nil {
			return
		}
		back, err := ParseSeedFile("f", sf.Encode())
		if err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		if back.Seed != sf.Seed || back.Network != sf.Network || (back.Next == nil) != (sf.Next == nil) ||
			(sf.Next != nil && (*back.Next != *sf.Next || !back.From.Equal(sf.From) || !back.Until.Equal(sf.Until))) {
			t.Fatalf("round trip %+v → %+v", sf, back)
		}
	})
}

// The example in docs/configuration.md is a valid seed file.
func TestSeedFileDocExampleParses(t *testing.T) {
	doc, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "\n### Replacing the seed\n")
	if !ok {
		t.Fatal("no section Replacing the seed")
	}
	_, rest, _ = strings.Cut(rest, "```\n")
	block, _, _ := strings.Cut(rest, "```")
	sf, err := ParseSeedFile("doc", []byte(block))
	if err != nil || sf.Next == nil || !sf.NetworkExplicit || sf.Network != mesh.NetworkOf(sf.Seed) {
		t.Fatalf("%+v, %v", sf, err)
	}
}
