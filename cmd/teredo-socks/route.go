package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/teredo-go/teredo/clock"
	"github.com/teredo-go/teredo/socks5"
)

// fallbackDelay is how long the first connection attempt runs alone before
// the next address is tried as well (RFC 8305 §5 recommends 250 ms).
const fallbackDelay = 250 * time.Millisecond

// maxAttempts bounds the addresses one CONNECT tries, however many the
// resolver returned.
const maxAttempts = 8

// dialFunc opens a connection to an IP literal destination. network is
// "tcp4", "tcp6", "udp4" or "udp6", matching the destination's family.
type dialFunc func(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error)

// router decides, for each SOCKS destination, which family carries it:
// IPv6 goes through Teredo, IPv4 straight through the host (or is refused),
// and names with both kinds of records are raced Happy-Eyeballs style.
type router struct {
	// dial6 reaches IPv6 destinations through the Teredo stack.
	dial6 dialFunc
	// dial4 reaches IPv4 destinations through the host; unused when
	// direct is false.
	dial4 dialFunc
	// listen6 and listen4 open the outbound UDP sockets of an association.
	listen6 func(ctx context.Context) (net.PacketConn, error)
	listen4 func(ctx context.Context) (net.PacketConn, error)
	// lookup resolves names, as net.Resolver.LookupNetIP: it is asked
	// for "ip6" and "ip4" separately so that either answer can act alone.
	lookup func(ctx context.Context, network, host string) ([]netip.Addr, error)

	direct   bool // -ipv4 direct
	preferV6 bool // -prefer ipv6
	clock    clock.Clock
	delay    time.Duration // fallback delay; fallbackDelay if zero
	resDelay time.Duration // resolution delay; resolutionDelay if zero
}

// Dial is socks5.Server.Dial: address is host:port with an IP literal or a
// name.
func (r *router) Dial(ctx context.Context, network, address string) (net.Conn, error) {
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

// Resolve is socks5.Server.Resolve for UDP datagrams addressed by name. A
// datagram gets no fallback, so it goes to the address a CONNECT would try
// first: the preferred family's first usable address if that family
// answers in time, else the other family's; IPv4 only under -ipv4 direct.
// An error (nothing usable, or the lookups failed) makes socks5 drop the
// datagram and count it as a "resolve" drop; socks5 also caches the answer
// for the association.
func (r *router) Resolve(ctx context.Context, host string) (netip.Addr, error) {
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

// ListenPacket is socks5.Server.ListenPacket: one socket per family, IPv4's
// only when IPv4 goes direct.
func (r *router) ListenPacket(ctx context.Context) (net.PacketConn, error) {
	v6, err := r.listen6(ctx)
	if err != nil {
		return nil, fmt.Errorf("teredo UDP socket: %w", err)
	}
	var v4 net.PacketConn
	if r.direct {
		if v4, err = r.listen4(ctx); err != nil {
			v6.Close()
			return nil, fmt.Errorf("host UDP socket: %w", err)
		}
	}
	return newSplitConn(v6, v4), nil
}

func notAllowed(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{socks5.ErrNotAllowed}, args...)...)
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
func (r *router) race(ctx context.Context, res *resolution, port uint16) (net.Conn, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	delay := r.delay
	if delay == 0 {
		delay = fallbackDelay
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
		dial := r.dial6
		if a.Is4() {
			network, dial = "tcp4", r.dial4
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
			timer = r.clock.AfterFunc(delay, func() { close(ch) })
		}
	}

	done := ctx.Done()
	for {
		if due && winner == nil && !stopped {
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
