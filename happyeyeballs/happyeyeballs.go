// Package happyeyeballs connects to a destination given by name or address
// over two address families the RFC 8305 way: both lookups at once, a
// short resolution delay for the preferred family, then attempts
// alternating between families, each with a head start, the first to
// connect winning. Each family has its own dial function, so that IPv6 can
// go through a Teredo stack while IPv4 goes through the host.
package happyeyeballs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/teredo-go/teredo/clock"
)

// DefaultFallbackDelay is how long a connection attempt runs alone before
// the next address is tried as well (RFC 8305 §5 recommends 250 ms).
const DefaultFallbackDelay = 250 * time.Millisecond

// maxAttempts bounds the addresses one dial tries, however many the
// resolver returned.
const maxAttempts = 8

// ErrRefused is wrapped in the error for a destination whose family has no
// dial function: an IPv4 address, or a name with only IPv4 addresses, when
// Dialer.Dial4 is nil.
var ErrRefused = errors.New("happyeyeballs: address family refused")

// DialFunc opens a connection to an IP literal destination. network is
// "tcp4" or "tcp6", matching the destination's family.
type DialFunc func(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error)

// FromDialContext adapts a dial function that takes "host:port", such as
// net.Dialer.DialContext or dialer.Dialer.DialContext of a Teredo stack.
func FromDialContext(dial func(ctx context.Context, network, address string) (net.Conn, error)) DialFunc {
	return func(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error) {
		return dial(ctx, network, dst.String())
	}
}

// Dialer connects to names and addresses over IPv6 and IPv4. Its zero
// value is not usable: set Dial6. Its methods are safe for concurrent use.
type Dialer struct {
	// Dial6 reaches IPv6 destinations, for example through a Teredo
	// stack. Required.
	Dial6 DialFunc
	// Dial4 reaches IPv4 destinations, for example through the host; nil
	// refuses them with ErrRefused (and makes IPv6 the preferred family).
	Dial4 DialFunc
	// Lookup resolves names, as net.Resolver.LookupNetIP; it is asked for
	// "ip6" and "ip4" separately so that either answer can act alone. Nil
	// means net.DefaultResolver.
	Lookup func(ctx context.Context, network, host string) ([]netip.Addr, error)
	// PreferIPv6 tries IPv6 first for names with both kinds of addresses;
	// otherwise IPv4 goes first (when Dial4 is set).
	PreferIPv6 bool
	// Clock times the delays; nil means the real clock.
	Clock clock.Clock
	// FallbackDelay and ResolutionDelay override DefaultFallbackDelay and
	// DefaultResolutionDelay when positive.
	FallbackDelay, ResolutionDelay time.Duration
}

func (d *Dialer) clock() clock.Clock {
	if d.Clock == nil {
		return clock.Real{}
	}
	return d.Clock
}

func (d *Dialer) lookup(ctx context.Context, network, host string) ([]netip.Addr, error) {
	if d.Lookup == nil {
		return net.DefaultResolver.LookupNetIP(ctx, network, host)
	}
	return d.Lookup(ctx, network, host)
}

// DialContext connects to address, host:port with an IP literal or a name,
// over network "tcp" (the only one it knows; the families are its choice).
// It has the signature of net.Dialer.DialContext and socks5.Server.Dial.
func (r *Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if network != "tcp" {
		return nil, &net.OpError{Op: "dial", Net: network, Err: net.UnknownNetworkError(network)}
	}
	host, portStr, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("bad port in %q", address)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends a lookup still out once a connection is made
	res, err := r.resolve(ctx, host)
	if err != nil {
		return nil, err
	}
	defer res.stop()
	return r.race(ctx, res, uint16(port))
}

// Resolve returns the address DialContext would try first for host, for a
// datagram, which gets no fallback (socks5.Server.Resolve): the preferred
// family's first usable address if that family answers in time, else the
// other family's; IPv4 only with Dial4.
func (r *Dialer) Resolve(ctx context.Context, host string) (netip.Addr, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	res, err := r.resolve(ctx, host)
	if err != nil {
		return netip.Addr{}, err
	}
	defer res.stop()
	for {
		if a, ok := res.next(); ok {
			return a, nil
		}
		if !res.more() {
			return netip.Addr{}, res.err(nil)
		}
		answers, delayed := res.wake()
		select {
		case ans := <-answers:
			res.handle(ans)
		case <-delayed:
			res.delayEnded()
		case <-ctx.Done():
			return netip.Addr{}, res.err(ctx.Err())
		}
	}
}

func refused(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrRefused}, args...)...)
}

type dialResult struct {
	conn net.Conn
	err  error
}

// race connects to the first address of res that answers: each attempt
// gets a head start of the fallback delay, or less if it fails sooner (RFC
// 8305 §5). The first attempt starts as soon as res hands out an address.
// The losers are cancelled and closed before race returns. On failure it
// returns the first attempt's error: the preferred family says most.
func (r *Dialer) race(ctx context.Context, res *resolution, port uint16) (net.Conn, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	delay := r.FallbackDelay
	if delay <= 0 {
		delay = DefaultFallbackDelay
	}
	results := make(chan dialResult, maxAttempts)
	var (
		pending int
		timer   clock.Timer
		fired   chan struct{}
		winner  net.Conn
		errs    []error
		stopped bool
		// due says an attempt may start as soon as res has an address:
		// the first one, after a failure, or after a head start ran out
		// with nothing left to try yet.
		due = true
	)
	stopTimer := func() {
		if timer != nil {
			timer.Stop()
			timer, fired = nil, nil
		}
	}
	start := func() {
		stopTimer()
		a, ok := res.next()
		if !ok {
			return
		}
		due = false
		pending++
		network := "tcp6"
		dial := r.Dial6
		if a.Is4() {
			network, dial = "tcp4", r.Dial4
		}
		go func() {
			c, err := dial(ctx, network, netip.AddrPortFrom(a, port))
			if err == nil && c == nil {
				err = errors.New("dialer returned no connection")
			}
			results <- dialResult{c, err}
		}()
		if res.more() {
			ch := make(chan struct{})
			fired = ch // each timer closes its own channel, so a stale one is never read
			timer = r.clock().AfterFunc(delay, func() { close(ch) })
		}
	}

	done := ctx.Done()
	for {
		// ctx.Err: an attempt failing because the caller gave up may be
		// read before ctx.Done is; it must not start another.
		if due && winner == nil && !stopped && ctx.Err() == nil {
			start()
		}
		if pending == 0 && (winner != nil || stopped || !res.more()) {
			break
		}
		answers, delayed := res.wake()
		select {
		case d := <-results:
			pending--
			switch {
			case d.err != nil:
				errs = append(errs, d.err)
				due = true // a failure hands over at once
			case winner == nil && !stopped:
				winner = d.conn
				cancel()
				stopTimer()
			default:
				d.conn.Close()
			}
		case <-fired:
			due = true
		case ans := <-answers:
			res.handle(ans)
		case <-delayed:
			res.delayEnded()
		case <-done:
			// Either a winner cancelled ctx, or the caller gave up: start
			// nothing more and wait for the attempts in flight to return.
			stopped, done = true, nil
			stopTimer()
		}
	}
	switch {
	case winner != nil:
		return winner, nil
	case len(errs) > 0:
		return nil, errs[0]
	case stopped:
		return nil, res.err(ctx.Err())
	default:
		return nil, res.err(nil)
	}
}
