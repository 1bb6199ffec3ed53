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
// (reply[0] == wire.TypeChallenge) or, under load, a COOKIE_REPLY (wire.TypeCookieReply).
// On a drop it returns nil and an error wrapping one of the Err* reasons.
//
// The reply is appended to out (as cipher.AEAD.Seal appends to dst); pass buf[:0] to
// reuse buf. out may share memory with msg: msg is fully read before out is written.
// The order of checks is the DoS defence of sections 4.3–4.5: free header checks, mac1,
// replay cache, load/cookie gate, table capacity, and only then public-key work.
func (e *Engine) HandleHello(msg []byte, src netip.AddrPort, out []byte) ([]byte, error) {
	if err := checkHeader(msg, wire.TypeHello, wire.HelloLen); err != nil {
		return nil, err
	}
	if !e.checkMAC1(msg, wire.HelloMAC1Off) {
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
	rel := e.half.expire(now, nil)
	rate := e.load.add(now)
	if e.replay.contains(eph, now) {
		e.mu.Unlock()
		e.releaseAll(rel)
		return nil, ErrReplay
	}
	if e.underLoad(rate) {
		ok, err := e.checkMAC2Locked(msg, wire.HelloMAC2Off, src, now)
		if err == nil && !e.buckets.take(src.Addr().Unmap(), now) {
			err = ErrRateLimited
		}
		if err == nil && !ok {
			var reply []byte
			reply, err = e.cookieReplyLocked(out, sender, &mac1, src, now)
			if err == nil {
				e.mu.Unlock()
				e.releaseAll(rel)
				return reply, nil
			}
		}
		if err != nil {
			e.mu.Unlock()
			e.releaseAll(rel)
			return nil, err
		}
	}
	if e.half.len() >= MaxHalfOpen {
		e.mu.Unlock()
		e.releaseAll(rel)
		return nil, ErrUnderLoad
	}
	e.replay.insert(eph, now)
	e.mu.Unlock()
	e.releaseAll(rel)

	hs, err := e.noiseState(false)
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
	h := &halfOpen{hs: hs, remote: sender, born: now}
	copy(h.ts[:], payload[:timestampLen])
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
	e.mu.Lock()
	if e.alloc == nil {
		h.local, err = e.ownIndexLocked()
	}
	if err == nil && !e.half.add(h) {
		err = ErrUnderLoad
	}
	e.mu.Unlock()
	if err != nil {
		if h.local != 0 {
			e.releaseAll([]uint32{h.local})
		}
		return nil, err
	}
	binary.LittleEndian.PutUint32(out[base+wire.ChallengeSenderOff:], h.local)
	return e.finishMACs(out, base, nil), nil
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
	if !e.checkMAC1(msg, wire.AuthMAC1Off) {
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

	e.mu.Lock()
	rate := e.load.add(now)
	var rel []uint32
	h := e.half.byIndex[receiver]
	var err error
	switch {
	case h == nil || h.remote != sender:
		err = ErrUnknownIndex
	case now.Sub(h.born) >= HalfOpenTimeout:
		e.half.remove(h)
		rel = append(rel, h.local)
		err = ErrExpired
	}
	rel = e.half.expire(now, rel)
	if err == nil && e.underLoad(rate) {
		var ok bool
		ok, err = e.checkMAC2Locked(msg, wire.AuthMAC2Off, src, now)
		if err == nil && !ok {
			if !e.buckets.take(src.Addr().Unmap(), now) {
				err = ErrRateLimited
			} else {
				var reply []byte
				reply, err = e.cookieReplyLocked(out, sender, &mac1, src, now)
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
	}
	copy(res.PeerStatic[:], h.hs.PeerStatic())
	return res, nil, nil
}

// underLoad is the condition of section 4.4. Called with e.mu held.
func (e *Engine) underLoad(rate float64) bool {
	return e.threshold < 0 || rate > float64(e.threshold) || e.half.len() > MaxHalfOpen/2
}

// checkMAC2Locked verifies mac2 against the cookie src would hold from the current or the
// previous cookie secret. Called with e.mu held.
func (e *Engine) checkMAC2Locked(msg []byte, off int, src netip.AddrPort, now time.Time) (bool, error) {
	cur, err := e.secrets.current(now, e.rand)
	if err != nil {
		return false, fmt.Errorf("handshake: cookie secret: %w", err)
	}
	got := msg[off : off+wire.MACLen]
	c := cookieFor(cur, src)
	want := mac(c[:], msg[:off])
	ok := subtle.ConstantTimeCompare(want[:], got) == 1
	if e.secrets.haveP {
		c = cookieFor(&e.secrets.prev, src)
		want = mac(c[:], msg[:off])
		ok = subtle.ConstantTimeCompare(want[:], got) == 1 || ok
	}
	return ok, nil
}

// cookieReplyLocked builds the COOKIE_REPLY for a message with the given sender index and
// mac1. Called with e.mu held.
func (e *Engine) cookieReplyLocked(out []byte, receiver uint32, mac1 *[wire.MACLen]byte, src netip.AddrPort, now time.Time) ([]byte, error) {
	secret, err := e.secrets.current(now, e.rand)
	if err != nil {
		return nil, fmt.Errorf("handshake: cookie secret: %w", err)
	}
	var nonce [cookieNonceLen]byte
	if _, err := io.ReadFull(e.rand, nonce[:]); err != nil {
		return nil, fmt.Errorf("handshake: cookie nonce: %w", err)
	}
	c := cookieFor(secret, src)
	return sealCookieReply(out, e.cookieKey, receiver, &nonce, &c, mac1), nil
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
