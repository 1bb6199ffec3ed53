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
	local  uint32 // our index (from AllocIndex)
	remote uint32 // the initiator's index from HELLO
	born   time.Time
	ts     [timestampLen]byte
	cipher wire.CipherID
	elem   *list.Element
}

// halfOpenTable maps our receiver index to a half-open handshake, with a list in creation
// order so that expiry is O(expired).
type halfOpenTable struct {
	byIndex map[uint32]*halfOpen
	order   *list.List // of *halfOpen, oldest first
}

func (t *halfOpenTable) init() {
	t.byIndex = make(map[uint32]*halfOpen)
	t.order = list.New()
}

func (t *halfOpenTable) len() int { return len(t.byIndex) }

func (t *halfOpenTable) add(h *halfOpen) bool {
	if len(t.byIndex) >= MaxHalfOpen {
		return false
	}
	if _, dup := t.byIndex[h.local]; dup {
		return false
	}
	h.elem = t.order.PushBack(h)
	t.byIndex[h.local] = h
	return true
}

func (t *halfOpenTable) remove(h *halfOpen) {
	if t.byIndex[h.local] == h {
		delete(t.byIndex, h.local)
		t.order.Remove(h.elem)
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
// CookieSecretLifetime) always verifies.
type cookieSecrets struct {
	cur, prev   [32]byte
	born        time.Time
	have, haveP bool
}

// current rotates if due and returns the secret to issue cookies with.
func (s *cookieSecrets) current(now time.Time, r io.Reader) (*[32]byte, error) {
	if s.have && now.Sub(s.born) < CookieSecretLifetime && !now.Before(s.born) {
		return &s.cur, nil
	}
	var next [32]byte
	if _, err := io.ReadFull(r, next[:]); err != nil {
		return nil, err
	}
	s.haveP = s.have && now.Sub(s.born) < 2*CookieSecretLifetime && !now.Before(s.born)
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
