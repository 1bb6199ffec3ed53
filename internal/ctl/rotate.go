package ctl

import (
	"context"
	"errors"
)

// Rotate gives the daemon a signed ROTATE statement and its next seed (op rotate) and
// returns to how many members it offered the seed at once.
func Rotate(ctx context.Context, sock string, statement []byte, next [32]byte) (int, error) {
	return 0, errors.New("not yet")
}
