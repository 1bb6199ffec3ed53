package tunnel

import "testing"

// allocsPerCall is testing.AllocsPerRun for code measured beside live tunnels.
// AllocsPerRun counts every allocation in the process, and the tunnels' own
// goroutines (timers, receive loops, logging) allocate when they please; on a loaded
// machine enough of that fell inside one measurement to fail it. Five measurements
// are taken and the smallest returned: an allocation the measured code makes on every
// call shows in all five, background work rarely lands in all of them.
func allocsPerCall(runs int, f func()) float64 {
	least := testing.AllocsPerRun(runs, f)
	for i := 1; i < 5 && least > 0; i++ {
		least = min(least, testing.AllocsPerRun(runs, f))
	}
	return least
}
