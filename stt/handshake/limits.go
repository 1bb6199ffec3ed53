package handshake

import (
	"container/list"
	"encoding/binary"
	"io"
	"net/netip"
	"time"

	"github.com/flynn/noise"
	"github.com/stt-tun/stt-tun/stt/wire"
)

// The structures in this file are all guarded by Engine.mu and all bounded: an attacker
// holding the seed can fill them, but not grow them.

// halfOpen is a responder handshake that sent CHALLENGE and waits for AUTH_PROOF.
type halfOpen struct {
	hs     *noise.HandshakeState
	seed   [16]byte // the id of the seed its HELLO's mac1 verified under
	local  uint32   // our index (from AllocIndex)
	remote uint32   // the initiator's index from HELLO
	born   time.Time
	ts     [timestampLen]byte
	cipher wire.CipherID
	src    netip.Addr // sourceKey of the HELLO's address
	prio   bool       // from a configured peer's address (Config.Priority)
	elem   *list.Element
}

// halfOpenTable maps our receiver index to a half-open handshake, with a list in creation
// order so that expiry is O(expired).
//
// A flood cannot monopolise it: one source (an IPv4 address, an IPv6 /64) holds at most
// MaxHalfOpenPerSource entries, a new handshake from a source at its cap replaces that
// source's oldest, and a full table makes room by evicting its oldest entry that does not
// come from a configured peer's address. The flood's handshakes then live only as long as
// it takes the flood to fill the table again (at the global handshake budget, over 5 s),
// which is ample for a legitimate initiator's AUTH_PROOF. A source at its cap is not
// refused: HELLOs replayed from a peer's address without the seed (mac1 does not name the
// responder, so any HELLO the peer sent to another node will do) would otherwise keep the
// peer itself out.
type halfOpenTable struct {
	byIndex map[uint32]*halfOpen
	order   *list.List // of *halfOpen, oldest first
	perSrc  map[netip.Addr]int
}

func (t *halfOpenTable) init() {
	t.byIndex = make(map[uint32]*halfOpen)
	t.order = list.New()
	t.perSrc = make(map[netip.Addr]int)
}

func (t *halfOpenTable) len() int { return len(t.byIndex) }

// add inserts h, evicting its source's oldest entry when the source is at its cap, or
// else the table's oldest when the table is full; the index of an evicted entry is
// appended to rel. It reports false (and inserts nothing) when h's index is taken or
// nothing can be evicted for it.
func (t *halfOpenTable) add(h *halfOpen, rel []uint32) ([]uint32, bool) {
	if _, dup := t.byIndex[h.local]; dup {
		return rel, false
	}
	if t.perSrc[h.src] >= MaxHalfOpenPerSource {
		for f := t.order.Front(); f != nil; f = f.Next() {
			if v := f.Value.(*halfOpen); v.src == h.src {
				t.remove(v)
				rel = append(rel, v.local)
				break
			}
		}
	} else if len(t.byIndex) >= MaxHalfOpen {
		var victim *halfOpen
		for f := t.order.Front(); f != nil; f = f.Next() {
			if v := f.Value.(*halfOpen); !v.prio {
				victim = v
				break
			}
		}
		if victim == nil && h.prio {
			victim = t.order.Front().Value.(*halfOpen)
		}
		if victim == nil {
			return rel, false
		}
		t.remove(victim)
		rel = append(rel, victim.local)
	}
	h.elem = t.order.PushBack(h)
	t.byIndex[h.local] = h
	t.perSrc[h.src]++
	return rel, true
}

func (t *halfOpenTable) remove(h *halfOpen) {
	if t.byIndex[h.local] == h {
		delete(t.byIndex, h.local)
		t.order.Remove(h.elem)
		if t.perSrc[h.src]--; t.perSrc[h.src] <= 0 {
			delete(t.perSrc, h.src)
		}
	}
}

// expire drops entries at least HalfOpenTimeout old, appending their indices to rel.
// The clock is assumed not to go backwards by much; an entry "born in the future" simply
// lives until the clock catches up.
func (t *halfOpenTable) expire(now time.Time, rel []uint32) []uint32 {
	for {
		f := t.order.Front()
		if f == nil {
			return rel
		}
		h := f.Value.(*halfOpen)
		if now.Sub(h.born) < HalfOpenTimeout {
			return rel
		}
		t.remove(h)
		rel = append(rel, h.local)
	}
}

// replayCache remembers the ephemeral keys of answered HELLOs. When full, the oldest entry
// goes: section 4.5 explains why a HELLO replayed past the cache still yields no session.
type replayCache struct {
	window time.Duration
	seen   map[[32]byte]time.Time
	order  *list.List // of [32]byte, oldest first
}

func (c *replayCache) init() {
	c.seen = make(map[[32]byte]time.Time)
	c.order = list.New()
}

func (c *replayCache) trim(now time.Time) {
	for {
		f := c.order.Front()
		if f == nil {
			return
		}
		k := f.Value.([32]byte)
		if c.order.Len() < ReplayCacheSize && now.Sub(c.seen[k]) < c.window {
			return
		}
		c.order.Remove(f)
		delete(c.seen, k)
	}
}

func (c *replayCache) contains(k [32]byte, now time.Time) bool {
	c.trim(now)
	_, ok := c.seen[k]
	return ok
}

// insert records k; it reports false when k was already present.
func (c *replayCache) insert(k [32]byte, now time.Time) bool {
	c.trim(now)
	if _, ok := c.seen[k]; ok {
		return false
	}
	c.seen[k] = now
	c.order.PushBack(k)
	return true
}

// loadMeter estimates handshake messages per second with two one-second windows, the
// previous one weighted by how much of it still lies within the last second.
type loadMeter struct {
	start     time.Time
	cur, prev int
}

func (l *loadMeter) add(now time.Time) float64 {
	el := now.Sub(l.start)
	if l.start.IsZero() || el >= 2*time.Second || el < 0 {
		l.start, l.cur, l.prev = now, 0, 0
		el = 0
	} else if el >= time.Second {
		l.start = l.start.Add(time.Second)
		l.prev, l.cur = l.cur, 0
		el -= time.Second
	}
	l.cur++
	return float64(l.prev)*(1-el.Seconds()) + float64(l.cur)
}

// tokenBucket is a token bucket of its own rate and burst, for the node-wide budgets.
type tokenBucket struct {
	rate, burst float64
	tokens      float64
	last        time.Time
}

func newTokenBucket(rate, burst float64) tokenBucket {
	return tokenBucket{rate: rate, burst: burst, tokens: burst}
}

// take spends one token, reporting false when there is none.
func (b *tokenBucket) take(now time.Time) bool {
	if b.last.IsZero() {
		b.last = now
	} else if el := now.Sub(b.last); el > 0 {
		b.tokens = min(b.burst, b.tokens+el.Seconds()*b.rate)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// sourceKey is the address a source's budgets are keyed by: an IPv4 address (an
// IPv4-mapped one counts as IPv4), or the /64 of an IPv6 address, since whoever has one
// IPv6 address usually has the whole /64.
func sourceKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// bucket is one source address's token bucket for replies under load.
type bucket struct {
	tokens float64
	last   time.Time
}

// bucketTable holds per-address buckets. A bucket untouched for refillTime is full and so
// equivalent to no entry; such entries are swept when the table is full.
type bucketTable struct {
	m         map[netip.Addr]bucket
	lastSweep time.Time
}

const refillTime = time.Second * CookieBurst / CookieRate

func (b *bucketTable) init() { b.m = make(map[netip.Addr]bucket) }

// take spends one token of addr's bucket, reporting false when it is empty (or when the
// table is full of active sources).
func (b *bucketTable) take(addr netip.Addr, now time.Time) bool {
	bk, ok := b.m[addr]
	if !ok {
		if len(b.m) >= MaxRateLimitSources {
			if now.Sub(b.lastSweep) < refillTime {
				return false
			}
			b.lastSweep = now
			for a, x := range b.m {
				if now.Sub(x.last) >= refillTime || now.Before(x.last) {
					delete(b.m, a)
				}
			}
			if len(b.m) >= MaxRateLimitSources {
				return false
			}
		}
		bk = bucket{tokens: CookieBurst, last: now}
	}
	if el := now.Sub(bk.last); el > 0 {
		bk.tokens += el.Seconds() * CookieRate
		if bk.tokens > CookieBurst {
			bk.tokens = CookieBurst
		}
	}
	bk.last = now
	okTake := bk.tokens >= 1
	if okTake {
		bk.tokens--
	}
	b.m[addr] = bk
	return okTake
}

// cookieSecrets is the rotating cookie_secret of section 4.4. The previous secret stays
// valid for one more lifetime, so that a cookie an initiator may still use (younger than
// the lifetime) always verifies.
//
// The lifetime is CookieSecretLifetime, or the replay window if that is shorter: a stale
// HELLO (section 4.5) is let through by a cookie of the current secret only because a
// HELLO carrying one was first seen less than a lifetime ago, and so is still in the
// replay cache if it is a replay.
type cookieSecrets struct {
	cur, prev   [32]byte
	born        time.Time
	have, haveP bool
	life        time.Duration // 0: CookieSecretLifetime
}

// lifetime is how long one secret issues cookies.
func (s *cookieSecrets) lifetime() time.Duration {
	if s.life <= 0 || s.life > CookieSecretLifetime {
		return CookieSecretLifetime
	}
	return s.life
}

// current rotates if due and returns the secret to issue cookies with.
func (s *cookieSecrets) current(now time.Time, r io.Reader) (*[32]byte, error) {
	life := s.lifetime()
	if s.have && now.Sub(s.born) < life && !now.Before(s.born) {
		return &s.cur, nil
	}
	var next [32]byte
	if _, err := io.ReadFull(r, next[:]); err != nil {
		return nil, err
	}
	s.haveP = s.have && now.Sub(s.born) < 2*life && !now.Before(s.born)
	s.prev = s.cur
	s.cur, s.born, s.have = next, now, true
	return &s.cur, nil
}

// cookieFor computes the cookie of section 4.4 for a source address. An IPv4-mapped IPv6
// address counts as IPv4, so dual-stack sockets and IPv4 sockets agree.
func cookieFor(secret *[32]byte, src netip.AddrPort) [wire.MACLen]byte {
	a := src.Addr().Unmap()
	var buf [18]byte
	n := 0
	if a.Is4() {
		v := a.As4()
		n = copy(buf[:], v[:])
	} else if a.Is6() {
		v := a.As16()
		n = copy(buf[:], v[:])
	}
	binary.BigEndian.PutUint16(buf[n:], src.Port())
	return mac(secret[:], buf[:n+2])
}
