package tunnel

import "github.com/stt-tun/stt-tun/stt/mesh"

// rotationAccepted is called when a ROTATE statement is taken (statementAccepted). The
// seed rotation (SEED_OFFER, StageSeed) is H3's; until it lands, the statement is only
// kept and gossiped.
func (t *Tunnel) rotationAccepted(st *mesh.Statement) {}
