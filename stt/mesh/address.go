package mesh

// address.go derives what the network seed and a member's key determine: the network id
// every signature binds, the network's ULA /48, and each member's /128 in subnet 0 of it.

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

// MemberPrefix is subnet 0 of the network prefix, the /64 every member address is in.
func MemberPrefix(seed [32]byte) netip.Prefix {
	return netip.PrefixFrom(NetworkPrefix(seed).Addr(), 64)
}

// MemberAddr is the address of the member whose X25519 public key is x25519pub: the
// network prefix, subnet 0, and the first eight bytes of
// SHA-256("stt-tun member address v1" || x25519pub) as interface id.
func MemberAddr(seed [32]byte, x25519pub [32]byte) netip.Addr {
	a := NetworkPrefix(seed).Addr().As16()
	h := hashWith("stt-tun member address v1", x25519pub[:])
	copy(a[8:], h[:8])
	return netip.AddrFrom16(a)
}
