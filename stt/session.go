package stt

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
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

	// seed is the id of the seed its handshake was made under (seeds.go).
	seed [16]byte

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
		s.gen = p.keys.made.Add(1)
		// The caller sets the seed of the handshake; without one, the first held.
		if ss := p.node.seeds.Load(); ss != nil {
			s.seed = ss.ids[0]
		}
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
// check for replay: the receive path checks the session's replay window after it.
func (s *session) open(frame []byte, counter uint64, nonce *[12]byte) ([]byte, error) {
	wire.Nonce(nonce, counter)
	ct := frame[wire.HeaderLen:]
	return s.recv.Open(ct[:0], nonce[:], ct, frame[:wire.HeaderLen])
}

// expired reports whether the session may no longer seal or open anything.
func (s *session) expired(now time.Time, t *Limits) bool {
	return now.Sub(s.created) >= t.RejectAfterTime
}

// indexTable maps receiver indices to live sessions for the receive path, and tracks
// the indices reserved by handshakes in flight. Lookups of sessions are lock-free: each
// shard's map is replaced, never changed in place, and changes happen only at
// handshakes. The sessions are spread over indexShards maps by index (indices are
// random), so that a handshake copies one shard, not every session: with one map, the
// thousandth session of a node copied a thousand entries, and bringing up 1000 sessions
// made 26 MB of garbage.
type indexTable struct {
	shards [indexShards]atomic.Pointer[map[uint32]*session]

	mu       sync.Mutex
	reserved map[uint32]struct{} // handshakes in flight, either role
}

// indexShards is the number of maps the sessions are spread over.
const indexShards = 64

func newIndexTable() *indexTable {
	t := &indexTable{reserved: make(map[uint32]struct{})}
	for i := range t.shards {
		m := make(map[uint32]*session)
		t.shards[i].Store(&m)
	}
	return t
}

// shard is the map that holds index i.
func (t *indexTable) shard(i uint32) *atomic.Pointer[map[uint32]*session] {
	return &t.shards[i%indexShards]
}

func (t *indexTable) lookup(i uint32) *session { return (*t.shard(i).Load())[i] }

// reserve picks a fresh random nonzero index unused by any session or handshake.
func (t *indexTable) reserve() uint32 {
	var b [4]byte
	t.mu.Lock()
	defer t.mu.Unlock()
	for {
		_, _ = rand.Read(b[:])
		i := binary.LittleEndian.Uint32(b[:])
		if i == 0 {
			continue
		}
		if _, ok := t.reserved[i]; ok {
			continue
		}
		if _, ok := (*t.shard(i).Load())[i]; ok {
			continue
		}
		t.reserved[i] = struct{}{}
		return i
	}
}

// release forgets a reservation that did not become a session.
func (t *indexTable) release(i uint32) {
	t.mu.Lock()
	delete(t.reserved, i)
	t.mu.Unlock()
}

// install turns a reservation into a live session.
func (t *indexTable) install(s *session) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.reserved, s.localIndex)
	sh := t.shard(s.localIndex)
	old := *sh.Load()
	m := make(map[uint32]*session, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	m[s.localIndex] = s
	sh.Store(&m)
}

// remove drops sessions from the receive path.
func (t *indexTable) remove(ss ...*session) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, s := range ss {
		if s == nil {
			continue
		}
		sh := t.shard(s.localIndex)
		old := *sh.Load()
		if old[s.localIndex] != s {
			continue
		}
		m := make(map[uint32]*session, len(old))
		for k, v := range old {
			if k != s.localIndex {
				m[k] = v
			}
		}
		sh.Store(&m)
	}
}

func (t *indexTable) counts() (sessions, pending int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := range t.shards {
		sessions += len(*t.shards[i].Load())
	}
	return sessions, len(t.reserved)
}

// mono is t on the clocks of peerTimes: nanoseconds since node.epoch. Here beside the
// sessions because both directions of the packet path read it.
func (p *Peer) mono(t time.Time) int64 { return int64(t.Sub(p.node.epoch)) }
