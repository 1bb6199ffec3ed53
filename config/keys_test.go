package config

import (
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestPublicKeyRFC7748(t *testing.T) {
	// RFC 7748, section 6.1: Alice's key pair.
	priv, _ := hex.DecodeString("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
	want, _ := hex.DecodeString("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
	var k [32]byte
	copy(k[:], priv)
	if pub := PublicKey(k); hex.EncodeToString(pub[:]) != hex.EncodeToString(want) {
		t.Errorf("PublicKey = %x, want %x", pub, want)
	}
}

func TestGenerateAndEncode(t *testing.T) {
	seed, err := GenerateSeed()
	if err != nil {
		t.Fatal(err)
	}
	seed2, _ := GenerateSeed()
	if seed == seed2 {
		t.Error("two seeds are equal")
	}
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if key[0]&7 != 0 || key[31]&128 != 0 || key[31]&64 == 0 {
		t.Errorf("key not clamped: %x", key)
	}
	for _, k := range [][32]byte{seed, key, PublicKey(key)} {
		s := EncodeKey(k)
		if len(s) != 44 {
			t.Errorf("encoded length %d", len(s))
		}
		got, err := DecodeKey(" " + s + "\n")
		if err != nil || got != k {
			t.Errorf("DecodeKey(EncodeKey(k)) = %x, %v", got, err)
		}
	}
}

func TestDecodeKeyErrors(t *testing.T) {
	cases := []struct{ in, want string }{
		{"", "empty"},
		{"  \n", "empty"},
		{strings.Repeat("ab", 32), "looks like hex"},
		{"AAAA", "4 characters long"},
		{strings.Repeat("A", 43), "43 characters long"},
		{strings.Repeat("A", 42) + "==", "decodes to 31 bytes"},
		{strings.Repeat("A", 20) + "!" + strings.Repeat("A", 22) + "=", "not valid base64 (bad character or padding at position 21)"},
		{strings.Repeat("-", 43) + "=", "not valid base64"}, // URL alphabet
		{strings.Repeat("A", 44), "decodes to 33 bytes"},
	}
	for _, c := range cases {
		_, err := DecodeKey(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("DecodeKey(%q) = %v, want %q", c.in, err, c.want)
		}
	}
}

func writeFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // WriteFile is subject to umask
		t.Fatal(err)
	}
}

func TestLoadSeed(t *testing.T) {
	dir := t.TempDir()
	seed, _ := GenerateSeed()
	path := filepath.Join(dir, "seed")
	writeFile(t, path, EncodeKey(seed)+"\n", 0o600)
	got, err := LoadSeed(path)
	if err != nil || got != seed {
		t.Fatalf("LoadSeed = %x, %v", got, err)
	}
	writeFile(t, path, EncodeKey(seed), 0o400) // no newline, read-only: fine
	if _, err := LoadSeed(path); err != nil {
		t.Fatalf("read-only seed without newline: %v", err)
	}
}

func TestSecretFilePermissions(t *testing.T) {
	dir := t.TempDir()
	seed, _ := GenerateSeed()
	enc := EncodeKey(seed)
	cases := []struct {
		mode os.FileMode
		want string // "" means accepted
	}{
		{0o600, ""},
		{0o400, ""},
		{0o700, ""},
		{0o610, ""}, // group execute only: nothing to read or write
		{0o644, "is readable by its group and others (mode 0644); run: chmod 600 "},
		{0o640, "is readable by its group (mode 0640)"},
		{0o604, "is readable by others (mode 0604)"},
		{0o620, "is writable by its group (mode 0620)"},
		{0o602, "is writable by others (mode 0602)"},
		{0o666, "is readable and writable by its group and others (mode 0666)"},
	}
	for _, c := range cases {
		for _, kind := range []string{"seed file", "key file"} {
			path := filepath.Join(dir, "secret")
			writeFile(t, path, enc+"\n", c.mode)
			var err error
			if kind == "seed file" {
				_, err = LoadSeed(path)
			} else {
				_, _, err = LoadOrCreateKey(path)
			}
			switch {
			case c.want == "" && err != nil:
				t.Errorf("%s mode %04o: %v", kind, c.mode, err)
			case c.want != "" && err == nil:
				t.Errorf("%s mode %04o accepted", kind, c.mode)
			case c.want != "":
				msg := err.Error()
				if !strings.HasPrefix(msg, kind+" "+path+" ") || !strings.Contains(msg, c.want) ||
					!strings.HasSuffix(msg, "run: chmod 600 "+path) {
					t.Errorf("%s mode %04o: message %q", kind, c.mode, msg)
				}
				if strings.Contains(msg, enc) {
					t.Errorf("message contains the secret")
				}
			}
		}
	}
}

func TestPermissionMessageExact(t *testing.T) {
	err := checkSecretMode("seed file", "/x/seed", 0o644)
	want := "seed file /x/seed is readable by its group and others (mode 0644); run: chmod 600 /x/seed"
	if err == nil || err.Error() != want {
		t.Errorf("got %v\nwant %s", err, want)
	}
	err = checkSecretMode("key file", "/x/my key", 0o660)
	want = "key file /x/my key is readable and writable by its group (mode 0660); run: chmod 600 '/x/my key'"
	if err == nil || err.Error() != want {
		t.Errorf("got %v\nwant %s", err, want)
	}
}

func TestSecretFileContents(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "seed")
	seed, _ := GenerateSeed()
	cases := []struct{ content, want string }{
		{"", "key is empty"},
		{EncodeKey(seed) + "\n" + EncodeKey(seed) + "\n", ":2: not a seed file line"},
		{strings.Repeat("A", 5000), "larger than"},
		{EncodeKey(seed)[:40], "40 characters long"},
	}
	for _, c := range cases {
		writeFile(t, path, c.content, 0o600)
		_, err := LoadSeed(path)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("content %.20q: %v, want %q", c.content, err, c.want)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "d"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSeed(filepath.Join(dir, "d")); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory: %v", err)
	}
	if _, err := LoadSeed(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing: %v", err)
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "new", "sub", "alpha.key")
	k1, created, err := LoadOrCreateKey(path)
	if err != nil || !created {
		t.Fatalf("create: %v created=%v", err, created)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key mode %04o", fi.Mode().Perm())
	}
	for _, d := range []string{filepath.Join(dir, "new"), filepath.Join(dir, "new", "sub")} {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("created directory %s has mode %04o", d, fi.Mode().Perm())
		}
	}
	// A new key is in the Ed25519 format, and the file holds exactly its seed.
	data, _ := os.ReadFile(path)
	if k1.Legacy || !strings.HasPrefix(string(data), "ed25519:") || string(data) != "ed25519:"+EncodeKey(k1.Ed25519Seed)+"\n" {
		t.Errorf("file content %q, legacy %v", data, k1.Legacy)
	}
	if k1.X25519 != X25519FromEd25519Seed(k1.Ed25519Seed) {
		t.Error("the X25519 key is not the one derived from the seed")
	}
	k2, created, err := LoadOrCreateKey(path)
	if err != nil || created || k2 != k1 {
		t.Errorf("reload: %v created=%v same=%v", err, created, k2 == k1)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("leftover files: %v", entries)
	}

	// An existing directory keeps its mode.
	open := filepath.Join(dir, "open")
	if err := os.Mkdir(open, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(open, 0o755)
	if _, _, err := LoadOrCreateKey(filepath.Join(open, "k")); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(open); fi.Mode().Perm() != 0o755 {
		t.Errorf("existing directory changed to %04o", fi.Mode().Perm())
	}
}

// TestLoadOrCreateKeyRace starts several creators at once: all must end up with
// the same key, and exactly one may report creating it.
func TestLoadOrCreateKeyRace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "race.key")
	const n = 8
	var wg sync.WaitGroup
	keys := make([]NodeKey, n)
	created := make([]bool, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			keys[i], created[i], errs[i] = LoadOrCreateKey(path)
		}()
	}
	wg.Wait()
	creators := 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("creator %d: %v", i, errs[i])
		}
		if keys[i] != keys[0] {
			t.Errorf("creator %d has a different key", i)
		}
		if created[i] {
			creators++
		}
	}
	if creators != 1 {
		t.Errorf("%d creators reported creating the key", creators)
	}
}

// TestNoSecretsInOutput feeds secrets through every path that reports errors or
// renders text and checks that they never come back out.
func TestNoSecretsInOutput(t *testing.T) {
	dir := t.TempDir()
	seed, _ := GenerateSeed()
	priv, _ := GenerateKey()
	nk, _ := GenerateNodeKey()
	secrets := []string{EncodeKey(seed), EncodeKey(priv), EncodeKey(nk.Ed25519Seed), EncodeKey(nk.X25519)}
	check := func(where, text string) {
		t.Helper()
		for _, s := range secrets {
			for _, frag := range []string{s, s[:20], s[20:40]} {
				if strings.Contains(text, frag) {
					t.Errorf("%s reveals a secret: %q", where, text)
				}
			}
		}
	}

	// Malformed secrets: truncated, extended, corrupted, doubled.
	for _, s := range secrets {
		for _, bad := range []string{s[:43], s + "A", s[:10] + "!" + s[11:], s + "\n" + s, strings.TrimSuffix(s, "=")} {
			_, err := DecodeKey(bad)
			if err == nil {
				t.Fatalf("DecodeKey accepted %q", bad)
			}
			check("DecodeKey", err.Error())
			path := filepath.Join(dir, "bad")
			writeFile(t, path, bad, 0o600)
			_, err = LoadSeed(path)
			check("LoadSeed", err.Error())
			_, _, err = LoadOrCreateKey(path)
			check("LoadOrCreateKey", err.Error())
			writeFile(t, path, "ed25519:"+bad, 0o600)
			_, err = LoadKey(path)
			check("LoadKey ed25519", err.Error())
			writeFile(t, path, s, 0o644)
			_, err = LoadSeed(path)
			check("LoadSeed mode", err.Error())

			// A private key pasted into public_key with a typo.
			src := edit(appendLine, `public_key = "`+bad+`"`)
			if strings.Contains(bad, "\n") {
				src = edit(appendLine, `public_key = """`+bad+`"""`)
			}
			_, err = Parse([]byte(src), "a.toml")
			if err == nil {
				t.Fatalf("Parse accepted public_key %q", bad)
			}
			check("Parse", err.Error())
		}
	}

	// A config rendered back never holds the seed or the private key: it names files.
	seedPath := filepath.Join(dir, "seed")
	writeFile(t, seedPath, secrets[0]+"\n", 0o600)
	keyPath := filepath.Join(dir, "k.key")
	writeFile(t, keyPath, secrets[1]+"\n", 0o600)
	lines := append([]string(nil), baseLines...)
	lines[3] = `seed_file = "` + seedPath + `"`
	lines[4] = `key_file = "` + keyPath + `"`
	cfg, err := Parse([]byte(doc(lines...)), "a.toml")
	if err != nil {
		t.Fatal(err)
	}
	check("Config.String", cfg.String())
}
