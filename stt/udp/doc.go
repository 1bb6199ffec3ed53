// Package udp is the UDP transport of an STT node: a conn.Bind (golang.zx2c4.com/wireguard/conn)
// written for Linux, used by package stt when its Config has no Bind.
//
// It replaces wireguard/conn's StdNetBind, whose receive path with UDP GRO loses the
// datagrams that follow an empty one in a receive batch (docs/security.md) and allocates
// per datagram. On Linux the Bind here:
//
//   - opens an IPv4 and an IPv6-only socket on one port, non-blocking, driven by Go's
//     netpoller through syscall.RawConn;
//   - reads with recvmmsg, up to BatchSize datagrams per call, and with UDP_GRO splits
//     coalesced datagrams by their segment size; an empty, truncated or odd datagram is
//     skipped on its own and never takes another datagram with it;
//   - drops empty datagrams in the kernel with a socket filter (see filter_linux.go for
//     why only empty ones);
//   - writes with sendmmsg, coalescing runs of equal-sized datagrams with UDP_SEGMENT
//     (GSO) where the kernel can, and falls back to plain datagrams where it cannot: for
//     the one call when a destination's path MTU is too small for a segment (EMSGSIZE,
//     or EINVAL before Linux 6.14), for good after EIO or 16 EINVALs in a row;
//   - with NewPMTUProbe, sends every datagram with Don't Fragment and never fragments
//     one locally; a datagram larger than the interface's MTU is lost alone
//     (MessageTooBigError), the rest of the Send goes out;
//   - replies from the local address a peer's datagram was sent to (IP_PKTINFO /
//     IPV6_PKTINFO), for hosts with several addresses;
//   - interns the endpoints it hands out in a bounded cache, so that neither receiving
//     nor sending allocates per datagram in steady state.
//
// On other systems New returns conn.NewStdNetBind().
package udp

import "golang.zx2c4.com/wireguard/conn"

// BatchSize is the number of datagrams a receive call fills at most and the number a
// Send takes in one sendmmsg.
const BatchSize = conn.IdealBatchSize
