package stt

import (
	"testing"

	"github.com/stt-tun/stt-tun/stt/wire"
)

func TestControlKindClassifiesByFirstMessageButACK(t *testing.T) {
	ack := wire.AppendControl(nil, wire.CtlAck, []byte{1, 0, 0, 0})
	rel := wire.AppendControl(nil, wire.CtlReliable, append([]byte{0, 0, 0, 0}, wire.AppendControl(nil, 0x80, []byte("s"))...))
	for _, tc := range []struct {
		name    string
		payload []byte
		want    TxKind
	}{
		{"empty", nil, TxKeepalive},
		{"ack", ack, TxAck},
		{"ack then reliable", append(append([]byte(nil), ack...), rel...), TxReliable},
		{"ping", wire.AppendControl(nil, wire.CtlPing, make([]byte, wire.PingBodyLen)), TxPing},
		{"ack then probe ack", append(append([]byte(nil), ack...), wire.AppendControl(nil, wire.CtlProbeAck, make([]byte, wire.ProbeAckBodyLen))...), TxProbe},
		{"final", wire.AppendControl(nil, wire.CtlFinal, nil), TxControl},
		{"bare extension", wire.AppendControl(nil, 0x80, []byte("s")), TxControl},
	} {
		if got := controlKind(tc.payload); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
