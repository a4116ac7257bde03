package happyeyeballs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/teredo-go/teredo/clock"
	"github.com/teredo-go/teredo/socks5"
)

// replyFor is the SOCKS reply a proxy would send for err: a family
// refusal is "not allowed", and the rest must wrap errnos and DNS errors
// that socks5.ReplyFor knows.
func replyFor(err error) socks5.Reply {
	if errors.Is(err, ErrRefused) {
		return socks5.ReplyNotAllowed
	}
	return socks5.ReplyFor(err)
}

// noDial stands for a dial function that a test never reaches.
func noDial(context.Context, string, netip.AddrPort) (net.Conn, error) {
	return nil, errors.New("unexpected dial")
}

// dial4If is f when IPv4 goes direct, else nil (IPv4 refused).
func dial4If(direct bool, f DialFunc) DialFunc {
	if direct {
		return f
	}
	return nil
}

// fakeLookup answers from a table, as a DNS with A and AAAA records would.
func fakeLookup(table map[string][]string) func(ctx context.Context, network, host string) ([]netip.Addr, error) {
	return func(ctx context.Context, network, host string) ([]netip.Addr, error) {
		recs, ok := table[host]
		if !ok {
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		}
		var out []netip.Addr
		for _, r := range recs {
			a := netip.MustParseAddr(r)
			if network == "ip" || (network == "ip4") == a.Is4() {
				out = append(out, a)
			}
		}
		return out, nil
	}
}

var dnsTable = map[string][]string{
	"both.example":   {"192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2"},
	"v4.example":     {"192.0.2.1"},
	"v6.example":     {"2001:db8::1"},
	"mapped.example": {"::ffff:192.0.2.9"},
	"empty.example":  {},
	"many.example": {"192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4", "192.0.2.5",
		"2001:db8::1", "2001:db8::2", "2001:db8::3", "2001:db8::4", "2001:db8::5"},
}

// candidates resolves host to the end and returns every address r would
// try, in order.
func candidates(r *Dialer, host string) ([]netip.Addr, error) {
	res, err := r.resolve(context.Background(), host)
	if err != nil {
		return nil, err
	}
	defer res.stop()
	for res.waiting > 0 {
		res.handle(<-res.answers)
	}
	var out []netip.Addr
	for a, ok := res.next(); ok; a, ok = res.next() {
		out = append(out, a)
	}
	if len(out) == 0 {
		return nil, res.err(nil)
	}
	return out, nil
}

func TestCandidates(t *testing.T) {
	tests := []struct {
		host             string
		direct, preferV6 bool
		want             []string
		wantReply        socks5.Reply // when an error is expected
	}{
		{host: "2001:db8::7", direct: true, want: []string{"2001:db8::7"}},
		{host: "2001:db8::7", want: []string{"2001:db8::7"}},
		{host: "192.0.2.7", direct: true, want: []string{"192.0.2.7"}},
		{host: "::ffff:192.0.2.7", direct: true, want: []string{"192.0.2.7"}},
		{host: "192.0.2.7", wantReply: socks5.ReplyNotAllowed},
		{host: "::ffff:192.0.2.7", wantReply: socks5.ReplyNotAllowed},
		{host: "both.example", direct: true, want: []string{"192.0.2.1", "2001:db8::1", "192.0.2.2", "2001:db8::2"}},
		{host: "both.example", direct: true, preferV6: true, want: []string{"2001:db8::1", "192.0.2.1", "2001:db8::2", "192.0.2.2"}},
		{host: "both.example", want: []string{"2001:db8::1", "2001:db8::2"}},
		{host: "v4.example", direct: true, preferV6: true, want: []string{"192.0.2.1"}},
		{host: "v4.example", wantReply: socks5.ReplyNotAllowed},
		{host: "mapped.example", wantReply: socks5.ReplyNotAllowed},
		{host: "v6.example", want: []string{"2001:db8::1"}},
		{host: "v6.example", direct: true, want: []string{"2001:db8::1"}},
		{host: "empty.example", direct: true, wantReply: socks5.ReplyHostUnreachable},
		{host: "nxdomain.example", direct: true, wantReply: socks5.ReplyHostUnreachable},
		{host: "many.example", direct: true, want: []string{"192.0.2.1", "2001:db8::1", "192.0.2.2", "2001:db8::2", "192.0.2.3", "2001:db8::3", "192.0.2.4", "2001:db8::4"}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/direct=%v/v6=%v", tt.host, tt.direct, tt.preferV6), func(t *testing.T) {
			r := &Dialer{Dial6: noDial, Dial4: dial4If(tt.direct, noDial), Lookup: fakeLookup(dnsTable), PreferIPv6: tt.preferV6, Clock: clock.NewFake(time.Unix(0, 0))}
			got, err := candidates(r, tt.host)
			if tt.want == nil {
				if err == nil {
					t.Fatalf("got %v, want an error", got)
				}
				if rep := replyFor(err); rep != tt.wantReply {
					t.Fatalf("err %v maps to %v, want %v", err, rep, tt.wantReply)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var gotS []string
			for _, a := range got {
				gotS = append(gotS, a.String())
			}
			if !reflect.DeepEqual(gotS, tt.want) {
				t.Fatalf("got %v, want %v", gotS, tt.want)
			}
		})
	}
}

// scriptedDialer answers each destination as told: after a signal, with a
// connection or an error, and records the order of attempts.
type scriptedDialer struct {
	mu       sync.Mutex
	order    []string
	started  chan string
	behavior map[string]func(ctx context.Context) (net.Conn, error)
	clock    *clock.Fake          // if set, the time of each attempt is kept in at
	at       map[string]time.Time // by address
}

func (d *scriptedDialer) dial(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error) {
	if want := map[bool]string{true: "tcp4", false: "tcp6"}[dst.Addr().Is4()]; network != want {
		return nil, fmt.Errorf("network %q for %v, want %q", network, dst, want)
	}
	d.mu.Lock()
	d.order = append(d.order, dst.Addr().String())
	if d.clock != nil {
		if d.at == nil {
			d.at = make(map[string]time.Time)
		}
		d.at[dst.Addr().String()] = d.clock.Now()
	}
	d.mu.Unlock()
	d.started <- dst.Addr().String()
	return d.behavior[dst.Addr().String()](ctx)
}

// hang blocks until the attempt is cancelled.
func hang(ctx context.Context) (net.Conn, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func refuse(context.Context) (net.Conn, error) {
	return nil, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
}

// pipeConn answers with one end of a pipe and keeps the other to check
// that losers are closed.
type pipeConns struct {
	mu     sync.Mutex
	remote []net.Conn
}

func (p *pipeConns) succeed(context.Context) (net.Conn, error) {
	a, b := net.Pipe()
	p.mu.Lock()
	p.remote = append(p.remote, b)
	p.mu.Unlock()
	return a, nil
}

func waitStarted(t *testing.T, d *scriptedDialer, want string) {
	t.Helper()
	select {
	case got := <-d.started:
		if got != want {
			t.Fatalf("attempt to %s, want %s", got, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no attempt to %s", want)
	}
}

// waitPending waits until the racer has armed its fallback timer.
func waitPending(t *testing.T, c *clock.Fake, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for c.Pending() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d timers pending, want %d", c.Pending(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

type dialOutcome struct {
	c   net.Conn
	err error
}

func TestHappyEyeballs(t *testing.T) {
	setup := func(t *testing.T, preferV6 bool, behavior map[string]func(ctx context.Context) (net.Conn, error)) (*Dialer, *scriptedDialer, *clock.Fake, chan dialOutcome) {
		d := &scriptedDialer{started: make(chan string, 8), behavior: behavior}
		fc := clock.NewFake(time.Unix(0, 0))
		lk := newGatedLookup(dnsTable)
		r := &Dialer{Dial4: d.dial, Dial6: d.dial, Lookup: lk.lookup, PreferIPv6: preferV6, Clock: fc}
		out := make(chan dialOutcome, 1)
		go func() {
			c, err := r.DialContext(context.Background(), "tcp", "both.example:80")
			out <- dialOutcome{c, err}
		}()
		lk.answerBoth(t, fc, preferV6)
		return r, d, fc, out
	}
	result := func(t *testing.T, out chan dialOutcome) dialOutcome {
		t.Helper()
		select {
		case o := <-out:
			return o
		case <-time.After(5 * time.Second):
			t.Fatal("Dial did not return")
			return dialOutcome{}
		}
	}

	t.Run("fallback after the delay", func(t *testing.T) {
		var p pipeConns
		_, d, fc, out := setup(t, false, map[string]func(context.Context) (net.Conn, error){
			"192.0.2.1": hang, "2001:db8::1": p.succeed,
		})
		waitStarted(t, d, "192.0.2.1")
		waitPending(t, fc, 1)
		fc.Advance(DefaultFallbackDelay - time.Millisecond)
		select {
		case got := <-d.started:
			t.Fatalf("attempt to %s before the fallback delay", got)
		default:
		}
		fc.Advance(time.Millisecond)
		waitStarted(t, d, "2001:db8::1")
		o := result(t, out)
		if o.err != nil {
			t.Fatal(o.err)
		}
		o.c.Close()
	})

	t.Run("failure hands over at once", func(t *testing.T) {
		var p pipeConns
		_, d, _, out := setup(t, true, map[string]func(context.Context) (net.Conn, error){
			"2001:db8::1": refuse, "192.0.2.1": p.succeed,
		})
		waitStarted(t, d, "2001:db8::1")
		waitStarted(t, d, "192.0.2.1") // no clock advance needed
		o := result(t, out)
		if o.err != nil {
			t.Fatal(o.err)
		}
		o.c.Close()
	})

	t.Run("all fail: first error", func(t *testing.T) {
		_, d, _, out := setup(t, false, map[string]func(context.Context) (net.Conn, error){
			"192.0.2.1": refuse, "2001:db8::1": refuse, "192.0.2.2": refuse,
			"2001:db8::2": func(context.Context) (net.Conn, error) {
				return nil, &net.OpError{Op: "dial", Err: syscall.EHOSTUNREACH}
			},
		})
		for _, a := range []string{"192.0.2.1", "2001:db8::1", "192.0.2.2", "2001:db8::2"} {
			waitStarted(t, d, a)
		}
		o := result(t, out)
		if !errors.Is(o.err, syscall.ECONNREFUSED) {
			t.Fatalf("err = %v, want the first attempt's ECONNREFUSED", o.err)
		}
	})

	t.Run("loser is closed", func(t *testing.T) {
		var p pipeConns
		_, d, fc, out := setup(t, false, map[string]func(context.Context) (net.Conn, error){
			// The first attempt succeeds late, once the winner's arrival
			// has cancelled it, as a dial that ignores cancellation would.
			"192.0.2.1": func(ctx context.Context) (net.Conn, error) {
				<-ctx.Done()
				return p.succeed(ctx)
			},
			"2001:db8::1": p.succeed,
		})
		waitStarted(t, d, "192.0.2.1")
		waitPending(t, fc, 1)
		fc.Advance(DefaultFallbackDelay)
		waitStarted(t, d, "2001:db8::1")
		o := result(t, out)
		if o.err != nil {
			t.Fatal(o.err)
		}
		defer o.c.Close()
		p.mu.Lock()
		remote := slices.Clone(p.remote)
		p.mu.Unlock()
		if len(remote) != 2 {
			t.Fatalf("%d connections made, want 2", len(remote))
		}
		// The winner's far end reads what is written to the returned
		// connection; the loser's sees EOF because its near end was closed.
		go o.c.Write([]byte("x"))
		errs := make(chan error, 2)
		for _, r := range remote {
			go func() {
				r.SetReadDeadline(time.Now().Add(5 * time.Second))
				_, err := r.Read(make([]byte, 1))
				errs <- err
			}()
		}
		var read, eof int
		for range remote {
			switch err := <-errs; err {
			case nil:
				read++
			case io.EOF:
				eof++
			default:
				t.Errorf("far end read: %v", err)
			}
		}
		if read != 1 || eof != 1 {
			t.Fatalf("%d far ends read the data and %d saw EOF, want one of each", read, eof)
		}
	})

	t.Run("caller gives up", func(t *testing.T) {
		d := &scriptedDialer{started: make(chan string, 8), behavior: map[string]func(context.Context) (net.Conn, error){
			"192.0.2.1": hang, "2001:db8::1": hang, "192.0.2.2": hang, "2001:db8::2": hang,
		}}
		fc := clock.NewFake(time.Unix(0, 0))
		lk := newGatedLookup(dnsTable)
		r := &Dialer{Dial4: d.dial, Dial6: d.dial, Lookup: lk.lookup, Clock: fc}
		ctx, cancel := context.WithCancel(context.Background())
		out := make(chan dialOutcome, 1)
		go func() {
			c, err := r.DialContext(ctx, "tcp", "both.example:80")
			out <- dialOutcome{c, err}
		}()
		lk.answerBoth(t, fc, false)
		waitStarted(t, d, "192.0.2.1")
		waitPending(t, fc, 1)
		fc.Advance(DefaultFallbackDelay)
		waitStarted(t, d, "2001:db8::1")
		cancel()
		o := result(t, out)
		if !errors.Is(o.err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", o.err)
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		if !slices.Equal(d.order, []string{"192.0.2.1", "2001:db8::1"}) {
			t.Fatalf("attempts %v", d.order)
		}
	})
}

func TestRefusesIPv4(t *testing.T) {
	dialed := false
	r := &Dialer{
		Dial6: func(context.Context, string, netip.AddrPort) (net.Conn, error) {
			dialed = true
			return nil, errors.New("unreachable")
		},
		Lookup: fakeLookup(dnsTable),
	}
	for _, addr := range []string{"192.0.2.1:80", "v4.example:80", "[::ffff:192.0.2.1]:80"} {
		_, err := r.DialContext(context.Background(), "tcp", addr)
		if replyFor(err) != socks5.ReplyNotAllowed {
			t.Errorf("%s: %v, want not allowed", addr, err)
		}
		if _, err := r.Resolve(context.Background(), "v4.example"); !errors.Is(err, ErrRefused) {
			t.Errorf("Resolve: %v", err)
		}
	}
	if dialed {
		t.Error("an IPv4 destination was dialed without Dial4")
	}
}
