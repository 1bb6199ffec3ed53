// Validation of the node-wide settings sections: [forwarding], [metrics], [logging]
// and [advanced].

package config

import (
	"log/slog"
	"time"
)

// Limits on [advanced] values, documented in docs/configuration.md.
const (
	minRekeyAfter   = time.Second
	maxRekeyAfter   = 24 * time.Hour
	minFallback     = time.Second
	maxFallback     = 5 * time.Minute
	minProbe        = time.Second
	maxProbe        = time.Hour
	minReplayWindow = 2 * time.Second
	maxReplayWindow = time.Hour
	minPMTUReprobe  = time.Second
	maxPMTUReprobe  = 24 * time.Hour
)

func (v *validator) forwarding(r *rawForwarding) Forwarding {
	var f Forwarding
	if r == nil {
		return f
	}
	if r.Enabled != nil {
		f.Enabled = *r.Enabled
	}
	if r.Masquerade != nil {
		f.Masquerade = *r.Masquerade
	}
	if f.Masquerade && !f.Enabled {
		v.errAt("forwarding.masquerade", "forwarding: masquerade = true needs enabled = true; masquerading only applies to forwarded traffic")
	}
	return f
}

func (v *validator) metrics(r *rawMetrics) Metrics {
	var m Metrics
	if r == nil || r.Listen == nil || *r.Listen == "" {
		return m
	}
	if err := checkListen(*r.Listen); err != nil {
		v.errAt("metrics.listen", "metrics: listen %q %v", *r.Listen, err)
		return m
	}
	m.Listen = *r.Listen
	return m
}

// logLevels are the levels [logging] level accepts, by name.
var logLevels = map[string]slog.Level{
	"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError,
}

func (v *validator) logging(r *rawLogging) Logging {
	l := Logging{Level: slog.LevelInfo, Format: LogText}
	if r == nil {
		return l
	}
	if r.Level != nil {
		if lv, ok := logLevels[*r.Level]; ok {
			l.Level = lv
		} else {
			v.errAt("logging.level", "logging: level = %q must be \"debug\", \"info\", \"warn\" or \"error\"", *r.Level)
		}
	}
	if r.Format != nil {
		switch f := *r.Format; f {
		case LogText, LogJSON:
			l.Format = f
		default:
			v.errAt("logging.format", "logging: format = %q must be \"text\" or \"json\"", f)
		}
	}
	return l
}

func (v *validator) advanced(r *rawAdvanced) Advanced {
	a := defaultAdvanced()
	if r == nil {
		return a
	}
	durationIn := func(s *string, key string, lo, hi time.Duration, dst *time.Duration) {
		if s == nil {
			return
		}
		d, err := parseDuration(*s)
		switch {
		case err != nil:
			v.errAt("advanced."+key, "advanced: %s = %q %v", key, *s, err)
		case d < lo || d > hi:
			v.errAt("advanced."+key, "advanced: %s = %q must be between %s and %s", key, *s, lo, hi)
		default:
			*dst = d
		}
	}
	durationIn(r.FallbackAfter, "fallback_after", minFallback, maxFallback, &a.FallbackAfter)
	durationIn(r.ProbeInterval, "probe_interval", minProbe, maxProbe, &a.ProbeInterval)
	durationIn(r.ReplayWindow, "handshake_replay_window", minReplayWindow, maxReplayWindow, &a.ReplayWindow)
	durationIn(r.PMTUReprobe, "pmtu_reprobe_interval", minPMTUReprobe, maxPMTUReprobe, &a.PMTUReprobe)
	if r.PMTUDiscovery != nil {
		a.PMTUDiscovery = *r.PMTUDiscovery
	}
	if r.RekeyAfter != nil {
		d, err := parseDuration(*r.RekeyAfter)
		switch {
		case err != nil:
			v.errAt("advanced.rekey_after", "advanced: rekey_after = %q %v", *r.RekeyAfter, err)
		case d < minRekeyAfter || d > maxRekeyAfter:
			v.errAt("advanced.rekey_after", "advanced: rekey_after = %q must be between %s and %s", *r.RekeyAfter, minRekeyAfter, maxRekeyAfter)
		default:
			a.RekeyAfter = d
		}
	}
	if r.RekeyAfterMessages != nil {
		if n := *r.RekeyAfterMessages; n < 1 {
			v.errAt("advanced.rekey_after_messages", "advanced: rekey_after_messages = %d must be at least 1", n)
		} else {
			a.RekeyAfterMessages = uint64(n)
		}
	}
	return a
}
