package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/stt-tun/stt-tun/internal/ctl"
	"github.com/stt-tun/stt-tun/routing"
)

// A daemon records the configuration file it was started from in
// <state-dir>/<interface>.config, one absolute path and a newline, and removes the
// record when it leaves nothing behind. So `down --leftovers alpha` (the systemd unit's
// ExecStopPost) and `reload alpha` still find the interface alpha.toml started after
// the file was edited into one that does not parse, or names another interface.

// sourceSuffix is the file name suffix of the records in the state directory.
const sourceSuffix = ".config"

// maxSourceRecord bounds what is read of a record: a path and a newline.
const maxSourceRecord = 4096

func sourcePath(dir, link string) string { return filepath.Join(dir, link+sourceSuffix) }

// absPath is path made absolute, as records hold it.
func absPath(path string) string {
	if abs, err := filepath.Abs(path); err == nil {
		return abs
	}
	return filepath.Clean(path)
}

// recordSource writes link's record: the file is replaced in one rename, and a
// symlink planted in its place is replaced, never followed.
func recordSource(dir, link, cfgPath string) error {
	tmp := filepath.Join(dir, fmt.Sprintf(".%s%s.%d.tmp", link, sourceSuffix, os.Getpid()))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("record the configuration file: %w", err)
	}
	_, err = io.WriteString(f, absPath(cfgPath)+"\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, sourcePath(dir, link))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("record the configuration file: %w", err)
	}
	return nil
}

// removeSource removes link's record.
func removeSource(dir, link string) { _ = os.Remove(sourcePath(dir, link)) }

// removeSourceIfClean removes link's record unless the link's routing journal is still
// there for a later down to undo.
func removeSourceIfClean(dir, link string) {
	if _, err := os.Lstat(routing.StatePath(dir, link)); errors.Is(err, os.ErrNotExist) {
		removeSource(dir, link)
	}
}

// readSource reads one record; "" if there is none, or it is not a regular file.
func readSource(path string) string {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return ""
	}
	b, _ := io.ReadAll(io.LimitReader(f, maxSourceRecord))
	line, ok := bytes.CutSuffix(b, []byte("\n"))
	if !ok || bytes.ContainsAny(line, "\n\x00") {
		return ""
	}
	return string(line)
}

// startedFrom finds the interface that was started from the configuration file
// cfgPath and has left something in dir: a control socket (running, or killed) or a
// routing journal. Several (only possible with stale records): the first by name.
func startedFrom(dir, cfgPath string) (string, bool) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", false
	}
	want := absPath(cfgPath)
	var links []string
	for _, e := range ents {
		link, ok := strings.CutSuffix(e.Name(), sourceSuffix)
		if !ok || link == "" || strings.HasPrefix(link, ".") || !e.Type().IsRegular() {
			continue
		}
		if readSource(filepath.Join(dir, e.Name())) != want {
			continue
		}
		_, serr := os.Lstat(ctl.SocketPath(dir, link))
		_, jerr := os.Lstat(routing.StatePath(dir, link))
		if serr == nil || jerr == nil {
			links = append(links, link)
		}
	}
	if len(links) == 0 {
		return "", false
	}
	sort.Strings(links)
	return links[0], true
}
