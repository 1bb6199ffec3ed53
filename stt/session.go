package stt

import (
	"crypto/aes"
	"crypto/cipher"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.zx2c4.com/wireguard/replay"

	"github.com/stt-tun/stt-tun/stt/wire"
)

// session is one set of keys with a peer: what a handshake produced. The hot path
// touches only its immutable fields, the atomic send counter and, once per run of
// frames, the replay lock.
type session struct {
	peer        *Peer
	localIndex  uint32
	remoteIndex uint32
	initiator   bool
	cipherID    wire.CipherID
	send        cipher.AEAD
	recv        cipher.AEAD
	created     time.Time
	gen         uint64 // numbers the peer's sessions: a later one has a larger gen

	sendCounter atomic.Uint64 // next counter to use
	confirmed   atomic.Bool   // an authenticated frame arrived under this session

	replayMu sync.Mutex
	replay   replay.Filter

	rel reliableState // reliable control messages (stream 0)
}

func newAEAD(id wire.CipherID, key []byte) (cipher.AEAD, error) {
	switch id {
	case wire.CipherChaCha20Poly1305:
		return chacha20poly1305.New(key)
	case wire.CipherAES256GCM:
		b, err := aes.NewCipher(key)
		if err != nil {
			return nil, err
		}
		return cipher.NewGCM(b)
	}
	return nil, fmt.Errorf("unknown cipher %d", id)
}

func newSession(p *Peer, local, remote uint32, initiator bool, id wire.CipherID, sendKey, recvKey *[32]byte, now time.Time) (*session, error) {
	s := &session{peer: p, localIndex: local, remoteIndex: remote, initiator: initiator, cipherID: id, created: now}
	if p != nil {
		s.gen = p.sessions.Add(1)
	}
	var err error
	if s.send, err = newAEAD(id, sendKey[:]); err != nil {
		return nil, err
	}
	if s.recv, err = newAEAD(id, recvKey[:]); err != nil {
		return nil, err
	}
	// The initiator learns the session is live from the responder's FINAL; the
	// responder has seen AUTH_PROOF, which is confirmation already.
	s.confirmed.Store(!initiator)
	return s, nil
}

// streamFor maps a caller's flow number onto a data stream id of this session's
// parity: odd for the initiator, even (non-zero) for the responder.
func (s *session) streamFor(flow uint16) uint16 {
	f := flow % 32767
	if s.initiator {
		return 2*f + 1
	}
	return 2*f + 2
}

// reserve takes n consecutive send counters and reports the first, or false when the
// session may not seal that many more frames.
func (s *session) reserve(n int, limit uint64) (uint64, bool) {
	end := s.sendCounter.Add(uint64(n))
	if end > limit {
		return 0, false
	}
	return end - uint64(n), true
}

// seal writes the header into frame[:HeaderLen] and seals frame[HeaderLen:] in place,
// returning the frame extended by the tag. cap(frame) must allow the tag.
func (s *session) seal(frame []byte, stream uint16, counter uint64, nonce *[12]byte) []byte {
	wire.PutHeader(frame, wire.Header{Stream: stream, Receiver: s.remoteIndex, Counter: counter})
	wire.Nonce(nonce, counter)
	pt := frame[wire.HeaderLen:]
	ct := s.send.Seal(pt[:0], nonce[:], pt, frame[:wire.HeaderLen])
	return frame[:wire.HeaderLen+len(ct)]
}

// open authenticates and decrypts frame in place, returning the plaintext. It does not
// check for replay: call accept after a successful open.
func (s *session) open(frame []byte, counter uint64, nonce *[12]byte) ([]byte, error) {
	wire.Nonce(nonce, counter)
	ct := frame[wire.HeaderLen:]
	return s.recv.Open(ct[:0], nonce[:], ct, frame[:wire.HeaderLen])
}

// expired reports whether the session may no longer seal or open anything.
func (s *session) expired(now time.Time, t *Timers) bool {
	return now.Sub(s.created) >= t.RejectAfterTime
}
