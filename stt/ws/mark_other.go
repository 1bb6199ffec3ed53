//go:build !linux

package ws

import (
	"errors"
	"syscall"
)

// markControl fails: firewall marks are a Linux feature.
func markControl(uint32) func(network, address string, c syscall.RawConn) error {
	return func(string, string, syscall.RawConn) error {
		return errors.New("fwmark (SO_MARK) is only supported on Linux")
	}
}
