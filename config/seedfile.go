package config

// seedfile.go reads and writes the seed file: the network seed, optionally the
// network's identity and a planned next seed (docs/configuration.md, "Seed and key
// files"). Every error names the file and line and never quotes what is on it: the
// lines are secrets.

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/stt-tun/stt-tun/stt/mesh"
)

// SeedFile is what a seed file holds.
type SeedFile struct {
	// Seed is the current seed, the file's first line.
	Seed [32]byte
	// Network is the network's identity: the file's network line, or NetworkOf(Seed)
	// when it has none (NetworkExplicit false).
	Network         mesh.Network
	NetworkExplicit bool
	// Next is the planned next seed, nil without a next line. From it is the seed
	// new sessions use; until Until the current seed is still accepted.
	Next        *[32]byte
	From, Until time.Time
}

// SeedsAt is the ordered list of seeds a node holds at wall time t: the first initiates
// handshakes, all are accepted. It depends on nothing but the file and t, so a node
// that restarts in the middle of a rotation resumes where it was.
//
//	no next line       [current]
//	t < from           [current, next]
//	from ≤ t < until   [next, current]
//	until ≤ t          [next]
func (sf SeedFile) SeedsAt(t time.Time) [][32]byte {
	switch {
	case sf.Next == nil:
		return [][32]byte{sf.Seed}
	case t.Before(sf.From):
		return [][32]byte{sf.Seed, *sf.Next}
	case t.Before(sf.Until):
		return [][32]byte{*sf.Next, sf.Seed}
	default:
		return [][32]byte{*sf.Next}
	}
}

// NextBoundary is the first of From and Until after t, when SeedsAt changes next; ok is
// false when it never changes again.
func (sf SeedFile) NextBoundary(t time.Time) (at time.Time, ok bool) {
	if sf.Next == nil {
		return time.Time{}, false
	}
	if t.Before(sf.From) {
		return sf.From, true
	}
	if t.Before(sf.Until) {
		return sf.Until, true
	}
	return time.Time{}, false
}

// LoadSeedFile reads the seed file at path, which, like a key file, no one but its
// owner may read or write.
func LoadSeedFile(path string) (SeedFile, error) {
	data, err := readSecretFile(path, "seed file")
	defer clear(data)
	if err != nil {
		return SeedFile{}, err
	}
	return ParseSeedFile(path, data)
}

// LoadSeed reads the current network seed from the seed file at path.
func LoadSeed(path string) ([32]byte, error) {
	sf, err := LoadSeedFile(path)
	return sf.Seed, err
}

// ParseSeedFile parses the contents of a seed file; name is used in errors only.
func ParseSeedFile(name string, data []byte) (SeedFile, error) {
	var sf SeedFile
	haveSeed, haveNext := false, false
	fail := func(line int, format string, a ...any) (SeedFile, error) {
		return SeedFile{}, fmt.Errorf("seed file %s:%d: %s", name, line, fmt.Sprintf(format, a...))
	}
	lines := bytes.Split(data, []byte("\n"))
	for i, raw := range lines {
		n := i + 1
		line := strings.TrimSpace(string(raw))
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if !haveSeed {
			if len(fields) != 1 {
				return fail(n, "the first line must be the seed alone (44 characters of base64, as stt-tun genseed prints)")
			}
			k, err := DecodeKey(fields[0])
			if err != nil {
				return fail(n, "seed: %v", err)
			}
			sf.Seed, haveSeed = k, true
			continue
		}
		switch fields[0] {
		case "network":
			if sf.NetworkExplicit {
				return fail(n, "a second network line")
			}
			if len(fields) != 2 {
				return fail(n, "want: network <base64 of 21 bytes>")
			}
			b, err := base64.StdEncoding.Strict().DecodeString(fields[1])
			if err != nil || len(b) != mesh.NetworkRawLen {
				return fail(n, "network: not %d bytes of base64", mesh.NetworkRawLen)
			}
			sf.Network, sf.NetworkExplicit = mesh.NetworkFromRaw([mesh.NetworkRawLen]byte(b)), true
		case "next":
			if haveNext {
				return fail(n, "a second next line")
			}
			if len(fields) != 6 || fields[2] != "from" || fields[4] != "until" {
				return fail(n, "want: next <base64 seed> from <RFC 3339 time> until <RFC 3339 time>")
			}
			k, err := DecodeKey(fields[1])
			if err != nil {
				return fail(n, "next seed: %v", err)
			}
			from, err := time.Parse(time.RFC3339, fields[3])
			if err != nil {
				return fail(n, "from: not an RFC 3339 time such as 2026-01-02T15:04:05Z")
			}
			until, err := time.Parse(time.RFC3339, fields[5])
			if err != nil {
				return fail(n, "until: not an RFC 3339 time such as 2026-01-02T15:04:05Z")
			}
			if !until.After(from) {
				return fail(n, "until %s is not after from %s", fields[5], fields[3])
			}
			if k == sf.Seed {
				return fail(n, "the next seed is the current seed")
			}
			sf.Next, sf.From, sf.Until, haveNext = &k, from, until, true
		default:
			// The line is not quoted: it may be a secret pasted in the wrong place.
			return fail(n, "not a seed file line; after the seed come only \"network …\" and \"next …\" lines, blank lines and # comments")
		}
	}
	if !haveSeed {
		return fail(max(len(lines), 1), "no seed: key is empty")
	}
	if !sf.NetworkExplicit {
		sf.Network = mesh.NetworkOf(sf.Seed)
	}
	return sf, nil
}

// Encode is the file form of sf, the network line always explicit (a file written once
// keeps the network's identity whatever its first line becomes).
func (sf SeedFile) Encode() []byte {
	var b bytes.Buffer
	b.WriteString(EncodeKey(sf.Seed))
	b.WriteByte('\n')
	raw := sf.Network.Raw()
	fmt.Fprintf(&b, "network %s\n", base64.StdEncoding.EncodeToString(raw[:]))
	if sf.Next != nil {
		fmt.Fprintf(&b, "next %s from %s until %s\n", EncodeKey(*sf.Next),
			sf.From.UTC().Format(time.RFC3339Nano), sf.Until.UTC().Format(time.RFC3339Nano))
	}
	return b.Bytes()
}

// WriteSeedFile replaces the seed file at path with sf, atomically (a temporary file in
// the same directory, synced, renamed over path), mode 0600.
func WriteSeedFile(path string, sf SeedFile) error {
	data := sf.Encode()
	defer clear(data)
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".stt-tun-seed-*")
	if err != nil {
		return fmt.Errorf("write seed file %s: %w", path, err)
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName) // after a successful rename, nothing is left to remove
	werr := tmp.Chmod(0o600)
	if werr == nil {
		_, werr = tmp.Write(data)
	}
	if werr == nil {
		werr = tmp.Sync()
	}
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmpName, path)
	}
	if werr != nil {
		return fmt.Errorf("write seed file %s: %w", path, werr)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// readSecretFile reads a secret file that only its owner may access. The caller clears
// the returned bytes.
func readSecretFile(path, kind string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", kind, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", kind, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s %s is not a regular file", kind, path)
	}
	if err := checkSecretMode(kind, path, fi.Mode()); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	if err != nil {
		clear(data)
		return nil, fmt.Errorf("%s %s: %w", kind, path, err)
	}
	if len(data) > maxSecretFile {
		clear(data)
		return nil, fmt.Errorf("%s %s is larger than %d bytes", kind, path, maxSecretFile)
	}
	return data, nil
}
