package status

import "time"

// Rotation is what a seed rotation commanded in band adds to the seed object
// (docs/status-schema.md): the admin's ROTATE statement whose next seed this node
// staged, and how far it handed the seed on.
type Rotation struct {
	// Admin is the key (base64 Ed25519) that signed the statement, Issued when.
	Admin  string    `json:"admin"`
	Issued time.Time `json:"issued"`
	// Excluded counts the members the statement leaves out (the revoked ones among them).
	Excluded int `json:"excluded"`
	// Offered counts the members this node has sent the next seed to.
	Offered int `json:"offered"`
}
