package mesh

import (
	"bytes"
	"crypto/ed25519"
	"net/netip"
	"testing"
	"time"
)

// FuzzParseStatementsMessage: no panic; what parses re-encodes to the same bytes; a
// list never holds more statements than its bytes allow; and the engine, given the
// message, stays within its bounds (it answers a summary with at most one answer of the
// statements it holds, and takes at most one statement per listed one).
func FuzzParseStatementsMessage(f *testing.F) {
	for _, h := range []string{goldenStatementsSummary, goldenStatementsPush, goldenStatementsAnswer, goldenStatementsEmpty} {
		f.Add(goldenBytes(f, h))
	}
	f.Add([]byte{2, 1, 2, 1, 0, 1, 1, 0, 1})
	f.Add([]byte{1})
	rev, rot := goldenBytes(f, goldenRevoke), goldenBytes(f, goldenRotate)
	f.Fuzz(func(t *testing.T, b []byte) {
		op, sum, list, err := ParseStatementsMessage(b, nil)
		if err == nil {
			var again []byte
			switch op {
			case StatementsSummary:
				again = AppendStatementsSummary(nil, sum)
			case StatementsList:
				again, err = AppendStatementList(nil, list.Flags, list.Statements...)
				if err != nil {
					t.Fatalf("parsed list does not encode: %v", err)
				}
				if len(list.Statements) > len(b)/3 {
					t.Fatalf("%d statements from %d bytes", len(list.Statements), len(b))
				}
			default:
				t.Fatalf("op %d parsed", op)
			}
			if !bytes.Equal(again, b) {
				t.Fatalf("not canonical: %x re-encodes to %x", b, again)
			}
		}
		sent := 0
		e := New(Config{Identity: NewIdentity(edSeedN(4)), Network: NetworkOf(testSeed), Now: func() time.Time { return testNow },
			Admins: []ed25519.PublicKey{adminPub(testAdmin())},
			Send:   func([32]byte, byte, []byte) error { sent++; return nil }})
		e.LoadStatements([][]byte{rev, rot})
		e.SessionUp([32]byte{7})
		sent = 0
		e.Handle([32]byte{7}, netip.AddrPort{}, false, MsgStatements, b)
		if sent > 2 {
			t.Fatalf("one message made the engine send %d", sent)
		}
	})
}
