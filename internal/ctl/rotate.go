package ctl

// rotate.go is the `rotate` op: `stt-tun seed rotate` hands the daemon a ROTATE statement
// an admin signed and the next seed it names; the daemon stages the seed and offers it,
// sealed, to the members. The seed crosses only this socket, which only root can open.
//
//	{"op":"rotate","statement":"<base64 of the signed bytes>","seed":"<base64 of 32 bytes>"}
//	  →  {"ok":true,"rotate":{"offered":3}}
//	     or {"ok":false,"error":"..."}   (no admins, the statement refused, ...)

import (
	"context"
	"encoding/base64"
	"fmt"
)

// OpRotate starts an in-band rotation of the seed.
const OpRotate = "rotate"

// RotateResult is the daemon's answer to a rotate request: to how many members it sent
// the next seed at once (the others get it when their sessions come up).
type RotateResult struct {
	Offered int `json:"offered"`
}

// Rotator is implemented by a Tunnel that can rotate the seed in band.
type Rotator interface {
	// Rotate stages next, the seed the ROTATE statement names, and offers it to the
	// members; it returns to how many it sent it now.
	Rotate(statement []byte, next [32]byte) (offered int, err error)
}

func (s *Server) rotate(t Tunnel, req Request) Response {
	r, ok := t.(Rotator)
	if !ok {
		return Response{Error: "this daemon cannot rotate the seed"}
	}
	if req.Statement == "" || len(req.Statement) > maxStatementB64 {
		return Response{Error: fmt.Sprintf("rotate: %d characters of statement base64; want 1 to %d", len(req.Statement), maxStatementB64)}
	}
	raw, err := base64.StdEncoding.Strict().DecodeString(req.Statement)
	if err != nil {
		return Response{Error: "rotate: the statement is not valid base64"}
	}
	seed, err := base64.StdEncoding.Strict().DecodeString(req.Seed)
	if err != nil || len(seed) != 32 {
		return Response{Error: "rotate: the seed is not 32 bytes of base64"}
	}
	offered, err := r.Rotate(raw, [32]byte(seed))
	clear(seed)
	if err != nil {
		return Response{Error: err.Error()}
	}
	s.log.Info("seed rotation started over the control socket", "offered", offered)
	return Response{OK: true, Rotate: &RotateResult{Offered: offered}}
}

// Rotate hands the signed ROTATE statement and its next seed to the daemon listening on
// sock and returns to how many members it offered the seed at once. A refusal is a
// *DaemonError.
func Rotate(ctx context.Context, sock string, statement []byte, next [32]byte) (int, error) {
	c, err := dial(ctx, sock)
	if err != nil {
		return 0, err
	}
	defer c.close()
	resp, err := c.roundTrip(Request{Op: OpRotate, Statement: base64.StdEncoding.EncodeToString(statement),
		Seed: base64.StdEncoding.EncodeToString(next[:])})
	if err != nil {
		return 0, err
	}
	if resp.Rotate == nil {
		return 0, fmt.Errorf("rotate to %s: response has no result", sock)
	}
	return resp.Rotate.Offered, nil
}
