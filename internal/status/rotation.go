package status

import "time"

// Rotation is the in-band seed rotation a node holds (docs/status-schema.md): the
// admin's ROTATE statement whose next seed it has staged and offers to members whose
// sessions come up while the transition lasts.
type Rotation struct {
	// NextID is the short id (8 hex digits) of the next seed, as the seed's own line.
	NextID string `json:"next_id"`
	// Admin is the key (base64 Ed25519) that signed the statement, Issued when.
	Admin  string    `json:"admin"`
	Issued time.Time `json:"issued"`
	// From is when the network initiates with the next seed; Until when the current one
	// stops being accepted.
	From  time.Time `json:"from"`
	Until time.Time `json:"until"`
	// Excluded counts the members the statement leaves out (revoked ones among them).
	Excluded int `json:"excluded"`
	// Offered counts the members this node has sent the next seed to.
	Offered int `json:"offered"`
}
