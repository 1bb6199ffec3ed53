// Package tun is stt-tun's thin layer over golang.zx2c4.com/wireguard/tun:
// creating the Linux TUN device, and the headroom and buffer rules its batched
// Read and Write impose. The in-memory Device for tests of the packet pump is
// in tun/tuntest.
//
// # Rules for callers (Linux device, from wireguard/tun's tun_linux.go and offload_linux.go)
//
// With offloads on (IFF_VNET_HDR, which Create asks for; BatchSize() > 1
// tells that the kernel granted them) the kernel exchanges a
// 10-byte virtio-net header with every packet and may hand over TCP/UDP
// "super-packets" of up to 64 KiB that the device splits (Read) or builds
// (Write). That gives these rules:
//
// Read(bufs, sizes, offset):
//   - offset may be anything ≥ 0: the device reads into its own 64 KiB buffer
//     and copies or splits into bufs[i][offset:], touching nothing before
//     offset and nothing after offset+sizes[i].
//   - len(sizes) ≥ len(bufs).
//   - len(bufs[i]) ≥ offset + MTU for every i, for the largest MTU the device
//     can have while you read (the MTU can be changed from outside). A single
//     packet that does not fit fails the Read and is lost; a segment of a
//     super-packet that does not fit can make the split panic.
//   - len(bufs) ≥ BatchSize() (128 with offloads, 1 without). One Read is one
//     read(2): either a single packet, or all segments of one super-packet
//     (⌈payload/gso_size⌉: 47 for a 64 KiB TCP burst at MSS 1400, 123 at MSS
//     536, more than 128 only with an MTU below about 560). If bufs is too short Read returns ErrTooManySegments with n packets valid
//     (the upstream split reports one fewer than it filled) and the rest of
//     the super-packet lost; that error is not fatal, keep reading.
//   - Checksums are complete on return (CHECKSUM_PARTIAL is resolved).
//
// Write(bufs, offset):
//   - offset ≥ MinOffset (10) and offset < len(bufs[i]) for every i, else the
//     whole call fails with "invalid offset" and nothing is written. The
//     device writes its virtio-net header into bufs[i][offset-10:offset], so
//     those bytes are scratch.
//   - The device coalesces TCP (and, on Linux ≥ 6.2, UDP) packets of one flow
//     in place (GRO): it appends payload into the spare capacity of one
//     element, so bufs[i][len:cap] is scratch too, it may swap elements of
//     bufs, and it rewrites lengths and checksums. It only coalesces into an
//     element whose cap(bufs[i]) - 2*offset ≥ the coalesced length, never
//     allocating. Give each element its own backing array (a full slice
//     expression when carving an arena), and keep cap(bufs[i]) ≤
//     MaxWriteCap(offset) = 2*offset + 65535: upstream does not bound the
//     coalesced length otherwise and would overflow 16-bit length fields.
//     After Write, treat bufs, its order and its contents as garbage.
//   - Packets are written one write(2) each after coalescing; a failing packet
//     does not stop the others, the errors are joined. While the link is
//     administratively down writes fail with EIO.
//   - The returned count is not reliable across implementations (the Linux
//     device returns bytes, not packets); use only the error.
//
// The tunnel reserves stt.Headroom (32) bytes in front of every packet, room
// for its own 16-byte header, and reads and writes at that offset, which
// satisfies both sides.
//
// Other facts: Read calls are serialised inside the device, as are Write
// calls; one reader and one writer goroutine is the intended use. Close
// unblocks a pending Read, and every Read or Write after Close fails, with an
// error wrapping os.ErrClosed (Create's Device ensures this; upstream alone
// may report its netlink monitor's shutdown instead). Apart from that and
// ErrTooManySegments, Read may return, once, an error from the device's
// netlink monitor; packets still flow after it but link events may stop. Events() must
// be drained until it is closed, or the device's monitoring goroutines block
// forever. MTU() looks the interface up by name through a socket in the
// calling thread's network namespace, so call it from the namespace the
// device lives in (which is the case when the whole process runs there).
package tun

import (
	wgtun "golang.zx2c4.com/wireguard/tun"
)

// Device is a TUN device: batched Read and Write of IP packets at an offset.
// See the package documentation for the rules on offsets and buffers.
type Device = wgtun.Device

// Event is a change of the device's state reported on Device.Events.
type Event = wgtun.Event

// EventUp is the event a Device reports on Events when its link comes up.
const EventUp = wgtun.EventUp

// ErrTooManySegments is returned by Read when a super-packet has more
// segments than there are buffers. It is not fatal.
var ErrTooManySegments = wgtun.ErrTooManySegments

const (
	// VirtioNetHdrLen is the size of the virtio-net header the Linux device
	// exchanges with the kernel in front of every packet when offloads are on.
	VirtioNetHdrLen = 10

	// MinOffset is the smallest offset callers may pass to Read and Write on
	// any Device of this package: Write needs VirtioNetHdrLen bytes of
	// headroom. Read alone would accept 0.
	MinOffset = VirtioNetHdrLen

	// MaxPacketSize is the largest IP packet a TUN device carries, and the
	// largest packet Write's coalescing may build.
	MaxPacketSize = 65535

	// MinMTU and MaxMTU bound the MTU Create accepts: the IPv4 minimum and the
	// Linux TUN driver's maximum.
	MinMTU = 68
	MaxMTU = 65535
)

// MaxWriteCap returns the largest capacity an element of bufs passed to Write
// at offset may have, so that in-place coalescing stays within MaxPacketSize.
// Capacity at this limit also lets Write coalesce the most.
func MaxWriteCap(offset int) int { return 2*offset + MaxPacketSize }
