package routing

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestJournalOfWhatStttunMakesIsAccepted keeps the checks from refusing a journal
// Apply writes: every kind, as a full spec records it.
func TestJournalOfWhatStttunMakesIsAccepted(t *testing.T) {
	zero := 0
	jf := journalFile{Version: journalVersion, Link: "stt0", Index: 7, Changes: []change{
		{Link: &linkChange{OldMTU: 1500, MTU: 1420}},
		{Addr: ptr(pfx("10.77.0.1/24"))},
		{Route: &routeChange{Dst: pfx("10.78.0.0/16"), Table: tableMain}},
		{Route: &routeChange{Dst: pfx("::/0"), Table: DefaultTable}},
		{Rule: &ruleChange{Family: 6, Priority: DefaultRulePriority, Table: tableMain, Suppress: &zero}},
		{Rule: &ruleChange{Family: 6, Priority: DefaultRulePriority + 1, Table: DefaultTable, Mark: DefaultFwMark, Invert: true}},
		{Sysctl: &sysctlChange{Key: sysctlSrcValidMark, Old: "0", New: "1"}},
		{NFT: &nftChange{Family: "inet", Name: NFTTableName("stt0")}},
	}}
	for i, c := range jf.Changes {
		if err := c.check(&jf); err != nil {
			t.Errorf("change %d (%s) refused: %v", i, c.describe(), err)
		}
	}
}

func ptr[T any](v T) *T { return &v }

// TestUndoLeavesForeignNFTTableAlone: a journal naming a table stt-tun never makes
// (here the administrator's "inet filter") is refused, and the table stays.
func TestUndoLeavesForeignNFTTableAlone(t *testing.T) {
	n := newNS(t)
	n.nft(t, "add", "table", "inet", "filter")
	n.nft(t, "add", "chain", "inet", "filter", "input", "{ type filter hook input priority 0; }")
	before := n.dump(t)
	dir := t.TempDir()
	journal := `{"version":1,"link":"stt0","ifindex":7,"changes":[{"nft":{"family":"inet","name":"filter"}}]}`
	if err := os.WriteFile(StatePath(dir, "stt0"), []byte(journal), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := n.undoFromState(dir, "stt0"); !errors.Is(err, ErrJournalCorrupt) {
		t.Errorf("UndoFromState of a journal naming inet filter: %v, want ErrJournalCorrupt", err)
	}
	sameDump(t, before, n.dump(t))
}

// TestApplyRefusesLinkNotCreatedByStttun: Apply configures only a TUN device that
// tun.Create made (marked with its alias), never another link of the name.
func TestApplyRefusesLinkNotCreatedByStttun(t *testing.T) {
	for _, kind := range []string{"veth", "unmarked tun"} {
		t.Run(kind, func(t *testing.T) {
			n := newNS(t)
			switch kind {
			case "veth":
				n.ip(t, "link", "add", "stt0", "type", "veth", "peer", "name", "stt0-p")
			default:
				n.createTUN(t, "stt0")
				h, l := n.link(t, "stt0")
				if err := h.LinkSetAlias(l, ""); err != nil {
					t.Fatal(err)
				}
				h.Close()
			}
			before := n.dump(t) + n.ip(t, "link", "show", "stt0")
			dir := filepath.Join(t.TempDir(), "state")
			_, err := n.apply(fullSpec(dir))
			if err == nil || !strings.Contains(err.Error(), "not a TUN device created by stt-tun") {
				t.Fatalf("Apply on a %s: %v, want refusal", kind, err)
			}
			sameDump(t, before, n.dump(t)+n.ip(t, "link", "show", "stt0"))
			noJournal(t, dir)
		})
	}
}

// TestJournalDoesNotFollowPlantedLinks: symbolic links in the journal's place, or in
// its temporary file's, are never followed, so what they point to stays as it was.
func TestJournalDoesNotFollowPlantedLinks(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(t.TempDir(), "victim")
	const precious = "root's file\n"
	if err := os.WriteFile(victim, []byte(precious), 0o644); err != nil {
		t.Fatal(err)
	}
	path := StatePath(dir, "stt0")

	// The temporary file of each update.
	j, err := createJournal(path, "stt0", 7)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, path+".tmp"); err != nil {
		t.Fatal(err)
	}
	if err := j.record(change{Addr: ptr(pfx("10.77.0.1/24"))}); err != nil {
		t.Fatalf("record with a link planted as the temporary file: %v", err)
	}
	if fi, err := os.Lstat(path); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("journal is not a regular file after the update: %v %v", fi, err)
	}
	if err := j.remove(); err != nil {
		t.Fatal(err)
	}

	// The journal itself, for create and for read.
	if err := os.Symlink(victim, path); err != nil {
		t.Fatal(err)
	}
	if _, err := createJournal(path, "stt0", 7); err == nil {
		t.Error("createJournal over a planted link succeeded")
	}
	if err := UndoFromState(dir, "stt0"); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("UndoFromState of a journal that is a link: %v, want refusal", err)
	}
	if b, _ := os.ReadFile(victim); string(b) != precious {
		t.Errorf("the planted link's target was changed: %q", b)
	}
}

// TestUndoRefusesUnsafeStateDir: a journal in a directory that others can write may
// be anyone's; it is not acted on.
func TestUndoRefusesUnsafeStateDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	journal := `{"version":1,"link":"stt0","ifindex":7,"changes":[]}`
	if err := os.WriteFile(StatePath(dir, "stt0"), []byte(journal), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	err := UndoFromState(dir, "stt0")
	if err == nil || !strings.Contains(err.Error(), "writable by group or others") {
		t.Errorf("UndoFromState in a world-writable dir: %v, want refusal", err)
	}
	if _, err := os.Stat(StatePath(dir, "stt0")); err != nil {
		t.Errorf("journal removed: %v", err)
	}
	if _, err := createJournal(StatePath(dir, "stt1"), "stt1", 7); err == nil {
		t.Error("createJournal in a world-writable dir succeeded")
	}
}
