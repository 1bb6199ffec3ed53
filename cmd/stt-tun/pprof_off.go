//go:build !pprof

package main

import "log/slog"

// servePprof would serve Go's profiler, but this binary was built without it: the
// profiler's packages cost every daemon about 0.6 MiB of resident memory. Build with
// `make build PPROF=1` (the pprof build tag) to profile.
func servePprof(addr string, log *slog.Logger) {
	log.Warn("STT_TUN_PPROF is set, but this binary was built without the profiler (make build PPROF=1)", "value", addr)
}
