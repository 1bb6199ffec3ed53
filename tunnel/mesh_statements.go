package tunnel

// mesh_statements.go is the tunnel's side of signed statements: the admin keys from
// [membership], the statements file in the state directory (loaded before the node
// starts, so that a revoked key is refused from the first packet), the control socket's
// `statement` op, and what a revocation does here: the node refuses the key and closes
// its sessions (stt.Node.SetRevoked), and the mesh loop forgets the member.

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/internal/promtext"
	"github.com/stt-tun/stt-tun/internal/statedir"
	"github.com/stt-tun/stt-tun/internal/status"
	"github.com/stt-tun/stt-tun/stt/mesh"
)

// StatementsSuffix is the file name suffix of the statements file in the state
// directory: <state dir>/<link>.statements.
const StatementsSuffix = ".statements"

// maxStatementsFile bounds what is read of the statements file: every statement a
// store holds, in base64, with room to spare.
const maxStatementsFile = 2 * mesh.DefaultMaxStatements * (mesh.MaxStatementLen*4/3 + 4)

// statementsHeader opens the statements file.
const statementsHeader = "# stt-tun signed statements, one base64 statement per line; written by the daemon\n"

// ErrNoMesh is the error of the statement operations of a tunnel without [discovery].
var ErrNoMesh = errors.New("this interface has no [discovery]: statements travel between the members of a mesh")

// statementsPath is where the statements of the interface are kept: beside the seed
// file, <seed file's directory>/<link>.statements. Not in the state directory: that is
// /run/stt-tun, emptied at boot, and a revocation must outlive a reboot. The daemon
// writes in that directory already (a rotation replaces the seed file there).
func statementsPath(seedFile, link string) string {
	return filepath.Join(filepath.Dir(seedFile), link+StatementsSuffix)
}

// loadStatements restores the statements saved by an earlier run into the engine. A
// missing file is no statement; lines that do not decode or that the store refuses (an
// admin no longer configured, say) are skipped, with one log line for them all.
func (t *Tunnel) loadStatements(path string) {
	m := t.mesh
	m.stmtPath = path
	if path == "" {
		return
	}
	// Like every file of the state directory, opened only if it is a regular file with
	// one name (no symbolic or hard link), and read up to a bound.
	f, err := statedir.OpenFile(path, os.O_RDONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	var data []byte
	if err == nil {
		data, err = io.ReadAll(io.LimitReader(f, maxStatementsFile))
		f.Close()
	}
	if err != nil {
		t.log.Warn("mesh: cannot read the statements file; starting without it", "file", path, "err", err)
		return
	}
	var raws [][]byte
	bad := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 8192), 2*mesh.MaxStatementLen)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		raw, err := base64.StdEncoding.Strict().DecodeString(line)
		if err != nil {
			bad++
			continue
		}
		raws = append(raws, raw)
	}
	if sc.Err() != nil {
		bad++
	}
	taken, refused := m.eng.LoadStatements(raws)
	if bad+refused > 0 {
		t.log.Warn("mesh: statements file holds statements not taken; keeping the others", "file", path,
			"taken", taken, "unreadable", bad, "refused", refused)
		m.stmtDirty.Store(true) // written again without them
	}
	if taken > 0 {
		t.log.Info("mesh: statements restored", "file", path, "count", taken, "revoked_keys", len(m.eng.RevokedKeys()))
	}
}

// saveStatements writes the statements held to the statements file when they changed
// since it was last written: a temporary file in the same directory, synced, renamed
// over the old one (mode 0600), so that a crash leaves the old file or the new one.
func (t *Tunnel) saveStatements() { t.saveStatementsAt(time.Now(), false) }

// stmtSaveRetry is how long a failed save of the statements waits before the next try.
const stmtSaveRetry = time.Minute

// saveStatementsAt saves the statements when they changed; after a failure, only
// stmtSaveRetry later (or at once when last). A failure is logged at warn when it
// differs from the one before, so that a file that cannot be written is said once,
// not every second.
func (t *Tunnel) saveStatementsAt(now time.Time, last bool) {
	t.saveRotationFile(now, last)
	m := t.mesh
	if m == nil || m.stmtPath == "" || !m.stmtDirty.Load() {
		return
	}
	m.stmtSaveMu.Lock()
	defer m.stmtSaveMu.Unlock()
	if m.stmtSaveErr != "" && !last && now.Sub(m.stmtSaveAt) < stmtSaveRetry && !now.Before(m.stmtSaveAt) {
		return
	}
	if !m.stmtDirty.Swap(false) {
		return
	}
	if err := writeStateFile(m.stmtPath, statementsText(m.eng.Statements())); err != nil {
		m.stmtDirty.Store(true) // tried again later
		m.stmtSaveAt = now
		if msg := err.Error(); msg != m.stmtSaveErr {
			m.stmtSaveErr = msg
			t.log.Warn("mesh: cannot save the statements; they are kept in memory, and lost at a restart until the file can be written (tried again every minute)",
				"file", m.stmtPath, "err", err)
		}
		return
	}
	if m.stmtSaveErr != "" {
		m.stmtSaveErr = ""
		t.log.Info("mesh: statements saved again", "file", m.stmtPath)
	}
}

func statementsText(raws [][]byte) string {
	var b strings.Builder
	b.WriteString(statementsHeader)
	for _, r := range raws {
		b.WriteString(base64.StdEncoding.EncodeToString(r))
		b.WriteByte('\n')
	}
	return b.String()
}

// writeStateFile replaces the file at path with content: a temporary file in the same
// directory (mode 0600), synced, renamed over the old one, which replaces a link rather
// than follow it; a crash leaves the old file or the new one.
func writeStateFile(path, content string) error {
	dir := filepath.Dir(path)
	if err := statedir.Ensure(dir); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after the rename, there is nothing of that name left
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// applyRevocations gives the node the revoked keys: it refuses them at every handshake
// and closes the sessions made with them. Called before the node starts, and when a
// revocation is taken or the admin keys change.
func (t *Tunnel) applyRevocations() {
	if t.mesh == nil || t.node == nil {
		return
	}
	t.mesh.revokeMu.Lock()
	defer t.mesh.revokeMu.Unlock()
	t.node.SetRevoked(t.mesh.eng.RevokedKeys())
}

// statementAccepted is the engine's OnStatement: a statement from a member or the
// control socket was taken. Called on a receive goroutine (or the control socket's),
// with no lock held.
func (t *Tunnel) statementAccepted(st *mesh.Statement) {
	m := t.mesh
	m.stmtDirty.Store(true)
	switch st.Kind {
	case mesh.StatementRevoke:
		t.applyRevocations()
		m.redecideRevoked.Store(true)
		t.log.Warn("mesh: member revoked by an admin", "key", config.EncodeKey(st.Revoke.Target),
			"name", st.Revoke.Name, "admin", base64.StdEncoding.EncodeToString(st.Admin))
	case mesh.StatementRotate:
		t.rotationAccepted(st)
	}
	m.kick()
}

// forgetRevokedLocked forgets the members whose key is revoked: their peers (and so
// their sessions and relay routes) and routes go. It reports whether it forgot any.
// Called with reloadMu and mesh.mu held.
func (t *Tunnel) forgetRevokedLocked() bool {
	m := t.mesh
	changed := false
	for k, mb := range m.members {
		if !t.node.Revoked(k) {
			continue
		}
		t.forgetMemberLocked(mb)
		delete(m.members, k)
		delete(m.neighbours, k)
		changed = true
	}
	return changed
}

// OfferStatement offers a statement an admin signed, handed over the control socket:
// the store checks it against the admin keys and, when it takes it, the mesh spreads it
// and the node obeys it. It is the ctl `statement` op.
func (t *Tunnel) OfferStatement(raw []byte) (accepted bool, reason string, err error) {
	if t.mesh == nil {
		return false, "", ErrNoMesh
	}
	if len(t.mesh.eng.Admins()) == 0 {
		return false, "", errors.New("this interface has no [membership] admins: it obeys no statement")
	}
	var up [][32]byte
	t.mesh.byKey.Range(func(k, v any) bool {
		if v.(*peer).sp.HasSession() {
			up = append(up, k.([32]byte))
		}
		return true
	})
	accepted, reason = t.mesh.eng.OfferStatement(raw, up...)
	return accepted, reason, nil
}

// Admins returns the admin keys the tunnel obeys ([membership] admins), none without
// [discovery].
func (t *Tunnel) Admins() []ed25519.PublicKey {
	if t.mesh == nil {
		return nil
	}
	return t.mesh.eng.Admins()
}

// reloadAdmins applies a changed [membership] admins list and describes the change for
// the reload's answer. Called with reloadMu held.
func (t *Tunnel) reloadAdmins(old, cfg *config.Config) []string {
	if t.mesh == nil || adminsEqual(old.Membership.Admins, cfg.Membership.Admins) {
		return nil
	}
	dropped := t.mesh.eng.SetAdmins(cfg.Membership.Admins)
	t.mesh.stmtDirty.Store(true)
	t.applyRevocations()
	t.mesh.redecideRevoked.Store(true)
	t.mesh.kick()
	return []string{adminsChange(len(cfg.Membership.Admins), dropped)}
}

// adminsChange is reload's line for a new admin list of n keys that dropped the given
// number of statements: "membership.admins: 1 admin key (2 statements of keys no
// longer listed dropped)".
func adminsChange(n, dropped int) string {
	var line string
	switch n {
	case 0:
		line = "membership.admins: none"
	case 1:
		line = "membership.admins: 1 admin key"
	default:
		line = fmt.Sprintf("membership.admins: %d admin keys", n)
	}
	switch {
	case dropped == 1:
		line += " (1 statement of a key no longer listed dropped)"
	case dropped > 1:
		line += fmt.Sprintf(" (%d statements of keys no longer listed dropped)", dropped)
	}
	if n == 0 {
		line += "; no revocation or rotation is obeyed"
	}
	return line
}

func adminsEqual(a, b []ed25519.PublicKey) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// statementsStatus adds the revocations held and the statement counters to ms.
func (t *Tunnel) statementsStatus(ms *status.Mesh, names map[[32]byte]string) {
	m := t.mesh
	for _, a := range m.eng.Admins() {
		ms.Admins = append(ms.Admins, base64.StdEncoding.EncodeToString(a))
	}
	ms.NetworkID = fmt.Sprintf("%x", m.netID)
	for _, s := range m.eng.Revocations() {
		r := status.Revoked{
			Key:    config.EncodeKey(s.Revoke.Target),
			Name:   s.Revoke.Name,
			By:     base64.StdEncoding.EncodeToString(s.Admin),
			Issued: time.Unix(0, int64(s.Issued)).UTC().Format(time.RFC3339),
		}
		if r.Name == "" {
			r.Name = names[s.Revoke.Target]
		}
		ms.Revoked = append(ms.Revoked, r)
	}
	ms.Statements = m.eng.StatementStats().Held
}

// statementCounters adds the statement counters: the statements offered, by outcome
// ("mesh_statement_<reason>"; all but accepted were dropped), and the member records
// refused or forgotten because their key is revoked.
func (t *Tunnel) statementCounters(c map[string]uint64) {
	ss := t.mesh.eng.StatementStats()
	for r, n := range ss.Offers {
		c["mesh_statement_"+r] = n
	}
	c["mesh_record_revoked"] = ss.RevokedRecords
}

var famMeshStatements = counter("stt_mesh_statements_total", "Signed statements offered by members and stt-tun revoke, by result: accepted, or why they were dropped.")

// writeStatementMetrics writes stt_mesh_statements_total, one series per result.
func (t *Tunnel) writeStatementMetrics(w *promtext.Writer) {
	ss := t.mesh.eng.StatementStats()
	w.Family(famMeshStatements.name, famMeshStatements.typ, famMeshStatements.help)
	for _, r := range mesh.StatementReasons {
		w.Uint(famMeshStatements.name, ss.Offers[r], "result", r)
	}
}
