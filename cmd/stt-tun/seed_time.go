package main

import (
	"errors"
	"strings"
	"time"
)

// parseWhen reads a --from value: "+DURATION" or "DURATION" (from now: "+2m", "90s"), or
// an RFC 3339 time ("2026-12-06T12:00:00Z"). The time is cut to whole seconds, as a
// rotation's switch time is; it must not be in the past.
func parseWhen(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, errors.New("empty")
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		if t.Before(now.Truncate(time.Second)) {
			return time.Time{}, errors.New("in the past")
		}
		return t.Truncate(time.Second), nil
	}
	d, err := parseSecondsOrDuration(strings.TrimPrefix(s, "+"))
	if err != nil {
		return time.Time{}, errors.New("want +DURATION (from now, such as +2m) or an RFC 3339 time")
	}
	if d < 0 {
		return time.Time{}, errors.New("in the past")
	}
	// Rounded up: the switch is never earlier than asked.
	return now.Add(d + time.Second - 1).Truncate(time.Second), nil
}
