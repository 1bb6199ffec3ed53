// Package statedir guards stt-tun's state directory (/run/stt-tun by default): the
// control sockets, locks, daemon logs and routing journals that root reads and writes
// there decide what `down` deletes, so nobody but root may be able to change them.
//
// Ensure and Check refuse a directory that is not owned by root (or by the user running
// the program) or that group or others can write, and the same of every directory on
// the way to it, except that a root-owned directory with the sticky bit (/tmp) may be
// writable by all: nobody else can rename or remove the entries in it that root owns.
// Symbolic links on the way are followed only if a trusted user owns them. OpenFile
// opens a file in the directory without following a symbolic link and only if it is a
// regular file with no other name.
package statedir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// maxLinks bounds the symbolic links followed while resolving a path, as the kernel does.
const maxLinks = 40

// Ensure checks dir as the package comment says, first creating whatever is missing of
// it with mode 0700.
func Ensure(dir string) error {
	return walk(dir, true)
}

// Check checks dir as Ensure does, without creating it. A missing dir gives an error
// wrapping fs.ErrNotExist.
func Check(dir string) error {
	return walk(dir, false)
}

func walk(dir string, create bool) error {
	if dir == "" {
		return errors.New("state directory: empty path")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("state directory %s: %w", dir, err)
	}
	fail := func(format string, args ...any) error {
		return fmt.Errorf("state directory %s: %s", dir, fmt.Sprintf(format, args...))
	}
	root, err := os.Lstat("/")
	if err != nil {
		return fail("%v", err)
	}
	if err := checkDir("/", root, false); err != nil {
		return fail("%v", err)
	}
	resolved := "/"
	pending := split(abs)
	links := 0
	for len(pending) > 0 {
		c := pending[0]
		pending = pending[1:]
		switch c {
		case ".":
			continue
		case "..":
			resolved = filepath.Dir(resolved) // resolved holds no links: this is exact
			continue
		}
		next := filepath.Join(resolved, c)
		fi, err := os.Lstat(next)
		if errors.Is(err, fs.ErrNotExist) && create {
			if err = os.Mkdir(next, 0o700); err == nil || errors.Is(err, fs.ErrExist) {
				fi, err = os.Lstat(next)
			}
		}
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("state directory %s: %w", dir, fs.ErrNotExist)
			}
			return fail("%v", err)
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			if err := checkOwner(next, fi); err != nil {
				return fail("%v", err)
			}
			if links++; links > maxLinks {
				return fail("too many symbolic links")
			}
			target, err := os.Readlink(next)
			if err != nil {
				return fail("%v", err)
			}
			if filepath.IsAbs(target) {
				resolved = "/"
			}
			pending = append(split(target), pending...)
			continue
		}
		if !fi.IsDir() {
			return fail("%s is not a directory", next)
		}
		if err := checkDir(next, fi, len(pending) > 0); err != nil {
			return fail("%v", err)
		}
		resolved = next
	}
	return nil
}

func split(p string) []string {
	var out []string
	for _, c := range strings.Split(p, "/") {
		if c != "" {
			out = append(out, c)
		}
	}
	return out
}

// trusted reports whether uid may own what root relies on: root, or the user running
// this program (who could change it anyway).
func trusted(uid uint32) bool {
	return uid == 0 || int(uid) == os.Geteuid()
}

func checkOwner(path string, fi fs.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: no owner information", path)
	}
	if !trusted(st.Uid) {
		return fmt.Errorf("%s is owned by uid %d, not root; refusing it", path, st.Uid)
	}
	return nil
}

// checkDir checks a directory on the way (ancestor) or the state directory itself.
func checkDir(path string, fi fs.FileInfo, ancestor bool) error {
	if err := checkOwner(path, fi); err != nil {
		return err
	}
	st := fi.Sys().(*syscall.Stat_t)
	if st.Mode&0o022 == 0 {
		return nil
	}
	// Others may write a sticky root-owned directory on the way, such as /tmp:
	// they cannot rename or remove what root owns in it.
	if ancestor && st.Mode&unix.S_ISVTX != 0 && st.Uid == 0 {
		return nil
	}
	return fmt.Errorf("%s is writable by group or others (mode %04o); refusing it (chmod go-w, or use another --state-dir)",
		path, st.Mode&0o7777)
}

// OpenFile opens a file in a checked state directory like os.OpenFile, but never
// follows a symbolic link, and refuses anything but a regular file with one name (no
// hard link to a file elsewhere; a FIFO or device planted there is not opened for
// real: the open does not block, and is undone). Do not pass O_TRUNC: the kernel
// would truncate a hard-linked file before it is refused.
func OpenFile(path string, flag int, perm os.FileMode) (*os.File, error) {
	fd, err := unix.Open(path, flag|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, uint32(perm.Perm()))
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, &fs.PathError{Op: "open", Path: path, Err: errors.New("is a symbolic link; not following it")}
		}
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "open", Path: path, Err: errors.New("not a regular file; refusing it")}
	}
	// A hard link to a file elsewhere (root's /etc/shadow, say) is no symbolic link,
	// but writing through it would change that file all the same. stt-tun's own
	// files in the directory have one name each.
	if st.Nlink != 1 {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "open", Path: path, Err: fmt.Errorf("has %d hard links; refusing it", st.Nlink)}
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}
