//go:build !linux

package udp

import "golang.zx2c4.com/wireguard/conn"

// New returns wireguard/conn's StdNetBind: the Bind of this package is Linux only.
func New() conn.Bind { return conn.NewStdNetBind() }
