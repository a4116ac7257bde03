package client

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// TestNoServerYet starts a client whose caller has not resolved any
// server: it waits offline, backing off, asks for servers at each backoff,
// and qualifies once SetServers gives it one.
func TestNoServerYet(t *testing.T) {
	var backoffs []time.Duration
	h := newHarness(t, func(c *Config) {
		c.Servers = nil
		c.OnBackoff = func(d time.Duration) { backoffs = append(backoffs, d) }
	})
	if err := h.c.Start(); err != nil {
		t.Fatal(err)
	}
	if st := h.c.Status().State; st != StateOffline {
		t.Fatalf("state %v with no server", st)
	}
	ev := h.takeEvents()
	if len(ev) != 1 || !errors.Is(ev[0].(Offline).Reason, ErrNoServer) {
		t.Fatalf("events %v", ev)
	}
	h.advance(MinRetryDelay)
	h.advance(2 * MinRetryDelay)
	if want := []time.Duration{MinRetryDelay, 2 * MinRetryDelay, 4 * MinRetryDelay}; !slices.Equal(backoffs, want) {
		t.Fatalf("backoffs %v, want %v", backoffs, want)
	}
	if len(h.net.take()) != 0 {
		t.Fatal("sent something with no server")
	}
	// The first server list starts a round at once.
	if err := h.c.SetServers([]netip.Addr{server1}); err != nil {
		t.Fatal(err)
	}
	r := h.takeRS()
	if len(r) != 1 || r[0].to != ap(server1) {
		t.Fatalf("RS %+v", r)
	}
	h.c.Receive(ra(r[0], server1, mappedUs, 0), ap(server1))
	if _, ok := h.c.Addr(); !ok {
		t.Fatal("not qualified")
	}
}

func TestSetServersValidates(t *testing.T) {
	h := newHarness(t, nil)
	if err := h.c.SetServers([]netip.Addr{netip.MustParseAddr("10.0.0.1")}); err == nil {
		t.Fatal("private server accepted")
	}
	if err := h.c.SetServers([]netip.Addr{netip.MustParseAddr("2001:db8::1")}); err == nil {
		t.Fatal("IPv6 server accepted")
	}
}

// TestSetServersWhileOffline replaces a failing list during the backoff:
// the next cycle uses the new list from its start.
func TestSetServersWhileOffline(t *testing.T) {
	var backoffs int
	h := newHarness(t, func(c *Config) {
		c.OnBackoff = func(time.Duration) { backoffs++ }
	})
	h.c.Start()
	for range QualificationTries {
		if r := h.takeRS(); len(r) != 1 || r[0].to != ap(server1) {
			t.Fatalf("%+v", r)
		}
		h.advance(QualificationDelay)
	}
	if backoffs != 1 || h.c.Status().State != StateOffline {
		t.Fatalf("backoffs %d, state %v", backoffs, h.c.Status().State)
	}
	h.c.SetServers([]netip.Addr{server2, server1})
	if len(h.net.take()) != 0 {
		t.Fatal("the backoff was cut short")
	}
	h.advance(MinRetryDelay)
	if r := h.takeRS(); len(r) != 1 || r[0].to != ap(server2) {
		t.Fatalf("after the backoff: %+v", r)
	}
}

// TestSetServersDropsCurrent removes the server being tried: it finishes
// its tries, then the new list is tried in full before any backoff.
func TestSetServersDropsCurrent(t *testing.T) {
	var backoffs int
	h := newHarness(t, func(c *Config) {
		c.OnBackoff = func(time.Duration) { backoffs++ }
	})
	h.c.Start()
	h.takeRS()
	h.c.SetServers([]netip.Addr{server2})
	for range QualificationTries - 1 {
		h.advance(QualificationDelay)
		if r := h.takeRS(); len(r) != 1 || r[0].to != ap(server1) {
			t.Fatalf("%+v", r)
		}
	}
	h.advance(QualificationDelay)
	if r := h.takeRS(); len(r) != 1 || r[0].to != ap(server2) || backoffs != 0 {
		t.Fatalf("after server1 failed: %+v, %d backoffs", r, backoffs)
	}
	for range QualificationTries {
		h.advance(QualificationDelay)
	}
	if backoffs != 1 {
		t.Fatalf("%d backoffs after the new list failed", backoffs)
	}
}
