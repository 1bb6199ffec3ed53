package ws

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// encodeRecords builds a message from frames.
func encodeRecords(frames ...[]byte) []byte {
	var b []byte
	for _, f := range frames {
		b = appendRecord(b, f)
	}
	return b
}

// splitAll runs readMessage over msg and returns copies of the records it delivered and
// the sizes of the batches.
func splitAll(t testing.TB, r io.Reader, offset, bufSize, limit int) ([][]byte, []int, error) {
	t.Helper()
	rr := newRecordReader(limit, offset, bufSize)
	var recs [][]byte
	var batches []int
	n, err := rr.readMessage(r, limit, func(n int) {
		batches = append(batches, n)
		for i := range n {
			if len(rr.bufs[i]) != bufSize {
				t.Fatalf("buffer %d has %d bytes, want %d", i, len(rr.bufs[i]), bufSize)
			}
			recs = append(recs, bytes.Clone(rr.bufs[i][offset:offset+rr.sizes[i]]))
		}
	})
	if err == nil && n != len(recs) {
		t.Fatalf("readMessage returned %d records, delivered %d", n, len(recs))
	}
	return recs, batches, err
}

func TestRecordReader(t *testing.T) {
	big := bytes.Repeat([]byte{0xAB}, 100)
	cases := []struct {
		name    string
		msg     []byte
		want    [][]byte
		badRecd bool
	}{
		{"empty message", nil, nil, false},
		{"one", encodeRecords([]byte("hello")), [][]byte{[]byte("hello")}, false},
		{"several", encodeRecords([]byte("a"), []byte("bc"), big[:60], []byte("d"), []byte("e")),
			[][]byte{[]byte("a"), []byte("bc"), big[:60], []byte("d"), []byte("e")}, false},
		{"max length", encodeRecords(big[:64]), [][]byte{big[:64]}, false},
		{"length zero", []byte{0, 0}, nil, true},
		{"zero after good", append(encodeRecords([]byte("x")), 0, 0), nil, true},
		{"too long", encodeRecords(big[:65]), nil, true},
		{"past end", []byte{5, 0, 1, 2, 3}, nil, true},
		{"cut length", append(encodeRecords([]byte("x")), 7), nil, true},
		{"length only", []byte{1, 0}, nil, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, r := range []io.Reader{bytes.NewReader(tc.msg), iotest.OneByteReader(bytes.NewReader(tc.msg))} {
				recs, batches, err := splitAll(t, r, 16, 16+64, 2)
				if tc.badRecd {
					if !errors.Is(err, ErrBadRecord) {
						t.Fatalf("err = %v, want ErrBadRecord", err)
					}
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				if len(recs) != len(tc.want) {
					t.Fatalf("got %d records, want %d", len(recs), len(tc.want))
				}
				for i := range recs {
					if !bytes.Equal(recs[i], tc.want[i]) {
						t.Fatalf("record %d = %x, want %x", i, recs[i], tc.want[i])
					}
				}
				for _, n := range batches {
					if n < 1 || n > 2 {
						t.Fatalf("batch of %d records, limit 2", n)
					}
				}
			}
		})
	}
}

func TestRecordReaderPassesErrors(t *testing.T) {
	boom := errors.New("boom")
	msg := encodeRecords([]byte("abc"), []byte("defg"))
	for cut := range len(msg) {
		r := io.MultiReader(bytes.NewReader(msg[:cut]), iotest.ErrReader(boom))
		_, _, err := splitAll(t, r, 0, 100, 4)
		if !errors.Is(err, boom) {
			t.Fatalf("cut at %d: err = %v, want the reader's error", cut, err)
		}
	}
}

func TestRecordReaderAllocs(t *testing.T) {
	msg := encodeRecords(bytes.Repeat([]byte{1}, 1400), bytes.Repeat([]byte{2}, 60), bytes.Repeat([]byte{3}, 1200))
	rr := newRecordReader(8, 16, 16+MaxRecordLen)
	r := bytes.NewReader(msg)
	flush := func(int) {}
	if _, err := rr.readMessage(r, 8, flush); err != nil { // allocates the buffers
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		r.Reset(msg)
		if _, err := rr.readMessage(r, 8, flush); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("readMessage allocates %.1f times per message", allocs)
	}
}

// FuzzRecords checks the record splitter on arbitrary messages: it either rejects the
// message with ErrBadRecord or splits it into records that are all in range and that
// re-encode to exactly the input, in batches of at most the limit, and reading the
// message one byte at a time gives the same answer.
func FuzzRecords(f *testing.F) {
	f.Add([]byte{}, uint8(4), uint16(100))
	f.Add(encodeRecords([]byte("hello"), []byte("world")), uint8(1), uint16(100))
	f.Add([]byte{0, 0}, uint8(3), uint16(10))
	f.Add([]byte{3, 0, 1, 2}, uint8(3), uint16(10))
	f.Add([]byte{0xff, 0xff}, uint8(2), uint16(65535))
	f.Add(append(encodeRecords(bytes.Repeat([]byte{9}, 300)), 1), uint8(2), uint16(300))
	f.Fuzz(func(t *testing.T, msg []byte, limit8 uint8, max16 uint16) {
		limit := int(limit8%8) + 1
		maxLen := int(max16)%2048 + 1
		const offset = 3
		recs, batches, err := splitAll(t, bytes.NewReader(msg), offset, offset+maxLen, limit)
		recs1, _, err1 := splitAll(t, iotest.OneByteReader(bytes.NewReader(msg)), offset, offset+maxLen, limit)
		if (err == nil) != (err1 == nil) {
			t.Fatalf("whole: %v, byte by byte: %v", err, err1)
		}
		if err != nil {
			if !errors.Is(err, ErrBadRecord) || !errors.Is(err1, ErrBadRecord) {
				t.Fatalf("errors %v, %v are not ErrBadRecord", err, err1)
			}
			// A rejected message must really be malformed: walk it.
			ok := true
			for rest := msg; len(rest) > 0; {
				if len(rest) < 2 {
					ok = false
					break
				}
				l := int(binary.LittleEndian.Uint16(rest))
				if l == 0 || l > maxLen || 2+l > len(rest) {
					ok = false
					break
				}
				rest = rest[2+l:]
			}
			if ok {
				t.Fatalf("well-formed message rejected: %v", err)
			}
			return
		}
		if len(recs) != len(recs1) {
			t.Fatalf("whole: %d records, byte by byte: %d", len(recs), len(recs1))
		}
		for i, r := range recs {
			if len(r) < 1 || len(r) > maxLen {
				t.Fatalf("record %d has length %d, limit %d", i, len(r), maxLen)
			}
			if !bytes.Equal(r, recs1[i]) {
				t.Fatalf("record %d differs between readers", i)
			}
		}
		if got := encodeRecords(recs...); !bytes.Equal(got, msg) {
			t.Fatalf("re-encoded %x, input %x", got, msg)
		}
		total := 0
		for _, n := range batches {
			if n < 1 || n > limit {
				t.Fatalf("batch of %d, limit %d", n, limit)
			}
			total += n
		}
		if total != len(recs) {
			t.Fatalf("batches hold %d records, want %d", total, len(recs))
		}
	})
}
