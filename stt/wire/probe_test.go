package wire

import (
	"errors"
	"testing"
)

// TestProbeFrameLengthExact: a PROBE built for a frame of L bytes makes a stream-0
// payload that, sealed alone, is exactly L bytes, for every L in range; out of range is
// refused.
func TestProbeFrameLengthExact(t *testing.T) {
	for _, l := range []int{MinProbeFrame, MinProbeFrame + 1, 1252, 1472, 8972, MaxMessageLen} {
		p, err := AppendProbe(nil, 0xdeadbeef, l)
		if err != nil {
			t.Fatalf("%d: %v", l, err)
		}
		if got := HeaderLen + len(p) + TagLen; got != l {
			t.Fatalf("frame for %d is %d bytes", l, got)
		}
		it := NewControlIter(p)
		m, ok := it.Next()
		if !ok || m.Type != CtlProbe || CheckControlBody(m) != nil || ParseProbe(m.Body) != 0xdeadbeef {
			t.Fatalf("%d: parsed %v %x", l, ok, m.Type)
		}
		if _, more := it.Next(); more || it.Err() != nil {
			t.Fatalf("%d: more than one message", l)
		}
	}
	for _, l := range []int{MinProbeFrame - 1, 0, -1, MaxMessageLen + 1} {
		if _, err := AppendProbe(nil, 1, l); !errors.Is(err, ErrProbeSize) {
			t.Errorf("frame of %d: %v, want ErrProbeSize", l, err)
		}
	}
}

// TestProbeAckBodyExact: a PROBE_ACK is exactly id and length; a byte more or less is
// malformed, and a PROBE needs at least its id.
func TestProbeAckBodyExact(t *testing.T) {
	a := AppendProbeAck(nil, 7, 1400)
	it := NewControlIter(a)
	m, _ := it.Next()
	if err := CheckControlBody(m); err != nil {
		t.Fatal(err)
	}
	if id, l := ParseProbeAck(m.Body); id != 7 || l != 1400 {
		t.Fatalf("got %d %d", id, l)
	}
	for _, n := range []int{ProbeAckBodyLen - 1, ProbeAckBodyLen + 1, 0} {
		if err := CheckControlBody(ControlMsg{Type: CtlProbeAck, Body: make([]byte, n)}); !errors.Is(err, ErrControlBody) {
			t.Errorf("PROBE_ACK of %d bytes: %v", n, err)
		}
	}
	if err := CheckControlBody(ControlMsg{Type: CtlProbe, Body: make([]byte, ProbeIDLen-1)}); !errors.Is(err, ErrControlBody) {
		t.Errorf("PROBE of %d bytes: %v", ProbeIDLen-1, err)
	}
}

// FuzzProbeBodies: any stream-0 payload parses without panic; every PROBE and
// PROBE_ACK that passes CheckControlBody reads back to what re-encoding it gives.
func FuzzProbeBodies(f *testing.F) {
	p, _ := AppendProbe(nil, 3, 100)
	f.Add(p)
	f.Add(AppendProbeAck(nil, 3, 100))
	f.Add([]byte{CtlProbeAck, 6, 0, 1, 2, 3})
	f.Add([]byte{CtlProbe, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, payload []byte) {
		it := NewControlIter(payload)
		for {
			m, ok := it.Next()
			if !ok {
				return
			}
			if CheckControlBody(m) != nil {
				continue
			}
			switch m.Type {
			case CtlProbe:
				id := ParseProbe(m.Body)
				q, err := AppendProbe(nil, id, HeaderLen+ControlHeaderLen+len(m.Body)+TagLen)
				if err != nil || ParseProbe(q[ControlHeaderLen:]) != id || len(q) != ControlHeaderLen+len(m.Body) {
					t.Fatalf("probe %x: re-encoded %x, %v", m.Body, q, err)
				}
			case CtlProbeAck:
				id, l := ParseProbeAck(m.Body)
				if q := AppendProbeAck(nil, id, l); string(q[ControlHeaderLen:]) != string(m.Body) {
					t.Fatalf("ack %x re-encoded %x", m.Body, q)
				}
			}
		}
	})
}
