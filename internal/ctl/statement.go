package ctl

// statement.go is the `statement` op: a client hands the daemon a statement an admin
// signed (`stt-tun revoke`, `stt-tun seed rotate`); the daemon offers it to its
// statement store and, when it is taken, gossips it to the members.
//
//	{"op":"statement","statement":"<base64 of the signed bytes>"}
//	  →  {"ok":true,"statement":{"accepted":true}}
//	     or {"ok":true,"statement":{"accepted":false,"reason":"unknown_admin"}}
//	     or {"ok":false,"error":"..."}   (no mesh, bad base64, still starting)

import (
	"context"
	"encoding/base64"
	"fmt"
)

// OpStatement offers a signed statement to the daemon.
const OpStatement = "statement"

// StatementResult is the daemon's answer to a statement request: whether its store took
// the statement and, if not, why (one of the reasons of mesh.StatementReasons, such as
// "stale" or "unknown_admin").
type StatementResult struct {
	Accepted bool   `json:"accepted"`
	Reason   string `json:"reason,omitempty"`
}

// StatementTaker is implemented by a Tunnel that takes signed statements.
type StatementTaker interface {
	// OfferStatement offers the signed bytes of a statement. An error means the tunnel
	// cannot take statements at all (no [discovery], still starting).
	OfferStatement(raw []byte) (accepted bool, reason string, err error)
}

// maxStatementB64 bounds the base64 of a statement in a request (4096 bytes encoded).
const maxStatementB64 = (4096 + 2) / 3 * 4

func (s *Server) statement(t Tunnel, req Request) Response {
	st, ok := t.(StatementTaker)
	if !ok {
		return Response{Error: "this daemon takes no statements"}
	}
	if req.Statement == "" || len(req.Statement) > maxStatementB64 {
		return Response{Error: fmt.Sprintf("statement: %d characters of base64; want 1 to %d", len(req.Statement), maxStatementB64)}
	}
	raw, err := base64.StdEncoding.Strict().DecodeString(req.Statement)
	if err != nil {
		return Response{Error: "statement: not valid base64"}
	}
	accepted, reason, err := st.OfferStatement(raw)
	if err != nil {
		return Response{Error: err.Error()}
	}
	if accepted {
		reason = ""
	}
	s.log.Info("statement offered over the control socket", "accepted", accepted, "reason", reason)
	return Response{OK: true, Statement: &StatementResult{Accepted: accepted, Reason: reason}}
}

// Statement hands the signed statement raw to the daemon listening on sock and returns
// whether its store took it. A daemon that cannot take statements answers with a
// *DaemonError.
func Statement(ctx context.Context, sock string, raw []byte) (StatementResult, error) {
	c, err := dial(ctx, sock)
	if err != nil {
		return StatementResult{}, err
	}
	defer c.close()
	resp, err := c.roundTrip(Request{Op: OpStatement, Statement: base64.StdEncoding.EncodeToString(raw)})
	if err != nil {
		return StatementResult{}, err
	}
	if resp.Statement == nil {
		return StatementResult{}, fmt.Errorf("statement to %s: response has no result", sock)
	}
	return *resp.Statement, nil
}
