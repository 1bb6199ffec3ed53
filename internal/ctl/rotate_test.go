package ctl

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

// rotFake rotates: it records the statement and seed it is given and answers as told.
type rotFake struct {
	*fakeTunnel
	stmts   [][]byte
	seeds   [][32]byte
	offered int
	err     error
}

func (f *rotFake) Rotate(statement []byte, next [32]byte) (int, error) {
	f.stmts = append(f.stmts, bytes.Clone(statement))
	f.seeds = append(f.seeds, next)
	return f.offered, f.err
}

// The rotate op hands the daemon the exact statement and seed and brings back how many
// members it offered the seed to; a refusal is a DaemonError; a bad request (statement
// or seed not base64, a seed of the wrong length) never reaches the daemon.
func TestRotateOp(t *testing.T) {
	f := &rotFake{fakeTunnel: newFake(), offered: 3}
	srv := serveTunnel(t, f)
	raw := []byte{2, 0, 0xff}
	var next [32]byte
	next[0], next[31] = 7, 9
	n, err := Rotate(testContext(t), srv.Path(), raw, next)
	if err != nil || n != 3 || len(f.stmts) != 1 || !bytes.Equal(f.stmts[0], raw) || f.seeds[0] != next {
		t.Fatalf("Rotate = %d, %v; daemon got %x %x", n, err, f.stmts, f.seeds)
	}
	f.err = errors.New("this interface has no [membership] admins")
	_, err = Rotate(testContext(t), srv.Path(), raw, next)
	var de *DaemonError
	if !errors.As(err, &de) || de.Op != OpRotate || de.Msg != f.err.Error() {
		t.Fatalf("refusal: %v", err)
	}
	calls := len(f.stmts)
	stmt, seed := base64.StdEncoding.EncodeToString(raw), base64.StdEncoding.EncodeToString(next[:])
	for _, req := range []Request{
		{Op: OpRotate, Seed: seed},
		{Op: OpRotate, Statement: "not base64!", Seed: seed},
		{Op: OpRotate, Statement: strings.Repeat("A", maxStatementB64+4), Seed: seed},
		{Op: OpRotate, Statement: stmt},
		{Op: OpRotate, Statement: stmt, Seed: "not base64!"},
		{Op: OpRotate, Statement: stmt, Seed: base64.StdEncoding.EncodeToString(next[:31])},
	} {
		if resp := rawRequest(t, srv.Path(), req); resp.OK || resp.Error == "" || strings.Contains(resp.Error, seed) {
			t.Errorf("rotate %+v: %+v", req, resp)
		}
	}
	if len(f.stmts) != calls {
		t.Fatal("a bad request reached the daemon")
	}
}

func TestRotateOpUnsupported(t *testing.T) {
	srv := serveTunnel(t, newFake())
	_, err := Rotate(testContext(t), srv.Path(), []byte{1}, [32]byte{})
	if err == nil || !strings.Contains(err.Error(), "cannot rotate") {
		t.Fatalf("Rotate on a daemon that cannot: %v", err)
	}
}
