package relay

import (
	"encoding/binary"
	"sync"
	"time"
)

// gcra is a token bucket kept as one theoretical arrival time (the generic
// cell rate algorithm): a packet conforms if it arrives no earlier than
// burst intervals before tat. The zero value allows a first burst.
type gcra struct {
	tat int64 // nanoseconds on the limiter's time base
}

func (g *gcra) allow(now int64, interval time.Duration, burst int) bool {
	iv := int64(interval)
	tat := max(g.tat, now)
	if tat-now > iv*int64(burst-1) {
		return false
	}
	g.tat = tat + iv
	return true
}

// sourceLimiter rate-limits the slow path per source: a fixed array of
// buckets indexed by a keyed hash of the source, so that its memory is
// bounded whatever the number of sources. Sources that share a bucket share
// a budget; the key keeps an attacker from choosing collisions on purpose.
type sourceLimiter struct {
	interval time.Duration
	burst    int
	key      uint64

	mu      sync.Mutex
	buckets []gcra
}

func newSourceLimiter(n int, perSecond, burst int, key uint64) *sourceLimiter {
	if perSecond <= 0 {
		return nil
	}
	return &sourceLimiter{
		interval: time.Second / time.Duration(perSecond),
		burst:    max(burst, 1),
		key:      key,
		buckets:  make([]gcra, n),
	}
}

// allow reports whether a packet whose source is described by the 16 bytes
// k conforms. A nil limiter allows everything.
func (l *sourceLimiter) allow(k [16]byte, now int64) bool {
	if l == nil {
		return true
	}
	h := mix(binary.BigEndian.Uint64(k[:8])^l.key) ^ mix(binary.BigEndian.Uint64(k[8:])+l.key)
	i := h % uint64(len(l.buckets))
	l.mu.Lock()
	ok := l.buckets[i].allow(now, l.interval, l.burst)
	l.mu.Unlock()
	return ok
}

// mix is the splitmix64 finaliser.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
