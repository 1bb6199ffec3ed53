package udp

import (
	"golang.org/x/sys/unix"
)

// udpHeaderLen is the length of the UDP header, which the socket filter sees.
const udpHeaderLen = 8

// minPayload is the shortest UDP payload the socket filter lets through: 1 byte, so
// only empty datagrams are dropped in the kernel.
//
// Why not the shortest valid STT message (a DATA frame of wire.MinDataLen = 32 bytes)?
// Because the protocol wants every message a node refuses to be counted (docs/protocol.md
// section 2), and a handshake message of another version to be counted and logged
// whatever its length from byte 1 on (section 4.2: the version check comes before the
// length check, so that a future version may change lengths). Those counters live in the
// node, which sees only what passes this filter; the end-to-end tests hold the node to
// them (TestMalformedFrames sends messages of 1 to 31 bytes, TestVersionLogFlood a
// 2-byte HELLO of version 2). An empty datagram carries no type byte, so it is no message
// of any version: it is dropped here, and the kernel counts it among the socket's drops
// (the "drops" column of /proc/net/udp, and Udp InErrors in /proc/net/snmp).
const minPayload = 1

// filterProgram is a classic BPF program for SO_ATTACH_FILTER that accepts a datagram
// whose UDP payload is at least min bytes long and drops the others.
//
// What the program sees: for a UDP socket the kernel runs the filter from
// udp_queue_rcv_one_skb (udpv6_queue_rcv_one_skb for IPv6), through
// sk_filter_trim_cap(sk, skb, sizeof(struct udphdr)), with skb->data at the UDP header:
// the IP header is already pulled and the UDP header not yet. So the packet length the
// program loads is 8 + the payload length, and a GRO-coalesced datagram (one skb for
// many segments, each at least 1 byte) is judged once, by its total length.
// TestFilterSeesUDPHeader checks this on both address families.
//
// The return value of a socket filter is how many bytes of the packet to keep: 0
// drops it, 0xffffffff keeps it whole.
func filterProgram(min int) []unix.SockFilter {
	return []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_LEN},                                        // A = packet length
		{Code: unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K, Jt: 1, K: uint32(udpHeaderLen + min)}, // A >= 8+min: accept
		{Code: unix.BPF_RET | unix.BPF_K, K: 0},                                                // drop
		{Code: unix.BPF_RET | unix.BPF_K, K: 0xffffffff},                                       // accept, whole
	}
}

// attachFilter attaches filterProgram(min) to the socket fd.
func attachFilter(fd int, min int) error {
	prog := filterProgram(min)
	return unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{
		Len:    uint16(len(prog)),
		Filter: &prog[0],
	})
}
