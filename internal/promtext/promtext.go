// Package promtext writes metrics in the Prometheus text exposition format, version
// 0.0.4: the format every Prometheus-compatible scraper reads.
//
// It replaces github.com/prometheus/client_golang in the daemon. That library links
// protocol buffers, a registry and collectors the daemon has no use for, and they
// cost each idle daemon about 2 MiB of resident memory (docs/benchmarks.md). The
// daemon's metrics are a few dozen counters read at scrape time, which this package
// writes directly. The tests parse and lint its output with the Prometheus libraries.
package promtext

import (
	"bufio"
	"errors"
	"io"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
)

// ContentType is the HTTP Content-Type of the format.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// Metric types.
const (
	Counter = "counter"
	Gauge   = "gauge"
)

// Writer writes metric families. Call Family once for each family, then its samples;
// a family's samples must follow it before the next Family. The first write error is
// kept, later writes do nothing, and Flush returns it.
type Writer struct {
	w   *bufio.Writer
	buf []byte
	err error
}

// NewWriter returns a Writer on w.
func NewWriter(w io.Writer) *Writer {
	return &Writer{w: bufio.NewWriter(w), buf: make([]byte, 0, 256)}
}

// Family starts a metric family: its HELP and TYPE lines.
func (w *Writer) Family(name, typ, help string) {
	b := append(w.buf[:0], "# HELP "...)
	b = append(b, name...)
	b = append(b, ' ')
	b = appendEscaped(b, help, false)
	b = append(b, "\n# TYPE "...)
	b = append(b, name...)
	b = append(b, ' ')
	b = append(b, typ...)
	b = append(b, '\n')
	w.write(b)
}

// Uint writes a sample with an integer value. labels are name, value pairs.
func (w *Writer) Uint(name string, v uint64, labels ...string) {
	b := w.appendSeries(name, labels)
	b = strconv.AppendUint(b, v, 10)
	w.write(append(b, '\n'))
}

// Float writes a sample with a floating-point value. labels are name, value pairs.
func (w *Writer) Float(name string, v float64, labels ...string) {
	b := w.appendSeries(name, labels)
	switch {
	case math.IsNaN(v):
		b = append(b, "NaN"...)
	case math.IsInf(v, 1):
		b = append(b, "+Inf"...)
	case math.IsInf(v, -1):
		b = append(b, "-Inf"...)
	default:
		b = strconv.AppendFloat(b, v, 'g', -1, 64)
	}
	w.write(append(b, '\n'))
}

// Flush writes out what is buffered and returns the first error of any write.
func (w *Writer) Flush() error {
	if w.err == nil {
		w.err = w.w.Flush()
	}
	return w.err
}

func (w *Writer) appendSeries(name string, labels []string) []byte {
	if len(labels)%2 != 0 {
		panic("promtext: labels must be name, value pairs")
	}
	b := append(w.buf[:0], name...)
	if len(labels) > 0 {
		b = append(b, '{')
		for i := 0; i < len(labels); i += 2 {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, labels[i]...)
			b = append(b, `="`...)
			b = appendEscaped(b, labels[i+1], true)
			b = append(b, '"')
		}
		b = append(b, '}')
	}
	return append(b, ' ')
}

func (w *Writer) write(b []byte) {
	w.buf = b[:0]
	if w.err == nil {
		_, w.err = w.w.Write(b)
	}
}

// appendEscaped appends s with the format's escapes: backslash and newline, and in a
// label value also the double quote.
func appendEscaped(b []byte, s string, quote bool) []byte {
	if !strings.ContainsAny(s, "\\\n\"") {
		return append(b, s...)
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			b = append(b, `\\`...)
		case c == '\n':
			b = append(b, `\n`...)
		case c == '"' && quote:
			b = append(b, `\"`...)
		default:
			b = append(b, c)
		}
	}
	return b
}

// WriteRuntime writes the Go runtime's metrics under the names the Prometheus Go
// client uses: go_info, go_goroutines, go_threads and a few go_memstats_ figures.
func WriteRuntime(w *Writer) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	threads, _ := runtime.ThreadCreateProfile(nil)

	w.Family("go_info", Gauge, "Information about the Go environment.")
	w.Uint("go_info", 1, "version", runtime.Version())
	w.Family("go_goroutines", Gauge, "Number of goroutines that currently exist.")
	w.Uint("go_goroutines", uint64(runtime.NumGoroutine()))
	w.Family("go_threads", Gauge, "Number of OS threads created.")
	w.Uint("go_threads", uint64(threads))
	w.Family("go_memstats_alloc_bytes", Gauge, "Number of heap bytes allocated and currently in use.")
	w.Uint("go_memstats_alloc_bytes", ms.HeapAlloc)
	w.Family("go_memstats_alloc_bytes_total", Counter, "Total number of heap bytes allocated, even if freed.")
	w.Uint("go_memstats_alloc_bytes_total", ms.TotalAlloc)
	w.Family("go_memstats_heap_inuse_bytes", Gauge, "Number of heap bytes in spans in use.")
	w.Uint("go_memstats_heap_inuse_bytes", ms.HeapInuse)
	w.Family("go_memstats_heap_objects", Gauge, "Number of currently allocated heap objects.")
	w.Uint("go_memstats_heap_objects", ms.HeapObjects)
	w.Family("go_memstats_sys_bytes", Gauge, "Number of bytes obtained from the OS.")
	w.Uint("go_memstats_sys_bytes", ms.Sys)
	w.Family("go_memstats_gc_cycles_total", Counter, "Number of completed GC cycles.")
	w.Uint("go_memstats_gc_cycles_total", uint64(ms.NumGC))
}

// userHZ is the unit of the times in /proc/PID/stat: USER_HZ, 100 on every Linux
// architecture Go supports.
const userHZ = 100

// WriteProcess writes the process's metrics under the standard process_ names, read
// from /proc/self. A figure that cannot be read is left out.
func WriteProcess(w *Writer) {
	if st, err := readStat(); err == nil {
		w.Family("process_cpu_seconds_total", Counter, "Total user and system CPU time spent in seconds.")
		w.Float("process_cpu_seconds_total", float64(st.utime+st.stime)/userHZ)
		w.Family("process_virtual_memory_bytes", Gauge, "Virtual memory size in bytes.")
		w.Uint("process_virtual_memory_bytes", st.vsize)
		w.Family("process_resident_memory_bytes", Gauge, "Resident memory size in bytes.")
		w.Uint("process_resident_memory_bytes", st.rss*uint64(os.Getpagesize()))
		if boot, err := bootTime(); err == nil {
			w.Family("process_start_time_seconds", Gauge, "Start time of the process since unix epoch in seconds.")
			w.Float("process_start_time_seconds", float64(boot)+float64(st.start)/userHZ)
		}
	}
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		w.Family("process_open_fds", Gauge, "Number of open file descriptors.")
		w.Uint("process_open_fds", uint64(len(fds)))
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil {
		w.Family("process_max_fds", Gauge, "Maximum number of open file descriptors.")
		w.Uint("process_max_fds", lim.Cur)
	}
}

type procStat struct {
	utime, stime, start, vsize, rss uint64
}

// readStat reads the fields of /proc/self/stat that WriteProcess needs.
func readStat() (procStat, error) {
	data, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return procStat{}, err
	}
	return parseStat(string(data))
}

// parseStat parses a /proc/PID/stat line. The command name, field 2, is in
// parentheses and may hold spaces and parentheses itself, so the fields are counted
// from the last ')'.
func parseStat(s string) (procStat, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procStat{}, errBadStat
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); field n is f[n-3].
	if len(f) < 22 {
		return procStat{}, errBadStat
	}
	var st procStat
	for _, x := range []struct {
		field int
		dst   *uint64
	}{{14, &st.utime}, {15, &st.stime}, {22, &st.start}, {23, &st.vsize}, {24, &st.rss}} {
		v, err := strconv.ParseUint(f[x.field-3], 10, 64)
		if err != nil {
			return procStat{}, errBadStat
		}
		*x.dst = v
	}
	return st, nil
}

// bootTime reads the boot time, in seconds since the epoch, from /proc/stat.
func bootTime() (uint64, error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, errBadStat
}

var errBadStat = errors.New("promtext: unexpected /proc format")
