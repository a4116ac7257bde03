package server

import (
	"math"
	"net/netip"
	"sync"
	"time"
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

// bucket holds tokens as of last (nanoseconds since the limiter's epoch),
// so that the map holds no pointers for the collector to scan.
type bucket struct {
	tokens float64
	last   int64
}

// limiter is the per-source token bucket table.
type limiter struct {
	disabled bool
	rate     float64 // tokens per nanosecond
	burst    float64
	max      int
	epoch    time.Time
	full     int64 // nanoseconds for an empty bucket to refill

	mu        sync.Mutex
	buckets   map[[4]byte]bucket
	overflow  bucket
	lastSweep int64
}

func newLimiter(r RateLimit, now time.Time) *limiter {
	r = r.withDefaults()
	l := &limiter{
		disabled: r.PerSecond < 0,
		rate:     r.PerSecond / 1e9,
		burst:    float64(r.Burst),
		max:      r.MaxSources,
		epoch:    now,
	}
	if l.disabled {
		return l
	}
	// At a rate so low that an empty bucket takes longer than int64
	// nanoseconds to refill, the conversion would wrap to a negative
	// period, and every packet would sweep the whole table.
	if f := l.burst / l.rate; f < math.MaxInt64 {
		l.full = int64(f) + 1
	} else {
		l.full = math.MaxInt64
	}
	l.buckets = make(map[[4]byte]bucket, min(r.MaxSources, 1024))
	l.overflow = bucket{tokens: l.burst}
	l.lastSweep = -l.full
	return l
}

// allow takes a token from src's bucket and reports whether there was one.
func (l *limiter) allow(src netip.Addr, now time.Time) bool {
	if l.disabled {
		return true
	}
	t := now.Sub(l.epoch).Nanoseconds()
	key := src.As4()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	switch {
	case ok:
	case len(l.buckets) < l.max || l.sweep(t):
		b = bucket{tokens: l.burst, last: t}
	default:
		return l.take(&l.overflow, t)
	}
	allowed := l.take(&b, t)
	l.buckets[key] = b
	return allowed
}

func (l *limiter) take(b *bucket, t int64) bool {
	if d := t - b.last; d > 0 {
		b.tokens = min(l.burst, b.tokens+float64(d)*l.rate)
		b.last = t
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// sweep deletes the buckets that have refilled completely, which are the
// same as absent ones, and reports whether room was made. It scans the
// table at most once per refill period so that a full table under a flood
// costs O(1) per packet.
func (l *limiter) sweep(t int64) bool {
	if t-l.lastSweep < l.full {
		return false
	}
	l.lastSweep = t
	for k, b := range l.buckets {
		if t-b.last >= l.full {
			delete(l.buckets, k)
		}
	}
	return len(l.buckets) < l.max
}

// sources returns the number of buckets in the table.
func (l *limiter) sources() int {
	if l.disabled {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}
