package main

import (
	"errors"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
)

// durationHelp ends the usage text of every duration flag.
const durationHelp = "`DURATION` with a unit (500ms, 2s, 1m30s) or plain seconds (0.2, 5)"

// secondsOrDuration is the value of a duration flag: Go's duration syntax, or a plain
// number of seconds as ping(8) and timeout(1) take them ("-i 0.2", "-W 1").
type secondsOrDuration struct{ d time.Duration }

func (v *secondsOrDuration) Set(s string) error {
	d, err := parseSecondsOrDuration(s)
	if err != nil {
		return err
	}
	v.d = d
	return nil
}

func (v *secondsOrDuration) String() string {
	if v == nil {
		return ""
	}
	return v.d.String()
}

// parseSecondsOrDuration parses "250ms", "1m30s", or plain seconds such as "0.2" or "5".
func parseSecondsOrDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if f, err := strconv.ParseFloat(s, 64); err == nil && !strings.ContainsAny(s, "xXpPeEiInN_") {
		sec := f * float64(time.Second)
		if math.IsNaN(sec) || sec > math.MaxInt64 || sec < math.MinInt64 {
			return 0, errors.New("out of range")
		}
		return time.Duration(math.Round(sec)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, errors.New("want a duration such as 500ms or 2s, or plain seconds")
	}
	return d, nil
}

// durationFlag is a flag that takes a duration or plain seconds; read it with
// flagDuration.
func durationFlag(name string, aliases []string, usage string, def time.Duration) *cli.GenericFlag {
	return &cli.GenericFlag{
		Name:    name,
		Aliases: aliases,
		Usage:   usage + "; " + durationHelp,
		Value:   &secondsOrDuration{d: def},
	}
}

// flagDuration is the value of a flag made by durationFlag.
func flagDuration(c *cli.Context, name string) time.Duration {
	if v, ok := c.Generic(name).(*secondsOrDuration); ok {
		return v.d
	}
	return 0
}
