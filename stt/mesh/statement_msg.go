package mesh

// statement_msg.go encodes and parses STATEMENTS (0x8C), the gossip message that carries
// signed statements between members (docs/protocol.md 10.8). Like messages.go, its parser
// takes hostile input: exact lengths, bounded counts, no allocation beyond what a checked
// count justifies; the statements themselves are parsed by ParseStatement.

import (
	"encoding/binary"
)

// MsgStatements is the control message type of statement gossip.
const MsgStatements byte = 0x8C

// Operations of a STATEMENTS message (its first byte).
const (
	StatementsSummary byte = 1 // count u32, hash [16]: what the sender holds
	StatementsList    byte = 2 // flags u8, n u8, n × (length u16, statement)
)

// Flags of a StatementsList message.
const (
	// ListAnswer: the message is part of the answer to a SUMMARY that differed.
	ListAnswer byte = 1 << 0
	// ListLast: the last part of that answer.
	ListLast byte = 1 << 1
	// ListComplete: the answer carries every statement its sender holds, so the receiver
	// may send back those it lacks.
	ListComplete byte = 1 << 2
	listFlagsAll      = ListAnswer | ListLast | ListComplete
)

// Size limits of STATEMENTS.
const (
	// MaxStatementsBody bounds a list of several statements; a list of one statement
	// may be longer (a ROTATE with many excluded keys), up to maxStatementsOne.
	MaxStatementsBody    = 1200
	maxStatementsOne     = 3 + 2 + MaxStatementLen
	statementsSummaryLen = 1 + summaryLen
)

// StatementList is the body of a StatementsList message.
type StatementList struct {
	Flags      byte
	Statements [][]byte // sub-slices of the message, not copies
}

// AppendStatementsSummary appends the body of a STATEMENTS summary.
func AppendStatementsSummary(b []byte, s Summary) []byte {
	b = append(b, StatementsSummary)
	return AppendSummary(b, s)
}

// AppendStatementList appends the body of a STATEMENTS list. Several statements must fit
// MaxStatementsBody; one alone may be up to MaxStatementLen. An empty list must be the
// last part of an answer.
func AppendStatementList(b []byte, flags byte, stmts ...[]byte) ([]byte, error) {
	if flags&^listFlagsAll != 0 || (flags&ListAnswer == 0 && flags&(ListLast|ListComplete) != 0) {
		return b, badMsg("statement list flags %#x", flags)
	}
	if len(stmts) == 0 && flags&ListLast == 0 {
		return b, badMsg("empty statement list that is not the last part of an answer")
	}
	size := 3
	for _, s := range stmts {
		if len(s) == 0 || len(s) > MaxStatementLen {
			return b, badMsg("statement of %d bytes", len(s))
		}
		size += 2 + len(s)
	}
	if len(stmts) > 255 || (len(stmts) > 1 && size > MaxStatementsBody) {
		return b, badMsg("statement list of %d bytes (limit %d)", size, MaxStatementsBody)
	}
	b = append(b, StatementsList, flags, byte(len(stmts)))
	for _, s := range stmts {
		b = binary.LittleEndian.AppendUint16(b, uint16(len(s)))
		b = append(b, s...)
	}
	return b, nil
}

// ParseStatementsMessage parses the body of STATEMENTS: its operation, and the summary
// (StatementsSummary) or the list (StatementsList, statements appended to dst).
func ParseStatementsMessage(b []byte, dst [][]byte) (op byte, sum Summary, list StatementList, err error) {
	if len(b) < 1 {
		return 0, sum, list, badMsg("empty statements message")
	}
	switch b[0] {
	case StatementsSummary:
		if len(b) != statementsSummaryLen {
			return 0, sum, list, badMsg("statements summary of %d bytes", len(b))
		}
		sum, err = ParseSummary(b[1:])
		return StatementsSummary, sum, list, err
	case StatementsList:
		if len(b) < 3 || len(b) > maxStatementsOne {
			return 0, sum, list, badMsg("statement list of %d bytes", len(b))
		}
		flags, n := b[1], int(b[2])
		if flags&^listFlagsAll != 0 || (flags&ListAnswer == 0 && flags&(ListLast|ListComplete) != 0) {
			return 0, sum, list, badMsg("statement list flags %#x", flags)
		}
		if n == 0 && flags&ListLast == 0 {
			return 0, sum, list, badMsg("empty statement list that is not the last part of an answer")
		}
		if n > 1 && len(b) > MaxStatementsBody {
			return 0, sum, list, badMsg("statement list of %d statements in %d bytes (limit %d)", n, len(b), MaxStatementsBody)
		}
		p := b[3:]
		for i := range n {
			if len(p) < 2 {
				return 0, sum, list, badMsg("statement list truncated at %d", i)
			}
			l := int(binary.LittleEndian.Uint16(p))
			if l == 0 || l > MaxStatementLen || l > len(p)-2 {
				return 0, sum, list, badMsg("statement %d of %d bytes", i, l)
			}
			dst = append(dst, p[2:2+l])
			p = p[2+l:]
		}
		if len(p) != 0 {
			return 0, sum, list, badMsg("%d bytes after the statements", len(p))
		}
		return StatementsList, sum, StatementList{Flags: flags, Statements: dst}, nil
	}
	return 0, sum, list, badMsg("statements operation %d", b[0])
}
