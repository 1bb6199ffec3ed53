package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/internal/impair"
)

func TestApplyControl(t *testing.T) {
	r, err := impair.New(impair.Config{ListenA: "127.0.0.1:0", ListenB: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	path := filepath.Join(t.TempDir(), "impair.conf")
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("# lossy hotel link\nboth loss=5%\nb2a loss=1% delay=20ms # slower back\n")
	if err := applyControl(r, path); err != nil {
		t.Fatal(err)
	}
	if got := r.Impairment(impair.AtoB); got != (impair.Impairment{Loss: 0.05}) {
		t.Errorf("a2b = %v", got)
	}
	if got := r.Impairment(impair.BtoA); got != (impair.Impairment{Loss: 0.01, Delay: 20 * time.Millisecond}) {
		t.Errorf("b2a = %v", got)
	}
	// A wrong line changes nothing.
	write("a2b blackhole\nb2a loss=200%\n")
	if err := applyControl(r, path); err == nil {
		t.Fatal("bad control file accepted")
	}
	if got := r.Impairment(impair.AtoB); got != (impair.Impairment{Loss: 0.05}) {
		t.Errorf("a2b changed by a rejected file: %v", got)
	}
	write("sideways loss=1%\n")
	if err := applyControl(r, path); err == nil {
		t.Fatal("unknown direction accepted")
	}
}

func TestRunNeedsAddresses(t *testing.T) {
	if err := run([]string{"-a", "127.0.0.1:0"}); err == nil {
		t.Fatal("run without -b succeeded")
	}
	if err := run([]string{"-a", "127.0.0.1:0", "-b", "127.0.0.1:0", "-a2b", "loss=7"}); err == nil {
		t.Fatal("bad -a2b accepted")
	}
}
