package promtext

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// parse reads an exposition with Prometheus' own strict parser.
func parse(t *testing.T, text string) map[string]float64 {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("does not parse: %v\n%s", err, text)
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			key := name
			for _, l := range m.GetLabel() {
				key += "|" + l.GetName() + "=" + l.GetValue()
			}
			switch {
			case m.Counter != nil:
				out[key] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[key] = m.GetGauge().GetValue()
			}
		}
	}
	return out
}

func TestLabelValuesAreEscaped(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	hostile := "a\"b\\c\nd}e,f=\"g"
	w.Family("x_info", Gauge, "Help with a \\ backslash\nand a newline.")
	w.Uint("x_info", 1, "name", hostile, "other", "")
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	got := parse(t, buf.String())
	if v, ok := got["x_info|name="+hostile+"|other="]; !ok || v != 1 {
		t.Fatalf("label value did not survive the round trip: %v\n%s", got, buf.String())
	}
}

func TestValues(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	w.Family("x_total", Counter, "A counter.")
	w.Uint("x_total", math.MaxUint64, "k", "max")
	w.Uint("x_total", 0, "k", "zero")
	w.Family("y", Gauge, "A gauge.")
	w.Float("y", 0.000123, "k", "small")
	w.Float("y", math.Inf(1), "k", "inf")
	w.Float("y", math.Inf(-1), "k", "-inf")
	w.Float("y", math.NaN(), "k", "nan")
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	got := parse(t, buf.String())
	for key, want := range map[string]float64{
		"x_total|k=max": math.MaxUint64, "x_total|k=zero": 0,
		"y|k=small": 0.000123, "y|k=inf": math.Inf(1), "y|k=-inf": math.Inf(-1),
	} {
		if got[key] != want {
			t.Errorf("%s = %v, want %v", key, got[key], want)
		}
	}
	if !math.IsNaN(got["y|k=nan"]) {
		t.Errorf("y{k=nan} = %v", got["y|k=nan"])
	}
	if !strings.Contains(buf.String(), "x_total{k=\"max\"} 18446744073709551615\n") {
		t.Errorf("a counter is not written as an exact integer:\n%s", buf.String())
	}
}

type failWriter struct{ n int }

func (f *failWriter) Write(p []byte) (int, error) {
	f.n++
	return 0, errors.New("peer went away")
}

// TestWriteErrorIsKept: a client that goes away mid-response is reported by Flush,
// and nothing is written after the first error.
func TestWriteErrorIsKept(t *testing.T) {
	fw := &failWriter{}
	w := NewWriter(fw)
	for range 1000 { // more than the buffer holds
		w.Family("x_total", Counter, strings.Repeat("h", 100))
	}
	if err := w.Flush(); err == nil || !strings.Contains(err.Error(), "peer went away") {
		t.Fatalf("Flush = %v", err)
	}
	if fw.n != 1 {
		t.Errorf("%d writes after an error; want 1", fw.n)
	}
}

func TestRuntimeAndProcessParse(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	WriteRuntime(w)
	WriteProcess(w)
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	got := parse(t, buf.String())
	for _, name := range []string{
		"go_goroutines", "go_threads", "go_memstats_alloc_bytes", "go_memstats_sys_bytes",
		"process_resident_memory_bytes", "process_virtual_memory_bytes",
		"process_start_time_seconds", "process_open_fds", "process_max_fds",
	} {
		if v, ok := got[name]; !ok || v <= 0 {
			t.Errorf("%s = %v, %v; want a positive value", name, v, ok)
		}
	}
	if _, ok := got["process_cpu_seconds_total"]; !ok { // may still be 0 here
		t.Error("process_cpu_seconds_total is missing")
	}
}

// TestParseStat: the command name may hold spaces and parentheses; fields are
// counted from the last ')'.
func TestParseStat(t *testing.T) {
	line := "4242 (odd) name (x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 12345 1111111 2222 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
	st, err := parseStat(line)
	if err != nil {
		t.Fatal(err)
	}
	want := procStat{utime: 250, stime: 75, start: 12345, vsize: 1111111, rss: 2222}
	if st != want {
		t.Errorf("parseStat = %+v, want %+v", st, want)
	}
	for _, bad := range []string{"", "1 (x", "1 (x) S 1 2", "1 (x) S 1 2 3 4 5 6 7 8 9 10 x 12 13 14 15 16 17 18 19 20 21 22"} {
		if _, err := parseStat(bad); err == nil {
			t.Errorf("parseStat(%q) succeeded", bad)
		}
	}
}
