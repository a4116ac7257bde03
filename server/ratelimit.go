package server

import (
	"net/netip"

	"github.com/teredo-go/teredo/internal/ratelimit"
)

// RateLimit bounds what one source IPv4 address can make the server send,
// so that the server amplifies nobody's traffic: each source has a token
// bucket of Burst tokens refilled at PerSecond, and every datagram the
// server sends (an RA or a forwarded packet) costs one token of the source
// that caused it.
type RateLimit struct {
	// PerSecond is the refill rate. Zero means DefaultRatePerSecond; a
	// negative value disables the limit.
	PerSecond float64
	// Burst is the bucket size. Zero means DefaultRateBurst.
	Burst int
	// MaxSources bounds the table of buckets. Zero means
	// DefaultRateMaxSources. When the table is full of sources that are
	// still limited, new sources share a single overflow bucket, so that a
	// flood from many addresses can neither grow the table nor get more
	// than one bucket's worth through.
	MaxSources int
}

// Defaults of RateLimit. A client sends an RS every 30 s and a few
// bubbles and echo requests per peer; the rate leaves room for many clients
// behind one carrier-grade NAT address.
const (
	DefaultRatePerSecond  = 50
	DefaultRateBurst      = 100
	DefaultRateMaxSources = 65536
)

func (r RateLimit) withDefaults() RateLimit {
	if r.PerSecond == 0 {
		r.PerSecond = DefaultRatePerSecond
	}
	if r.Burst <= 0 {
		r.Burst = DefaultRateBurst
	}
	if r.MaxSources <= 0 {
		r.MaxSources = DefaultRateMaxSources
	}
	return r
}

// newLimiter returns the per-source table for r (nil, allowing everything,
// when r is disabled).
func newLimiter(r RateLimit) *ratelimit.Table {
	r = r.withDefaults()
	return ratelimit.NewTable(ratelimit.Rate{PerSecond: r.PerSecond, Burst: r.Burst}, r.MaxSources)
}

// sourceKey is the rate-limit key of a source address: its IPv4 address,
// or all 16 bytes of anything else.
func sourceKey(a netip.Addr) ratelimit.Key {
	if a = a.Unmap(); !a.Is4() {
		return a.As16()
	}
	var k ratelimit.Key
	a4 := a.As4()
	copy(k[:], a4[:])
	return k
}
