package handshake

import (
	"crypto/cipher"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/stt-tun/stt-tun/stt/wire"
)

// HandleHello processes a HELLO from src and returns the reply to send to src: a CHALLENGE
// (reply[0] == wire.TypeChallenge) or a COOKIE_REPLY (wire.TypeCookieReply) when the source
// must first prove its address. On a drop it returns nil and an error wrapping one of the
// Err* reasons.
//
// The reply is appended to out (as cipher.AEAD.Seal appends to dst); pass buf[:0] to
// reuse buf. out may share memory with msg: msg is fully read before out is written.
// The order of checks is the DoS defence of sections 4.3–4.5: free header checks, mac1,
// replay cache, the timestamp (symmetric work only), then — for a HELLO that may be new —
// the load/cookie gate, the source's budget once its address is proven, the node-wide
// budget and the half-open table, and only then public-key work. A replayed HELLO never
// counts toward the load, and costs at most a cookie reply.
func (e *Engine) HandleHello(msg []byte, src netip.AddrPort, out []byte) ([]byte, error) {
	if err := checkHeader(msg, wire.TypeHello, wire.HelloLen); err != nil {
		return nil, err
	}
	sk := e.matchMAC1(msg, wire.HelloMAC1Off)
	if sk == nil {
		return nil, ErrBadMAC1
	}
	if msg[2] != 0 || msg[3] != 0 {
		return nil, fmt.Errorf("%w: reserved bytes set", ErrMalformed)
	}
	sender := binary.LittleEndian.Uint32(msg[wire.HelloSenderOff:])
	if sender == 0 {
		return nil, fmt.Errorf("%w: zero sender index", ErrMalformed)
	}
	var eph [32]byte
	copy(eph[:], msg[wire.HelloNoiseOff:])
	var mac1 [wire.MACLen]byte
	copy(mac1[:], msg[wire.HelloMAC1Off:])
	now := e.now()

	e.mu.Lock()
	seen := e.replay.contains(eph, now)
	e.mu.Unlock()
	if seen {
		return nil, ErrReplay
	}

	// The HELLO's payload is readable with symmetric work alone (section 4.1): its
	// timestamp tells a HELLO that may be new from one older than the replay cache.
	hs, err := e.noiseState(false, sk)
	if err != nil {
		return nil, err
	}
	payload, _, _, err := hs.ReadMessage(make([]byte, 0, helloPlainLen), msg[wire.HelloNoiseOff:wire.HelloMAC1Off])
	if err != nil {
		return nil, noiseErr(err)
	}
	if len(payload) != helloPlainLen {
		return nil, ErrMalformed
	}
	h := &halfOpen{hs: hs, seed: sk.id, remote: sender, born: now, src: sourceKey(src.Addr())}
	copy(h.ts[:], payload[:timestampLen])
	fresh := e.fresh(h.ts, now)

	e.mu.Lock()
	rel := e.half.expire(now, nil)
	fail := func(err error) ([]byte, error) {
		e.mu.Unlock()
		e.releaseAll(rel)
		return nil, err
	}
	cookie := func(b *bucketTable, all *tokenBucket) ([]byte, error) {
		if !b.take(h.src, now) || (all != nil && !all.take(now)) {
			return fail(ErrRateLimited)
		}
		reply, err := e.cookieReplyLocked(sk, out, sender, &mac1, src, now)
		if err != nil {
			return fail(err)
		}
		e.mu.Unlock()
		e.releaseAll(rel)
		return reply, nil
	}
	proven := false
	if !fresh {
		// Perhaps a replay of a HELLO the cache has forgotten: it does not count as
		// load and gets at most a cookie reply, from budgets of its own. A legitimate
		// initiator with a wrong clock proves its address with the cookie and goes on.
		// Only a cookie of the current secret counts here: a HELLO carrying one was
		// first sent less than a secret's lifetime ago, which is no longer than the
		// replay window, so the cache still has it if it is a replay.
		ok, err := e.checkMAC2Locked(msg, wire.HelloMAC2Off, src, now, false)
		if err != nil {
			return fail(err)
		}
		if !ok {
			// Cached too, so that further copies of this HELLO are dropped before
			// their payload is read: a replay draws one cookie reply per window.
			e.replay.insert(eph, now)
			return cookie(&e.stale, &e.staleAll)
		}
		proven = true
	}
	if !e.replay.insert(eph, now) {
		return fail(ErrReplay)
	}
	if e.underLoad(e.load.add(now)) && !proven {
		ok, err := e.checkMAC2Locked(msg, wire.HelloMAC2Off, src, now, true)
		if err != nil {
			return fail(err)
		}
		if !ok {
			return cookie(&e.cookies, nil)
		}
		proven = true
	}
	// A source's own budget is spent only once its address is proven.
	if proven && !e.buckets.take(h.src, now) {
		return fail(ErrRateLimited)
	}
	h.prio = e.priority != nil && e.priority(src.Addr().Unmap())
	if !(h.prio && e.reserved.take(now)) && !e.general.take(now) {
		return fail(fmt.Errorf("%w: node-wide handshake budget spent", ErrRateLimited))
	}
	e.mu.Unlock()
	e.releaseAll(rel)

	peerCaps := binary.LittleEndian.Uint32(payload[timestampLen:]) & wire.CapHardwareAES
	h.cipher = chooseCipher(e.caps, peerCaps)

	var pl [challengePlainLen]byte
	binary.LittleEndian.PutUint32(pl[0:], e.caps)
	pl[4] = byte(h.cipher)
	putName(pl[8:], e.name)

	base := len(out)
	out = appendHeader(out, wire.TypeChallenge, 0, sender) // our index is patched in below
	out, _, _, err = hs.WriteMessage(out, pl[:])
	if err != nil {
		return nil, noiseErr(err)
	}

	// Allocate the index only once the message exists: a failed DH costs no index.
	if e.alloc != nil {
		h.local = e.alloc()
		if h.local == 0 {
			return nil, fmt.Errorf("%w: no free index", ErrUnderLoad)
		}
	}
	var added bool
	rel = rel[:0]
	e.mu.Lock()
	if e.alloc == nil {
		h.local, err = e.ownIndexLocked()
	}
	if err == nil {
		if rel, added = e.half.add(h, rel); !added {
			err = ErrUnderLoad
		}
	}
	e.mu.Unlock()
	e.releaseAll(rel)
	if err != nil {
		if h.local != 0 {
			e.releaseAll([]uint32{h.local})
		}
		return nil, err
	}
	binary.LittleEndian.PutUint32(out[base+wire.ChallengeSenderOff:], h.local)
	return finishMACs(sk, out, base, nil), nil
}

// fresh reports whether a HELLO timestamp lies within half the replay window of now, so
// that a HELLO the replay cache has forgotten (first seen a window ago) cannot be fresh.
func (e *Engine) fresh(ts [timestampLen]byte, now time.Time) bool {
	sec := int64(binary.BigEndian.Uint64(ts[:8]) - 1<<62)
	t := time.Unix(sec, int64(binary.BigEndian.Uint32(ts[8:])))
	d := now.Sub(t)
	return d < e.window/2 && d > -e.window/2
}

// HandleAuthProof processes an AUTH_PROOF from src. On success it returns the Result (the
// caller checks pinning and the timestamp, creates the session and sends FINAL) and a nil
// reply. Under load, when mac2 is not valid, it returns a zero Result, a COOKIE_REPLY to
// send to src, and a nil error: the caller MUST check reply before using the Result (a
// zero Result has LocalIndex 0, which is never a valid index). Drops return an error
// wrapping an Err* reason. out and msg may share memory, as for HandleHello.
func (e *Engine) HandleAuthProof(msg []byte, src netip.AddrPort, out []byte) (Result, []byte, error) {
	if err := checkHeader(msg, wire.TypeAuthProof, wire.AuthProofLen); err != nil {
		return Result{}, nil, err
	}
	sk := e.matchMAC1(msg, wire.AuthMAC1Off)
	if sk == nil {
		return Result{}, nil, ErrBadMAC1
	}
	if msg[2] != 0 || msg[3] != 0 {
		return Result{}, nil, fmt.Errorf("%w: reserved bytes set", ErrMalformed)
	}
	sender := binary.LittleEndian.Uint32(msg[wire.AuthSenderOff:])
	receiver := binary.LittleEndian.Uint32(msg[wire.AuthReceiverOff:])
	if sender == 0 || receiver == 0 {
		return Result{}, nil, fmt.Errorf("%w: zero index", ErrMalformed)
	}
	var mac1 [wire.MACLen]byte
	copy(mac1[:], msg[wire.AuthMAC1Off:])
	now := e.now()

	// An AUTH_PROOF that answers no handshake in flight (a replay, however old) is
	// dropped before it counts toward the load: only one that can complete a handshake
	// does.
	e.mu.Lock()
	var rel []uint32
	h := e.half.byIndex[receiver]
	var err error
	switch {
	case h == nil || h.remote != sender:
		err = ErrUnknownIndex
	case h.seed != sk.id:
		// Under another seed than its HELLO: not this handshake's AUTH_PROOF.
		err = ErrBadMAC1
	case now.Sub(h.born) >= HalfOpenTimeout:
		e.half.remove(h)
		rel = append(rel, h.local)
		err = ErrExpired
	}
	rel = e.half.expire(now, rel)
	if err == nil && e.underLoad(e.load.add(now)) {
		var ok bool
		ok, err = e.checkMAC2Locked(msg, wire.AuthMAC2Off, src, now, true)
		if err == nil && !ok {
			if !e.cookies.take(sourceKey(src.Addr()), now) {
				err = ErrRateLimited
			} else {
				var reply []byte
				reply, err = e.cookieReplyLocked(sk, out, sender, &mac1, src, now)
				if err == nil {
					e.mu.Unlock()
					e.releaseAll(rel)
					return Result{}, reply, nil
				}
			}
		}
	}
	if err == nil {
		// Take the handshake out of the table: exactly one AUTH_PROOF can use it, and a
		// failed one ends it (only a seed holder can get a failing one past mac1).
		e.half.remove(h)
	}
	e.mu.Unlock()
	e.releaseAll(rel)
	if err != nil {
		return Result{}, nil, err
	}

	fail := func(err error) (Result, []byte, error) {
		e.releaseAll([]uint32{h.local})
		return Result{}, nil, err
	}
	payload, cs1, cs2, err := h.hs.ReadMessage(make([]byte, 0, authPlainLen), msg[wire.AuthNoiseOff:wire.AuthMAC1Off])
	if err != nil {
		return fail(noiseErr(err))
	}
	if cs1 == nil || cs2 == nil || len(payload) != authPlainLen {
		return fail(ErrState)
	}
	name, err := parseName(payload)
	if err != nil {
		return fail(err)
	}
	res := Result{
		LocalIndex:  h.local,
		RemoteIndex: h.remote,
		SendKey:     cs2.UnsafeKey(),
		RecvKey:     cs1.UnsafeKey(),
		Cipher:      h.cipher,
		PeerName:    name,
		Timestamp:   h.ts,
		SeedID:      h.seed,
	}
	copy(res.PeerStatic[:], h.hs.PeerStatic())
	return res, nil, nil
}

// underLoad is the condition of section 4.4. Called with e.mu held.
func (e *Engine) underLoad(rate float64) bool {
	return e.threshold < 0 || rate > float64(e.threshold) || e.half.len() > MaxHalfOpen/2
}

// checkMAC2Locked verifies mac2 against the cookie src would hold from the current or
// (with prev) the previous cookie secret. Called with e.mu held.
func (e *Engine) checkMAC2Locked(msg []byte, off int, src netip.AddrPort, now time.Time, prev bool) (bool, error) {
	cur, err := e.secrets.current(now, e.rand)
	if err != nil {
		return false, fmt.Errorf("handshake: cookie secret: %w", err)
	}
	got := msg[off : off+wire.MACLen]
	c := cookieFor(cur, src)
	want := mac(c[:], msg[:off])
	ok := subtle.ConstantTimeCompare(want[:], got) == 1
	if prev && e.secrets.haveP {
		c = cookieFor(&e.secrets.prev, src)
		want = mac(c[:], msg[:off])
		ok = subtle.ConstantTimeCompare(want[:], got) == 1 || ok
	}
	return ok, nil
}

// cookieReplyLocked builds the COOKIE_REPLY for a message with the given sender index and
// mac1. Called with e.mu held.
func (e *Engine) cookieReplyLocked(sk *seedKeys, out []byte, receiver uint32, mac1 *[wire.MACLen]byte, src netip.AddrPort, now time.Time) ([]byte, error) {
	secret, err := e.secrets.current(now, e.rand)
	if err != nil {
		return nil, fmt.Errorf("handshake: cookie secret: %w", err)
	}
	var nonce [cookieNonceLen]byte
	if _, err := io.ReadFull(e.rand, nonce[:]); err != nil {
		return nil, fmt.Errorf("handshake: cookie nonce: %w", err)
	}
	c := cookieFor(secret, src)
	return sealCookieReply(out, sk.cookie, receiver, &nonce, &c, mac1), nil
}

// sealCookieReply lays out a COOKIE_REPLY (section 4.4), appending it to out.
func sealCookieReply(out []byte, aead cipher.AEAD, receiver uint32, nonce *[cookieNonceLen]byte, cookie, mac1 *[wire.MACLen]byte) []byte {
	out = appendHeader(out, wire.TypeCookieReply, receiver)
	out = append(out, nonce[:]...)
	return aead.Seal(out, nonce[:], cookie[:], mac1[:])
}

// ownIndexLocked draws a random nonzero index not in the half-open table, for an Engine
// without AllocIndex. Called with e.mu held.
func (e *Engine) ownIndexLocked() (uint32, error) {
	var b [4]byte
	for range 64 {
		if _, err := io.ReadFull(e.rand, b[:]); err != nil {
			return 0, fmt.Errorf("handshake: index: %w", err)
		}
		i := binary.LittleEndian.Uint32(b[:])
		if _, used := e.half.byIndex[i]; i != 0 && !used {
			return i, nil
		}
	}
	return 0, fmt.Errorf("%w: no free index", ErrUnderLoad)
}
