package wire

import (
	"encoding/binary"
	"errors"
)

// Path MTU probe messages (docs/protocol.md 6.3). A PROBE is the only control message
// of its DATA frame, padded so that the frame has an exact length; the peer answers it
// with a PROBE_ACK naming the probe and the length of the frame that carried it.
const (
	CtlProbe    = 0x0B
	CtlProbeAck = 0x0C

	// ProbeIDLen is the probe id at the start of a PROBE body; padding follows it.
	ProbeIDLen = 4
	// ProbeAckBodyLen is a PROBE_ACK body: the probe id (4) and the frame length (2).
	ProbeAckBodyLen = 6
	// MinProbeFrame is the shortest DATA frame that carries a PROBE: no padding.
	MinProbeFrame = Overhead + ControlHeaderLen + ProbeIDLen
)

// ErrProbeSize reports a PROBE that cannot make a frame of the length asked for.
var ErrProbeSize = errors.New("probe frame length out of range")

// AppendProbe appends to b the stream-0 payload of one PROBE with id, padded with zeros
// so that the DATA frame sealing exactly that payload is frameLen bytes long.
func AppendProbe(b []byte, id uint32, frameLen int) ([]byte, error) {
	if frameLen < MinProbeFrame || frameLen > MaxMessageLen {
		return b, ErrProbeSize
	}
	body := frameLen - Overhead - ControlHeaderLen
	b = append(b, CtlProbe, 0, 0)
	binary.LittleEndian.PutUint16(b[len(b)-2:], uint16(body))
	b = binary.LittleEndian.AppendUint32(b, id)
	return append(b, make([]byte, body-ProbeIDLen)...), nil
}

// ParseProbe reads a PROBE body (checked by CheckControlBody): its id. The padding is
// ignored, whatever its bytes.
func ParseProbe(body []byte) uint32 { return binary.LittleEndian.Uint32(body) }

// AppendProbeAck appends a PROBE_ACK for the probe id that arrived in a DATA frame of
// frameLen bytes.
func AppendProbeAck(b []byte, id uint32, frameLen uint16) []byte {
	b = append(b, CtlProbeAck, ProbeAckBodyLen, 0)
	b = binary.LittleEndian.AppendUint32(b, id)
	return binary.LittleEndian.AppendUint16(b, frameLen)
}

// ParseProbeAck reads a PROBE_ACK body (checked by CheckControlBody): the probe id and
// the frame length the peer received it in.
func ParseProbeAck(body []byte) (id uint32, frameLen uint16) {
	return binary.LittleEndian.Uint32(body), binary.LittleEndian.Uint16(body[ProbeIDLen:])
}
