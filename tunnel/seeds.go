package tunnel

// seeds.go applies the seed file to the node: which seeds it accepts and which one it
// initiates with at each moment of a rotation (docs/configuration.md, "Seed and key
// files").

import (
	"errors"
	"time"
)

// errSeedNotYet: StageSeed is being built (issue 15); until then it refuses.
var errSeedNotYet = errors.New("staging a next seed is not implemented yet")

// StageSeed makes next the network's next seed, used to initiate from from on and the
// only one accepted from until on: it rewrites interface.seed_file (the current seed,
// the network line and next, atomically, mode 0600) and applies it. Staging the same
// next seed again changes nothing; a different next seed while one is staged is refused
// unless from and until are both later than the staged ones (a newer rotation).
func (t *Tunnel) StageSeed(next [32]byte, from, until time.Time) error {
	return errSeedNotYet
}
