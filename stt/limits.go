package stt

import "time"

// Limits holds the protocol's time and count limits (docs/protocol.md section 7). The
// zero value of a field means its default; tests lower them to make rekeys happen.
type Limits struct {
	RekeyAfterTime      time.Duration
	RejectAfterTime     time.Duration
	RekeyAfterMessages  uint64
	RejectAfterMessages uint64
	KeepaliveTimeout    time.Duration
	DeadPeerTimeout     time.Duration
	HandshakeRetry      time.Duration // first retransmission delay
	HandshakeRetryMax   time.Duration
	HandshakeGiveUp     time.Duration
	RTTProbeInterval    time.Duration
	Tick                time.Duration // resolution of the timer loop
	FallbackAfter       time.Duration // UDP silent this long: move to WebSocket
	ProbeInterval       time.Duration // on WebSocket: probe UDP this often
	RelayIdle           time.Duration // a relay's route pair without a forwarded message this long goes
	// PMTUDisable turns path MTU discovery off: no probes, PathMTU 0 ([advanced]
	// pmtu_discovery = false).
	PMTUDisable bool
	// PMTUReprobe is how often a path whose MTU was found is probed upward again
	// (jittered; default DefaultPMTUReprobe; [advanced] pmtu_reprobe_interval).
	PMTUReprobe time.Duration
	// PMTUMax is the largest inner packet worth probing for: the TUN device's MTU (a
	// larger path MTU helps no packet). 0: up to the link's MTU, at most a 9000-byte
	// IP packet.
	PMTUMax int
}

// Default protocol limits.
const (
	DefaultRekeyAfterTime      = 120 * time.Second
	DefaultRejectAfterTime     = 180 * time.Second
	DefaultRekeyAfterMessages  = 1 << 32
	DefaultRejectAfterMessages = 1 << 33
	DefaultKeepaliveTimeout    = 10 * time.Second
	DefaultDeadPeerTimeout     = 15 * time.Second
	DefaultHandshakeRetry      = time.Second
	DefaultHandshakeRetryMax   = 8 * time.Second
	DefaultHandshakeGiveUp     = 90 * time.Second
	DefaultRTTProbeInterval    = 5 * time.Second
	DefaultTick                = 100 * time.Millisecond
	DefaultFallbackAfter       = 3 * time.Second
	DefaultProbeInterval       = 10 * time.Second
	DefaultPMTUReprobe         = 10 * time.Minute
)

func (t Limits) withDefaults() Limits {
	set := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	set(&t.RekeyAfterTime, DefaultRekeyAfterTime)
	set(&t.RejectAfterTime, DefaultRejectAfterTime)
	if t.RejectAfterTime < t.RekeyAfterTime+t.RekeyAfterTime/4 {
		// The old keys must outlive the rekey by enough for the new handshake to finish.
		t.RejectAfterTime = t.RekeyAfterTime + t.RekeyAfterTime/2
	}
	set(&t.KeepaliveTimeout, DefaultKeepaliveTimeout)
	set(&t.DeadPeerTimeout, DefaultDeadPeerTimeout)
	set(&t.HandshakeRetry, DefaultHandshakeRetry)
	set(&t.HandshakeRetryMax, DefaultHandshakeRetryMax)
	set(&t.HandshakeGiveUp, DefaultHandshakeGiveUp)
	set(&t.RTTProbeInterval, DefaultRTTProbeInterval)
	set(&t.Tick, DefaultTick)
	set(&t.FallbackAfter, DefaultFallbackAfter)
	set(&t.ProbeInterval, DefaultProbeInterval)
	set(&t.RelayIdle, DefaultRelayIdle)
	set(&t.PMTUReprobe, DefaultPMTUReprobe)
	if t.RekeyAfterMessages == 0 {
		t.RekeyAfterMessages = DefaultRekeyAfterMessages
	}
	if t.RejectAfterMessages == 0 {
		t.RejectAfterMessages = DefaultRejectAfterMessages
	}
	if t.RejectAfterMessages < t.RekeyAfterMessages {
		t.RejectAfterMessages = 2 * t.RekeyAfterMessages
	}
	return t
}

// responderRekeyAfter is when the responder of a session starts a rekey itself, later
// than the initiator so that the two rarely race.
func (t *Limits) responderRekeyAfter() time.Duration {
	return t.RekeyAfterTime + t.RekeyAfterTime/8
}
