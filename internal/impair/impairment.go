package impair

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Impairment is what happens to the datagrams of one direction. The zero value
// forwards everything at once, unchanged.
//
// The stages, in the order a datagram meets them: black hole, loss, corruption,
// duplication, the rate limit (a token bucket with a bounded backlog, like the
// bottleneck link of a path), then delay and jitter (propagation), then reordering.
type Impairment struct {
	// BlackHole drops every datagram.
	BlackHole bool
	// Loss is the probability, 0 to 1, that a datagram is dropped.
	Loss float64
	// Corrupt is the probability that one byte of a datagram is changed (XOR with a
	// random non-zero value at a random offset).
	Corrupt float64
	// Duplicate is the probability that a datagram is sent twice.
	Duplicate float64
	// Rate limits the direction to this many bytes per second; 0 means no limit.
	// Datagrams beyond the bucket wait for tokens; one that would wait beyond a
	// backlog of QueueBytes is dropped.
	Rate int64
	// Burst is the token bucket's depth in bytes; 0 means max(Rate/50, 3000).
	Burst int
	// QueueBytes bounds the backlog waiting for tokens; 0 means 64 KiB.
	QueueBytes int
	// Delay holds every datagram this long.
	Delay time.Duration
	// Jitter adds a uniformly random extra delay in [0, Jitter]. As on a real path,
	// jitter larger than the gap between datagrams reorders them.
	Jitter time.Duration
	// Reorder is the probability that a datagram is held back until ReorderDepth
	// later datagrams of the same direction have been sent (or, when traffic stops,
	// until ReorderTimeout has passed), so that those overtake it.
	Reorder float64
	// ReorderDepth is how many later datagrams overtake a held one; 0 means 1.
	ReorderDepth int
}

// ReorderTimeout bounds how long a datagram is held back for reordering when no later
// datagram comes to overtake it.
const ReorderTimeout = 50 * time.Millisecond

func (im Impairment) burst() float64 {
	if im.Burst > 0 {
		return float64(im.Burst)
	}
	return max(float64(im.Rate)/50, 3000)
}

func (im Impairment) queueBytes() float64 {
	if im.QueueBytes > 0 {
		return float64(im.QueueBytes)
	}
	return 64 << 10
}

func (im Impairment) reorderDepth() int { return max(im.ReorderDepth, 1) }

// Validate reports a setting outside its range.
func (im Impairment) Validate() error {
	for _, p := range []struct {
		name string
		v    float64
	}{{"loss", im.Loss}, {"corrupt", im.Corrupt}, {"duplicate", im.Duplicate}, {"reorder", im.Reorder}} {
		if p.v < 0 || p.v > 1 || p.v != p.v {
			return fmt.Errorf("impair: %s = %v must be between 0 and 1", p.name, p.v)
		}
	}
	switch {
	case im.Rate < 0 || im.Burst < 0 || im.QueueBytes < 0:
		return fmt.Errorf("impair: rate, burst and queue must not be negative")
	case im.Delay < 0 || im.Jitter < 0:
		return fmt.Errorf("impair: delay and jitter must not be negative")
	case im.ReorderDepth < 0:
		return fmt.Errorf("impair: reorder depth must not be negative")
	}
	return nil
}

// String formats im in the syntax ParseImpairment reads; "none" for the zero value.
func (im Impairment) String() string {
	var parts []string
	if im.BlackHole {
		parts = append(parts, "blackhole")
	}
	prob := func(name string, v float64) {
		if v != 0 {
			parts = append(parts, name+"="+strconv.FormatFloat(v, 'g', -1, 64))
		}
	}
	dur := func(name string, d time.Duration) {
		if d != 0 {
			parts = append(parts, name+"="+d.String())
		}
	}
	num := func(name string, v int64) {
		if v != 0 {
			parts = append(parts, name+"="+strconv.FormatInt(v, 10))
		}
	}
	prob("loss", im.Loss)
	prob("corrupt", im.Corrupt)
	prob("dup", im.Duplicate)
	num("rate", im.Rate)
	num("burst", int64(im.Burst))
	num("queue", int64(im.QueueBytes))
	dur("delay", im.Delay)
	dur("jitter", im.Jitter)
	prob("reorder", im.Reorder)
	num("reorder-depth", int64(im.ReorderDepth))
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " ")
}

// ParseImpairment reads an impairment written as space-separated settings, as the
// stt-impair command takes them:
//
//	loss=5% delay=20ms jitter=5ms reorder=0.02 reorder-depth=3 dup=1% corrupt=0.001
//	rate=1M burst=30k queue=64k blackhole
//
// Probabilities are fractions or percentages; rate, burst and queue are bytes (per
// second for rate) with an optional k, M or G suffix (powers of 1000). "none" or an
// empty string is the zero Impairment.
func ParseImpairment(s string) (Impairment, error) {
	var im Impairment
	for _, f := range strings.Fields(s) {
		if f == "none" {
			continue
		}
		if f == "blackhole" {
			im.BlackHole = true
			continue
		}
		key, val, ok := strings.Cut(f, "=")
		if !ok {
			return Impairment{}, fmt.Errorf("impair: %q: want key=value", f)
		}
		var err error
		switch key {
		case "loss":
			im.Loss, err = parseProb(val)
		case "corrupt":
			im.Corrupt, err = parseProb(val)
		case "dup", "duplicate":
			im.Duplicate, err = parseProb(val)
		case "reorder":
			im.Reorder, err = parseProb(val)
		case "delay":
			im.Delay, err = time.ParseDuration(val)
		case "jitter":
			im.Jitter, err = time.ParseDuration(val)
		case "rate":
			im.Rate, err = parseSize(val)
		case "burst", "queue", "reorder-depth":
			var v int64
			v, err = parseSize(val)
			if err == nil && v > 1<<31 {
				err = fmt.Errorf("too large")
			}
			switch key {
			case "burst":
				im.Burst = int(v)
			case "queue":
				im.QueueBytes = int(v)
			default:
				im.ReorderDepth = int(v)
			}
		case "blackhole":
			im.BlackHole, err = strconv.ParseBool(val)
		default:
			return Impairment{}, fmt.Errorf("impair: unknown setting %q", key)
		}
		if err != nil {
			return Impairment{}, fmt.Errorf("impair: %s: %w", f, err)
		}
	}
	return im, im.Validate()
}

func parseProb(s string) (float64, error) {
	if p, ok := strings.CutSuffix(s, "%"); ok {
		v, err := strconv.ParseFloat(p, 64)
		return v / 100, err
	}
	return strconv.ParseFloat(s, 64)
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "k"), strings.HasSuffix(s, "K"):
		mult = 1e3
	case strings.HasSuffix(s, "M"):
		mult = 1e6
	case strings.HasSuffix(s, "G"):
		mult = 1e9
	}
	if mult != 1 {
		s = s[:len(s)-1]
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, err
	}
	if v < 0 || v > (1<<62)/mult {
		return 0, fmt.Errorf("out of range")
	}
	return v * mult, nil
}
