package nslab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

func TestLabLinkPingTransferCleanup(t *testing.T) {
	var prefix string
	var proc *Proc
	t.Run("lab", func(t *testing.T) {
		l := New(t)
		prefix = l.Prefix()
		a, b := l.NS("a"), l.NS("b")
		l.Link(a, []string{"10.200.1.1/24", "fd00:200:1::1/64"}, b, []string{"10.200.1.2/24", "fd00:200:1::2/64"})

		for _, c := range []struct {
			from *NS
			addr string
		}{{a, "10.200.1.2"}, {b, "10.200.1.1"}, {a, "fd00:200:1::2"}, {b, "fd00:200:1::1"}} {
			if err := c.from.Ping(c.addr); err != nil {
				t.Errorf("ping %s from %s: %v", c.addr, c.from.Name(), err)
			}
		}

		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, host := range []string{"10.200.1.2", "fd00:200:1::2"} {
			res, err := Transfer(ctx, a, b, host, 1<<20)
			if err != nil {
				t.Fatalf("transfer to %s: %v", host, err)
			}
			if !res.OK() || res.SentBytes != 1<<20 {
				t.Errorf("transfer to %s: %v", host, res)
			}
		}
		// TransferMid runs its hook once, between the halves, and sends them both.
		calls := 0
		res, err := TransferMid(ctx, a, b, "10.200.1.2", 1<<20+1, func() error { calls++; return nil })
		if err != nil || !res.OK() || res.SentBytes != 1<<20+1 || calls != 1 {
			t.Errorf("transfer with a hook: %v, %v, hook ran %d times", res, err, calls)
		}
		if _, err := TransferMid(ctx, a, b, "10.200.1.2", 1<<20, func() error { return errors.New("boom") }); err == nil || !strings.Contains(err.Error(), "boom") {
			t.Errorf("a failing hook: %v, want its error", err)
		}

		proc = b.Start("sleep", "600")
		if _, err := exec.Command("ip", "netns", "pids", b.Name()).Output(); err != nil {
			t.Fatalf("ip netns pids: %v", err)
		}
	})
	if t.Skipped() || prefix == "" {
		return
	}
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	if strings.Contains(string(out), prefix) {
		t.Errorf("namespaces with prefix %s left after cleanup:\n%s", prefix, out)
	}
	select {
	case <-proc.Done():
	default:
		t.Errorf("process %d still running after cleanup", proc.PID())
	}
}

func TestDoEntersAndRestores(t *testing.T) {
	l := New(t)
	n := l.NS("do")
	before, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	var names []string
	err = n.Do(func() error {
		ifs, err := net.Interfaces()
		for _, i := range ifs {
			names = append(names, i.Name)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 1 || names[0] != "lo" {
		t.Errorf("interfaces inside fresh namespace = %v, want [lo]", names)
	}
	errFn := errors.New("from fn")
	if err := n.Do(func() error { return errFn }); !errors.Is(err, errFn) {
		t.Errorf("Do returned %v, want fn's error", err)
	}
	// The thread is unlocked again, so look at the namespace of whatever
	// thread we run on now: it must be the original one.
	after, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	if !after.Equal(before) {
		t.Errorf("namespace after Do = %v, want %v", after, before)
	}
}

func TestProcStop(t *testing.T) {
	l := New(t)
	n := l.NS("proc")
	p := n.Start("sh", "-c", "echo started; exec sleep 600")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := WaitFor(ctx, func() bool { return strings.Contains(p.Output(), "started") }); err != nil {
		t.Fatalf("waiting for output: %v", err)
	}
	p.Stop()
	if err := p.Wait(); err == nil || !strings.Contains(err.Error(), "terminated") {
		t.Errorf("Wait after Stop = %v, want killed by SIGTERM", err)
	}
	p.Stop() // idempotent

	if testing.Short() {
		return
	}
	stubborn := n.Start("sh", "-c", "trap '' TERM; echo ready; exec sleep 600")
	if err := WaitFor(ctx, func() bool { return strings.Contains(stubborn.Output(), "ready") }); err != nil {
		t.Fatalf("waiting for output: %v", err)
	}
	stubborn.Stop()
	if err := stubborn.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("Wait after Stop of a process ignoring SIGTERM = %v, want killed", err)
	}
}

func TestWaitFor(t *testing.T) {
	n := 0
	if err := WaitFor(context.Background(), func() bool { n++; return n == 3 }); err != nil || n != 3 {
		t.Errorf("WaitFor = %v after %d polls, want nil after 3", err, n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := WaitFor(ctx, func() bool { return false }); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitFor on a never-true condition = %v, want deadline exceeded", err)
	}
}

// TestSweepStaleDeletesOnlyDeadCreators: a namespace whose name carries the PID of a
// process that is gone is deleted; those of this process and of a live one stay.
func TestSweepStaleDeletesOnlyDeadCreators(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	kind := fmt.Sprintf("stt-sweeptest-%d", os.Getpid())
	names := map[string]bool{ // name: should survive
		fmt.Sprintf("%s-%d-x", kind, dead.Process.Pid): false,
		fmt.Sprintf("%s-%d-x", kind, os.Getpid()):      true,
		fmt.Sprintf("%s-1-x", kind):                    true, // init lives
	}
	for name := range names {
		if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add %s: %v: %s", name, err, out)
		}
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	}
	SweepStale(kind)
	for name, survive := range names {
		_, err := os.Stat("/run/netns/" + name)
		if exists := err == nil; exists != survive {
			t.Errorf("namespace %s exists %v after the sweep, want %v", name, exists, survive)
		}
	}
}
