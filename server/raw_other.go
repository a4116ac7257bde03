//go:build !linux

package server

// RawIPv6 is an IPv6Output on a raw IPv6 socket; it is available on Linux
// only.
type RawIPv6 struct{}

// OpenRawIPv6 returns ErrRawUnsupported outside Linux.
func OpenRawIPv6() (*RawIPv6, error) { return nil, ErrRawUnsupported }

// WriteIPv6 implements IPv6Output.
func (r *RawIPv6) WriteIPv6(pkt []byte) error { return ErrRawUnsupported }

// Close does nothing.
func (r *RawIPv6) Close() error { return nil }
