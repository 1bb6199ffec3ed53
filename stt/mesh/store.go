package mesh

// store.go is the table of verified member records, by X25519 key: it admits a record
// only if it parses, verifies, has not expired and is newer than the one held; it
// bounds the number of members and the rate of new versions per member, sweeps expired
// records, keeps the node's own record out of reach of foreign ones, and counts every
// outcome.

import (
	"encoding/binary"
	"errors"
	"slices"
	"time"
)

// Outcome is what the store did with an offered record.
type Outcome uint8

// Outcomes of Store.Put.
const (
	Accepted     Outcome = iota // new key or newer version: stored
	Stale                       // a version not newer than the one held
	BadSignature                // ErrRecordSignature
	Malformed                   // ErrRecordMalformed
	TooLarge                    // ErrRecordTooLarge
	Expired                     // ErrRecordExpired
	Future                      // ErrRecordFuture
	RateLimited                 // too many new versions of this key too fast
	Full                        // a new key while MaxMembers are held
	OwnKey                      // a valid record of the node's own key not made by it now (an earlier run)
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"accepted", "stale", "bad_signature", "malformed", "too_large",
	"expired", "future", "rate", "full", "own_key"}

func (o Outcome) String() string {
	if o < numOutcomes {
		return outcomeNames[o]
	}
	return "unknown"
}

// Rate bound on new versions of one member's record: a burst, then one per interval.
const (
	RateBurst    = 4
	RateInterval = 5 * time.Second
)

// DefaultMaxMembers bounds the number of records a store holds.
const DefaultMaxMembers = 4096

type tombstone struct {
	version uint64
	until   time.Time
}

type entry struct {
	rec    *Record
	raw    []byte
	latest time.Time // the latest expiry of any version held for the key
	tokens float64   // rate bucket
	refill time.Time // when tokens was last brought up to date
	gen    uint64    // the store's generation when this version was stored
}

// summaryHistory is how many past summaries the store remembers (Behind).
const summaryHistory = 32

// pastSummary is the summary of the store as it was at generation gen.
type pastSummary struct {
	sum Summary
	gen uint64
}

// Store holds verified records by X25519 key. It is not safe for concurrent use; the
// Engine serialises access.
type Store struct {
	netID [16]byte
	self  [32]byte
	max   int
	m     map[[32]byte]*entry
	// bySigner finds the entry of a signing key without deriving its X25519 key.
	bySigner map[[32]byte]*entry
	// gone remembers, by signing key, the version of each record that expired here, so
	// that an older version a member still holds (a leaving member's last record is a
	// newer version that expires sooner than the one it replaces) is not taken again.
	// Bounded by max; an entry lasts until no record of that version can be valid.
	gone   map[[32]byte]tombstone
	counts [numOutcomes]uint64
	sorted []DigestEntry // (key, version) of every record, by key; nil when stale
	sum    Summary
	// gen counts the changes to the set of records (stored, replaced, removed); past
	// holds the summaries computed at the latest generations, oldest first, so that
	// Since can tell what changed after the state a member's SUMMARY describes.
	gen  uint64
	past []pastSummary
}

// NewStore returns an empty store for the network netID of the node whose X25519 key is
// self, holding at most max records (DefaultMaxMembers if max <= 0), its own included.
func NewStore(netID [16]byte, self [32]byte, max int) *Store {
	if max <= 0 {
		max = DefaultMaxMembers
	}
	return &Store{netID: netID, self: self, max: max, m: make(map[[32]byte]*entry),
		bySigner: make(map[[32]byte]*entry), gone: make(map[[32]byte]tombstone)}
}

func outcomeOf(err error) Outcome {
	switch {
	case errors.Is(err, ErrRecordSignature):
		return BadSignature
	case errors.Is(err, ErrRecordExpired):
		return Expired
	case errors.Is(err, ErrRecordFuture):
		return Future
	case errors.Is(err, ErrRecordTooLarge):
		return TooLarge
	default:
		return Malformed
	}
}

// Put offers the marshalled record raw at time now. On Accepted it returns the record
// and the one it replaced (nil for a new key); on OwnKey it returns the verified record
// (the caller decides: see Engine); otherwise rec may be nil. raw is copied when stored.
func (s *Store) Put(raw []byte, now time.Time) (rec, old *Record, out Outcome) {
	// Most offers are duplicates of a flood: refuse a version not newer than the one
	// held for the same signing key before paying for the parse and the signature.
	if len(raw) >= recordHeaderLen && len(raw) <= MaxRecordLen {
		signer, v := [32]byte(raw[24:56]), binary.LittleEndian.Uint64(raw[8:16])
		if e := s.bySigner[signer]; e != nil && v <= e.rec.Version {
			s.counts[Stale]++
			return nil, nil, Stale
		}
		if g, ok := s.gone[signer]; ok && v <= g.version && now.Before(g.until) {
			s.counts[Stale]++
			return nil, nil, Stale
		}
	}
	rec, err := ParseRecord(raw, s.netID, now)
	if err != nil {
		out = outcomeOf(err)
		s.counts[out]++
		return nil, nil, out
	}
	if rec.Key == s.self {
		s.counts[OwnKey]++
		return rec, nil, OwnKey
	}
	e := s.m[rec.Key]
	switch {
	case e != nil && rec.Version <= e.rec.Version:
		out = Stale
	case e == nil && len(s.m) >= s.max:
		out = Full
	case e == nil:
		e = &entry{tokens: RateBurst, refill: now}
		s.m[rec.Key] = e
		out = Accepted
	default:
		if now.After(e.refill) {
			e.tokens = min(e.tokens+float64(now.Sub(e.refill))/float64(RateInterval), RateBurst)
		}
		e.refill = now // a clock stepping back refills nothing and restarts the count
		if e.tokens < 1 {
			out = RateLimited
		} else {
			out = Accepted
		}
	}
	s.counts[out]++
	if out != Accepted {
		return rec, nil, out
	}
	e.tokens--
	old = e.rec
	e.rec, e.raw = rec, append([]byte(nil), raw...)
	s.gen++
	e.gen = s.gen
	if rec.Expires.After(e.latest) {
		e.latest = rec.Expires
	}
	s.bySigner[[32]byte(rec.SigningKey)] = e
	delete(s.gone, [32]byte(rec.SigningKey))
	s.sorted = nil
	return rec, old, Accepted
}

// putOwn stores the node's own freshly signed record; it is never refused.
func (s *Store) putOwn(rec *Record, raw []byte) {
	s.gen++
	s.m[rec.Key] = &entry{rec: rec, raw: raw, gen: s.gen}
	s.sorted = nil // (not in bySigner: offers of our own key go to the engine)
}

// Get returns the record held for key and its bytes, or nil.
func (s *Store) Get(key [32]byte) (*Record, []byte) {
	if e := s.m[key]; e != nil {
		return e.rec, e.raw
	}
	return nil, nil
}

// Len is the number of records held, the node's own included.
func (s *Store) Len() int { return len(s.m) }

// Expire removes every record (but the node's own) that has expired at now and returns
// them, appended to dst.
func (s *Store) Expire(now time.Time, dst []*Record) []*Record {
	for k, e := range s.m {
		if k != s.self && !now.Before(e.rec.Expires) {
			delete(s.m, k)
			delete(s.bySigner, [32]byte(e.rec.SigningKey))
			until := now.Add(DefaultLifetime)
			if e.latest.After(until) {
				until = e.latest
			}
			s.bury([32]byte(e.rec.SigningKey), e.rec.Version, until)
			dst = append(dst, e.rec)
			s.gen++
			s.sorted = nil
		}
	}
	for k, g := range s.gone {
		if !now.Before(g.until) {
			delete(s.gone, k)
		}
	}
	return dst
}

// bury remembers that the record of signer at version expired: no version up to it is
// taken again until then: the latest expiry of a version this node held (the record a
// leave replaced), and at least a default lifetime (for a node that saw only the leave
// record). No longer: a member whose clock went back is refused as long as that.
// At the bound, the tombstone that ends first makes room.
func (s *Store) bury(signer [32]byte, version uint64, until time.Time) {
	if _, ok := s.gone[signer]; !ok && len(s.gone) >= s.max {
		var first [32]byte
		var until time.Time
		for k, g := range s.gone {
			if until.IsZero() || g.until.Before(until) {
				first, until = k, g.until
			}
		}
		delete(s.gone, first)
	}
	s.gone[signer] = tombstone{version: version, until: until}
}

// Entries returns (key, version) of every record held, sorted by key. The slice is the
// store's and valid until the next change.
func (s *Store) Entries() []DigestEntry {
	if s.sorted == nil {
		s.sorted = make([]DigestEntry, 0, len(s.m))
		for k, e := range s.m {
			s.sorted = append(s.sorted, DigestEntry{Key: k, Version: e.rec.Version})
		}
		slices.SortFunc(s.sorted, func(a, b DigestEntry) int { return compareKeys(&a.Key, &b.Key) })
		s.sum = SummaryOf(s.sorted)
		if len(s.past) == summaryHistory {
			s.past = append(s.past[:0], s.past[1:]...)
		}
		s.past = append(s.past, pastSummary{s.sum, s.gen})
	}
	return s.sorted
}

// Since says what a member whose summary is sum lacks of this store, when sum is the
// summary of a state this store was in lately (of the last summaryHistory it computed)
// and not the current one: the member then holds exactly what this store held then, and
// lacks every record stored here since. It appends the keys of those records, sorted by
// key, to dst; ok is false when sum is no such state (the member holds something this
// store does not, or lags further behind): only a DIGEST can tell then. Removals since
// that state do not show (the member expires those records as this store did).
func (s *Store) Since(sum Summary, dst [][32]byte) (keys [][32]byte, ok bool) {
	cur := s.Summary()
	if sum == cur {
		return dst, false
	}
	i := slices.IndexFunc(s.past, func(p pastSummary) bool { return p.sum == sum })
	if i < 0 {
		return dst, false
	}
	gen := s.past[i].gen
	for _, d := range s.sorted {
		if s.m[d.Key].gen > gen {
			dst = append(dst, d.Key)
		}
	}
	return dst, true
}

// Summary is the SUMMARY of the records held.
func (s *Store) Summary() Summary {
	s.Entries()
	return s.sum
}

// Count returns how many records met outcome o so far.
func (s *Store) Count(o Outcome) uint64 {
	if o < numOutcomes {
		return s.counts[o]
	}
	return 0
}

func compareKeys(a, b *[32]byte) int {
	for i := range a {
		if a[i] != b[i] {
			if a[i] < b[i] {
				return -1
			}
			return 1
		}
	}
	return 0
}
