//go:build pprof

package main

import (
	"log/slog"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"time"
)

// servePprof serves Go's profiler on addr for performance work. Only loopback
// addresses are accepted: a profile shows memory contents and timing to whoever asks.
func servePprof(addr string, log *slog.Logger) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().IsLoopback() {
		log.Warn("STT_TUN_PPROF must be a loopback address:port; profiler not started", "value", addr)
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.ListenAndServe(); err != nil {
			log.Warn("profiler stopped", "err", err)
		}
	}()
	log.Info("profiler listening", "addr", addr)
}
