//go:build !linux

package ndproxy

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
)

// Stats counts what a Proxy did.
type Stats struct {
	Answered, OtherDest, DAD, Malformed, SendErrs uint64
}

// Proxy answers neighbor solicitations; it exists on Linux only.
type Proxy struct{}

// ErrUnsupported is returned by Open outside Linux.
var ErrUnsupported = errors.New("ndproxy: supported on Linux only")

// Open returns ErrUnsupported.
func Open(string, func(netip.Addr) bool, *slog.Logger) (*Proxy, error) { return nil, ErrUnsupported }

// Serve returns ErrUnsupported.
func (p *Proxy) Serve(context.Context) error { return ErrUnsupported }

// Stats returns zero counters.
func (p *Proxy) Stats() Stats { return Stats{} }
