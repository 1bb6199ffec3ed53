package main

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/stt-tun/stt-tun/internal/statedir"
)

// maxLogSize caps a background daemon's log, <state-dir>/<interface>.log. A record that
// would take it past the cap first moves it to <interface>.log.1, replacing the one
// there, and starts a new log: an interface's logs take at most twice the cap.
var maxLogSize int64 = 10 << 20 // 10 MiB; tests lower it

// openLogFile opens a daemon log for appending, creating it mode 0600. Like every
// state file it is opened without following a symlink planted in its place, and only
// if it is a regular file (statedir.OpenFile).
func openLogFile(path string) (*os.File, error) {
	return statedir.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
}

// cappedLog is an io.Writer to a log file whose size it caps with one rotation:
// path is renamed to path.1 and a new path is started. Writes are whole records (slog
// writes one per call), so neither file holds a torn line. Safe for concurrent use.
type cappedLog struct {
	mu   sync.Mutex
	path string
	max  int64
	f    *os.File
	size int64
	// opened, if not nil, is called with every file the log opens: the daemon points
	// its stderr there, so that a panic's trace lands in the current log.
	opened func(*os.File)
}

// newCappedLog opens path (appending to what is there) with the cap max.
func newCappedLog(path string, max int64, opened func(*os.File)) (*cappedLog, error) {
	l := &cappedLog{path: path, max: max, opened: opened}
	if err := l.open(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *cappedLog) open() error {
	f, err := openLogFile(l.path)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return fmt.Errorf("%s is not a regular file", l.path)
	}
	if l.f != nil {
		l.f.Close()
	}
	l.f, l.size = f, fi.Size()
	if l.opened != nil {
		l.opened(f)
	}
	return nil
}

func (l *cappedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return 0, os.ErrClosed
	}
	if l.size > 0 && l.size+int64(len(p)) > l.max {
		// Someone may have truncated the file (logrotate's copytruncate): look first.
		if fi, err := l.f.Stat(); err == nil {
			l.size = fi.Size()
		}
		if l.size > 0 && l.size+int64(len(p)) > l.max {
			// If the rotation fails the record still goes to the old file: losing the
			// log's newest records would be worse than a log past its cap.
			_ = l.rotate()
		}
	}
	n, err := l.f.Write(p)
	l.size += int64(n)
	return n, err
}

// rotate moves the log to path.1 and opens a new one.
func (l *cappedLog) rotate() error {
	if err := os.Rename(l.path, l.path+".1"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return l.open()
}

// Close closes the current file.
func (l *cappedLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// redirectStderr makes fd 2 the file f.
func redirectStderr(f *os.File) { _ = unix.Dup3(int(f.Fd()), 2, 0) }
