package ratelimit

import (
	"sync"
	"time"
)

// Key identifies a source: an IPv4 address, or an IPv6 address or prefix,
// in 16 bytes.
type Key [16]byte

// Table is a bucket per source, bounded to a number of sources, and safe
// for concurrent use. When it is full of sources that are still limited,
// new sources share a single overflow bucket, so that a flood from many
// addresses can neither grow the table nor get more than one bucket's worth
// through. Buckets that have refilled completely are the same as absent
// ones and are swept out, at most once per refill period so that a full
// table under a flood costs O(1) per packet. A nil *Table allows
// everything.
type Table struct {
	iv, tol int64
	period  int64 // nanoseconds for an empty bucket to refill
	max     int

	mu        sync.Mutex
	buckets   map[Key]Bucket // no pointers for the collector to scan
	overflow  Bucket
	lastSweep int64
	swept     bool
}

// NewTable returns a table of at most maxSources buckets for r, or nil if r
// is disabled.
func NewTable(r Rate, maxSources int) *Table {
	if r.Disabled() {
		return nil
	}
	iv, tol := r.interval()
	maxSources = max(maxSources, 1)
	return &Table{
		iv: iv, tol: tol,
		period:  addSat(tol, iv),
		max:     maxSources,
		buckets: make(map[Key]Bucket, min(maxSources, 1024)),
	}
}

// Allow takes a token from k's bucket at now and reports whether there was
// one.
func (l *Table) Allow(k Key, now time.Time) bool {
	if l == nil {
		return true
	}
	t := now.UnixNano()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[k]
	if !ok && len(l.buckets) >= l.max && !l.sweep(t) {
		return l.overflow.allow(t, l.iv, l.tol)
	}
	allowed := b.allow(t, l.iv, l.tol)
	l.buckets[k] = b
	return allowed
}

// sweep deletes the buckets that have refilled completely and reports
// whether that made room.
func (l *Table) sweep(t int64) bool {
	if l.swept && t-l.lastSweep < l.period {
		return false
	}
	l.swept, l.lastSweep = true, t
	for k, b := range l.buckets {
		if b.full(t) {
			delete(l.buckets, k)
		}
	}
	return len(l.buckets) < l.max
}

// Len returns the number of sources in the table.
func (l *Table) Len() int {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}
