package socksd

import (
	"log/slog"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/teredo-go/teredo/clock"
)

// TestIPv6Path checks -ipv6: auto follows the route probe, checked again
// every PathCheckInterval on the injected clock; teredo and direct never
// ask.
func TestIPv6Path(t *testing.T) {
	fake := clock.NewFake(time.Unix(1_700_000_000, 0))
	log := slog.New(slog.DiscardHandler)
	var route atomic.Bool
	var probes atomic.Int32
	probe := func() bool { probes.Add(1); return route.Load() }

	var changes []bool
	auto := newIPv6Path("auto", probe, fake, log, func(native bool) { changes = append(changes, native) })
	if auto.native() || auto.String() != "teredo" || probes.Load() != 1 {
		t.Fatalf("auto without a route: %v after %d probes", auto, probes.Load())
	}
	route.Store(true)
	fake.Advance(PathCheckInterval - time.Millisecond)
	if auto.native() {
		t.Fatal("checked before the interval")
	}
	fake.Advance(time.Millisecond)
	if !auto.native() || auto.String() != "native" {
		t.Fatal("auto did not move to the native route")
	}
	route.Store(false)
	fake.Advance(PathCheckInterval)
	if auto.native() {
		t.Fatal("auto stayed native after the route went")
	}
	if len(changes) != 2 || !changes[0] || changes[1] {
		t.Fatalf("changes announced: %v", changes)
	}
	auto.stop()
	n := probes.Load()
	fake.Advance(10 * PathCheckInterval)
	if probes.Load() != n || fake.Pending() != 0 {
		t.Fatalf("probing after stop: %d → %d, %d timers", n, probes.Load(), fake.Pending())
	}

	// teredo never asks; direct is always native and asks only for
	// /healthz's sake.
	route.Store(true)
	probes.Store(0)
	tp := newIPv6Path("teredo", probe, fake, log, nil)
	fake.Advance(PathCheckInterval)
	if tp.native() || probes.Load() != 0 {
		t.Errorf("teredo: native %v after %d probes", tp.native(), probes.Load())
	}
	tp.stop()
	dp := newIPv6Path("direct", probe, fake, log, func(bool) { t.Error("direct announced a path change") })
	route.Store(false)
	fake.Advance(PathCheckInterval)
	if !dp.native() || dp.up() {
		t.Errorf("direct without a route: native %v, up %v", dp.native(), dp.up())
	}
	dp.stop()
}

func TestNativeSource(t *testing.T) {
	for a, want := range map[string]bool{
		"2001:db8:1::10":                       true,
		"2a00:1450::1":                         true,
		"2001:0:4136:e378:8000:63bf:3fff:fdd2": false, // Teredo
		"fd00::1":                              false,
		"fe80::1":                              false,
		"::1":                                  false,
		"::ffff:192.0.2.1":                     false,
		"192.0.2.1":                            false,
	} {
		if got := nativeSource(netip.MustParseAddr(a)); got != want {
			t.Errorf("nativeSource(%s) = %v", a, got)
		}
	}
}
