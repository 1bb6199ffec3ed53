package mesh

// gossip.go is the gossip engine: the state machine that keeps a node's store in step
// with the other members'. It pushes every newly accepted record to the connected
// members at once (flooding), and every Interval asks up to three of them whether their
// set differs (SUMMARY); a differing peer answers with its DIGEST, and the asking side
// fetches what it lacks (WANT) and sends what the other lacks (RECORDS). It also answers
// OBSERVE with the address a message came from and keeps what others observed of this
// node. It runs no goroutines: the node calls it and it calls Send.

import (
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults and bounds of the engine.
const (
	DefaultLifetime = 30 * time.Minute
	DefaultInterval = 10 * time.Second
	// MinLifetime is the shortest record lifetime the engine uses.
	MinLifetime = time.Minute
	// Fanout is how many connected members each anti-entropy round asks.
	Fanout = 3
	// MaxPerExchange bounds the records pushed in one digest exchange (the keys wanted:
	// MaxWantPerExchange); the rest follow in the next round.
	MaxPerExchange = 32
	// MaxObservations bounds the reflected addresses kept: one per member and transport,
	// so that 8 members each seen over UDP and WebSocket fit.
	MaxObservations = 16
	// ObserveInterval is how often the engine asks each connected member again where it
	// sees this node (OBSERVE), so that observations stay younger than MaxObservationAge
	// and a changed NAT mapping shows.
	ObserveInterval = time.Minute
	// maxExchanges bounds the digest exchanges in progress (one per peer).
	maxExchanges = 64
	// summaryAnswerGap is the least time between two DIGESTs answering one member's
	// SUMMARYs: a SUMMARY costs its sender 19 bytes, its answer 40 bytes per member held.
	summaryAnswerGap = time.Second
)

// Config configures an Engine.
type Config struct {
	Identity Identity
	Network  Network // the network's identity: its ID binds every signature
	// Send sends a reliable control message to a member; it must not block and must not
	// call back into the engine (it is called with no engine lock held all the same).
	Send func(to [32]byte, typ byte, body []byte) error
	// SendOnce sends a message that nothing acknowledges or resends (the record and
	// statement SUMMARYs of the anti-entropy rounds, and the records pushed as they are
	// taken or signed: a lost one is repaired by the next round); it has Send's rules.
	// Nil: Send.
	SendOnce func(to [32]byte, typ byte, body []byte) error
	// OnChange reports that a member's record was added (old nil), replaced, or expired
	// (cur nil). It is called with no engine lock held, from whichever call caused it.
	OnChange func(old, cur *Record)
	// Admins are the admin keys whose statements the engine takes (statement_gossip.go);
	// OnStatement reports each statement taken from a member or OfferStatement, with
	// no engine lock held. Both may be nil.
	Admins      []ed25519.PublicKey
	OnStatement func(*Statement)
	Logger      *slog.Logger
	Lifetime    time.Duration // record lifetime, default 30 min (at most MaxLifetime); refreshed at Lifetime/3 less up to an eighth of that
	Interval    time.Duration // anti-entropy interval, default 10 s
	// MaxMembers bounds the records held, own included (default DefaultMaxMembers).
	MaxMembers int
	// Now is the clock of Handle and SetSelf (default time.Now); Tick is given its time.
	Now func() time.Time
}

// Observation is an address another member saw this node's messages come from.
type Observation struct {
	By    [32]byte       // the member that observed
	Addr  netip.AddrPort // where it saw this node
	ViaWS bool           // it saw this node's OBSERVE come over WebSocket
	At    time.Time      // when its OBSERVED arrived
	// From is where its OBSERVED came from: the observer's address as this node sees
	// it (invalid when the message came through a relay). ClassifyNAT counts observers
	// by its IP.
	From netip.AddrPort
}

// Stats are the engine's counters.
type Stats struct {
	Members int // records held, not counting our own

	// Records offered by peers, by outcome (see Outcome).
	Accepted, Stale, BadSignature, Malformed, TooLarge, Expired, Future, RateLimited, Full, OwnKey uint64
	// Swept counts records removed on expiry.
	Swept uint64
	// SelfBumps counts re-signings of our own record above a version of it seen from
	// an earlier run of this node.
	SelfBumps uint64

	// Messages and bytes (control type, length and body: 3 + body) in and out.
	MsgsIn, MsgsOut, BytesIn, BytesOut uint64
	// BadMessages counts gossip messages whose body did not parse; UnknownTypes messages
	// of types this engine does not know; SendErrors failed Sends.
	BadMessages, UnknownTypes, SendErrors uint64
	// DeltaAnswers counts the SUMMARYs answered with the records stored since the
	// state they describe instead of a DIGEST (answerSummary).
	DeltaAnswers uint64
	// Out counts the messages and bytes sent, as MsgsOut and BytesOut do, by type:
	// indexed by the type less MsgSummary (OutTypeName names each).
	Out [numOutTypes]struct{ Msgs, Bytes uint64 }
}

// numOutTypes is how many message types Stats.Out tells apart: the engine's own,
// SUMMARY to STATEMENTS.
const numOutTypes = int(MsgStatements-MsgSummary) + 1

// OutTypeName names the message type of Stats.Out[i] ("summary", ...), "" for the
// indices of types the engine does not send (the NAT messages).
func OutTypeName(i int) string {
	switch byte(i) + MsgSummary {
	case MsgSummary:
		return "summary"
	case MsgDigest:
		return "digest"
	case MsgWant:
		return "want"
	case MsgRecords:
		return "records"
	case MsgObserve:
		return "observe"
	case MsgObserved:
		return "observed"
	case MsgStatements:
		return "statements"
	}
	return ""
}

type outMsg struct {
	to   [32]byte
	typ  byte
	body []byte
	once bool // by SendOnce
}

type change struct{ old, cur *Record }

// batch collects what a call decided to send and report, to do after unlocking.
type batch struct {
	out        []outMsg
	changes    []change
	statements []*Statement // accepted, for OnStatement
}

type exchange struct {
	started   time.Time
	mentioned map[[32]byte]struct{} // keys we hold that the peer's digest named
	pushed    int
	wanted    int
}

// Engine is the gossip state machine. Its methods are safe for concurrent use.
type Engine struct {
	cfg   Config
	netID [16]byte
	self  [32]byte

	mu        sync.Mutex
	store     *Store
	own       *Record // our record as last signed; nil before SetSelf
	ownSigned time.Time
	// ownRefresh is how long after ownSigned our record is refreshed (refreshAfter).
	ownRefresh time.Duration
	// left: Leave signed our last record; nothing signs over it with a full lifetime
	// (the node's loop may still call SetSelf while it closes).
	left      bool
	ownFloor  uint64    // highest version of our key seen from elsewhere
	lastRound time.Time // when Tick last sent its SUMMARY round
	// answered is when a SUMMARY of each member was last answered with a DIGEST;
	// Tick forgets entries older than summaryAnswerGap.
	answered  map[[32]byte]time.Time
	connected map[[32]byte]struct{}
	connList  [][32]byte // scratch for picking
	exchanges map[[32]byte]*exchange
	// wanting is when each key was last wanted of a member (catchup.go).
	wanting  map[[32]byte]time.Time
	observed []Observation
	// observeSent is when OBSERVE was last sent to each connected member.
	observeSent map[[32]byte]time.Time
	rng         *rand.Rand
	stats       Stats
	sendErrors  atomic.Uint64
	pending     []change // changes not yet reported
	delivering  bool     // a caller is reporting pending changes
	stmt        statementState
}

// New returns an engine for cfg, with the defaults filled in.
func New(cfg Config) *Engine {
	if cfg.Lifetime <= 0 {
		cfg.Lifetime = DefaultLifetime
	}
	cfg.Lifetime = min(max(cfg.Lifetime, MinLifetime), MaxLifetime)
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Send == nil {
		cfg.Send = func([32]byte, byte, []byte) error { return nil }
	}
	if cfg.MaxMembers <= 0 {
		cfg.MaxMembers = DefaultMaxMembers
	}
	pub := cfg.Identity.Public
	netID := cfg.Network.ID
	return &Engine{
		cfg:         cfg,
		netID:       netID,
		self:        pub,
		store:       NewStore(netID, pub, cfg.MaxMembers),
		connected:   make(map[[32]byte]struct{}),
		exchanges:   make(map[[32]byte]*exchange),
		wanting:     make(map[[32]byte]time.Time),
		answered:    make(map[[32]byte]time.Time),
		observeSent: make(map[[32]byte]time.Time),
		// Picking whom to ask needs no secrecy; seeding from the key keeps runs
		// reproducible and nodes different.
		rng: rand.New(rand.NewPCG(binary.LittleEndian.Uint64(pub[:8]), binary.LittleEndian.Uint64(pub[8:16]))),
	}
}

// flush reports changes and sends messages; called with no lock held. Changes are
// reported in the order they happened even when several goroutines call the engine: they
// go through one queue, drained by whichever caller finds no one else draining it (so an
// OnChange that calls back into the engine does not deadlock).
func (e *Engine) flush(b *batch) {
	if e.cfg.OnChange != nil && len(b.changes) > 0 {
		e.mu.Lock()
		e.pending = append(e.pending, b.changes...)
		drain := !e.delivering
		e.delivering = true
		e.mu.Unlock()
		for drain {
			e.mu.Lock()
			cs := e.pending
			e.pending = nil
			if len(cs) == 0 {
				e.delivering = false
				drain = false
			}
			e.mu.Unlock()
			for _, c := range cs {
				e.cfg.OnChange(c.old, c.cur)
			}
		}
	}
	if e.cfg.OnStatement != nil {
		for _, s := range b.statements {
			e.cfg.OnStatement(s)
		}
	}
	for _, m := range b.out {
		send := e.cfg.Send
		if m.once && e.cfg.SendOnce != nil {
			send = e.cfg.SendOnce
		}
		if err := send(m.to, m.typ, m.body); err != nil {
			e.sendErrors.Add(1)
			e.cfg.Logger.Debug("mesh: send failed", "type", m.typ, "err", err)
		}
	}
}

// queue adds a message to b and counts it.
func (e *Engine) queue(b *batch, to [32]byte, typ byte, body []byte) {
	e.queueMsg(b, outMsg{to: to, typ: typ, body: body})
}

// queueMsg adds m to b and counts it.
func (e *Engine) queueMsg(b *batch, m outMsg) {
	typ, body := m.typ, m.body
	b.out = append(b.out, m)
	e.stats.MsgsOut++
	e.stats.BytesOut += uint64(3 + len(body))
	if i := int(typ - MsgSummary); typ >= MsgSummary && i < numOutTypes {
		e.stats.Out[i].Msgs++
		e.stats.Out[i].Bytes += uint64(3 + len(body))
	}
}

// sameContent says whether a and b carry the same content (all but version, expiry and keys).
func sameContent(a, b *Record) bool {
	return a.Name == b.Name && a.WSURL == b.WSURL && a.Relay == b.Relay &&
		slices.Equal(a.Addresses, b.Addresses) && slices.Equal(a.Prefixes, b.Prefixes) &&
		slices.Equal(a.Endpoints, b.Endpoints)
}

// SetSelf sets the content of our own record. When it differs from the current one, the
// record is signed anew with a higher version and pushed to the connected members.
// Version, Expires, SigningKey and Key of r are ignored.
func (e *Engine) SetSelf(r Record) error {
	now := e.cfg.Now()
	r.Version, r.Expires = 1, now.Add(e.cfg.Lifetime)
	if err := r.check(); err != nil {
		return err
	}
	var b batch
	e.mu.Lock()
	var err error
	if !e.left && (e.own == nil || !sameContent(e.own, &r)) {
		err = e.signOwn(&b, r, now)
	}
	e.mu.Unlock()
	e.flush(&b)
	return err
}

// Leave signs our record once more, unchanged but expiring after linger, and pushes it
// to the connected members: a node that shuts down tells the mesh so, and the others
// forget it (its routes, its peer) when that record expires, instead of after a whole
// lifetime. It does nothing before SetSelf.
func (e *Engine) Leave(linger time.Duration) error {
	now := e.cfg.Now()
	var b batch
	e.mu.Lock()
	var err error
	if e.own != nil {
		// Pushed reliably: the node waits for this record's acknowledgements before
		// its sessions close, and no later round will repair its loss.
		err = e.signOwnFor(&b, *e.own, now, linger, true)
		e.left = err == nil
	}
	e.mu.Unlock()
	e.flush(&b)
	return err
}

// signOwn signs r as our record at now with a version above every one seen, stores it
// and floods it. Called with mu held.
func (e *Engine) signOwn(b *batch, r Record, now time.Time) error {
	return e.signOwnFor(b, r, now, e.cfg.Lifetime, false)
}

// signOwnFor is signOwn with a record that expires after lifetime, pushed reliably if
// reliably (see flood).
func (e *Engine) signOwnFor(b *batch, r Record, now time.Time, lifetime time.Duration, reliably bool) error {
	v := uint64(max(now.UnixNano(), 1))
	if e.own != nil {
		v = max(v, e.own.Version+1)
	}
	v = max(v, e.ownFloor+1)
	r.Version = v
	r.Expires = time.Unix(now.Add(lifetime).Unix(), 0)
	r.Addresses = slices.Clone(r.Addresses)
	r.Prefixes = slices.Clone(r.Prefixes)
	r.Endpoints = slices.Clone(r.Endpoints)
	raw, err := r.Marshal(e.cfg.Identity, e.netID)
	if err != nil {
		return err
	}
	rec := &r
	e.own, e.ownSigned, e.ownRefresh = rec, now, e.refreshAfter(v)
	e.store.putOwn(rec, raw)
	e.flood(b, raw, reliably)
	return nil
}

// flood pushes raw to every connected member except the ones named by skip (the member
// it came from, its owner). Unless reliably, the push goes bare (SendOnce): a lost one
// is repaired by the next anti-entropy round, and an ACK for each would cost a node that
// is everyone's neighbour (an introducer) one frame per member for every record re-signed
// anywhere, as each member floods what it takes back to it. A push carries one record,
// so its body fits PackBudget (floodFits) and its frame the smallest path, bare as
// inside RELIABLE (which adds to it).
func (e *Engine) flood(b *batch, raw []byte, reliably bool, skip ...[32]byte) {
	if len(e.connected) == 0 {
		return
	}
	body, err := AppendRecords(nil, raw)
	if err != nil {
		return
	}
	once := !reliably
	for k := range e.connected {
		if slices.Contains(skip, k) {
			continue
		}
		e.queueMsg(b, outMsg{to: k, typ: MsgRecords, body: body, once: once})
	}
}

// refreshJitterDiv: a record is refreshed up to 1/refreshJitterDiv of Lifetime/3 early.
const refreshJitterDiv = 8

// refreshAfter is how long after signing the version v of our record it is refreshed:
// Lifetime/3 less up to an eighth of that, by a hash of our key and v, so that members
// that start together (a lab, a fleet rebooted at once) do not all re-sign, and flood,
// at the same moment, every time; each signature draws anew, so their refreshes drift
// further apart. Never later than Lifetime/3: the record keeps two thirds of its life
// for the refresh to spread.
func (e *Engine) refreshAfter(v uint64) time.Duration {
	third := e.cfg.Lifetime / 3
	h := mix64(binary.LittleEndian.Uint64(e.self[:8]) ^ v)
	frac := float64(h>>11) / (1 << 53) // [0, 1)
	return third - time.Duration(frac*float64(third/refreshJitterDiv))
}

// mix64 is SplitMix64's finaliser: every input bit moves about half the output bits.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// floodFits does not compile if a RECORDS body of one record of the largest size
// (count, length, record) could exceed PackBudget: a bare push must fit one datagram.
const floodFits = uint(PackBudget - (1 + 2 + MaxRecordLen))

// connect adds peer to the connected set (bounded by MaxMembers).
func (e *Engine) connect(peer [32]byte) {
	if peer == e.self {
		return
	}
	if _, ok := e.connected[peer]; !ok && len(e.connected) < e.cfg.MaxMembers {
		e.connected[peer] = struct{}{}
	}
}

// SessionUp reports that a session to a member came up: the engine sends it a SUMMARY
// (to start an exchange at once) and an OBSERVE, and floods to it from now on.
func (e *Engine) SessionUp(peer [32]byte) {
	if peer == e.self {
		return
	}
	var b batch
	e.mu.Lock()
	e.connect(peer)
	e.queue(&b, peer, MsgSummary, AppendSummary(nil, e.store.Summary()))
	e.queue(&b, peer, MsgObserve, nil)
	e.sendStatementSummary(&b, peer, e.cfg.Now(), false)
	e.observeSent[peer] = e.cfg.Now()
	e.mu.Unlock()
	e.flush(&b)
}

// AddConnected adds connected to the set of members with a session that records are
// pushed to, between rounds: a neighbour taken since the last Tick is flooded to at
// once, the leave record of a node going down included. Unlike Tick it keeps the
// members already in the set (those SessionUp added since the round): replacing the
// set on every pass pushed new records only to the three neighbours, and a member that
// was nobody's neighbour learned a join, or a revocation, only when it asked.
func (e *Engine) AddConnected(connected [][32]byte) {
	e.mu.Lock()
	for _, k := range connected {
		e.connect(k)
	}
	e.mu.Unlock()
}

// setConnected replaces the connected set. Called with mu held.
func (e *Engine) setConnected(connected [][32]byte) {
	clear(e.connected)
	for _, k := range connected {
		e.connect(k)
	}
}

// Tick advances the engine to now: it takes connected as the set of members with a
// session, sweeps expired records, refreshes our record when a third of its lifetime
// has passed (less up to an eighth of that, refreshAfter), once per Interval sends a SUMMARY to up to Fanout random connected
// members, and sends OBSERVE to each connected member last asked ObserveInterval ago
// or more. Call it at least every Interval; more often keeps the connected set fresh.
func (e *Engine) Tick(now time.Time, connected [][32]byte) {
	var b batch
	e.mu.Lock()
	e.setConnected(connected)
	var gone []*Record
	gone = e.store.Expire(now, gone)
	e.stats.Swept += uint64(len(gone))
	for _, r := range gone {
		b.changes = append(b.changes, change{old: r})
	}
	for k, at := range e.answered {
		if now.Sub(at) >= summaryAnswerGap || now.Before(at) {
			delete(e.answered, k)
		}
	}
	for k, x := range e.exchanges {
		if now.Sub(x.started) > 3*e.cfg.Interval {
			delete(e.exchanges, k)
		}
	}
	e.tickStatements(now)
	e.sweepWanting(now)
	for k := range e.observeSent {
		if _, ok := e.connected[k]; !ok {
			delete(e.observeSent, k)
		}
	}
	for k := range e.connected {
		if at, ok := e.observeSent[k]; !ok || now.Sub(at) >= ObserveInterval || now.Before(at) {
			e.observeSent[k] = now
			e.queue(&b, k, MsgObserve, nil)
		}
	}
	if e.own != nil && !e.left && now.Sub(e.ownSigned) >= e.ownRefresh {
		if err := e.signOwn(&b, *e.own, now); err != nil {
			e.cfg.Logger.Warn("mesh: cannot refresh own record", "err", err)
		}
	}
	e.connList = e.connList[:0]
	for k := range e.connected {
		e.connList = append(e.connList, k)
	}
	// Map order is not reproducible; sort, then pick at random.
	slices.SortFunc(e.connList, func(a, b [32]byte) int { return compareKeys(&a, &b) })
	n := min(Fanout, len(e.connList))
	// Tick may come more often than Interval (the node also ticks on changes); the
	// round itself comes once per Interval (or at once after the clock stepped back).
	if n > 0 && (e.lastRound.IsZero() || now.Sub(e.lastRound) >= e.cfg.Interval || now.Before(e.lastRound)) {
		e.lastRound = now
		body := AppendSummary(nil, e.store.Summary())
		for i := range n {
			j := i + e.rng.IntN(len(e.connList)-i)
			e.connList[i], e.connList[j] = e.connList[j], e.connList[i]
			// Sent once: the next round replaces a lost one, and an ACK of each would
			// cost a node that is everyone's neighbour (an introducer) as much again.
			e.queueMsg(&b, outMsg{to: e.connList[i], typ: MsgSummary, body: body, once: true})
			e.sendStatementSummary(&b, e.connList[i], now, true)
		}
	}
	e.mu.Unlock()
	e.flush(&b)
}

// Handle processes a gossip control message of type typ from the member whose key is
// from, received directly from the address seen (over WebSocket if viaWS); seen is the
// zero AddrPort for a message that came through a relay, which the engine then neither
// answers OBSERVE for nor counts as a NAT observer. Anything malformed is counted and
// dropped.
//
// The NAT traversal messages (IsNATMessage) are the caller's: it routes them before
// calling Handle. Given one, Handle drops it without counting it unknown.
//
// body may be overwritten or unmapped once Handle returns (the node's receive batch):
// what the engine keeps of it, records and statements, it copies.
func (e *Engine) Handle(from [32]byte, seen netip.AddrPort, viaWS bool, typ byte, body []byte) {
	now := e.cfg.Now()
	var b batch
	e.mu.Lock()
	e.stats.MsgsIn++
	e.stats.BytesIn += uint64(3 + len(body))
	var err error
	switch typ {
	case MsgSummary:
		var s Summary
		if s, err = ParseSummary(body); err == nil && s != e.store.Summary() {
			if at, ok := e.answered[from]; !ok || now.Sub(at) >= summaryAnswerGap || now.Before(at) {
				e.answered[from] = now
				e.answerSummary(&b, from, now, s)
			}
		}
	case MsgDigest:
		var last bool
		var entries []DigestEntry
		if last, entries, err = ParseDigest(body, nil); err == nil {
			e.onDigest(&b, from, now, last, entries)
		}
	case MsgWant:
		var keys [][32]byte
		if keys, err = ParseWant(body, nil); err == nil {
			var raws [][]byte
			for _, k := range keys {
				if rec, raw := e.store.Get(k); rec != nil && now.Before(rec.Expires) {
					raws = append(raws, raw)
				}
			}
			e.sendRecords(&b, from, raws)
		}
	case MsgRecords:
		var buf [8][]byte
		var raws [][]byte
		if raws, err = ParseRecords(body, buf[:0]); err == nil {
			for _, raw := range raws {
				e.offer(&b, from, now, raw)
			}
		}
	case MsgStatements:
		err = e.handleStatements(&b, from, now, body)
	case MsgObserve:
		if err = ParseObserve(body); err == nil && seen.IsValid() {
			t := byte(TransportUDP)
			if viaWS {
				t = TransportWebSocket
			}
			var ob []byte
			if ob, err = AppendObserved(nil, Observed{Transport: t, Addr: seen}); err == nil {
				e.queue(&b, from, MsgObserved, ob)
			}
		}
	case MsgObserved:
		var o Observed
		if o, err = ParseObserved(body); err == nil {
			e.observe(Observation{By: from, Addr: o.Addr, ViaWS: o.Transport == TransportWebSocket, At: now, From: seen})
		}
	default:
		if IsNATMessage(typ) {
			break // misrouted: the caller handles these
		}
		e.stats.UnknownTypes++
	}
	if err != nil {
		e.stats.BadMessages++
		e.cfg.Logger.Debug("mesh: bad gossip message", "type", typ, "err", err)
	}
	e.mu.Unlock()
	e.flush(&b)
}

// observe keeps o: one observation per (member, transport), at most MaxObservations.
// When they are all taken, o replaces the oldest observation of the observer IP that
// holds the most of them, so that many keys at one IP (one holder of the seed) push
// out their own observations, not those of other observers.
func (e *Engine) observe(o Observation) {
	i := slices.IndexFunc(e.observed, func(x Observation) bool { return x.By == o.By && x.ViaWS == o.ViaWS })
	switch {
	case i >= 0:
		e.observed[i] = o
	case len(e.observed) < MaxObservations:
		e.observed = append(e.observed, o)
	default:
		ip := func(j int) netip.Addr { return e.observed[j].From.Addr().Unmap() }
		victim, most := 0, 0
		for j := range e.observed {
			n := 0
			for k := range e.observed {
				if ip(k) == ip(j) {
					n++
				}
			}
			if n > most || n == most && e.observed[j].At.Before(e.observed[victim].At) {
				victim, most = j, n
			}
		}
		e.observed[victim] = o
	}
}

// offer hands a received record to the store and acts on the outcome.
func (e *Engine) offer(b *batch, from [32]byte, now time.Time, raw []byte) {
	rec, old, out := e.store.Put(raw, now)
	if out == Accepted && e.revokedKey(rec.Key) {
		e.refuseRevokedRecord(rec)
		return
	}
	switch out {
	case Accepted:
		delete(e.wanting, rec.Key)
		b.changes = append(b.changes, change{old, rec})
		e.flood(b, raw, false, from, rec.Key)
	case OwnKey:
		e.ownSeen(b, now, rec.Version)
	default:
		if e.cfg.Logger.Enabled(context.Background(), slog.LevelDebug) {
			e.cfg.Logger.Debug("mesh: record refused", "outcome", out.String())
		}
	}
}

// ownSeen handles a version of our own key seen elsewhere: a record an earlier run of
// this node signed. Ours must be newer, or the others would keep that one.
func (e *Engine) ownSeen(b *batch, now time.Time, v uint64) {
	if e.own != nil && v <= e.own.Version {
		return // ours, or older
	}
	e.ownFloor = max(e.ownFloor, v)
	if e.own != nil {
		e.stats.SelfBumps++
		if err := e.signOwn(b, *e.own, now); err != nil {
			e.cfg.Logger.Warn("mesh: cannot re-sign own record", "err", err)
		}
	}
}

// answerSummary answers a SUMMARY s of peer that differs from ours. When s is the
// summary of a state our store was in lately, the peer holds exactly what we held then:
// it gets the records stored since, in RECORDS, and nothing else — a few hundred bytes
// where a DIGEST names every member (40 bytes each). Otherwise (it holds something we
// do not, lags further behind, or would need more than one exchange pushes) it gets our
// DIGEST, as before.
func (e *Engine) answerSummary(b *batch, peer [32]byte, now time.Time, s Summary) {
	keys, ok := e.store.Since(s, nil)
	if !ok || len(keys) == 0 || len(keys) > MaxPerExchange {
		e.sendDigest(b, peer)
		return
	}
	raws := make([][]byte, 0, len(keys))
	for _, k := range keys {
		if k == peer {
			continue // its own record: it holds the newest
		}
		if rec, raw := e.store.Get(k); rec != nil && now.Before(rec.Expires) {
			raws = append(raws, raw)
		}
	}
	e.stats.DeltaAnswers++
	e.sendRecords(b, peer, raws)
}

// sendDigest sends the DIGEST of the store to peer, in chunks.
func (e *Engine) sendDigest(b *batch, peer [32]byte) {
	entries := e.store.Entries()
	for {
		n := min(len(entries), MaxDigestEntries)
		body, _ := AppendDigest(make([]byte, 0, 3+n*digestEntryLen), n == len(entries), entries[:n])
		e.queue(b, peer, MsgDigest, body)
		entries = entries[n:]
		if len(entries) == 0 {
			return
		}
	}
}

// sendRecords sends raws to peer packed into as few RECORDS messages as fit.
func (e *Engine) sendRecords(b *batch, peer [32]byte, raws [][]byte) {
	for len(raws) > 0 {
		n, size := 0, 1
		for n < len(raws) && size+2+len(raws[n]) <= PackBudget {
			size += 2 + len(raws[n])
			n++
		}
		if n == 0 { // cannot happen: a record is at most MaxRecordLen
			return
		}
		body, err := AppendRecords(make([]byte, 0, size), raws[:n]...)
		if err == nil {
			e.queue(b, peer, MsgRecords, body)
		}
		raws = raws[n:]
	}
}

// onDigest compares a DIGEST chunk from peer with the store: it wants what it lacks or
// holds older, pushes what it holds newer, and at the last chunk pushes what the digest
// did not name. Both are bounded per exchange.
func (e *Engine) onDigest(b *batch, peer [32]byte, now time.Time, last bool, entries []DigestEntry) {
	x := e.exchanges[peer]
	if x == nil {
		if len(e.exchanges) >= maxExchanges {
			for k := range e.exchanges { // evict any one
				delete(e.exchanges, k)
				break
			}
		}
		x = &exchange{started: now, mentioned: make(map[[32]byte]struct{})}
		e.exchanges[peer] = x
	}
	var want [][32]byte
	var push [][]byte
	for _, d := range entries {
		if e.revokedKey(d.Key) {
			continue // its record is refused here
		}
		if d.Key == e.self {
			// A newer version of our own key is only a claim here: fetch it, and
			// act on it (offer → ownSeen) only once its signature proves it ours.
			x.mentioned[d.Key] = struct{}{}
			switch {
			case (e.own == nil || d.Version > e.own.Version) && x.wanted < MaxWantPerExchange && !slices.Contains(want, d.Key):
				want = append(want, d.Key)
				x.wanted++
			case e.own != nil && d.Version < e.own.Version && x.pushed < MaxPerExchange:
				_, raw := e.store.Get(e.self)
				push = append(push, raw)
				x.pushed++
			}
			continue
		}
		rec, raw := e.store.Get(d.Key)
		if rec != nil {
			if _, dup := x.mentioned[d.Key]; dup {
				continue
			}
			x.mentioned[d.Key] = struct{}{}
		}
		switch {
		case rec != nil && rec.Version > d.Version && x.pushed < MaxPerExchange:
			push = append(push, raw)
			x.pushed++
		case (rec == nil || rec.Version < d.Version) && x.wanted < MaxWantPerExchange &&
			!slices.Contains(want, d.Key) && e.wantNow(d.Key, now):
			want = append(want, d.Key)
			x.wanted++
		}
	}
	if last {
		for _, d := range e.store.Entries() {
			if x.pushed >= MaxPerExchange {
				break
			}
			if _, ok := x.mentioned[d.Key]; ok {
				continue
			}
			if rec, raw := e.store.Get(d.Key); rec != nil && now.Before(rec.Expires) {
				push = append(push, raw)
				x.pushed++
			}
		}
		delete(e.exchanges, peer)
	}
	for len(want) > 0 {
		n := min(len(want), MaxWantKeys)
		body, _ := AppendWant(make([]byte, 0, 2+32*n), want[:n])
		e.queue(b, peer, MsgWant, body)
		want = want[n:]
	}
	e.sendRecords(b, peer, push)
}

// Members returns the verified, unexpired records of the other members, by key.
func (e *Engine) Members() []*Record {
	now := e.cfg.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []*Record
	for _, d := range e.store.Entries() {
		if d.Key == e.self {
			continue
		}
		if rec, _ := e.store.Get(d.Key); now.Before(rec.Expires) {
			out = append(out, rec)
		}
	}
	return out
}

// Member returns the verified, unexpired record of the member key, or nil (also for
// our own key).
func (e *Engine) Member(key [32]byte) *Record {
	if key == e.self {
		return nil
	}
	now := e.cfg.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	if rec, _ := e.store.Get(key); rec != nil && now.Before(rec.Expires) {
		return rec
	}
	return nil
}

// Self returns our own record as last signed, or nil before SetSelf.
func (e *Engine) Self() *Record {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.own
}

// Observed returns the addresses other members saw us at (at most MaxObservations,
// the latest per member and transport).
func (e *Engine) Observed() []Observation {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.observed)
}

// Stats returns the engine's counters.
func (e *Engine) Stats() Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.stats
	s.Members = e.store.Len()
	if e.own != nil {
		s.Members--
	}
	st := e.store
	s.Accepted, s.Stale, s.BadSignature = st.counts[Accepted], st.counts[Stale], st.counts[BadSignature]
	s.Malformed, s.TooLarge, s.Expired = st.counts[Malformed], st.counts[TooLarge], st.counts[Expired]
	s.Future, s.RateLimited, s.Full, s.OwnKey = st.counts[Future], st.counts[RateLimited], st.counts[Full], st.counts[OwnKey]
	s.SendErrors = e.sendErrors.Load()
	return s
}
