package main

// seed_stmts.go: what seed rotate needs of the statements branch (issue 15, H2), stubbed
// until it lands. Replaced at the merge.

import (
	"crypto/ed25519"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/internal/status"
)

func configAdmins(cfg *config.Config) []ed25519.PublicKey { return nil }

func statusRevoked(st status.Status) []revokedMember { return nil }
