package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// ErrKeyUpgraded is returned by UpgradeKeyFile for a key file that is already in the
// Ed25519 format.
var ErrKeyUpgraded = errors.New("already in the ed25519 format")

// LegacySuffix names the copy of a legacy key file that UpgradeKeyFile keeps.
const LegacySuffix = ".legacy"

// UpgradeKeyFile replaces the legacy X25519 key in the key file at path with a new
// key in the Ed25519 format. The old key is first written to path+".legacy" (mode
// 0600; refused if that file exists), then the new key replaces the file atomically
// (a temporary file renamed over it, mode 0600), so a reader sees the old key or the
// new one, never a part. A symbolic link is followed: the file it points to is
// upgraded and keeps the link. On failure nothing is left behind and the key file is
// unchanged. It returns the old and the new key and the backup's path.
//
// The new key is a new identity: its public key differs from the old one.
func UpgradeKeyFile(path string) (old, cur NodeKey, backup string, err error) {
	target, err := filepath.EvalSymlinks(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return old, cur, "", fmt.Errorf("key file %s does not exist: %w", path, fs.ErrNotExist)
		}
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return old, cur, "", fmt.Errorf("key file %s: %w", path, err)
	}
	old, err = LoadKey(target)
	if err != nil {
		return NodeKey{}, cur, "", err
	}
	if !old.Legacy {
		return NodeKey{}, cur, "", fmt.Errorf("key file %s is %w; there is nothing to upgrade", path, ErrKeyUpgraded)
	}
	cur, err = GenerateNodeKey()
	if err != nil {
		return NodeKey{}, NodeKey{}, "", err
	}
	backup = target + LegacySuffix
	if err := writeBackup(backup, old.Encode()+"\n"); err != nil {
		return NodeKey{}, NodeKey{}, "", err
	}
	if err := replaceSecret(target, cur.Encode()+"\n"); err != nil {
		os.Remove(backup)
		return NodeKey{}, NodeKey{}, "", fmt.Errorf("write key file %s: %w", target, err)
	}
	return old, cur, backup, nil
}

// writeBackup creates path, which must not exist, with content and mode 0600.
func writeBackup(path, content string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s already exists, from an earlier upgrade; move it away to upgrade again", path)
	}
	if err != nil {
		return fmt.Errorf("keep the old key: %w", err)
	}
	err = f.Chmod(0o600)
	if err == nil {
		_, err = io.WriteString(f, content)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("keep the old key in %s: %w", path, err)
	}
	return nil
}

// replaceSecret replaces path with content, mode 0600, through a temporary file in
// the same directory renamed over it.
func replaceSecret(path, content string) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".stt-tun-key-*")
	if err != nil {
		return err
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName) // after a successful rename there is nothing to remove
	err = tmp.Chmod(0o600)
	if err == nil {
		_, err = io.WriteString(tmp, content)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmpName, path); err != nil {
		return err
	}
	syncDir(dir)
	return nil
}
