package mesh

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"net/netip"
	"testing"
	"time"
)

// The STATEMENTS vectors of docs/protocol.md 10.8, written out by hand from the
// statement vectors of 10.7: a summary, a push of the REVOKE, and the complete answer of
// a store that holds both statements.
const (
	goldenStatementsSummary = "01" + goldenStatementSummary
	goldenStatementsPush    = "0200018f00" + goldenRevoke
	goldenStatementsAnswer  = "0207028f00" + goldenRevoke + "a600" + goldenRotate
	goldenStatementsEmpty   = "020700"
)

func TestGoldenStatementsMessages(t *testing.T) {
	rev, rot := goldenBytes(nil, goldenRevoke), goldenBytes(nil, goldenRotate)
	sum, _ := hex.DecodeString(goldenStatementSummary)
	s, _ := ParseSummary(sum)
	checkHex(t, "STATEMENTS summary", AppendStatementsSummary(nil, s), goldenStatementsSummary)
	push, err := AppendStatementList(nil, 0, rev)
	if err != nil {
		t.Fatal(err)
	}
	checkHex(t, "STATEMENTS push", push, goldenStatementsPush)
	ans, err := AppendStatementList(nil, ListAnswer|ListLast|ListComplete, rev, rot)
	if err != nil {
		t.Fatal(err)
	}
	checkHex(t, "STATEMENTS answer", ans, goldenStatementsAnswer)
	empty, err := AppendStatementList(nil, ListAnswer|ListLast|ListComplete)
	if err != nil {
		t.Fatal(err)
	}
	checkHex(t, "STATEMENTS empty answer", empty, goldenStatementsEmpty)

	// The engine answers a differing summary with exactly that answer.
	var out [][]byte
	e := New(Config{Identity: NewIdentity(edSeedN(3)), Network: NetworkOf(testSeed), Now: func() time.Time { return testNow },
		Admins: []ed25519.PublicKey{adminPub(testAdmin())},
		Send:   func(_ [32]byte, typ byte, body []byte) error { out = append(out, bytes.Clone(body)); return nil }})
	e.LoadStatements([][]byte{rot, rev})
	e.Handle([32]byte{9}, netip.AddrPort{}, false, MsgStatements, AppendStatementsSummary(nil, Summary{}))
	if len(out) != 1 || hex.EncodeToString(out[0]) != goldenStatementsAnswer {
		t.Fatalf("answer to a differing summary: %x", out)
	}
}

func TestParseStatementsMessageRefuses(t *testing.T) {
	rev := goldenBytes(nil, goldenRevoke)
	big := bytes.Repeat([]byte{1}, 600)
	for name, b := range map[string][]byte{
		"empty":               {},
		"unknown op":          {3},
		"short summary":       goldenBytes(nil, goldenStatementsSummary)[:20],
		"long summary":        append(goldenBytes(nil, goldenStatementsSummary), 0),
		"unknown flag":        {2, 8, 0},
		"last without answer": append([]byte{2, ListLast, 1, 0x8f, 0}, rev...),
		"empty push":          {2, 0, 0},
		"truncated":           goldenBytes(nil, goldenStatementsPush)[:40],
		"trailing":            append(goldenBytes(nil, goldenStatementsPush), 0),
		"zero length":         {2, 0, 1, 0, 0},
		"two over the limit":  append(append([]byte{2, 0, 2, 0x58, 2}, big...), append([]byte{0x58, 2}, big...)...),
	} {
		if _, _, _, err := ParseStatementsMessage(b, nil); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
	// One statement alone may exceed the list limit (a ROTATE with many exclusions).
	one := append([]byte{2, 0, 1, 0xd0, 0x07}, bytes.Repeat([]byte{1}, 2000)...)
	if _, _, l, err := ParseStatementsMessage(one, nil); err != nil || len(l.Statements) != 1 {
		t.Errorf("one long statement: %v", err)
	}
}
