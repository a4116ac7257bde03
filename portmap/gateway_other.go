//go:build !linux

package portmap

import (
	"errors"
	"net/netip"
)

// DefaultGateway is implemented on Linux only; elsewhere set
// Config.Gateway.
func DefaultGateway() (netip.Addr, error) {
	return netip.Addr{}, errors.New("portmap: default gateway lookup not implemented on this system")
}
