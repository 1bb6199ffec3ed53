// Package mesh is the member layer of stt-tun (docs/protocol.md, "Member records and
// gossip"): every member of a network publishes a record signed with its Ed25519 key
// (its name, addresses, served prefixes, candidate endpoints), and members spread the
// records to one another over their STT sessions by flooding and by a periodic
// digest/want exchange, so that each learns every other member without a central server.
//
// The package is pure protocol: it opens no sockets, starts no goroutines and keeps no
// package-level state. The node hands it the control messages it receives (Engine.Handle),
// tells it when sessions come up and time passes (SessionUp, Tick), and gives it a Send
// function for the messages it wants to send. Identities and addresses are derived from
// keys and the network seed here too, so every part of stt-tun derives them the same way.
//
// It also encodes the NAT traversal messages (PUNCH_REQUEST, PUNCH, RELAY_*; natmsg.go),
// which the node handles itself, and tells the node's NAT type from what members
// observed of it (ClassifyNAT).
//
// Signed statements (statement.go, StatementStore) are the network-wide commands of an
// admin key: revoke a member, rotate the seed.
package mesh
