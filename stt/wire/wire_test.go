package wire

import (
	"bytes"
	"errors"
	"testing"
)

func TestCheckLengthRefusesEveryWrongLength(t *testing.T) {
	fixed := map[byte]int{TypeHello: HelloLen, TypeChallenge: ChallengeLen, TypeAuthProof: AuthProofLen, TypeCookieReply: CookieReplyLen}
	for typ, n := range fixed {
		for _, l := range []int{1, n - 1, n + 1, 2 * n} {
			b := make([]byte, l)
			b[0] = typ
			if l > 1 {
				b[1] = Version
			}
			if _, err := CheckLength(b); err == nil {
				t.Errorf("type %d length %d accepted, want exactly %d", typ, l, n)
			}
		}
		b := make([]byte, n)
		b[0], b[1] = typ, Version
		if _, err := CheckLength(b); err != nil {
			t.Errorf("type %d length %d refused: %v", typ, n, err)
		}
		// Another version is told apart from a wrong length, whatever its length.
		for _, l := range []int{2, n, n + 40} {
			b := make([]byte, l)
			b[0], b[1] = typ, Version+1
			if _, err := CheckLength(b); !errors.Is(err, ErrVersion) {
				t.Errorf("type %d version %d length %d: %v, want ErrVersion", typ, Version+1, l, err)
			}
		}
	}
	for _, l := range []int{1, MinDataLen - 1, MaxMessageLen + 1} {
		b := make([]byte, l)
		b[0] = TypeData
		if _, err := CheckLength(b); err == nil {
			t.Errorf("DATA of %d bytes accepted", l)
		}
	}
	for _, typ := range []byte{0, 7, 0x7f, 0x80, 0xff} {
		b := make([]byte, 64)
		b[0] = typ
		if _, err := CheckLength(b); !errors.Is(err, ErrType) {
			t.Errorf("type %#x: %v, want ErrType", typ, err)
		}
	}
	if _, err := CheckLength(nil); err == nil {
		t.Error("empty message accepted")
	}
	for _, l := range []int{1, RelayHeaderLen, MinRelayLen - 1, MaxMessageLen + 1} {
		b := make([]byte, l)
		b[0] = TypeRelay
		if _, err := CheckLength(b); err == nil {
			t.Errorf("RELAY of %d bytes accepted", l)
		}
	}
	for _, l := range []int{MinRelayLen, MaxMessageLen} {
		b := make([]byte, l)
		b[0] = TypeRelay
		if _, err := CheckLength(b); err != nil {
			t.Errorf("RELAY of %d bytes refused: %v", l, err)
		}
	}
}

// relayOf wraps inner in a RELAY header with id.
func relayOf(id uint32, inner []byte) []byte {
	b := make([]byte, RelayHeaderLen, RelayHeaderLen+len(inner))
	PutRelayHeader(b, id)
	return append(b, inner...)
}

func TestRelayLayoutAndInnerChecks(t *testing.T) {
	data := make([]byte, MinDataLen+5)
	PutHeader(data, Header{Stream: 2, Receiver: 7, Counter: 9})
	m := relayOf(0xa1b2c3d4, data)
	if !bytes.Equal(m[:RelayHeaderLen], []byte{0x06, 0, 0, 0, 0xd4, 0xc3, 0xb2, 0xa1}) {
		t.Fatalf("header % x", m[:RelayHeaderLen])
	}
	if typ, err := CheckLength(m); err != nil || typ != TypeRelay {
		t.Fatalf("CheckLength: %d %v", typ, err)
	}
	id, inner, err := ParseRelay(m)
	if err != nil || id != 0xa1b2c3d4 || !bytes.Equal(inner, data) {
		t.Fatalf("ParseRelay: %x %x %v", id, inner, err)
	}
	hello := make([]byte, HelloLen)
	hello[0], hello[1] = TypeHello, Version
	if _, inner, err := ParseRelay(relayOf(1, hello)); err != nil || len(inner) != HelloLen {
		t.Fatalf("relayed HELLO: %v", err)
	}
	for name, c := range map[string]struct {
		m    []byte
		want error
	}{
		"reserved byte 1":  {func() []byte { b := relayOf(1, data); b[1] = 1; return b }(), ErrReserved},
		"reserved byte 3":  {func() []byte { b := relayOf(1, data); b[3] = 0x80; return b }(), ErrReserved},
		"nested relay":     {relayOf(1, relayOf(2, data)), ErrNested},
		"inner type 0":     {relayOf(1, make([]byte, 40)), ErrType},
		"inner type 0x80":  {relayOf(1, append([]byte{0x80}, make([]byte, 40)...)), ErrType},
		"short inner DATA": {relayOf(1, data[:MinDataLen-1]), ErrShort},
		"HELLO too long":   {relayOf(1, append(bytes.Clone(hello), 0)), ErrLength},
		"HELLO of another version": {func() []byte {
			h := bytes.Clone(hello)
			h[1] = Version + 1
			return relayOf(1, h)
		}(), ErrVersion},
	} {
		if _, _, err := ParseRelay(c.m); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
}

// FuzzParseRelay: ParseRelay never panics, and what it accepts is a well-formed RELAY
// whose inner message passes CheckLength and is no RELAY.
func FuzzParseRelay(f *testing.F) {
	data := make([]byte, MinDataLen)
	PutHeader(data, Header{Receiver: 1})
	f.Add(relayOf(5, data))
	f.Add(relayOf(5, relayOf(6, data)))
	f.Add([]byte{TypeRelay, 1, 0, 0, 1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := CheckLength(b); err != nil || b[0] != TypeRelay {
			return
		}
		id, inner, err := ParseRelay(b)
		if err != nil {
			return
		}
		if b[1]|b[2]|b[3] != 0 || inner[0] == TypeRelay || len(inner) != len(b)-RelayHeaderLen {
			t.Fatalf("accepted % x", b[:RelayHeaderLen])
		}
		if typ, err := CheckLength(inner); err != nil || typ < TypeHello || typ > TypeData {
			t.Fatalf("accepted inner type %d: %v", typ, err)
		}
		_ = id
	})
}

func TestHeaderRoundTripAndLayout(t *testing.T) {
	b := make([]byte, MinDataLen)
	h := Header{Stream: 0x0203, Receiver: 0x04050607, Counter: 0x08090a0b0c0d0e0f}
	PutHeader(b, h)
	want := []byte{TypeData, 0, 0x03, 0x02, 0x07, 0x06, 0x05, 0x04, 0x0f, 0x0e, 0x0d, 0x0c, 0x0b, 0x0a, 0x09, 0x08}
	if !bytes.Equal(b[:HeaderLen], want) {
		t.Fatalf("header bytes %x, want %x (docs/protocol.md section 5)", b[:HeaderLen], want)
	}
	got, err := ParseHeader(b)
	if err != nil || got != h {
		t.Fatalf("round trip: %+v %v", got, err)
	}
}

func TestControlIterStopsAtTruncation(t *testing.T) {
	p := AppendControl(nil, CtlPing, make([]byte, PingBodyLen))
	p = AppendControl(p, CtlAck, []byte{1, 0, 0, 0})
	p = append(p, CtlPong, 50, 0, 1) // says 50 bytes, has 1
	it := NewControlIter(p)
	var types []byte
	for {
		m, ok := it.Next()
		if !ok {
			break
		}
		if err := CheckControlBody(m); err != nil {
			t.Fatalf("valid message %#x refused: %v", m.Type, err)
		}
		types = append(types, m.Type)
	}
	if !bytes.Equal(types, []byte{CtlPing, CtlAck}) || !errors.Is(it.Err(), ErrControlTruncated) {
		t.Fatalf("types %x err %v", types, it.Err())
	}
}

func TestCheckControlBodySizes(t *testing.T) {
	bad := []ControlMsg{
		{CtlFinal, []byte{1}}, {CtlPing, make([]byte, 11)}, {CtlPong, make([]byte, 13)},
		{CtlClose, []byte{1}}, {CtlError, []byte{1}}, {CtlError, make([]byte, 2+MaxErrorReason+1)},
		{CtlStreamOpen, []byte{1, 2, 3}}, {CtlAck, []byte{1}}, {CtlRekey, []byte{0}},
		{CtlReliable, []byte{0, 0, 0, 0, 1, 5, 0}}, // inner claims 5 bytes, has 0
		{CtlReliable, []byte{0, 0, 0}},
	}
	for _, m := range bad {
		if CheckControlBody(m) == nil {
			t.Errorf("type %#x with %d-byte body accepted", m.Type, len(m.Body))
		}
	}
	rel := AppendControl([]byte{7, 0, 0, 0}, 0x80, []byte("ext"))
	if err := CheckControlBody(ControlMsg{CtlReliable, rel}); err != nil {
		t.Fatal(err)
	}
	seq, inner := ParseReliable(rel)
	if seq != 7 || inner.Type != 0x80 || string(inner.Body) != "ext" {
		t.Fatalf("reliable: %d %+v", seq, inner)
	}
}

func FuzzParseHeader(f *testing.F) {
	f.Add(make([]byte, MinDataLen))
	f.Add([]byte{TypeData})
	f.Add(append([]byte{TypeHello}, make([]byte, HelloLen-1)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHeader(b)
		_, lerr := CheckLength(b)
		if err == nil {
			if lerr != nil {
				t.Fatalf("header parsed but length check failed: %v", lerr)
			}
			out := make([]byte, HeaderLen)
			PutHeader(out, h)
			if !bytes.Equal(out[2:], b[2:HeaderLen]) {
				t.Fatalf("header does not round trip")
			}
		}
	})
}

func FuzzControl(f *testing.F) {
	f.Add(AppendControl(nil, CtlPing, make([]byte, PingBodyLen)))
	f.Add(AppendControl(nil, CtlReliable, AppendControl([]byte{1, 0, 0, 0}, CtlStreamOpen, []byte{3, 0})))
	f.Add([]byte{CtlReliable, 7, 0, 0, 0, 0, 0, 0x80, 0xff, 0xff})
	f.Add([]byte{0x80, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		it := NewControlIter(b)
		consumed := 0
		for {
			m, ok := it.Next()
			if !ok {
				break
			}
			consumed += ControlHeaderLen + len(m.Body)
			if CheckControlBody(m) == nil && m.Type == CtlReliable {
				_, inner := ParseReliable(m.Body)
				_ = CheckControlBody(inner)
			}
		}
		if it.Err() == nil && consumed != len(b) {
			t.Fatalf("iteration ended cleanly after %d of %d bytes", consumed, len(b))
		}
	})
}
