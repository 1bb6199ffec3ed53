package main

import (
	"io"
	"log/slog"

	"github.com/stt-tun/stt-tun/config"
)

// newLogger is the daemon's logger: slog records on w at level and above, as text
// lines or, with format "json", one JSON object per line. Records never carry key
// material, and peer addresses only at debug level (see docs/configuration.md).
func newLogger(w io.Writer, format string, level slog.Leveler) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == config.LogJSON {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
