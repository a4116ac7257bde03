// Package clock abstracts time so that the Teredo role state machines can be
// driven by the real clock in production and by a fake one in tests.
package clock

import "time"

// Clock tells the time and schedules callbacks. Implementations must be safe
// for concurrent use.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// AfterFunc calls f in its own goroutine (real clock) or synchronously
	// from Fake.Advance (fake clock) once d has elapsed.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a scheduled callback.
type Timer interface {
	// Stop prevents the callback from running. It reports whether the call
	// stopped the timer, as time.Timer.Stop does.
	Stop() bool
	// Reset reschedules the callback to run after d. It reports whether the
	// timer had been active.
	Reset(d time.Duration) bool
}

// Real is the system clock.
type Real struct{}

// Now returns time.Now().
func (Real) Now() time.Time { return time.Now() }

// AfterFunc wraps time.AfterFunc.
func (Real) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }
