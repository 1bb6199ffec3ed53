package ws

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// recordHeaderLen is the size of a record's length prefix.
const recordHeaderLen = 2

// MaxRecordLen is the largest record the 2-byte length prefix can describe.
const MaxRecordLen = 65535

// ErrBadRecord reports a malformed message: a record of length 0, a record longer than
// the receive buffers allow, or a record (or its length) running past the message end.
var ErrBadRecord = errors.New("ws: malformed record")

// appendRecord appends frame to dst as one record. The caller checks
// 1 <= len(frame) <= MaxRecordLen.
func appendRecord(dst, frame []byte) []byte {
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(frame)))
	return append(dst, frame...)
}

// recordReader splits messages into records, reading each record straight into a
// receive buffer: record i of a batch lands at bufs[i][offset:offset+sizes[i]].
// Buffers are allocated on first use, so a connection that only ever sees small
// batches holds only a few.
type recordReader struct {
	bufs    [][]byte // len = the largest batch; entries allocated lazily
	sizes   []int
	offset  int
	bufSize int
	hdr     [recordHeaderLen]byte
}

func newRecordReader(batch, offset, bufSize int) *recordReader {
	return &recordReader{
		bufs:    make([][]byte, batch),
		sizes:   make([]int, batch),
		offset:  offset,
		bufSize: bufSize,
	}
}

// readMessage reads every record of one message from r, which returns io.EOF at the
// message end. Whenever limit records are held (limit <= len(rr.bufs)), and once at the
// end if any are left, it calls flush(n): records 0..n-1 are ready and the buffers are
// reused once flush returns. It returns the number of records read. On a malformed
// message it returns an error wrapping ErrBadRecord, and records not yet flushed are
// dropped; any other error comes from r.
func (rr *recordReader) readMessage(r io.Reader, limit int, flush func(n int)) (int, error) {
	maxLen := rr.bufSize - rr.offset
	n, total := 0, 0
	for {
		_, err := io.ReadFull(r, rr.hdr[:])
		if err == io.EOF {
			break
		}
		if err == io.ErrUnexpectedEOF {
			return total, fmt.Errorf("%w: length prefix cut by the message end", ErrBadRecord)
		}
		if err != nil {
			return total, err
		}
		l := int(binary.LittleEndian.Uint16(rr.hdr[:]))
		if l == 0 {
			return total, fmt.Errorf("%w: record %d has length 0", ErrBadRecord, total)
		}
		if l > maxLen {
			return total, fmt.Errorf("%w: record %d has length %d, limit %d", ErrBadRecord, total, l, maxLen)
		}
		b := rr.bufs[n]
		if b == nil {
			b = make([]byte, rr.bufSize)
			rr.bufs[n] = b
		}
		if _, err := io.ReadFull(r, b[rr.offset:rr.offset+l]); err != nil {
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return total, fmt.Errorf("%w: record %d of length %d runs past the message end", ErrBadRecord, total, l)
			}
			return total, err
		}
		rr.sizes[n] = l
		n++
		total++
		if n >= limit {
			flush(n)
			n = 0
		}
	}
	if n > 0 {
		flush(n)
	}
	return total, nil
}
