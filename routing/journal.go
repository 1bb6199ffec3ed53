package routing

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
)

// ErrJournalExists is returned by Apply when a journal for the link is
// already on disk and the link it was made for still exists: a previous run
// did not undo its changes and may still be running. Call UndoFromState
// first. (A journal whose link is gone is taken over instead.)
var ErrJournalExists = errors.New("journal already exists")

// ErrJournalCorrupt is returned when a journal cannot be parsed or
// describes an impossible change. Nothing is reverted then; the file is left
// for a human to read.
var ErrJournalCorrupt = errors.New("journal corrupt")

const journalVersion = 1

// journalFile is the on-disk form. Changes are in the order they were made
// and are reverted in reverse order.
type journalFile struct {
	Version int      `json:"version"`
	Link    string   `json:"link"`
	Index   int      `json:"ifindex"`
	Changes []change `json:"changes"`
}

// change is one recorded change; exactly one field is set. It is written
// before the change is made, so a journal may name a change that never
// happened: every revert tolerates its object being absent.
type change struct {
	Link   *linkChange   `json:"link,omitempty"`
	Addr   *netip.Prefix `json:"addr,omitempty"`
	Route  *routeChange  `json:"route,omitempty"`
	Rule   *ruleChange   `json:"rule,omitempty"`
	Sysctl *sysctlChange `json:"sysctl,omitempty"`
	NFT    *nftChange    `json:"nft,omitempty"`
	// KillSwitch is separate from Route because it is bound to no link: it
	// outlives the TUN, and its revert must run when the link is gone.
	KillSwitch *killSwitchChange `json:"kill_switch,omitempty"`
}

// linkChange records the link's state before Apply. MTU is the value Apply
// set, zero if it left the MTU alone.
type linkChange struct {
	OldMTU int  `json:"old_mtu"`
	MTU    int  `json:"mtu,omitempty"`
	WasUp  bool `json:"was_up"`
}

// routeChange is a route via the journal's link.
type routeChange struct {
	Dst   netip.Prefix `json:"dst"`
	Table int          `json:"table"`
}

// ruleChange is a policy rule; Suppress is the suppress_prefixlength, or
// nil for none.
type ruleChange struct {
	Family   int    `json:"family"` // 4 or 6
	Priority int    `json:"priority"`
	Table    int    `json:"table"`
	Mark     uint32 `json:"fwmark,omitempty"`
	Invert   bool   `json:"invert,omitempty"`
	Suppress *int   `json:"suppress_prefixlength,omitempty"`
}

// sysctlChange is a value written under /proc/sys. Revert restores Old only
// if the current value is still New, so a later change by someone else
// stands.
type sysctlChange struct {
	Key string `json:"key"` // relative to /proc/sys, e.g. net/ipv4/ip_forward
	Old string `json:"old"`
	New string `json:"new"`
}

// nftChange is an nftables table created (and owned) by Apply.
type nftChange struct {
	Family string `json:"family"` // only "inet"
	Name   string `json:"name"`
}

// killSwitchChange is the full tunnel's kill switch in one family: an
// unreachable default route in Table, with metric KillSwitchMetric and
// protocol Protocol.
type killSwitchChange struct {
	Family int `json:"family"` // 4 or 6
	Table  int `json:"table"`
}

func (c change) describe() string {
	switch {
	case c.Link != nil:
		return "link state"
	case c.Addr != nil:
		return "address " + c.Addr.String()
	case c.Route != nil:
		return fmt.Sprintf("route %s table %d", c.Route.Dst, c.Route.Table)
	case c.Rule != nil:
		return fmt.Sprintf("ipv%d rule priority %d", c.Rule.Family, c.Rule.Priority)
	case c.Sysctl != nil:
		return "sysctl " + c.Sysctl.Key
	case c.NFT != nil:
		return "nftables table " + c.NFT.Name
	case c.KillSwitch != nil:
		return fmt.Sprintf("ipv%d kill switch table %d", c.KillSwitch.Family, c.KillSwitch.Table)
	}
	return "empty change"
}

// check rejects a change a journal written by this package cannot hold.
func (c change) check() error {
	n := 0
	for _, set := range []bool{c.Link != nil, c.Addr != nil, c.Route != nil, c.Rule != nil, c.Sysctl != nil, c.NFT != nil, c.KillSwitch != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return fmt.Errorf("change with %d kinds, want 1", n)
	}
	switch {
	case c.Addr != nil:
		if err := checkPrefix(*c.Addr); err != nil {
			return fmt.Errorf("address %s: %w", *c.Addr, err)
		}
	case c.Route != nil:
		if err := checkPrefix(c.Route.Dst); err != nil || c.Route.Table <= 0 {
			return fmt.Errorf("bad route %s table %d", c.Route.Dst, c.Route.Table)
		}
	case c.Rule != nil:
		if (c.Rule.Family != 4 && c.Rule.Family != 6) || c.Rule.Priority <= 0 || c.Rule.Table <= 0 {
			return fmt.Errorf("bad rule %+v", *c.Rule)
		}
	case c.Sysctl != nil:
		if !validSysctlKey(c.Sysctl.Key) {
			return fmt.Errorf("bad sysctl key %q", c.Sysctl.Key)
		}
	case c.NFT != nil:
		if c.NFT.Family != "inet" || c.NFT.Name == "" {
			return fmt.Errorf("bad nftables table %q %q", c.NFT.Family, c.NFT.Name)
		}
	case c.KillSwitch != nil:
		if (c.KillSwitch.Family != 4 && c.KillSwitch.Family != 6) || c.KillSwitch.Table <= 0 {
			return fmt.Errorf("bad kill switch %+v", *c.KillSwitch)
		}
	}
	return nil
}

// journal is an open journal. Each update rewrites the whole file through a
// temporary file, fsync and rename, so a crash leaves either the old or the
// new version, never a torn one.
type journal struct {
	path string
	st   journalFile
}

// createJournal claims path (O_EXCL) and writes an empty journal.
func createJournal(path, link string, index int) (*journal, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	j := &journal{path: path, st: journalFile{Version: journalVersion, Link: link, Index: index, Changes: []change{}}}
	data, err := j.encode()
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("%s: %w (run `stt-tun down` to revert the previous run)", path, ErrJournalExists)
	}
	if err != nil {
		return nil, fmt.Errorf("create journal: %w", err)
	}
	if err := writeSync(f, data); err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("write journal %s: %w", path, err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("write journal %s: %w", path, err)
	}
	return j, nil
}

// readJournal loads and checks a journal. A missing file gives an error
// wrapping fs.ErrNotExist; a malformed one, ErrJournalCorrupt.
func readJournal(path string) (*journal, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read journal: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var st journalFile
	if err := dec.Decode(&st); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", path, ErrJournalCorrupt, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%s: %w: trailing data", path, ErrJournalCorrupt)
	}
	if st.Version != journalVersion {
		return nil, fmt.Errorf("%s: %w: version %d, want %d", path, ErrJournalCorrupt, st.Version, journalVersion)
	}
	if err := checkLinkName(st.Link); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", path, ErrJournalCorrupt, err)
	}
	if st.Index <= 0 {
		return nil, fmt.Errorf("%s: %w: ifindex %d", path, ErrJournalCorrupt, st.Index)
	}
	for i, c := range st.Changes {
		if err := c.check(); err != nil {
			return nil, fmt.Errorf("%s: %w: change %d: %v", path, ErrJournalCorrupt, i, err)
		}
	}
	return &journal{path: path, st: st}, nil
}

func (j *journal) encode() ([]byte, error) {
	data, err := json.MarshalIndent(j.st, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode journal: %w", err)
	}
	return append(data, '\n'), nil
}

// record appends c and makes it durable. On error the journal is unchanged
// and the caller must not make the change.
func (j *journal) record(c change) error {
	j.st.Changes = append(j.st.Changes, c)
	if err := j.save(); err != nil {
		j.st.Changes = j.st.Changes[:len(j.st.Changes)-1]
		return err
	}
	return nil
}

// recordAll appends cs with one write.
func (j *journal) recordAll(cs []change) error {
	n := len(j.st.Changes)
	j.st.Changes = append(j.st.Changes, cs...)
	if err := j.save(); err != nil {
		j.st.Changes = j.st.Changes[:n]
		return err
	}
	return nil
}

// drop removes change i, once it is known not to be in effect.
func (j *journal) drop(i int) error {
	j.st.Changes = append(j.st.Changes[:i], j.st.Changes[i+1:]...)
	return j.save()
}

// save replaces the file atomically and durably.
func (j *journal) save() error {
	data, err := j.encode()
	if err != nil {
		return err
	}
	tmp := j.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write journal: %w", err)
	}
	if err := writeSync(f, data); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write journal %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, j.path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write journal: %w", err)
	}
	if err := syncDir(filepath.Dir(j.path)); err != nil {
		return fmt.Errorf("write journal %s: %w", j.path, err)
	}
	return nil
}

// remove deletes the journal once nothing in it is in effect.
func (j *journal) remove() error {
	if err := os.Remove(j.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove journal: %w", err)
	}
	if err := syncDir(filepath.Dir(j.path)); err != nil {
		return fmt.Errorf("remove journal %s: %w", j.path, err)
	}
	return nil
}

func writeSync(f *os.File, data []byte) error {
	_, err := f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return err
	}
	return nil
}
