package mesh

// statement_gossip.go is the engine's side of signed statements (docs/protocol.md 10.8):
// it holds the StatementStore, pushes a statement it accepts to the connected members,
// compares summaries with them every round and exchanges the full lists when they
// differ, and obeys revocations in the member store: the revoked key's record is
// forgotten, and new records of that key are refused. What the node does besides (close
// sessions, persist) is the caller's: Config.OnStatement.

import (
	"crypto/ed25519"
	"crypto/sha256"
	"math/rand/v2"
	"slices"
	"time"
)

// Bounds of statement gossip.
const (
	// MaxStatementsAnswer bounds the statements one answer to a SUMMARY carries; a
	// store that holds more sends a window of them from a random place each time.
	MaxStatementsAnswer = 256
	// MaxStatementsPush bounds the statements sent back at the end of one exchange.
	MaxStatementsPush = 64
)

// statementState is the engine's statement gossip state; guarded by Engine.mu.
type statementState struct {
	store *StatementStore
	// answered is when a statements SUMMARY of each member was last answered.
	answered map[[32]byte]time.Time
	// asked is when this node last sent each member its statements SUMMARY: only an
	// answer to one (within 3 intervals) makes it send back what the answer lacked.
	asked map[[32]byte]time.Time
	// exch holds, per member answering our SUMMARY, the ids of the statements its
	// answer listed so far.
	exch map[[32]byte]*statementExchange
	// revokedRecords counts member records refused or forgotten for a revoked key.
	revokedRecords uint64
}

type statementExchange struct {
	started time.Time
	ids     map[[32]byte]struct{}
}

func statementID(raw []byte) [32]byte { return sha256.Sum256(raw) }

// statements returns the statement state, made on first use.
func (e *Engine) statements() *statementState {
	if e.stmt.store == nil {
		e.stmt.store = NewStatementStore(e.netID, e.cfg.Admins, 0)
		e.stmt.answered = make(map[[32]byte]time.Time)
		e.stmt.asked = make(map[[32]byte]time.Time)
		e.stmt.exch = make(map[[32]byte]*statementExchange)
	}
	return &e.stmt
}

// revokedKey reports whether a statement held revokes key. Called with mu held.
func (e *Engine) revokedKey(key [32]byte) bool {
	return e.stmt.store != nil && e.stmt.store.Revoked(key)
}

// OfferStatement offers a statement from this node (an admin's command handed over the
// control socket): on acceptance it is pushed to every connected member, and to the
// members also given (those the node has a session with: an admin's command goes to
// all of them at once), and reported to OnStatement. It returns whether it was
// accepted and why not (StatementReasons).
func (e *Engine) OfferStatement(raw []byte, also ...[32]byte) (accepted bool, reason string) {
	var b batch
	e.mu.Lock()
	accepted, reason = e.offerStatement(&b, [32]byte{}, e.cfg.Now(), raw)
	if accepted {
		s := e.stmt.store.lastAccepted(raw)
		body, err := AppendStatementList(nil, 0, raw)
		for _, k := range also {
			if _, done := e.connected[k]; done || err != nil || k == e.self ||
				(s.Kind == StatementRevoke && k == s.Revoke.Target) {
				continue
			}
			e.queue(&b, k, MsgStatements, body)
		}
	}
	e.mu.Unlock()
	e.flush(&b)
	return accepted, reason
}

// LoadStatements restores statements saved by an earlier run, before any session: they
// are not checked against the clock again (it may be behind at boot), not counted as
// offers, pushed, or reported to OnStatement (the caller reads the
// result: RevokedKeys). It returns how many were taken and how many refused.
func (e *Engine) LoadStatements(raws [][]byte) (taken, refused int) {
	now := e.cfg.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	st := e.statements()
	saved := st.store.counts
	st.store.counts = make(map[string]uint64, len(saved))
	for _, raw := range raws {
		if ok, _ := st.store.restore(raw, now); ok {
			taken++
			e.obeyLocked(nil, st.store.lastAccepted(raw))
		} else {
			refused++
		}
	}
	st.store.counts = saved
	return taken, refused
}

// SetAdmins replaces the admin keys: the statements held are checked against the new
// list at once (those of a key no longer listed are dropped, lifting what they
// commanded), and later ones are checked against it. It returns how many were dropped.
func (e *Engine) SetAdmins(admins []ed25519.PublicKey) (dropped int) {
	now := e.cfg.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	st := e.statements()
	old := st.store
	e.cfg.Admins = admins
	ns := NewStatementStore(e.netID, admins, old.max)
	for _, raw := range old.All() {
		if ok, _ := ns.restore(raw, now); !ok {
			dropped++
		}
	}
	ns.counts = old.counts
	st.store = ns
	return dropped
}

// lastAccepted returns the statement the store just stored from raw.
func (s *StatementStore) lastAccepted(raw []byte) *Statement {
	k, _, _ := peekKey(raw)
	if e := s.m[k]; e != nil {
		return e.st
	}
	return nil
}

// offerStatement hands a statement from peer from (zero: this node) to the store and
// acts on the outcome. Called with mu held.
func (e *Engine) offerStatement(b *batch, from [32]byte, now time.Time, raw []byte) (bool, string) {
	st := e.statements()
	ok, reason := st.store.Offer(raw, now)
	if !ok {
		return ok, reason
	}
	s := st.store.lastAccepted(raw)
	e.obeyLocked(b, s)
	body, err := AppendStatementList(nil, 0, raw)
	if err != nil {
		return ok, reason
	}
	for k := range e.connected {
		if k == from || (s.Kind == StatementRevoke && k == s.Revoke.Target) {
			continue
		}
		e.queue(b, k, MsgStatements, body)
	}
	b.statements = append(b.statements, s)
	return ok, reason
}

// obeyLocked applies what an accepted statement commands to the member store: a
// revoked member's record is forgotten (reported as gone when b is not nil).
func (e *Engine) obeyLocked(b *batch, s *Statement) {
	if s == nil || s.Kind != StatementRevoke {
		return
	}
	k := s.Revoke.Target
	if k == e.self {
		e.cfg.Logger.Warn("mesh: an admin revoked this node's key; the other members refuse it from now on")
		return
	}
	if rec := e.store.remove(k); rec != nil {
		e.stmt.revokedRecords++
		if b != nil {
			b.changes = append(b.changes, change{old: rec})
		}
	}
	delete(e.connected, k)
	delete(e.exchanges, k)
	// What it reported seeing of this node goes too: kept, it would still feed the
	// endpoints this node announces, its NAT classification and "seen from".
	e.observed = slices.DeleteFunc(e.observed, func(o Observation) bool { return o.By == k })
}

// remove forgets the record of key, if held, and returns it.
func (s *Store) remove(key [32]byte) *Record {
	e := s.m[key]
	if e == nil || key == s.self {
		return nil
	}
	delete(s.m, key)
	delete(s.bySigner, [32]byte(e.rec.SigningKey))
	s.sorted = nil
	return e.rec
}

// refuseRevokedRecord undoes the acceptance of rec, a record of a revoked key. Called
// with mu held, right after Store.Put accepted it.
func (e *Engine) refuseRevokedRecord(rec *Record) {
	e.store.remove(rec.Key)
	e.store.counts[Accepted]-- // counted as refused for its key instead
	e.stmt.revokedRecords++
}

// sendStatementSummary sends this node's statements SUMMARY to peer, when it holds any
// or admins are configured (a member that holds some sends its own, and the answer
// brings them here; an empty one asks a neighbour that holds some for them). Called
// with mu held. Without the empty SUMMARY a member that held none and was nobody's
// neighbour (neighbours are chosen, not mutual) was never sent a revocation.
//
// once sends it bare, unacknowledged, as the SUMMARY of a round (Tick) goes.
func (e *Engine) sendStatementSummary(b *batch, peer [32]byte, now time.Time, once bool) {
	held := e.stmt.store != nil && e.stmt.store.Len() > 0
	if !held && len(e.cfg.Admins) == 0 || e.revokedKey(peer) {
		return
	}
	st := e.statements()
	st.asked[peer] = now
	c, h := st.store.Summary()
	e.queueMsg(b, outMsg{to: peer, typ: MsgStatements, body: AppendStatementsSummary(nil, Summary{Count: c, Hash: h}), once: once})
}

// tickStatements forgets old exchanges and answers. Called with mu held.
func (e *Engine) tickStatements(now time.Time) {
	st := &e.stmt
	for k, at := range st.answered {
		if now.Sub(at) >= summaryAnswerGap || now.Before(at) {
			delete(st.answered, k)
		}
	}
	for k, x := range st.exch {
		if now.Sub(x.started) > 3*e.cfg.Interval || now.Before(x.started) {
			delete(st.exch, k)
		}
	}
	for k, at := range st.asked {
		if now.Sub(at) > 3*e.cfg.Interval || now.Before(at) {
			delete(st.asked, k)
		}
	}
}

// handleStatements processes a STATEMENTS message from the member from. Called with mu
// held.
func (e *Engine) handleStatements(b *batch, from [32]byte, now time.Time, body []byte) error {
	var buf [8][]byte
	op, sum, list, err := ParseStatementsMessage(body, buf[:0])
	if err != nil {
		return err
	}
	st := e.statements()
	switch op {
	case StatementsSummary:
		c, h := st.store.Summary()
		if sum == (Summary{Count: c, Hash: h}) {
			return nil
		}
		if at, ok := st.answered[from]; ok && now.Sub(at) < summaryAnswerGap && !now.Before(at) {
			return nil
		}
		st.answered[from] = now
		e.answerStatements(b, from)
	case StatementsList:
		var x *statementExchange
		if _, asked := st.asked[from]; asked && list.Flags&ListAnswer != 0 {
			x = st.exch[from]
			if x == nil {
				if len(st.exch) >= maxExchanges {
					for k := range st.exch { // evict any one
						delete(st.exch, k)
						break
					}
				}
				x = &statementExchange{started: now, ids: make(map[[32]byte]struct{})}
				st.exch[from] = x
			}
		}
		for _, raw := range list.Statements {
			if x != nil && len(x.ids) < MaxStatementsAnswer {
				x.ids[statementID(raw)] = struct{}{}
			}
			e.offerStatement(b, from, now, raw)
		}
		if x != nil && list.Flags&ListLast != 0 {
			delete(st.exch, from)
			delete(st.asked, from) // one push back per SUMMARY sent
			if list.Flags&ListComplete != 0 {
				e.pushMissing(b, from, x.ids)
			}
		}
	}
	return nil
}

// answerStatements sends peer the statements held, in lists that fit, the last one
// flagged: all of them when they are at most MaxStatementsAnswer (and then flagged
// complete), else that many from a random place.
func (e *Engine) answerStatements(b *batch, peer [32]byte) {
	all := e.stmt.store.sortedRaw()
	if len(all) <= MaxStatementsAnswer {
		e.sendStatementLists(b, peer, true, true, all)
		return
	}
	start := rand.IntN(len(all))
	send := make([][]byte, 0, MaxStatementsAnswer)
	for i := range MaxStatementsAnswer {
		send = append(send, all[(start+i)%len(all)])
	}
	e.sendStatementLists(b, peer, true, false, send)
}

// sendStatementLists sends stmts to peer packed into as few lists as fit. As an answer
// (answer), the lists are flagged so, the last one ListLast (and ListComplete when
// complete), and an empty answer is one empty last list.
func (e *Engine) sendStatementLists(b *batch, peer [32]byte, answer, complete bool, stmts [][]byte) {
	for first := true; first || len(stmts) > 0; first = false {
		n, size := 0, 3
		for n < len(stmts) && (n == 0 || size+2+len(stmts[n]) <= PackBudget) {
			size += 2 + len(stmts[n])
			n++
		}
		if n == 0 && !answer {
			return
		}
		var f byte
		if answer {
			f = ListAnswer
			if n == len(stmts) {
				f |= ListLast
				if complete {
					f |= ListComplete
				}
			}
		}
		if body, err := AppendStatementList(make([]byte, 0, size), f, stmts[:n]...); err == nil {
			e.queue(b, peer, MsgStatements, body)
		}
		stmts = stmts[n:]
	}
}

// pushMissing sends peer the statements held that its complete answer did not list, at
// most MaxStatementsPush.
func (e *Engine) pushMissing(b *batch, peer [32]byte, listed map[[32]byte]struct{}) {
	var push [][]byte
	for _, raw := range e.stmt.store.sortedRaw() {
		if len(push) >= MaxStatementsPush {
			break
		}
		if _, ok := listed[statementID(raw)]; !ok {
			push = append(push, raw)
		}
	}
	if len(push) > 0 {
		e.sendStatementLists(b, peer, false, false, push)
	}
}

// Revoked reports whether a statement held revokes the X25519 key key.
func (e *Engine) Revoked(key [32]byte) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.revokedKey(key)
}

// RevokedKeys lists the keys the statements held revoke.
func (e *Engine) RevokedKeys() [][32]byte {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.stmt.store == nil {
		return nil
	}
	out := make([][32]byte, 0, len(e.stmt.store.revoked))
	for k := range e.stmt.store.revoked {
		out = append(out, k)
	}
	return out
}

// Revocations returns every REVOKE held, as StatementStore.Revocations.
func (e *Engine) Revocations() []*Statement {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.stmt.store == nil {
		return nil
	}
	return e.stmt.store.Revocations()
}

// RotationStatement returns the newest ROTATE held and its bytes, or nil.
func (e *Engine) RotationStatement() (*Statement, []byte) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.stmt.store == nil {
		return nil, nil
	}
	return e.stmt.store.RotationStatement()
}

// Statements returns the bytes of every statement held, sorted bytewise: what the
// node saves.
func (e *Engine) Statements() [][]byte {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.stmt.store == nil {
		return nil
	}
	return e.stmt.store.All()
}

// StatementStats are the counters of statement gossip.
type StatementStats struct {
	Held int
	// Offers counts the statements offered (by members and over the control socket), by
	// reason (StatementReasons).
	Offers map[string]uint64
	// RevokedRecords counts member records refused or forgotten for a revoked key.
	RevokedRecords uint64
}

// StatementStats returns the counters of statement gossip.
func (e *Engine) StatementStats() StatementStats {
	e.mu.Lock()
	defer e.mu.Unlock()
	st := e.statements()
	out := StatementStats{Held: st.store.Len(), Offers: make(map[string]uint64, len(StatementReasons)),
		RevokedRecords: st.revokedRecords}
	for _, r := range StatementReasons {
		out.Offers[r] = st.store.Count(r)
	}
	return out
}

// Admins returns the admin keys the engine obeys.
func (e *Engine) Admins() []ed25519.PublicKey {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cfg.Admins
}
