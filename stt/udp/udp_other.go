//go:build !linux

package udp

import (
	"errors"
	"net/netip"

	"golang.zx2c4.com/wireguard/conn"
)

// New returns wireguard/conn's StdNetBind: the Bind of this package is Linux only.
func New() conn.Bind { return conn.NewStdNetBind() }

// NewPMTUProbe is New: Don't Fragment is set on Linux only.
func NewPMTUProbe() conn.Bind { return conn.NewStdNetBind() }

// RouteMTU is not known outside Linux.
func RouteMTU(netip.Addr, uint32) (int, error) { return 0, errors.ErrUnsupported }
