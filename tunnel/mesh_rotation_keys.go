package tunnel

// mesh_rotation_keys.go keeps, across a restart, what a member needs to go on handing a
// rotation's seed to the right members: the member keys it had seen before the admin
// signed the rotation (and before it took it), and the rotation a seed file written by
// hand superseded here. The file is <seed file's directory>/<link>.rotation, beside
// the statements file, written and read like it: mode 0600, atomically, never through
// a link. Without it, a member restarted during a rotation knows no key from before
// the signature (every key it meets is new to it) and hands the seed only to its
// [[peer]]s, so the members that were away wait for one that never restarted.
//
// The security property holds across the restart: only keys seen before the
// signature are written, revoked and excluded keys are checked when an offer goes out,
// as before, and every key seen after the restart counts as seen after the rotation
// was taken (rotateState.since). Whoever can write the file can read the seed file
// beside it, which is all a newcomer needs anyway.

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"io"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/internal/statedir"
	"github.com/stt-tun/stt-tun/stt/mesh"
)

// RotationSuffix is the file name suffix of the rotation keys file: <seed file's
// directory>/<link>.rotation.
const RotationSuffix = ".rotation"

// rotationHeader opens the rotation keys file.
const rotationHeader = "# stt-tun: the members a seed rotation may be handed to (seen before it was signed); written by the daemon\n"

// maxRotationFile bounds what is read of the file: maxSeen keys in base64, and the two
// lines that bind it to statements.
const maxRotationFile = maxSeen*(44+1) + 2*(len("superseded ")+44+1) + len(rotationHeader)

// rotationPersisted is what the file holds: the keys that may be handed the seed of
// the rotation whose statement hashes to rotation, and the statement superseded here.
type rotationPersisted struct {
	rotation   [32]byte // SHA-256 of the ROTATE statement the keys are for; zero: none
	keys       [][32]byte
	superseded [32]byte // SHA-256 of the ROTATE statement superseded here; zero: none
}

// rotationPath is the rotation keys file beside the statements file at stmtPath.
func rotationPath(stmtPath string) string {
	return strings.TrimSuffix(stmtPath, StatementsSuffix) + RotationSuffix
}

// snapshotOfferableLocked records, when this node takes the rotation st (bytes raw),
// the keys it may hand its seed to: those seen before the admin signed it and before
// now. No key seen later joins them. Called with r.mu held.
func (r *rotateState) snapshotOfferableLocked(st *mesh.Statement, raw []byte) {
	issued := time.Unix(0, int64(st.Issued))
	var keys [][32]byte
	for k, seen := range r.seen {
		if seen.Before(issued) && seen.Before(r.takenAt) {
			keys = append(keys, k)
		}
	}
	r.persist.rotation, r.persist.keys = sha256.Sum256(raw), keys
	r.persistDirty = true
}

// restoreOfferableLocked takes up what the file kept for the rotation st (bytes raw),
// held after a restart: its keys count as seen before it was signed, and the node
// took it before it started (every key seen since is too late). Called with r.mu held.
func (r *rotateState) restoreOfferableLocked(p rotationPersisted, st *mesh.Statement, raw []byte) {
	h := sha256.Sum256(raw)
	if r.takenID != st.Rotate.NextSeedID {
		r.takenID, r.takenAt = st.Rotate.NextSeedID, r.since
	}
	if p.rotation == h {
		for _, k := range p.keys {
			if len(r.seen) < maxSeen || !r.seen[k].IsZero() {
				r.seen[k] = time.Unix(0, 0) // in an earlier run, before the signature
			}
		}
		r.persist.rotation, r.persist.keys = h, p.keys
	}
	if p.superseded == h {
		_, until := rotationTimes(st)
		r.superseded, r.supersededID, r.supersededUntil = bytes.Clone(raw), st.Rotate.NextSeedID, until
		r.persist.superseded = h
	}
}

// loadRotationFile reads the rotation keys file; a missing one holds nothing. Lines it
// cannot read are skipped.
func loadRotationFile(path string) (rotationPersisted, int, error) {
	var p rotationPersisted
	f, err := statedir.OpenFile(path, os.O_RDONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return p, 0, nil
	}
	if err != nil {
		return p, 0, err
	}
	data, err := io.ReadAll(io.LimitReader(f, int64(maxRotationFile)))
	f.Close()
	if err != nil {
		return p, 0, err
	}
	bad := 0
	hash := func(s string, into *[32]byte) {
		b, err := base64.StdEncoding.Strict().DecodeString(s)
		if err != nil || len(b) != 32 {
			bad++
			return
		}
		*into = [32]byte(b)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "rotation "):
			hash(strings.TrimPrefix(line, "rotation "), &p.rotation)
		case strings.HasPrefix(line, "superseded "):
			hash(strings.TrimPrefix(line, "superseded "), &p.superseded)
		default:
			k, err := config.DecodeKey(line)
			if err != nil || len(p.keys) >= maxSeen {
				bad++
				continue
			}
			p.keys = append(p.keys, k)
		}
	}
	if sc.Err() != nil {
		bad++
	}
	return p, bad, nil
}

func (p rotationPersisted) encode() string {
	var b strings.Builder
	b.WriteString(rotationHeader)
	if p.rotation != ([32]byte{}) {
		b.WriteString("rotation " + base64.StdEncoding.EncodeToString(p.rotation[:]) + "\n")
		for _, k := range p.keys {
			b.WriteString(config.EncodeKey(k) + "\n")
		}
	}
	if p.superseded != ([32]byte{}) {
		b.WriteString("superseded " + base64.StdEncoding.EncodeToString(p.superseded[:]) + "\n")
	}
	return b.String()
}

// saveRotationFile writes the rotation keys file when it changed; after a failure,
// logged once (at warn), it tries again stmtSaveRetry later, or at once when last.
func (t *Tunnel) saveRotationFile(now time.Time, last bool) {
	m := t.mesh
	if m == nil || m.stmtPath == "" {
		return
	}
	r := m.rot
	r.mu.Lock()
	if !r.persistDirty || r.persistErr != "" && !last && now.Sub(r.persistAt) < stmtSaveRetry && !now.Before(r.persistAt) {
		r.mu.Unlock()
		return
	}
	r.persistDirty = false
	content := r.persist.encode()
	r.mu.Unlock()
	path := rotationPath(m.stmtPath)
	if err := writeStateFile(path, content); err != nil {
		r.mu.Lock()
		r.persistDirty = true
		r.persistAt = now
		logIt := r.persistErr != err.Error()
		r.persistErr = err.Error()
		r.mu.Unlock()
		if logIt {
			t.log.Warn("mesh: cannot save the rotation's member keys; a restart before it is saved offers the seed to [[peer]]s only",
				"file", path, "err", err)
		}
		return
	}
	r.mu.Lock()
	r.persistErr = ""
	r.mu.Unlock()
}
