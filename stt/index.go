package stt

import (
	"crypto/rand"
	"encoding/binary"
	"sync"
	"sync/atomic"
)

// indexTable maps receiver indices to live sessions for the receive path, and tracks
// the indices reserved by handshakes in flight. Lookups of sessions are lock-free: the
// map is replaced, never changed in place, and changes happen only at handshakes.
type indexTable struct {
	sessions atomic.Pointer[map[uint32]*session]

	mu       sync.Mutex
	reserved map[uint32]struct{} // handshakes in flight, either role
}

func newIndexTable() *indexTable {
	t := &indexTable{reserved: make(map[uint32]struct{})}
	m := make(map[uint32]*session)
	t.sessions.Store(&m)
	return t
}

func (t *indexTable) lookup(i uint32) *session { return (*t.sessions.Load())[i] }

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
		if _, ok := (*t.sessions.Load())[i]; ok {
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
	old := *t.sessions.Load()
	m := make(map[uint32]*session, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	m[s.localIndex] = s
	t.sessions.Store(&m)
}

// remove drops sessions from the receive path.
func (t *indexTable) remove(ss ...*session) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := *t.sessions.Load()
	m := make(map[uint32]*session, len(old))
	for k, v := range old {
		m[k] = v
	}
	changed := false
	for _, s := range ss {
		if s != nil && m[s.localIndex] == s {
			delete(m, s.localIndex)
			changed = true
		}
	}
	if changed {
		t.sessions.Store(&m)
	}
}

func (t *indexTable) counts() (sessions, pending int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(*t.sessions.Load()), len(t.reserved)
}
