package mesh

// messages.go encodes and parses the gossip messages, the bodies of STT control
// messages of the extension range (docs/protocol.md, "Member records and gossip"). Every
// parser takes hostile input: it checks exact lengths and bounds and never allocates
// more than its input justifies.

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// Control message types of the gossip protocol.
const (
	MsgSummary  byte = 0x80 // count and hash of the records held
	MsgDigest   byte = 0x81 // (key, version) of the records held, in chunks
	MsgWant     byte = 0x82 // keys whose records the sender wants
	MsgRecords  byte = 0x83 // records
	MsgObserve  byte = 0x84 // "tell me the address you see me from"
	MsgObserved byte = 0x85 // the answer to OBSERVE
)

// Size limits of message bodies.
const (
	MaxDigestBody  = 1100
	MaxWantBody    = 1100
	MaxRecordsBody = 1200
	// PackBudget is the most a sender packs into one RECORDS or STATEMENTS message (the
	// parsers accept up to the limits above): the control frame carrying it must fit the
	// smallest path stt-tun supports, a 1280-byte IPv6 packet through a relay (1280 − 40
	// IPv6 − 8 UDP − 8 RELAY − 32 STT = 1192 bytes of frame payload, less the control
	// and reliable headers). A node sends with Don't Fragment and never fragments, and a
	// reliable message that cannot be sent stops every later one to that member.
	PackBudget       = 1150
	summaryLen       = 20
	digestEntryLen   = 40
	MaxDigestEntries = (MaxDigestBody - 3) / digestEntryLen // 27
	MaxWantKeys      = (MaxWantBody - 2) / 32               // 34
)

// Transports of an OBSERVED message.
const (
	TransportUDP       = 1
	TransportWebSocket = 2
)

// ErrMessageMalformed is the error of every message parser.
var ErrMessageMalformed = errors.New("mesh: malformed gossip message")

func badMsg(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMessageMalformed}, a...)...)
}

// Summary is the body of SUMMARY: how many records the sender holds (its own included)
// and a hash of their (key, version) set.
type Summary struct {
	Count uint32
	Hash  [16]byte
}

// DigestEntry names one record: its owner's X25519 key and its version.
type DigestEntry struct {
	Key     [32]byte
	Version uint64
}

// SummaryOf computes the summary of a set of entries sorted by key (strictly
// increasing): the count, and SHA-256 of the concatenated key || version (LE 8 bytes),
// cut to 16 bytes.
func SummaryOf(sorted []DigestEntry) Summary {
	h := sha256.New()
	var buf [digestEntryLen]byte
	for _, e := range sorted {
		copy(buf[:32], e.Key[:])
		binary.LittleEndian.PutUint64(buf[32:], e.Version)
		h.Write(buf[:])
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return Summary{Count: uint32(len(sorted)), Hash: [16]byte(sum[:16])}
}

// AppendSummary appends the body of SUMMARY.
func AppendSummary(b []byte, s Summary) []byte {
	b = binary.LittleEndian.AppendUint32(b, s.Count)
	return append(b, s.Hash[:]...)
}

// ParseSummary parses the body of SUMMARY.
func ParseSummary(b []byte) (Summary, error) {
	if len(b) != summaryLen {
		return Summary{}, badMsg("summary of %d bytes", len(b))
	}
	return Summary{Count: binary.LittleEndian.Uint32(b), Hash: [16]byte(b[4:20])}, nil
}

// AppendDigest appends the body of one DIGEST chunk; last marks the final chunk of a
// digest. At most MaxDigestEntries entries fit.
func AppendDigest(b []byte, last bool, entries []DigestEntry) ([]byte, error) {
	if len(entries) > MaxDigestEntries {
		return b, badMsg("%d digest entries (limit %d)", len(entries), MaxDigestEntries)
	}
	var flags byte
	if last {
		flags = 1
	}
	b = append(b, flags)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(entries)))
	for _, e := range entries {
		b = append(b, e.Key[:]...)
		b = binary.LittleEndian.AppendUint64(b, e.Version)
	}
	return b, nil
}

// ParseDigest parses a DIGEST chunk, appending its entries to dst.
func ParseDigest(b []byte, dst []DigestEntry) (last bool, entries []DigestEntry, err error) {
	if len(b) < 3 || len(b) > MaxDigestBody {
		return false, dst, badMsg("digest of %d bytes", len(b))
	}
	if b[0]&^1 != 0 {
		return false, dst, badMsg("digest flags %#x", b[0])
	}
	n := int(binary.LittleEndian.Uint16(b[1:]))
	if n > MaxDigestEntries || len(b) != 3+n*digestEntryLen {
		return false, dst, badMsg("digest of %d entries in %d bytes", n, len(b))
	}
	for p := b[3:]; len(p) > 0; p = p[digestEntryLen:] {
		dst = append(dst, DigestEntry{Key: [32]byte(p[:32]), Version: binary.LittleEndian.Uint64(p[32:])})
	}
	return b[0]&1 != 0, dst, nil
}

// AppendWant appends the body of WANT; at most MaxWantKeys keys fit.
func AppendWant(b []byte, keys [][32]byte) ([]byte, error) {
	if len(keys) > MaxWantKeys {
		return b, badMsg("%d wanted keys (limit %d)", len(keys), MaxWantKeys)
	}
	b = binary.LittleEndian.AppendUint16(b, uint16(len(keys)))
	for _, k := range keys {
		b = append(b, k[:]...)
	}
	return b, nil
}

// ParseWant parses the body of WANT, appending its keys to dst.
func ParseWant(b []byte, dst [][32]byte) ([][32]byte, error) {
	if len(b) < 2 || len(b) > MaxWantBody {
		return dst, badMsg("want of %d bytes", len(b))
	}
	n := int(binary.LittleEndian.Uint16(b))
	if n > MaxWantKeys || len(b) != 2+32*n {
		return dst, badMsg("want of %d keys in %d bytes", n, len(b))
	}
	for p := b[2:]; len(p) > 0; p = p[32:] {
		dst = append(dst, [32]byte(p[:32]))
	}
	return dst, nil
}

// AppendRecords appends the body of RECORDS carrying the given marshalled records; the
// body must stay within MaxRecordsBody.
func AppendRecords(b []byte, recs ...[]byte) ([]byte, error) {
	size := 1
	for _, r := range recs {
		if len(r) == 0 || len(r) > MaxRecordLen {
			return b, badMsg("record of %d bytes", len(r))
		}
		size += 2 + len(r)
	}
	if len(recs) > 255 || size > MaxRecordsBody {
		return b, badMsg("records body of %d bytes (limit %d)", size, MaxRecordsBody)
	}
	b = append(b, byte(len(recs)))
	for _, r := range recs {
		b = binary.LittleEndian.AppendUint16(b, uint16(len(r)))
		b = append(b, r...)
	}
	return b, nil
}

// ParseRecords splits the body of RECORDS into its records (sub-slices of b, not
// copies), appended to dst. The records themselves are not parsed.
func ParseRecords(b []byte, dst [][]byte) ([][]byte, error) {
	if len(b) < 1 || len(b) > MaxRecordsBody {
		return dst, badMsg("records of %d bytes", len(b))
	}
	n := int(b[0])
	p := b[1:]
	for i := 0; i < n; i++ {
		if len(p) < 2 {
			return dst, badMsg("records truncated")
		}
		l := int(binary.LittleEndian.Uint16(p))
		if l == 0 || l > MaxRecordLen || l > len(p)-2 {
			return dst, badMsg("record %d of %d bytes", i, l)
		}
		dst = append(dst, p[2:2+l])
		p = p[2+l:]
	}
	if len(p) != 0 {
		return dst, badMsg("%d bytes after the records", len(p))
	}
	return dst, nil
}

// ParseObserve checks the body of OBSERVE, which is empty.
func ParseObserve(b []byte) error {
	if len(b) != 0 {
		return badMsg("observe of %d bytes", len(b))
	}
	return nil
}

// Observed is the body of OBSERVED: the address the sender of OBSERVE was seen from, and
// over which transport.
type Observed struct {
	Transport uint8 // TransportUDP or TransportWebSocket
	Addr      netip.AddrPort
}

// AppendObserved appends the body of OBSERVED. An IPv4-mapped IPv6 address (a
// dual-stack socket's view of an IPv4 sender) goes on the wire as IPv4.
func AppendObserved(b []byte, o Observed) ([]byte, error) {
	a := o.Addr.Addr().Unmap()
	if (o.Transport != TransportUDP && o.Transport != TransportWebSocket) || !a.IsValid() || o.Addr.Port() == 0 {
		return b, badMsg("observed %d %v", o.Transport, o.Addr)
	}
	b = append(b, o.Transport)
	b = appendAddr(b, a)
	return binary.LittleEndian.AppendUint16(b, o.Addr.Port()), nil
}

// ParseObserved parses the body of OBSERVED.
func ParseObserved(b []byte) (Observed, error) {
	rd := reader{b: b}
	t := rd.u8()
	a := rd.addr()
	port := rd.u16()
	if rd.bad || len(rd.b) != 0 {
		return Observed{}, badMsg("observed of %d bytes", len(b))
	}
	if t != TransportUDP && t != TransportWebSocket {
		return Observed{}, badMsg("observed transport %d", t)
	}
	if port == 0 || a.IsUnspecified() || a.IsMulticast() || a.Is4In6() {
		return Observed{}, badMsg("observed address %v port %d", a, port)
	}
	return Observed{Transport: t, Addr: netip.AddrPortFrom(a, port)}, nil
}
