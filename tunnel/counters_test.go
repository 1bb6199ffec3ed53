package tunnel

import (
	"encoding/json"
	"testing"

	"github.com/stt-tun/stt-tun/stt"
)

func TestStatusCounters(t *testing.T) {
	a, b := memPair(t)
	hello := ipv4UDP("10.9.0.1", "10.9.0.2", 1, 2, []byte("hi"))
	a.dev.Inject(hello)
	expectPacket(t, b.dev, hello)
	b.dev.Inject(ipv4UDP("10.9.0.77", "10.9.0.1", 2, 1, []byte("spoofed")), ipv4UDP("10.9.0.2", "10.9.0.1", 2, 1, []byte("ok")))
	expectPacket(t, a.dev, ipv4UDP("10.9.0.2", "10.9.0.1", 2, 1, []byte("ok")))

	ca, cb := a.t.Status().Counters, b.t.Status().Counters
	for _, r := range stt.DropReasons() {
		if _, ok := ca["drop_"+r.String()]; !ok {
			t.Errorf("counters lack drop_%s: %v", r, ca)
		}
	}
	if ca["handshakes_started"] < 1 || ca["handshakes_completed"] < 1 || cb["handshakes_completed"] < 1 {
		t.Errorf("handshake counters: a %v, b %v", ca, cb)
	}
	// The initiator generates an ephemeral key and does three DHs; the responder as many.
	if ca["handshake_dh_ops"] < 3 || cb["handshake_dh_ops"] < 3 {
		t.Errorf("DH counters: a %d, b %d", ca["handshake_dh_ops"], cb["handshake_dh_ops"])
	}
	if ca["tunnel_source_denied"] != 1 {
		t.Errorf("tunnel_source_denied = %d, want 1", ca["tunnel_source_denied"])
	}
	js, err := json.Marshal(a.t.Status())
	if err != nil {
		t.Fatal(err)
	}
	var back struct {
		Counters map[string]uint64 `json:"counters"`
	}
	if err := json.Unmarshal(js, &back); err != nil || back.Counters["handshakes_completed"] != ca["handshakes_completed"] {
		t.Errorf("counters in JSON: %v, %v", back.Counters, err)
	}
}
