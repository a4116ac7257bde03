// Package ratelimit is the token bucket of the client, server and relay:
// one bucket for a whole role (Limiter) or one per source in a bounded
// table (Table), with one rule for turning a limit off (a negative rate).
//
// A bucket is kept as its theoretical arrival time (the generic cell rate
// algorithm): a packet conforms if it arrives no earlier than burst-1
// intervals before that time, which is a token bucket of burst tokens
// refilled at rate, held in one integer and without floating point on the
// packet path.
package ratelimit

import (
	"math"
	"sync"
	"time"
)

// Rate is a limit: PerSecond tokens a second on average, Burst at once. A
// negative PerSecond turns the limit off (the one way to disable a limit in
// this module); the roles replace zero values with their defaults before
// they get here.
type Rate struct {
	PerSecond float64
	Burst     int
}

// Disabled reports whether r turns the limit off.
func (r Rate) Disabled() bool { return r.PerSecond < 0 }

// interval returns the nanoseconds per token and the tolerance (burst-1
// intervals), both saturated: a rate so low that a token takes longer than
// int64 nanoseconds limits forever instead of wrapping around.
func (r Rate) interval() (iv, tol int64) {
	f := float64(time.Second) / r.PerSecond
	if !(f < math.MaxInt64) { // also NaN and +Inf (a zero rate)
		iv = math.MaxInt64
	} else {
		iv = max(int64(f), 1)
	}
	return iv, mulSat(iv, int64(max(r.Burst, 1)-1))
}

func mulSat(a, b int64) int64 {
	if b != 0 && a > math.MaxInt64/b {
		return math.MaxInt64
	}
	return a * b
}

func addSat(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// Bucket is one token bucket; its zero value is full. It is not safe for
// concurrent use: Limiter and Table hold it under their locks.
type Bucket struct {
	tat int64 // theoretical arrival time, nanoseconds on the caller's time base
}

// allow takes a token at now if there is one. A time earlier than an
// earlier call's adds nothing (callers read clocks before taking locks, so
// times may come slightly out of order).
func (b *Bucket) allow(now, iv, tol int64) bool {
	tat := max(b.tat, now)
	if tat-now > tol {
		return false
	}
	b.tat = addSat(tat, iv)
	return true
}

// full reports whether the bucket has refilled completely by now, which
// makes it the same as a new one.
func (b *Bucket) full(now int64) bool { return b.tat <= now }

// Limiter is one bucket shared by all callers, safe for concurrent use. A
// nil *Limiter allows everything.
type Limiter struct {
	iv, tol int64

	mu sync.Mutex
	b  Bucket
}

// NewLimiter returns a full bucket for r, or nil if r is disabled.
func NewLimiter(r Rate) *Limiter {
	if r.Disabled() {
		return nil
	}
	iv, tol := r.interval()
	return &Limiter{iv: iv, tol: tol}
}

// Allow takes a token at now if there is one.
func (l *Limiter) Allow(now time.Time) bool {
	if l == nil {
		return true
	}
	t := now.UnixNano()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.allow(t, l.iv, l.tol)
}
