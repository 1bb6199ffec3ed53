package statedir

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// nobody is a uid that is neither root nor the test's user.
const nobody = 65534

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (chown)")
	}
}

func mode(t *testing.T, p string) os.FileMode {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode()
}

func TestEnsureCreatesMissingDirPrivate(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "a", "state")
	if err := Check(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Check of a missing dir: %v, want fs.ErrNotExist", err)
	}
	if _, err := os.Lstat(filepath.Join(base, "a")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("Check created something")
	}
	if err := Ensure(dir); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(base, "a"), dir} {
		if m := mode(t, p); !m.IsDir() || m.Perm() != 0o700 {
			t.Errorf("%s: mode %v, want drwx------", p, m)
		}
	}
	if err := Check(dir); err != nil {
		t.Errorf("Check after Ensure: %v", err)
	}
}

func TestRefusesDirWritableByOthers(t *testing.T) {
	// Sticky does not help the state directory itself: others could create names in it.
	for _, perm := range []os.FileMode{0o777, 0o770, 0o702, 0o720, 0o777 | os.ModeSticky} {
		dir := filepath.Join(t.TempDir(), "state")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, perm); err != nil {
			t.Fatal(err)
		}
		for name, f := range map[string]func(string) error{"Check": Check, "Ensure": Ensure} {
			err := f(dir)
			if err == nil || !strings.Contains(err.Error(), "writable by group or others") {
				t.Errorf("%s of a dir with mode %v: %v, want refusal", name, mode(t, dir), err)
			}
		}
	}
}

func TestRefusesDirOwnedByAnotherUser(t *testing.T) {
	needRoot(t)
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	if err := Ensure(dir); err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
		t.Errorf("Ensure of a dir owned by uid %d: %v, want refusal", nobody, err)
	}
}

func TestRefusesUnsafeParent(t *testing.T) {
	needRoot(t)
	for _, c := range []struct {
		name  string
		perm  os.FileMode
		owner int
		ok    bool
	}{
		{"world-writable", 0o777, 0, false},
		{"group-writable", 0o770, 0, false},
		{"sticky and root's, as /tmp", 0o777 | os.ModeSticky, 0, true},
		{"sticky but another user's", 0o777 | os.ModeSticky, nobody, false},
		{"private", 0o755, 0, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			parent := filepath.Join(t.TempDir(), "parent")
			if err := os.Mkdir(parent, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(parent, c.perm); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(parent, c.owner, c.owner); err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(parent, "a", "state")
			err := Ensure(dir)
			if c.ok && err != nil {
				t.Errorf("Ensure under a %v parent: %v", mode(t, parent), err)
			}
			if !c.ok {
				if err == nil {
					t.Errorf("Ensure under a %v parent owned by %d succeeded", mode(t, parent), c.owner)
				}
				if _, serr := os.Lstat(filepath.Join(parent, "a")); !errors.Is(serr, fs.ErrNotExist) {
					t.Errorf("Ensure created something under a parent it refuses")
				}
			}
		})
	}
}

func TestSymlinkOnTheWayFollowedOnlyIfTrusted(t *testing.T) {
	needRoot(t)
	base := t.TempDir()
	real := filepath.Join(base, "real")
	if err := os.Mkdir(real, 0o700); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(base, "link")
	if err := os.Symlink("real", link); err != nil {
		t.Fatal(err)
	}
	if err := Ensure(filepath.Join(link, "state")); err != nil {
		t.Fatalf("Ensure through a root-owned link: %v", err)
	}
	if m := mode(t, filepath.Join(real, "state")); !m.IsDir() {
		t.Fatalf("state not created through the link: %v", m)
	}
	if err := os.Lchown(link, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	if err := Check(filepath.Join(link, "state")); err == nil || !strings.Contains(err.Error(), "owned by uid") {
		t.Errorf("Check through a link owned by uid %d: %v, want refusal", nobody, err)
	}
	// A link to an unsafe directory is refused for the directory.
	open := filepath.Join(base, "open")
	if err := os.Mkdir(open, 0o700); err != nil {
		t.Fatal(err)
	}
	os.Chmod(open, 0o777)
	if err := os.Symlink("open", filepath.Join(base, "toopen")); err != nil {
		t.Fatal(err)
	}
	if err := Check(filepath.Join(base, "toopen")); err == nil {
		t.Error("Check of a link to a world-writable dir succeeded")
	}
}

func TestOpenFileDoesNotFollowSymlinks(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("precious\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	planted := filepath.Join(dir, "stt0.log")
	if err := os.Symlink(victim, planted); err != nil {
		t.Fatal(err)
	}
	for _, flag := range []int{
		os.O_WRONLY | os.O_APPEND | os.O_CREATE,
		os.O_WRONLY | os.O_CREATE | os.O_TRUNC,
		os.O_RDWR | os.O_CREATE,
		os.O_RDONLY,
	} {
		f, err := OpenFile(planted, flag, 0o600)
		if err == nil {
			f.Close()
			t.Errorf("OpenFile(%#x) followed a symbolic link", flag)
		} else if !strings.Contains(err.Error(), "symbolic link") {
			t.Errorf("OpenFile(%#x) error %q does not say why", flag, err)
		}
	}
	if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
		t.Errorf("the link's target was changed: %q", b)
	}
}

func TestOpenFileRefusesFIFOWithoutBlocking(t *testing.T) {
	p := filepath.Join(t.TempDir(), "stt0.lock")
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		f, err := OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
		if err == nil {
			f.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("OpenFile of a FIFO: %v, want refusal", err)
		}
	case <-time.After(10 * time.Second): // a failure guard, not a wait
		t.Fatal("OpenFile blocked on a FIFO")
	}
}

func TestOpenFileRegular(t *testing.T) {
	p := filepath.Join(t.TempDir(), "stt0.json")
	f, err := OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("{}\n"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if m := mode(t, p); m.Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", m)
	}
}

// TestOpenFileRefusesHardLink: a hard link planted under a state file's name (to a
// file of root's elsewhere) is refused for every open the state files use, and the
// file it names is left as it was. O_NOFOLLOW alone does not see it: a hard link is
// the file itself.
func TestOpenFileRefusesHardLink(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("precious\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	planted := filepath.Join(dir, "stt0.log")
	if err := os.Link(victim, planted); err != nil {
		t.Fatal(err)
	}
	for _, flag := range []int{
		os.O_WRONLY | os.O_APPEND | os.O_CREATE, // the daemon log
		os.O_RDWR | os.O_CREATE,                 // the lock
		os.O_RDONLY,                             // the journal, read back
	} {
		f, err := OpenFile(planted, flag, 0o600)
		if err == nil {
			f.WriteString("overwritten\n")
			f.Close()
			t.Errorf("OpenFile(%#x) opened a hard link to another file", flag)
		} else if !strings.Contains(err.Error(), "hard links") {
			t.Errorf("OpenFile(%#x) error %q does not say why", flag, err)
		}
	}
	if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
		t.Errorf("the linked file was changed: %q", b)
	}
}
