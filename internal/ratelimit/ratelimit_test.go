package ratelimit

import (
	"sync"
	"testing"
	"time"
)

var t0 = time.Unix(1e9, 0)

func TestLimiter(t *testing.T) {
	l := NewLimiter(Rate{PerSecond: 4, Burst: 2})
	now := t0
	for i, want := range []bool{true, true, false} {
		if l.Allow(now) != want {
			t.Fatalf("call %d at start: want %v", i, want)
		}
	}
	now = now.Add(250 * time.Millisecond) // one token
	if !l.Allow(now) || l.Allow(now) {
		t.Fatal("one token after 250 ms")
	}
	if l.Allow(now.Add(-time.Second)) {
		t.Fatal("a clock going back filled the bucket")
	}
	now = now.Add(time.Hour) // capped at the burst
	for i, want := range []bool{true, true, false} {
		if l.Allow(now) != want {
			t.Fatalf("call %d after an hour: want %v", i, want)
		}
	}
}

// TestRates checks the average rate over a minute (or 1000 tokens) for rates from one a
// minute to many a millisecond, including fractions of a token a second.
func TestRates(t *testing.T) {
	for _, tc := range []struct {
		perSecond float64
		burst     int
	}{{1.0 / 60, 1}, {0.5, 3}, {10, 10}, {1000, 1}, {1e5, 100}} {
		l := NewLimiter(Rate{PerSecond: tc.perSecond, Burst: tc.burst})
		step := max(time.Duration(float64(time.Second)/tc.perSecond/4), time.Microsecond)
		window := min(time.Minute, time.Duration(1000/tc.perSecond*float64(time.Second)))
		n := 0
		for at := time.Duration(0); at < window; at += step {
			if l.Allow(t0.Add(at)) {
				n++
			}
		}
		want := float64(tc.burst) + tc.perSecond*window.Seconds()
		if float64(n) < want-2 || float64(n) > want+1 {
			t.Errorf("%v/s burst %d: %d in %v, want about %.0f", tc.perSecond, tc.burst, n, window, want)
		}
	}
}

func TestDisabled(t *testing.T) {
	r := Rate{PerSecond: -1, Burst: 1}
	if l := NewLimiter(r); l != nil || !l.Allow(t0) {
		t.Error("a negative rate does not disable the limiter")
	}
	tb := NewTable(r, 1)
	for i := range 100 {
		if tb != nil || !tb.Allow(Key{byte(i)}, t0) || tb.Len() != 0 {
			t.Fatal("a negative rate does not disable the table")
		}
	}
}

// TestTableTinyRate checks that a rate too low for a bucket to refill
// within int64 nanoseconds (or zero) still limits: the table is neither
// swept nor bypassed, and new sources share the overflow bucket.
func TestTableTinyRate(t *testing.T) {
	for _, rate := range []float64{1e-12, 5e-324, 0} {
		l := NewTable(Rate{PerSecond: rate, Burst: 1}, 2)
		later := t0.Add(time.Hour)
		steps := []struct {
			src  byte
			at   time.Time
			want bool
		}{
			{1, t0, true},
			{1, t0, false},
			{2, t0, true},
			{3, later, true},  // the overflow bucket's token
			{4, later, false}, // the overflow bucket is empty
			{1, later, false}, // still limited: not swept away
		}
		for i, s := range steps {
			if got := l.Allow(Key{s.src}, s.at); got != s.want {
				t.Fatalf("rate %v, step %d (source %d): allow = %v, want %v", rate, i, s.src, got, s.want)
			}
		}
		if n := l.Len(); n != 2 {
			t.Fatalf("rate %v: %d sources, want 2", rate, n)
		}
	}
}

// TestTableSweep checks that sources whose buckets refilled leave a full
// table, so that new sources get their own buckets again.
func TestTableSweep(t *testing.T) {
	l := NewTable(Rate{PerSecond: 1, Burst: 2}, 2)
	for _, k := range []byte{1, 2} {
		l.Allow(Key{k}, t0)
	}
	if !l.Allow(Key{3}, t0) || !l.Allow(Key{4}, t0) || l.Allow(Key{5}, t0) {
		t.Fatal("full table: the overflow bucket should give its burst of 2, then refuse")
	}
	later := t0.Add(2 * time.Second) // every bucket refilled
	if !l.Allow(Key{6}, later) || !l.Allow(Key{6}, later) || l.Allow(Key{6}, later) {
		t.Fatal("after the refill period a new source should have its own bucket")
	}
	if n := l.Len(); n != 1 {
		t.Fatalf("%d sources after the sweep, want 1", n)
	}
}

func TestTableConcurrent(t *testing.T) {
	l := NewTable(Rate{PerSecond: 1, Burst: 10}, 4)
	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed := 0
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				if l.Allow(Key{byte(g % 2)}, t0) {
					mu.Lock()
					allowed++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if allowed != 20 {
		t.Fatalf("%d allowed from two sources with a burst of 10, want 20", allowed)
	}
}

func BenchmarkTableAllow(b *testing.B) {
	l := NewTable(Rate{PerSecond: 1e9, Burst: 1 << 20}, 4096)
	now := t0
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		l.Allow(Key{byte(i), byte(i >> 8)}, now)
	}
}
