package wire

import "testing"

// sink keeps the compiler from optimising the benchmarks' work away.
var sink uint64

// BenchmarkHeader writes and parses a data frame's header, as every frame sent and
// received does.
func BenchmarkHeader(b *testing.B) {
	frame := make([]byte, HeaderLen+1420+TagLen)
	b.SetBytes(HeaderLen)
	b.ReportAllocs()
	for i := range b.N {
		PutHeader(frame, Header{Stream: 7, Receiver: 0x11223344, Counter: uint64(i)})
		if _, err := CheckLength(frame); err != nil {
			b.Fatal(err)
		}
		h, err := ParseHeader(frame)
		if err != nil {
			b.Fatal(err)
		}
		sink += h.Counter
	}
}

// BenchmarkControl builds and walks a control payload of the usual shape: a PING, an
// ACK and a reliable message.
func BenchmarkControl(b *testing.B) {
	buf := make([]byte, 0, 128)
	ping := make([]byte, PingBodyLen)
	ack := make([]byte, 4)
	rel := AppendControl([]byte{1, 0, 0, 0}, 0x81, []byte("extension"))
	b.ReportAllocs()
	for range b.N {
		p := AppendControl(buf[:0], CtlPing, ping)
		p = AppendControl(p, CtlAck, ack)
		p = AppendControl(p, CtlReliable, rel)
		it := NewControlIter(p)
		for m, ok := it.Next(); ok; m, ok = it.Next() {
			if err := CheckControlBody(m); err != nil {
				b.Fatal(err)
			}
			sink += uint64(m.Type)
		}
		if it.Err() != nil {
			b.Fatal(it.Err())
		}
	}
}
