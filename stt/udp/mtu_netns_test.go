package udp

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/internal/nslab"
)

// TestRouteMTUAmongManyInterfaces: in a namespace with 400 interfaces, RouteMTU toward
// an address behind the last one (IPv4 and IPv6) is that interface's MTU. (With one
// address dump per interface it took 0.6 s for 1000 interfaces, the peer's lock held in
// the node's timer loop; the time is logged, not asserted.)
func TestRouteMTUAmongManyInterfaces(t *testing.T) {
	lab := nslab.New(t)
	ns := lab.NS("m")
	var b strings.Builder
	for i := range 200 {
		fmt.Fprintf(&b, "link add a%d type veth peer name b%d\nlink set a%d up\naddr add 10.100.%d.%d/32 dev a%d\n", i, i, i, i/250, i%250+1, i)
	}
	b.WriteString("link add xl type veth peer name yl\nlink set xl mtu 1400\nlink set xl up\nlink set yl up\n" +
		"addr add 10.200.0.2/24 dev xl\naddr add fd00:200::2/64 dev xl nodad\n")
	file := filepath.Join(t.TempDir(), "links")
	if err := os.WriteFile(file, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	ns.MustRun(t, "ip", "-batch", file)
	for _, dst := range []string{"10.200.0.1", "fd00:200::1"} {
		var mtu int
		var took time.Duration
		err := ns.Do(func() error {
			start := time.Now()
			var err error
			mtu, err = RouteMTU(netip.MustParseAddr(dst), 0)
			took = time.Since(start)
			return err
		})
		if err != nil || mtu != 1400 {
			t.Errorf("RouteMTU(%s) = %d, %v; want 1400", dst, mtu, err)
		}
		t.Logf("RouteMTU(%s) among 400 interfaces: %v", dst, took)
	}
}
