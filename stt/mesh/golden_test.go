package mesh

import (
	"crypto/ed25519"
	"encoding/hex"
	"net/netip"
	"testing"
)

// The vectors of docs/protocol.md, "Member records and gossip": inputs in helpers_test.go.
const (
	goldenNetID      = "06bf2be6b984bb6b212c9f4594c5a35b"
	goldenX25519Pub  = "f14b5173130a1b80687f273d49e8f4740a793a949b83b105837f2a61e8fee14f"
	goldenPrefix     = "fda4:e101:642c::/48"
	goldenMemberAddr = "fda4:e101:642c:0:53da:2d48:8393:7d56"
	goldenRecord     = "53545452010000000000faed5172861808c05569000000002543b92ff1095511476adc8369db6ddc933665a11978dda1404ee1066ca9559d05616c70686101040a630001180204c0a80a00180620010db800100000000000000000000030020104c0000201bcca030620010db8000000000000000000000001bcca177773733a2f2f616c7068612e6578616d706c652f7374740d67ed82feced63487aec41a735fb36b86c14ac466a6065ac97b7cddb68b3017b3d88b2ac4b52501e6dcb33261d0b080bd1eb210ebf53a7676ce9aac10be9708"
	goldenSummary    = "020000003ce36e853b24a7e32b559d3be0c4881e"
	goldenDigest     = "010200f14b5173130a1b80687f273d49e8f4740a793a949b83b105837f2a61e8fee14f0000faed51728618ee000000000000000000000000000000000000000000000000000000000000010700000000000000"
	goldenWant       = "0100f14b5173130a1b80687f273d49e8f4740a793a949b83b105837f2a61e8fee14f"
	goldenRecords    = "01d30053545452010000000000faed5172861808c05569000000002543b92ff1095511476adc8369db6ddc933665a11978dda1404ee1066ca9559d05616c70686101040a630001180204c0a80a00180620010db800100000000000000000000030020104c0000201bcca030620010db8000000000000000000000001bcca177773733a2f2f616c7068612e6578616d706c652f7374740d67ed82feced63487aec41a735fb36b86c14ac466a6065ac97b7cddb68b3017b3d88b2ac4b52501e6dcb33261d0b080bd1eb210ebf53a7676ce9aac10be9708"
	goldenObserved   = "0104c6336407409c"
	// NAT traversal messages, about the member of goldenX25519Pub.
	goldenKeyBody      = goldenX25519Pub // PUNCH_REQUEST, RELAY_REQUEST, RELAY_CLOSE
	goldenPunch        = goldenX25519Pub + "02" + "04c6336407409c" + "0620010db8000000000000000000000007bcca"
	goldenRelayGrant   = goldenX25519Pub + "44332211" + "88776655"
	goldenRelayRefused = goldenX25519Pub + "04"
)

func checkHex(t *testing.T, what string, got []byte, want string) {
	t.Helper()
	if h := hex.EncodeToString(got); h != want {
		t.Errorf("%s:\n got %s\nwant %s", what, h, want)
	}
}

func TestGoldenVectors(t *testing.T) {
	id := NewIdentity(testEdSeed)
	netID := NetworkID(testSeed)
	checkHex(t, "network id", netID[:], goldenNetID)
	checkHex(t, "x25519 public key", id.Public[:], goldenX25519Pub)
	if got := NetworkPrefix(testSeed).String(); got != goldenPrefix {
		t.Errorf("network prefix %s, want %s", got, goldenPrefix)
	}
	if got := MemberAddr(testSeed, id.Public).String(); got != goldenMemberAddr {
		t.Errorf("member address %s, want %s", got, goldenMemberAddr)
	}
	rec := mustMarshal(t, testRecord(), id, netID)
	checkHex(t, "record", rec, goldenRecord)

	entries := []DigestEntry{{Key: id.Public, Version: uint64(testNow.UnixNano())}, {Key: [32]byte{31: 0x01}, Version: 7}}
	entries[1].Key[0] = 0xee
	checkHex(t, "SUMMARY", AppendSummary(nil, SummaryOf(entries)), goldenSummary)
	d, err := AppendDigest(nil, true, entries)
	if err != nil {
		t.Fatal(err)
	}
	checkHex(t, "DIGEST", d, goldenDigest)
	w, err := AppendWant(nil, [][32]byte{id.Public})
	if err != nil {
		t.Fatal(err)
	}
	checkHex(t, "WANT", w, goldenWant)
	rs, err := AppendRecords(nil, rec)
	if err != nil {
		t.Fatal(err)
	}
	checkHex(t, "RECORDS", rs, goldenRecords)
	o, err := AppendObserved(nil, Observed{Transport: TransportUDP, Addr: netip.MustParseAddrPort("198.51.100.7:40000")})
	if err != nil {
		t.Fatal(err)
	}
	checkHex(t, "OBSERVED", o, goldenObserved)

	checkHex(t, "PUNCH_REQUEST", AppendKey(nil, id.Public), goldenKeyBody)
	p, err := AppendPunch(nil, Punch{Peer: id.Public, Addrs: []netip.AddrPort{
		netip.MustParseAddrPort("198.51.100.7:40000"), netip.MustParseAddrPort("[2001:db8::7]:51900")}})
	if err != nil {
		t.Fatal(err)
	}
	checkHex(t, "PUNCH", p, goldenPunch)
	g, err := AppendRelayGrant(nil, RelayGrant{Peer: id.Public, SendID: 0x11223344, RecvID: 0x55667788})
	if err != nil {
		t.Fatal(err)
	}
	checkHex(t, "RELAY_GRANT", g, goldenRelayGrant)
	rr, err := AppendRelayRefused(nil, RelayRefused{Target: id.Public, Reason: RefuseShareFull})
	if err != nil {
		t.Fatal(err)
	}
	checkHex(t, "RELAY_REFUSED", rr, goldenRelayRefused)

	// And the record parses back to what was marshalled.
	r, err := ParseRecord(rec, netID, testNow)
	if err != nil {
		t.Fatalf("ParseRecord(golden): %v", err)
	}
	want := testRecord()
	if r.Name != want.Name || r.Version != want.Version || !r.Expires.Equal(want.Expires) || r.Key != id.Public ||
		r.WSURL != want.WSURL || !sameContent(r, &want) {
		t.Errorf("parsed record %+v, want %+v", r, want)
	}
}

// The vectors of docs/protocol.md, "Signed statements": admin Ed25519 seed 0x60..0x7f,
// issued at testNow, by the member of goldenX25519Pub; next seed 0x20..0x3f. Checked
// against an independent implementation of the spec (Python, cryptography's Ed25519)
// when they were made.
const (
	goldenAdminPub         = "174553b456dddfc6908ecab1c101fe6ab21e2baa0617795b7d43a63482993fd5"
	goldenNextSeedID       = "3bf012b7fec085f664dee713eea61247"
	goldenRevoke           = "010000faed51728618174553b456dddfc6908ecab1c101fe6ab21e2baa0617795b7d43a63482993fd5f14b5173130a1b80687f273d49e8f4740a793a949b83b105837f2a61e8fee14f05616c7068619490faafba48eb75c5e95fac48a4db4db40f2456a92d9400db94fc553545bacf194fb7ec26047588a319308a2051fbada1f3df71107057478ab63e7c9a263303"
	goldenRotate           = "020000faed51728618174553b456dddfc6908ecab1c101fe6ab21e2baa0617795b7d43a63482993fd53bf012b7fec085f664dee713eea6124710c75569000000005802000001f14b5173130a1b80687f273d49e8f4740a793a949b83b105837f2a61e8fee14f3fa9e0cc26985931052050bf9c94ba008d6cb51dd044ba2357725650b894213e88b5733783c36cdc0a148070096d984d80e171a1771373df6b7110ca77574301"
	goldenStatementSummary = "02000000cd7aba35b93bb4397f74a73a2fa7169c"
)

func TestGoldenStatements(t *testing.T) {
	netID := NetworkID(testSeed)
	admin := testAdmin()
	member := NewIdentity(testEdSeed).Public
	checkHex(t, "admin public key", adminPub(admin), goldenAdminPub)
	id := SeedID(testNextSeed)
	checkHex(t, "next seed id", id[:], goldenNextSeedID)
	rev := mustSign(t, testRevoke(uint64(testNow.UnixNano()), member), admin, netID)
	checkHex(t, "REVOKE", rev, goldenRevoke)
	rot := mustSign(t, testRotate(uint64(testNow.UnixNano())), admin, netID)
	checkHex(t, "ROTATE", rot, goldenRotate)

	s := NewStatementStore(netID, []ed25519.PublicKey{adminPub(admin)}, 0)
	for _, b := range [][]byte{rev, rot} {
		if ok, reason := s.Offer(b, testNow); !ok {
			t.Fatalf("golden statement refused: %s", reason)
		}
	}
	c, h := s.Summary()
	checkHex(t, "statements summary", AppendSummary(nil, Summary{Count: c, Hash: h}), goldenStatementSummary)
	if !s.Revoked(member) || s.Rotation() == nil || s.Rotation().NextSeedID != id {
		t.Error("the golden statements do not revoke and rotate")
	}
}
