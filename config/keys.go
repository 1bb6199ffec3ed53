package config

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/curve25519"
)

// KeyLen is the length of a network seed, a private key and a public key.
const KeyLen = 32

// encodedKeyLen is the length of a key in standard base64 with padding.
const encodedKeyLen = 44

// maxSecretFile bounds how much of a seed or key file is read; one key is 45 bytes.
const maxSecretFile = 4096

// GenerateSeed returns a new random network seed.
func GenerateSeed() ([32]byte, error) {
	var s [32]byte
	if _, err := rand.Read(s[:]); err != nil {
		return s, fmt.Errorf("generate seed: %w", err)
	}
	return s, nil
}

// GenerateKey returns a new random X25519 private key, clamped as RFC 7748
// describes so that the stored form is canonical.
func GenerateKey() ([32]byte, error) {
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		return k, fmt.Errorf("generate key: %w", err)
	}
	k[0] &= 248
	k[31] &= 127
	k[31] |= 64
	return k, nil
}

// PublicKey returns the X25519 public key of a private key. Clamping is applied by
// the X25519 function, so any 32 bytes are a usable private key.
func PublicKey(priv [32]byte) [32]byte {
	out, err := curve25519.X25519(priv[:], curve25519.Basepoint)
	if err != nil {
		// X25519 fails only for a low-order point; the base point has prime order.
		panic("config: X25519 with the base point failed: " + err.Error())
	}
	var pub [32]byte
	copy(pub[:], out)
	return pub
}

// EncodeKey returns the file and configuration form of a key or seed: standard
// base64 with padding, 44 characters.
func EncodeKey(k [32]byte) string {
	return base64.StdEncoding.EncodeToString(k[:])
}

// DecodeKey parses a key or seed in the form EncodeKey writes, ignoring
// surrounding white space. Its errors never include the input, which may be secret.
func DecodeKey(s string) ([32]byte, error) {
	var k [32]byte
	s = strings.TrimSpace(s)
	switch {
	case s == "":
		return k, errors.New("key is empty")
	case len(s) == 2*KeyLen && isHex(s):
		return k, errors.New("key looks like hex; keys and seeds are written in base64 (44 characters)")
	case len(s) != encodedKeyLen:
		return k, fmt.Errorf("key is %d characters long; a key is %d characters of base64", len(s), encodedKeyLen)
	}
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		var ce base64.CorruptInputError
		if errors.As(err, &ce) {
			return k, fmt.Errorf("key is not valid base64 (bad character or padding at position %d)", int64(ce)+1)
		}
		return k, errors.New("key is not valid base64")
	}
	if len(b) != KeyLen {
		n := len(b)
		clear(b)
		return k, fmt.Errorf("key decodes to %d bytes; want %d", n, KeyLen)
	}
	copy(k[:], b)
	clear(b)
	return k, nil
}

func isHex(s string) bool {
	for _, c := range []byte(s) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

// LoadOrCreateKey reads this node's key from path, or, if the file does not exist,
// generates a key in the Ed25519 format and writes it there with mode 0600, creating
// the parent directory with mode 0700 if needed. created reports whether a new key was
// made. Two processes racing to create the key end up with the same one.
func LoadOrCreateKey(path string) (key NodeKey, created bool, err error) {
	key, err = LoadKey(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return key, false, err
	}
	key, err = GenerateNodeKey()
	if err != nil {
		return NodeKey{}, false, err
	}
	won, err := writeSecretExclusive(path, key.Encode()+"\n")
	if err != nil {
		return NodeKey{}, false, fmt.Errorf("create key file %s: %w", path, err)
	}
	if !won {
		// Another process created the file first; use its key.
		key, err = LoadKey(path)
		return key, false, err
	}
	return key, true, nil
}

// LoadKey reads this node's key from path, in either format, without creating it.
func LoadKey(path string) (NodeKey, error) {
	text, err := readSecretText(path, "key file")
	defer clear(text)
	if err != nil {
		return NodeKey{}, err
	}
	k, err := DecodeNodeKey(string(text))
	if err != nil {
		return NodeKey{}, fmt.Errorf("key file %s: %w", path, err)
	}
	return k, nil
}

// writeSecretExclusive writes content to path only if path does not exist,
// atomically: readers see either no file or the whole file, mode 0600. It reports
// false if the file appeared meanwhile.
func writeSecretExclusive(path, content string) (bool, error) {
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return false, err
		}
	}
	// CreateTemp opens with O_CREATE|O_EXCL and mode 0600.
	tmp, err := os.CreateTemp(dir, ".stt-tun-key-*")
	if err != nil {
		return false, err
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName)
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return false, err
	}
	if _, err := io.WriteString(tmp, content); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	// A hard link, unlike rename, never replaces an existing file, so a key that
	// another process just wrote is never lost.
	if err := os.Link(tmpName, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return false, nil
		}
		// Some file systems have no hard links; fall back to rename after
		// checking that the name is still free.
		if _, serr := os.Lstat(path); serr == nil {
			return false, nil
		}
		if rerr := os.Rename(tmpName, path); rerr != nil {
			return false, rerr
		}
	}
	syncDir(dir)
	return true, nil
}

// syncDir makes a new directory entry durable; failure only costs durability.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
}

// readSecretText reads the one line of a secret file that only its owner may access,
// without surrounding white space. The caller clears the returned bytes.
func readSecretText(path, kind string) ([]byte, error) {
	data, err := readSecretFile(path, kind)
	if err != nil {
		return nil, err
	}
	text := bytes.TrimSpace(data)
	if bytes.ContainsAny(text, "\r\n") {
		clear(data)
		return nil, fmt.Errorf("%s %s has more than one line; it must hold one line of base64", kind, path)
	}
	// text shares data's memory; moving it to the front lets the caller clear all
	// of what was read through the slice it gets.
	n := copy(data, text)
	clear(data[n:])
	return data[:n], nil
}

// checkSecretMode refuses a secret file that group or others may read or write,
// and says how to fix it.
func checkSecretMode(kind, path string, mode fs.FileMode) error {
	perm := mode.Perm()
	r, w := perm&0o044 != 0, perm&0o022 != 0
	var what string
	switch {
	case r && w:
		what = "readable and writable"
	case r:
		what = "readable"
	case w:
		what = "writable"
	default:
		return nil
	}
	who := "others"
	switch g, o := perm&0o060 != 0, perm&0o006 != 0; {
	case g && o:
		who = "its group and others"
	case g:
		who = "its group"
	}
	return fmt.Errorf("%s %s is %s by %s (mode %04o); run: chmod 600 %s", kind, path, what, who, perm, shellQuote(path))
}

// shellQuote quotes a path for a copy-and-paste command when it needs it.
func shellQuote(s string) string {
	safe := s != ""
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("/._-+@:,=%", c)) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
