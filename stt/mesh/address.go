package mesh

// address.go derives what the network identity and a member's key determine: the network
// id every signature binds, the network's ULA /48, and each member's /128 in subnet 0 of
// it. The identity is derived from the seed the network was created with and stays when
// the seed is replaced (Network), so that addresses and records outlive a rotation.

import (
	"crypto/sha256"
	"net/netip"
)

func hashWith(label string, parts ...[]byte) [32]byte {
	h := sha256.New()
	h.Write([]byte(label))
	for _, p := range parts {
		h.Write(p)
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// NetworkID is SHA-256("stt-tun network id v1" || seed)[0:16]: it names the network in
// every record signature, so a record cannot be replayed into another network.
func NetworkID(seed [32]byte) [16]byte {
	h := hashWith("stt-tun network id v1", seed[:])
	return [16]byte(h[:16])
}

// NetworkPrefix is the network's ULA /48: fd00::/8 followed by the first five bytes of
// SHA-256("stt-tun ula v1" || seed).
func NetworkPrefix(seed [32]byte) netip.Prefix {
	h := hashWith("stt-tun ula v1", seed[:])
	var a [16]byte
	a[0] = 0xfd
	copy(a[1:6], h[:5])
	return netip.PrefixFrom(netip.AddrFrom16(a), 48)
}

// Network is a network's identity: the id every record and statement signature binds
// and the ULA /48 member addresses are in. It is fixed when the network is created
// (NetworkOf its first seed) and does not change with the seed.
type Network struct {
	ID     [16]byte
	Prefix netip.Prefix // a /48 in fd00::/8
}

// NetworkRawLen is the length of a network identity's raw form: the 16-byte id and the
// five bytes of the prefix after fd.
const NetworkRawLen = 21

// NetworkOf is the identity of a network created with seed: NetworkID and NetworkPrefix
// of it, so that a network keeps the addresses it had before identities were explicit.
func NetworkOf(seed [32]byte) Network {
	return Network{ID: NetworkID(seed), Prefix: NetworkPrefix(seed)}
}

// Raw is the identity's raw form (the seed file's network line): id ‖ prefix bytes 1..5.
func (n Network) Raw() [NetworkRawLen]byte {
	var b [NetworkRawLen]byte
	copy(b[:16], n.ID[:])
	a := n.Prefix.Addr().As16()
	copy(b[16:], a[1:6])
	return b
}

// NetworkFromRaw is the inverse of Raw.
func NetworkFromRaw(b [NetworkRawLen]byte) Network {
	var a [16]byte
	a[0] = 0xfd
	copy(a[1:6], b[16:])
	return Network{ID: [16]byte(b[:16]), Prefix: netip.PrefixFrom(netip.AddrFrom16(a), 48)}
}

// MemberPrefix is subnet 0 of the network's prefix, the /64 every member address is in.
func (n Network) MemberPrefix() netip.Prefix {
	return netip.PrefixFrom(n.Prefix.Addr(), 64)
}

// MemberAddr is the address of the member whose X25519 public key is x25519pub.
func (n Network) MemberAddr(x25519pub [32]byte) netip.Addr {
	return MemberAddrIn(n.Prefix, x25519pub)
}

// MemberPrefix is subnet 0 of the network prefix, the /64 every member address is in.
func MemberPrefix(seed [32]byte) netip.Prefix {
	return netip.PrefixFrom(NetworkPrefix(seed).Addr(), 64)
}

// MemberAddr is the address of the member whose X25519 public key is x25519pub: the
// network prefix, subnet 0, and the first eight bytes of
// SHA-256("stt-tun member address v1" || x25519pub) as interface id.
func MemberAddr(seed [32]byte, x25519pub [32]byte) netip.Addr {
	return MemberAddrIn(NetworkPrefix(seed), x25519pub)
}

// MemberAddrIn is the address of the member whose X25519 public key is x25519pub in the
// network whose /48 is prefix: subnet 0 and the first eight bytes of
// SHA-256("stt-tun member address v1" || x25519pub) as interface id.
func MemberAddrIn(prefix netip.Prefix, x25519pub [32]byte) netip.Addr {
	a := prefix.Addr().As16()
	h := hashWith("stt-tun member address v1", x25519pub[:])
	copy(a[8:], h[:8])
	return netip.AddrFrom16(a)
}
