package tunnel

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/internal/status"
)

func TestPing(t *testing.T) {
	a, b := memPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// No session yet: Ping makes one, as the first packet would.
	r, err := a.t.Ping(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	if r.RTT <= 0 || r.Path != "udp" || r.Endpoint != fmt.Sprintf("127.0.0.1:%d", b.t.Node().Port()) {
		t.Errorf("reply %+v", r)
	}
	// And from the side without an endpoint, over the session a made.
	if r, err := b.t.Ping(ctx, "a"); err != nil || r.Path != "udp" {
		t.Errorf("b pings a: %+v, %v", r, err)
	}

	if _, err := a.t.Ping(ctx, "zeta"); !errors.Is(err, status.ErrUnknownPeer) || !strings.Contains(err.Error(), `"zeta"`) {
		t.Errorf("unknown peer: %v", err)
	}

	// b gone: no reply before the deadline.
	_ = b.t.Close()
	short, cancel2 := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel2()
	if _, err := a.t.Ping(short, "b"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("ping a closed peer: %v, want a deadline error", err)
	}
}

func TestPingNoSession(t *testing.T) {
	a, _ := memPair(t)
	// Send b's traffic where nothing answers: no handshake can complete.
	pc := a.t.cfg.Peers[0]
	pc.Endpoint = "127.0.0.1:9"
	if err := a.t.Node().Peer("b").Update(sttPeerConfig(pc, nil)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := a.t.Ping(ctx, "b")
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "no session with b") {
		t.Errorf("ping without a session: %v", err)
	}
}
