package offheap

import (
	"bytes"
	"testing"
)

// TestBuffersAreSeparateAndZero: each buffer has the size asked for as its length and
// capacity, starts zero, and filling one leaves its neighbours alone; an append past
// a buffer's end moves it rather than writing into the next one.
func TestBuffersAreSeparateAndZero(t *testing.T) {
	const n, size = 5, 3000 // not a multiple of the page size
	bufs, release := Buffers(n, size)
	defer release()
	if len(bufs) != n {
		t.Fatalf("%d buffers, want %d", len(bufs), n)
	}
	for i, b := range bufs {
		if len(b) != size || cap(b) != size {
			t.Fatalf("buffer %d: len %d cap %d, want %d", i, len(b), cap(b), size)
		}
		if !bytes.Equal(b, make([]byte, size)) {
			t.Fatalf("buffer %d is not zero", i)
		}
	}
	for i := range bufs {
		for j := range bufs[i] {
			bufs[i][j] = byte(i + 1)
		}
	}
	grown := append(bufs[1], 0xEE)
	grown[0] = 0xDD
	for i, b := range bufs {
		if !bytes.Equal(b, bytes.Repeat([]byte{byte(i + 1)}, size)) {
			t.Fatalf("buffer %d was written through another", i)
		}
	}
}

// TestReleaseTwiceAndEmpty: release may be called again, and asking for no buffers
// (or buffers of no size) gives a usable answer.
func TestReleaseTwiceAndEmpty(t *testing.T) {
	_, release := Buffers(2, 4096)
	release()
	release()
	if bufs, release := Buffers(0, 4096); len(bufs) != 0 {
		t.Fatalf("%d buffers for n = 0", len(bufs))
	} else {
		release()
	}
	bufs, release := Buffers(3, 0)
	defer release()
	if len(bufs) != 3 || len(bufs[0]) != 0 {
		t.Fatalf("n = 3, size 0: got %d buffers", len(bufs))
	}
}
