package server

import (
	"net/netip"
	"testing"
	"time"
)

// TestLimiterTinyRate checks that a rate too low for a bucket to refill
// within int64 nanoseconds still limits: the table is neither swept nor
// bypassed, and new sources share the overflow bucket.
func TestLimiterTinyRate(t *testing.T) {
	epoch := time.Unix(1e9, 0)
	for _, rate := range []float64{1e-12, 5e-324} {
		l := newLimiter(RateLimit{PerSecond: rate, Burst: 1, MaxSources: 2}, epoch)
		if l.full <= 0 {
			t.Fatalf("rate %v: refill period %d", rate, l.full)
		}
		src := func(i byte) netip.Addr { return netip.AddrFrom4([4]byte{198, 51, 100, i}) }
		later := epoch.Add(time.Hour)
		steps := []struct {
			src  byte
			at   time.Time
			want bool
		}{
			{1, epoch, true},
			{1, epoch, false},
			{2, epoch, true},
			{3, later, true},  // the overflow bucket's token
			{4, later, false}, // the overflow bucket is empty
			{1, later, false}, // still limited: not swept away
		}
		for i, s := range steps {
			if got := l.allow(src(s.src), s.at); got != s.want {
				t.Fatalf("rate %v, step %d (source %d): allow = %v, want %v", rate, i, s.src, got, s.want)
			}
		}
		if n := l.sources(); n != 2 {
			t.Fatalf("rate %v: %d sources, want 2", rate, n)
		}
	}
}
