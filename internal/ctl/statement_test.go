package ctl

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"
)

// stmtFake takes statements: it records the bytes and answers as told.
type stmtFake struct {
	*fakeTunnel
	got      [][]byte
	accepted bool
	reason   string
	err      error
}

func (f *stmtFake) OfferStatement(raw []byte) (bool, string, error) {
	f.got = append(f.got, bytes.Clone(raw))
	return f.accepted, f.reason, f.err
}

// The statement op hands the daemon the exact bytes and brings back its verdict; a
// refusal of the daemon is a DaemonError; bad requests never reach it.
func TestStatementOp(t *testing.T) {
	f := &stmtFake{fakeTunnel: newFake(), accepted: true}
	srv := serveTunnel(t, f)
	raw := []byte{1, 2, 3, 0xff}
	r, err := Statement(testContext(t), srv.Path(), raw)
	if err != nil || !r.Accepted || r.Reason != "" || len(f.got) != 1 || !bytes.Equal(f.got[0], raw) {
		t.Fatalf("Statement = %+v, %v; daemon got %x", r, err, f.got)
	}
	f.accepted, f.reason = false, "stale"
	if r, err := Statement(testContext(t), srv.Path(), raw); err != nil || r.Accepted || r.Reason != "stale" {
		t.Fatalf("stale: %+v %v", r, err)
	}
	f.err = errors.New("this interface has no [membership] admins: it obeys no statement")
	_, err = Statement(testContext(t), srv.Path(), raw)
	var de *DaemonError
	if !errors.As(err, &de) || de.Op != OpStatement || de.Msg != f.err.Error() {
		t.Fatalf("refusal: %v", err)
	}
	n := len(f.got)
	for _, body := range []string{"", "not base64!", strings.Repeat("A", maxStatementB64+4)} {
		resp := rawRequest(t, srv.Path(), Request{Op: OpStatement, Statement: body})
		if resp.OK || resp.Error == "" {
			t.Errorf("statement %.20q: %+v", body, resp)
		}
	}
	if len(f.got) != n {
		t.Fatal("a bad request reached the daemon")
	}
}

func TestStatementOpUnsupported(t *testing.T) {
	srv := serveTunnel(t, newFake())
	_, err := Statement(testContext(t), srv.Path(), []byte{1})
	if err == nil || !strings.Contains(err.Error(), "takes no statements") {
		t.Fatalf("Statement on a daemon that takes none: %v", err)
	}
}

// rawRequest sends one request line and returns the response, OK or not.
func rawRequest(t *testing.T, sock string, req Request) Response {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b, _ := json.Marshal(req)
	if _, err := c.Write(append(b, '\n')); err != nil {
		t.Fatal(err)
	}
	var resp Response
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		t.Fatal(err)
	}
	return resp
}
