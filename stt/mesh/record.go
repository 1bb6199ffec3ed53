package mesh

// record.go is the signed member record: its Go form, its wire layout (docs/protocol.md,
// "Member records"), signing, and the parser that checks every field, the signature and
// the validity period of a record received from anyone.

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// EndpointKind says where a candidate endpoint comes from.
type EndpointKind uint8

// Endpoint kinds.
const (
	EndpointLocal      EndpointKind = 1 // an address of one of the member's interfaces
	EndpointObserved   EndpointKind = 2 // an address another member saw it come from
	EndpointConfigured EndpointKind = 3 // configured by its administrator (a port forward)
)

// Endpoint is a UDP address a member may be reached at.
type Endpoint struct {
	Kind EndpointKind
	Addr netip.AddrPort
}

// Record is a member's signed description of itself. A parsed Record is shared and must
// not be modified.
type Record struct {
	Version    uint64    // owner's signing time, unix ns; higher wins
	Expires    time.Time // unix seconds on the wire
	Name       string    // 1..32 bytes, no spaces or control characters
	SigningKey ed25519.PublicKey
	Key        [32]byte       // X25519, derived from SigningKey; not on the wire
	Addresses  []netip.Prefix // its interface addresses with their prefix length (≤ 8)
	Prefixes   []netip.Prefix // prefixes it serves, masked (≤ 16)
	Endpoints  []Endpoint     // candidates (≤ 8)
	WSURL      string         // ≤ 200 bytes, ws:// or wss://, "" = none
	Relay      bool           // offers to relay (part 2)
}

// Limits of a record.
const (
	MaxRecordLen    = 1024
	MaxNameLen      = 32
	MaxAddresses    = 8
	MaxPrefixes     = 16
	MaxEndpoints    = 8
	MaxWSURLLen     = 200
	MaxLifetime     = 24 * time.Hour  // the furthest ahead a record's expiry may be …
	MaxClockSkew    = 5 * time.Minute // … plus this much clock difference
	recordHeaderLen = 56              // magic through signing key
	recordFormat    = 1
	flagRelay       = 0x01
)

// The record's magic and the label its signature starts with.
const (
	recordMagic    = "STTR"
	recordSigLabel = "stt-tun member record v1\x00"
)

// Errors of ParseRecord (and Marshal, for ErrRecordTooLarge and ErrRecordMalformed).
var (
	ErrRecordSignature = errors.New("mesh: record signature does not verify")
	ErrRecordExpired   = errors.New("mesh: record expired")
	ErrRecordTooLarge  = errors.New("mesh: record too large")
	ErrRecordMalformed = errors.New("mesh: record malformed")
	ErrRecordFuture    = errors.New("mesh: record expires too far in the future")
)

func malformed(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrRecordMalformed}, a...)...)
}

// checkRecordName applies the rules of config node names.
func checkRecordName(s string) error {
	switch {
	case s == "" || len(s) > MaxNameLen:
		return malformed("name length %d", len(s))
	case !utf8.ValidString(s):
		return malformed("name not UTF-8")
	case strings.ContainsFunc(s, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }):
		return malformed("name has spaces or control characters")
	}
	return nil
}

func checkWSURL(s string) error {
	if s == "" {
		return nil
	}
	if len(s) > MaxWSURLLen {
		return malformed("ws url length %d", len(s))
	}
	if !strings.HasPrefix(s, "ws://") && !strings.HasPrefix(s, "wss://") {
		return malformed("ws url scheme")
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return malformed("ws url byte %#x", s[i])
		}
	}
	return nil
}

func checkAddr(a netip.Addr) error {
	if !a.IsValid() || a.Is4In6() || a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() {
		return malformed("address %v", a)
	}
	return nil
}

// checkPrefix: masked says the address must have no bits beyond the length (a served
// prefix); an interface address keeps its host bits.
func checkPrefix(p netip.Prefix, masked bool) error {
	if !p.IsValid() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
		return malformed("prefix %v", p)
	}
	if masked && p.Masked() != p {
		return malformed("prefix %v not masked", p)
	}
	if !masked {
		if err := checkAddr(p.Addr()); err != nil {
			return err
		}
	}
	return nil
}

func checkEndpoint(e Endpoint) error {
	if e.Kind < EndpointLocal || e.Kind > EndpointConfigured {
		return malformed("endpoint kind %d", e.Kind)
	}
	if e.Addr.Port() == 0 {
		return malformed("endpoint port 0")
	}
	return checkAddr(e.Addr.Addr())
}

// check applies every bound and rule to the content of r (not to its keys).
func (r *Record) check() error {
	if err := checkRecordName(r.Name); err != nil {
		return err
	}
	if len(r.Addresses) > MaxAddresses || len(r.Prefixes) > MaxPrefixes || len(r.Endpoints) > MaxEndpoints {
		return fmt.Errorf("%w: %d addresses, %d prefixes, %d endpoints (limits %d, %d, %d)", ErrRecordTooLarge,
			len(r.Addresses), len(r.Prefixes), len(r.Endpoints), MaxAddresses, MaxPrefixes, MaxEndpoints)
	}
	for _, p := range r.Addresses {
		if err := checkPrefix(p, false); err != nil {
			return err
		}
	}
	for _, p := range r.Prefixes {
		if err := checkPrefix(p, true); err != nil {
			return err
		}
	}
	for _, e := range r.Endpoints {
		if err := checkEndpoint(e); err != nil {
			return err
		}
	}
	if len(r.WSURL) > MaxWSURLLen {
		return fmt.Errorf("%w: ws url %d bytes (limit %d)", ErrRecordTooLarge, len(r.WSURL), MaxWSURLLen)
	}
	if err := checkWSURL(r.WSURL); err != nil {
		return err
	}
	if r.Version == 0 {
		return malformed("version 0")
	}
	if r.Expires.Unix() <= 0 {
		return malformed("no expiry")
	}
	return nil
}

func appendAddr(b []byte, a netip.Addr) []byte {
	if a.Is4() {
		b = append(b, 4)
		a4 := a.As4()
		return append(b, a4[:]...)
	}
	b = append(b, 6)
	a16 := a.As16()
	return append(b, a16[:]...)
}

func appendPrefixes(b []byte, ps []netip.Prefix) []byte {
	b = append(b, byte(len(ps)))
	for _, p := range ps {
		b = appendAddr(b, p.Addr())
		b = append(b, byte(p.Bits()))
	}
	return b
}

// Marshal signs r with id for the network netID and returns the record's bytes. It sets
// r.SigningKey and r.Key from id. Version and Expires are the caller's to set.
func (r *Record) Marshal(id Identity, netID [16]byte) ([]byte, error) {
	r.SigningKey = id.Signing.Public().(ed25519.PublicKey)
	r.Key = id.Public
	if err := r.check(); err != nil {
		return nil, err
	}
	b := make([]byte, 0, 512)
	b = append(b, recordMagic...)
	var flags byte
	if r.Relay {
		flags |= flagRelay
	}
	b = append(b, recordFormat, flags, 0, 0)
	b = binary.LittleEndian.AppendUint64(b, r.Version)
	b = binary.LittleEndian.AppendUint64(b, uint64(r.Expires.Unix()))
	b = append(b, r.SigningKey...)
	b = append(b, byte(len(r.Name)))
	b = append(b, r.Name...)
	b = appendPrefixes(b, r.Addresses)
	b = appendPrefixes(b, r.Prefixes)
	b = append(b, byte(len(r.Endpoints)))
	for _, e := range r.Endpoints {
		b = append(b, byte(e.Kind))
		b = appendAddr(b, e.Addr.Addr())
		b = binary.LittleEndian.AppendUint16(b, e.Addr.Port())
	}
	b = append(b, byte(len(r.WSURL)))
	b = append(b, r.WSURL...)
	if len(b)+ed25519.SignatureSize > MaxRecordLen {
		return nil, fmt.Errorf("%w: %d bytes", ErrRecordTooLarge, len(b)+ed25519.SignatureSize)
	}
	msg := signedMessage(make([]byte, 0, len(recordSigLabel)+16+len(b)), netID, b)
	return append(b, ed25519.Sign(id.Signing, msg)...), nil
}

func signedMessage(dst []byte, netID [16]byte, body []byte) []byte {
	dst = append(dst, recordSigLabel...)
	dst = append(dst, netID[:]...)
	return append(dst, body...)
}

// reader walks a byte slice; any read past the end sets bad.
type reader struct {
	b   []byte
	bad bool
}

func (r *reader) take(n int) []byte {
	if r.bad || n > len(r.b) {
		r.bad = true
		return nil
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

func (r *reader) u8() byte {
	if p := r.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (r *reader) u16() uint16 {
	if p := r.take(2); p != nil {
		return binary.LittleEndian.Uint16(p)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if p := r.take(8); p != nil {
		return binary.LittleEndian.Uint64(p)
	}
	return 0
}

func (r *reader) addr() netip.Addr {
	switch r.u8() {
	case 4:
		if p := r.take(4); p != nil {
			return netip.AddrFrom4([4]byte(p))
		}
	case 6:
		if p := r.take(16); p != nil {
			return netip.AddrFrom16([16]byte(p))
		}
	default:
		r.bad = true
	}
	return netip.Addr{}
}

func (r *reader) prefixes(max int, masked bool) ([]netip.Prefix, error) {
	n := int(r.u8())
	if r.bad {
		return nil, malformed("truncated")
	}
	if n > max {
		return nil, malformed("%d prefixes (limit %d)", n, max)
	}
	if n == 0 {
		return nil, nil
	}
	out := make([]netip.Prefix, 0, n)
	for range n {
		a := r.addr()
		bits := int(r.u8())
		if r.bad {
			return nil, malformed("truncated")
		}
		if bits > a.BitLen() {
			return nil, malformed("prefix length %d", bits)
		}
		p := netip.PrefixFrom(a, bits)
		if err := checkPrefix(p, masked); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// ParseRecord parses and verifies a record received for the network netID at time now:
// layout, bounds, the signing key, the signature, and the validity period. Errors wrap
// one of the ErrRecord* values.
func ParseRecord(b []byte, netID [16]byte, now time.Time) (*Record, error) {
	if len(b) > MaxRecordLen {
		return nil, fmt.Errorf("%w: %d bytes", ErrRecordTooLarge, len(b))
	}
	if len(b) < recordHeaderLen+1+1+3+1+ed25519.SignatureSize {
		return nil, malformed("%d bytes", len(b))
	}
	body, sig := b[:len(b)-ed25519.SignatureSize], b[len(b)-ed25519.SignatureSize:]
	rd := reader{b: body}
	if !bytes.Equal(rd.take(4), []byte(recordMagic)) {
		return nil, malformed("magic")
	}
	if f := rd.u8(); f != recordFormat {
		return nil, malformed("format %d", f)
	}
	flags := rd.u8()
	if flags&^flagRelay != 0 {
		return nil, malformed("flags %#x", flags)
	}
	if rd.u16() != 0 {
		return nil, malformed("reserved")
	}
	r := &Record{Relay: flags&flagRelay != 0}
	r.Version = rd.u64()
	exp := rd.u64()
	if exp == 0 || exp > 1<<40 {
		return nil, malformed("expiry %d", exp)
	}
	r.Expires = time.Unix(int64(exp), 0)
	r.SigningKey = ed25519.PublicKey(bytes.Clone(rd.take(ed25519.PublicKeySize)))
	r.Name = string(rd.take(int(rd.u8())))
	if rd.bad {
		return nil, malformed("truncated")
	}
	if err := checkRecordName(r.Name); err != nil {
		return nil, err
	}
	var err error
	if r.Addresses, err = rd.prefixes(MaxAddresses, false); err != nil {
		return nil, err
	}
	if r.Prefixes, err = rd.prefixes(MaxPrefixes, true); err != nil {
		return nil, err
	}
	n := int(rd.u8())
	if n > MaxEndpoints {
		return nil, malformed("%d endpoints (limit %d)", n, MaxEndpoints)
	}
	if n > 0 {
		r.Endpoints = make([]Endpoint, 0, n)
	}
	for range n {
		k := EndpointKind(rd.u8())
		a := rd.addr()
		port := rd.u16()
		if rd.bad {
			return nil, malformed("truncated")
		}
		e := Endpoint{Kind: k, Addr: netip.AddrPortFrom(a, port)}
		if err := checkEndpoint(e); err != nil {
			return nil, err
		}
		r.Endpoints = append(r.Endpoints, e)
	}
	r.WSURL = string(rd.take(int(rd.u8())))
	if rd.bad {
		return nil, malformed("truncated")
	}
	if len(rd.b) != 0 {
		return nil, malformed("%d bytes before the signature not part of the record", len(rd.b))
	}
	if err := checkWSURL(r.WSURL); err != nil {
		return nil, err
	}
	if r.Version == 0 {
		return nil, malformed("version 0")
	}
	if r.Key, err = X25519FromSigningKey(r.SigningKey); err != nil {
		return nil, malformed("signing key: %v", err)
	}
	var buf [len(recordSigLabel) + 16 + MaxRecordLen]byte
	if !ed25519.Verify(r.SigningKey, signedMessage(buf[:0], netID, body), sig) {
		return nil, ErrRecordSignature
	}
	if !now.Before(r.Expires) {
		return nil, ErrRecordExpired
	}
	if r.Expires.After(now.Add(MaxLifetime + MaxClockSkew)) {
		return nil, ErrRecordFuture
	}
	return r, nil
}
