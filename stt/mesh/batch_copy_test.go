package mesh

import (
	"bytes"
	"testing"
)

// TestHandleKeepsNoSliceOfTheMessage: the node hands Handle a body that lies in its
// receive loop's batch buffers, which the next batch overwrites and which are unmapped
// when the loop ends (internal/offheap). What the engine keeps of a message — a
// member record it serves to others later, a statement — must be a copy: here the
// body is overwritten once Handle has returned, and what the engine then holds and
// sends still verifies.
func TestHandleKeepsNoSliceOfTheMessage(t *testing.T) {
	s := newSim(t, 3, 0)
	a, b, c := s.nodes[0], s.nodes[1], s.nodes[2]
	s.link(a, b)
	s.setSelves()
	s.withAdmins(adminPub(testAdmin()))
	poison := func(body []byte) {
		for i := range body {
			body[i] = 0xAA
		}
	}

	// a learns c's record from a RECORDS message (c is not linked: only a can tell b).
	_, raw := c.eng.store.Get(c.id.Public)
	body, err := AppendRecords(nil, raw)
	if err != nil {
		t.Fatal(err)
	}
	a.eng.Handle(c.id.Public, c.addr(), false, MsgRecords, body)
	poison(body)
	if rec, held := a.eng.store.Get(c.id.Public); rec == nil || !bytes.Equal(held, raw) {
		t.Fatal("the record a holds changed with the message it came in")
	}

	// And a revocation (of nobody here) from a STATEMENTS list.
	st := mustSign(t, testRevoke(uint64(s.now.UnixNano()), [32]byte{0xee, 1}), testAdmin(), NetworkID(s.seed))
	body, err = AppendStatementList(nil, 0, st)
	if err != nil {
		t.Fatal(err)
	}
	a.eng.Handle(c.id.Public, c.addr(), false, MsgStatements, body)
	poison(body)
	if got := a.eng.Statements(); len(got) != 1 || !bytes.Equal(got[0], st) {
		t.Fatal("the statement a holds changed with the message it came in")
	}

	// b, which connects later, gets both from a: what a stored, not what it was handed.
	s.queue = nil
	a.eng.SessionUp(b.id.Public)
	b.eng.SessionUp(a.id.Public)
	s.pump()
	a.eng.Tick(s.now, [][32]byte{b.id.Public})
	s.pump()
	if b.eng.Member(c.id.Public) == nil {
		t.Fatal("b did not get c's record from a")
	}
	if !b.eng.Revoked([32]byte{0xee, 1}) {
		t.Fatal("b did not get the revocation from a")
	}
}
