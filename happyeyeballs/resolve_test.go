package happyeyeballs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/teredo-go/teredo/clock"
	"github.com/teredo-go/teredo/socks5"
)

// gatedLookup answers from a table, but each "ip6" or "ip4" lookup waits
// until the test lets it answer, so that tests choose which family's
// answer comes first, or that one never does.
type gatedLookup struct {
	table map[string][]string
	gates map[string]chan error // by network; nil: answer from the table
}

func newGatedLookup(table map[string][]string) *gatedLookup {
	return &gatedLookup{table: table, gates: map[string]chan error{"ip6": make(chan error), "ip4": make(chan error)}}
}

func (g *gatedLookup) lookup(ctx context.Context, network, host string) ([]netip.Addr, error) {
	gate, ok := g.gates[network]
	if !ok {
		return nil, fmt.Errorf("lookup of %q: want ip6 or ip4", network)
	}
	select {
	case err := <-gate:
		if err != nil {
			return nil, err
		}
		return fakeLookup(g.table)(ctx, network, host)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// answer lets the pending lookup of network return, with err if not nil.
func (g *gatedLookup) answer(t *testing.T, network string, err error) {
	t.Helper()
	select {
	case g.gates[network] <- err:
	case <-time.After(5 * time.Second):
		t.Fatalf("no %s lookup", network)
	}
}

// answerBoth answers the less preferred family first and, once its
// resolution delay runs, the preferred one: both are known before any
// attempt, in a set order.
func (g *gatedLookup) answerBoth(t *testing.T, fc *clock.Fake, preferV6 bool) {
	t.Helper()
	pref, other := "ip4", "ip6"
	if preferV6 {
		pref, other = other, pref
	}
	g.answer(t, other, nil)
	waitPending(t, fc, 1)
	g.answer(t, pref, nil)
}

// testCtx bounds a Dial or Resolve that a bug would leave waiting on a
// fake clock nobody advances.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

var errServFail = &net.DNSError{Err: "server misbehaving", Name: "both.example", IsTemporary: true}

// TestResolutionDelay checks RFC 8305 §3 with IPv6 preferred: connecting
// starts when AAAA answers, or when A has waited the resolution delay for
// it, or at once if AAAA fails.
func TestResolutionDelay(t *testing.T) {
	t0 := time.Unix(0, 0)
	tests := []struct {
		name string
		// script answers the lookups and moves the clock; it runs
		// while Dial waits.
		script  func(t *testing.T, lk *gatedLookup, fc *clock.Fake)
		first   string        // address of the first attempt
		firstAt time.Duration // when, on the fake clock
	}{
		{
			name: "AAAA a little after A",
			script: func(t *testing.T, lk *gatedLookup, fc *clock.Fake) {
				lk.answer(t, "ip4", nil)
				waitPending(t, fc, 1)
				fc.Advance(DefaultResolutionDelay - time.Millisecond)
				lk.answer(t, "ip6", nil)
			},
			first: "2001:db8::1", firstAt: DefaultResolutionDelay - time.Millisecond,
		},
		{
			name: "AAAA never answers",
			script: func(t *testing.T, lk *gatedLookup, fc *clock.Fake) {
				lk.answer(t, "ip4", nil)
				waitPending(t, fc, 1)
				fc.Advance(DefaultResolutionDelay - time.Millisecond)
				fc.Advance(time.Millisecond)
			},
			first: "192.0.2.1", firstAt: DefaultResolutionDelay,
		},
		{
			name: "AAAA fails after A",
			script: func(t *testing.T, lk *gatedLookup, fc *clock.Fake) {
				lk.answer(t, "ip4", nil)
				waitPending(t, fc, 1)
				lk.answer(t, "ip6", errServFail)
			},
			first: "192.0.2.1", firstAt: 0,
		},
		{
			name: "AAAA fails before A",
			script: func(t *testing.T, lk *gatedLookup, fc *clock.Fake) {
				lk.answer(t, "ip6", errServFail)
				lk.answer(t, "ip4", nil)
			},
			first: "192.0.2.1", firstAt: 0,
		},
		{
			name: "AAAA first",
			script: func(t *testing.T, lk *gatedLookup, fc *clock.Fake) {
				lk.answer(t, "ip6", nil) // A never answers
			},
			first: "2001:db8::1", firstAt: 0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fc := clock.NewFake(t0)
			var p pipeConns
			d := &scriptedDialer{started: make(chan string, 8), clock: fc, behavior: map[string]func(context.Context) (net.Conn, error){
				"2001:db8::1": p.succeed, "192.0.2.1": p.succeed,
			}}
			lk := newGatedLookup(dnsTable)
			r := &Dialer{Dial4: d.dial, Dial6: d.dial, Lookup: lk.lookup, PreferIPv6: true, Clock: fc}
			ctx := testCtx(t)
			out := make(chan dialOutcome, 1)
			go func() {
				c, err := r.DialContext(ctx, "tcp", "both.example:80")
				out <- dialOutcome{c, err}
			}()
			tt.script(t, lk, fc)
			waitStarted(t, d, tt.first)
			var o dialOutcome
			select {
			case o = <-out:
			case <-time.After(5 * time.Second):
				t.Fatal("Dial did not return")
			}
			if o.err != nil {
				t.Fatal(o.err)
			}
			o.c.Close()
			d.mu.Lock()
			defer d.mu.Unlock()
			if !slices.Equal(d.order, []string{tt.first}) {
				t.Errorf("attempts %v, want only %s", d.order, tt.first)
			}
			if at := d.at[tt.first].Sub(t0); at != tt.firstAt {
				t.Errorf("attempt to %s at %v, want %v", tt.first, at, tt.firstAt)
			}
		})
	}
}

// TestResolutionDelayPreferIPv4 checks that -prefer ipv4 makes A the
// answer connecting waits for.
func TestResolutionDelayPreferIPv4(t *testing.T) {
	fc := clock.NewFake(time.Unix(0, 0))
	var p pipeConns
	d := &scriptedDialer{started: make(chan string, 8), behavior: map[string]func(context.Context) (net.Conn, error){
		"2001:db8::1": p.succeed, "192.0.2.1": p.succeed,
	}}
	lk := newGatedLookup(dnsTable)
	r := &Dialer{Dial4: d.dial, Dial6: d.dial, Lookup: lk.lookup, Clock: fc}
	ctx := testCtx(t)
	out := make(chan dialOutcome, 1)
	go func() {
		c, err := r.DialContext(ctx, "tcp", "both.example:80")
		out <- dialOutcome{c, err}
	}()
	lk.answer(t, "ip6", nil)
	waitPending(t, fc, 1)
	lk.answer(t, "ip4", nil)
	waitStarted(t, d, "192.0.2.1")
	o := <-out // ctx bounds the wait
	if o.err != nil {
		t.Fatal(o.err)
	}
	o.c.Close()
}

// TestLookupFailures checks the error, and so the SOCKS reply, when no
// address comes out of the lookups.
func TestLookupFailures(t *testing.T) {
	nx := &net.DNSError{Err: "no such host", Name: "both.example", IsNotFound: true}
	timeout := &net.DNSError{Err: "i/o timeout", Name: "both.example", IsTimeout: true}
	tests := []struct {
		name     string
		err6     error
		err4     error
		direct   bool
		want     socks5.Reply
		wantText []string
	}{
		{name: "both not found", err6: nx, err4: nx, direct: true, want: socks5.ReplyHostUnreachable, wantText: []string{"lookup both.example: no such host"}},
		{name: "both time out", err6: timeout, err4: timeout, direct: true, want: socks5.ReplyTTLExpired, wantText: []string{"AAAA", " A: ", "i/o timeout"}},
		{name: "AAAA fails, no A", err6: errServFail, err4: nx, direct: true, want: socks5.ReplyGeneralFailure, wantText: []string{"resolve both.example: AAAA:", "server misbehaving"}},
		{name: "no AAAA, A rejected", err6: nx, want: socks5.ReplyNotAllowed, wantText: []string{"only IPv4"}},
		{name: "AAAA fails, A rejected", err6: errServFail, want: socks5.ReplyGeneralFailure, wantText: []string{"AAAA:", "server misbehaving"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lookup := func(ctx context.Context, network, host string) ([]netip.Addr, error) {
				if err := map[string]error{"ip6": tt.err6, "ip4": tt.err4}[network]; err != nil {
					return nil, err
				}
				return fakeLookup(dnsTable)(ctx, network, host)
			}
			fail := func(_ context.Context, _ string, dst netip.AddrPort) (net.Conn, error) {
				return nil, fmt.Errorf("dialed %v", dst)
			}
			r := &Dialer{Dial4: dial4If(tt.direct, fail), Dial6: fail, Lookup: lookup, Clock: clock.NewFake(time.Unix(0, 0))}
			ctx := testCtx(t)
			_, err := r.DialContext(ctx, "tcp", "both.example:80")
			if err == nil || strings.Contains(err.Error(), "dialed") {
				t.Fatalf("err = %v, want a lookup failure", err)
			}
			if got := replyFor(err); got != tt.want {
				t.Errorf("%v maps to %v, want %v", err, got, tt.want)
			}
			for _, s := range tt.wantText {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("%q does not say %q", err, s)
				}
			}
			// A datagram to the name fails the same way.
			if _, uerr := r.Resolve(ctx, "both.example"); uerr == nil || uerr.Error() != err.Error() {
				t.Errorf("Resolve: %v, want %v", uerr, err)
			}
		})
	}
}

// TestDialGivesUpDuringLookup checks that a caller's deadline during the
// lookups is reported as such, not as a missing name.
func TestDialGivesUpDuringLookup(t *testing.T) {
	lk := newGatedLookup(dnsTable)
	r := &Dialer{Dial6: noDial, Dial4: dial4If(true, noDial), Lookup: lk.lookup, Clock: clock.NewFake(time.Unix(0, 0))}
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	_, err := r.DialContext(ctx, "tcp", "both.example:80")
	if !errors.Is(err, context.DeadlineExceeded) || replyFor(err) != socks5.ReplyTTLExpired {
		t.Fatalf("err = %v, want the deadline", err)
	}
}

// TestResolve checks the one address a UDP datagram to a name goes to.
func TestResolve(t *testing.T) {
	tests := []struct {
		host             string
		direct, preferV6 bool
		want             string
		wantReply        socks5.Reply // when an error is expected
	}{
		{host: "both.example", direct: true, want: "192.0.2.1"},
		{host: "both.example", direct: true, preferV6: true, want: "2001:db8::1"},
		{host: "both.example", want: "2001:db8::1"}, // IPv4 skipped under -ipv4 reject
		{host: "v4.example", direct: true, preferV6: true, want: "192.0.2.1"},
		{host: "v6.example", direct: true, want: "2001:db8::1"},
		{host: "mapped.example", direct: true, want: "192.0.2.9"},
		{host: "2001:db8::7", want: "2001:db8::7"},
		{host: "v4.example", wantReply: socks5.ReplyNotAllowed},
		{host: "mapped.example", wantReply: socks5.ReplyNotAllowed},
		{host: "192.0.2.7", wantReply: socks5.ReplyNotAllowed},
		{host: "empty.example", direct: true, wantReply: socks5.ReplyHostUnreachable},
		{host: "nxdomain.example", direct: true, wantReply: socks5.ReplyHostUnreachable},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/direct=%v/v6=%v", tt.host, tt.direct, tt.preferV6), func(t *testing.T) {
			r := &Dialer{Dial6: noDial, Dial4: dial4If(tt.direct, noDial), Lookup: fakeLookup(dnsTable), PreferIPv6: tt.preferV6, Clock: clock.NewFake(time.Unix(0, 0))}
			ctx := testCtx(t)
			got, err := r.Resolve(ctx, tt.host)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("got %v, want an error", got)
				}
				if rep := replyFor(err); rep != tt.wantReply {
					t.Fatalf("err %v maps to %v, want %v", err, rep, tt.wantReply)
				}
				return
			}
			if err != nil || got.String() != tt.want {
				t.Fatalf("got %v, %v; want %s", got, err, tt.want)
			}
		})
	}

	// AAAA never answers: the datagram goes over IPv4 after the
	// resolution delay.
	fc := clock.NewFake(time.Unix(0, 0))
	lk := newGatedLookup(dnsTable)
	r := &Dialer{Dial6: noDial, Dial4: dial4If(true, noDial), Lookup: lk.lookup, PreferIPv6: true, Clock: fc}
	ctx := testCtx(t)
	type outcome struct {
		a   netip.Addr
		err error
	}
	out := make(chan outcome, 1)
	go func() {
		a, err := r.Resolve(ctx, "both.example")
		out <- outcome{a, err}
	}()
	lk.answer(t, "ip4", nil)
	waitPending(t, fc, 1)
	fc.Advance(DefaultResolutionDelay)
	select {
	case o := <-out:
		if o.err != nil || o.a != netip.MustParseAddr("192.0.2.1") {
			t.Fatalf("got %v, %v; want 192.0.2.1", o.a, o.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Resolve did not return after the resolution delay")
	}
}
