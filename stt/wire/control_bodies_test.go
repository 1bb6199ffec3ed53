package wire

import (
	"encoding/binary"
	"errors"
	"testing"
)

// TestAckAndReliableBodiesExact: an ACK body is exactly its sequence number, and a
// RELIABLE body exactly a sequence number and one whole inner message: a byte more is
// malformed, not ignored.
func TestAckAndReliableBodiesExact(t *testing.T) {
	if err := CheckControlBody(ControlMsg{Type: CtlAck, Body: make([]byte, AckBodyLen)}); err != nil {
		t.Fatalf("ACK of %d bytes: %v", AckBodyLen, err)
	}
	if err := CheckControlBody(ControlMsg{Type: CtlAck, Body: make([]byte, AckBodyLen+1)}); !errors.Is(err, ErrControlBody) {
		t.Errorf("ACK of %d bytes: %v, want ErrControlBody", AckBodyLen+1, err)
	}
	inner := AppendControl(binary.LittleEndian.AppendUint32(nil, 7), 0x81, []byte("xyz"))
	if err := CheckControlBody(ControlMsg{Type: CtlReliable, Body: inner}); err != nil {
		t.Fatalf("RELIABLE with one whole inner message: %v", err)
	}
	if err := CheckControlBody(ControlMsg{Type: CtlReliable, Body: append(inner, 0)}); !errors.Is(err, ErrControlBody) {
		t.Errorf("RELIABLE with a byte after its inner message: %v, want ErrControlBody", err)
	}
	if err := CheckControlBody(ControlMsg{Type: CtlReliable, Body: inner[:len(inner)-1]}); !errors.Is(err, ErrControlBody) {
		t.Errorf("RELIABLE with its inner message cut short: %v, want ErrControlBody", err)
	}
}
