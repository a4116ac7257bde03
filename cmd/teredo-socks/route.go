package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/teredo-go/teredo/internal/clock"
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
	// lookup resolves names to A and AAAA records, as net.Resolver.LookupNetIP.
	lookup func(ctx context.Context, network, host string) ([]netip.Addr, error)

	direct   bool // -ipv4 direct
	preferV6 bool // -prefer ipv6
	clock    clock.Clock
	delay    time.Duration // fallback delay; fallbackDelay if zero
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
	addrs, err := r.candidates(ctx, host)
	if err != nil {
		return nil, err
	}
	return r.race(ctx, addrs, uint16(port))
}

// Resolve is socks5.Server.Resolve for UDP datagrams addressed by name: the
// first address the policy would try. Datagrams get no fallback.
func (r *router) Resolve(ctx context.Context, host string) (netip.Addr, error) {
	addrs, err := r.candidates(ctx, host)
	if err != nil {
		return netip.Addr{}, err
	}
	return addrs[0], nil
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

// candidates returns the addresses to try for host, in order, after the
// -ipv4 and -prefer policies. It never returns an empty list without an
// error.
func (r *router) candidates(ctx context.Context, host string) ([]netip.Addr, error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		ip = ip.Unmap()
		if ip.Is4() && !r.direct {
			return nil, notAllowed("IPv4 destination %s (-ipv4 reject)", ip)
		}
		return []netip.Addr{ip}, nil
	}
	found, err := r.lookup(ctx, "ip", host)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", host, err)
	}
	var v4, v6 []netip.Addr
	for _, a := range found {
		a = a.Unmap()
		switch {
		case !a.IsValid() || a.Zone() != "" || a.IsUnspecified():
		case a.Is4():
			v4 = append(v4, a)
		default:
			v6 = append(v6, a)
		}
	}
	if !r.direct {
		if len(v6) == 0 && len(v4) > 0 {
			return nil, notAllowed("%s has only IPv4 addresses (-ipv4 reject)", host)
		}
		v4 = nil
	}
	first, second := v4, v6
	if r.preferV6 {
		first, second = v6, v4
	}
	// RFC 8305 §4: alternate families, starting with the preferred one.
	out := make([]netip.Addr, 0, min(len(v4)+len(v6), maxAttempts))
	for i := 0; len(out) < maxAttempts && (i < len(first) || i < len(second)); i++ {
		if i < len(first) {
			out = append(out, first[i])
		}
		if i < len(second) && len(out) < maxAttempts {
			out = append(out, second[i])
		}
	}
	if len(out) == 0 {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return out, nil
}

type dialResult struct {
	conn net.Conn
	err  error
}

// race connects to the first of addrs that answers: each attempt gets a
// head start of the fallback delay, or less if it fails sooner (RFC 8305
// §5). The losers are cancelled and closed before race returns. On failure
// it returns the first attempt's error: the preferred family says most.
func (r *router) race(ctx context.Context, addrs []netip.Addr, port uint16) (net.Conn, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	delay := r.delay
	if delay == 0 {
		delay = fallbackDelay
	}
	results := make(chan dialResult, len(addrs))
	next, pending := 0, 0
	start := func() {
		a := addrs[next]
		next++
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
	}

	var (
		timer   clock.Timer
		fired   chan struct{}
		winner  net.Conn
		errs    []error
		stopped bool
	)
	arm := func() {
		if timer != nil {
			timer.Stop()
			timer, fired = nil, nil
		}
		if next < len(addrs) && winner == nil && !stopped {
			ch := make(chan struct{})
			fired = ch // each timer closes its own channel, so a stale one is never read
			timer = r.clock.AfterFunc(delay, func() { close(ch) })
		}
	}
	done := ctx.Done()
	start()
	arm()
	for pending > 0 {
		select {
		case res := <-results:
			pending--
			switch {
			case res.err != nil:
				errs = append(errs, res.err)
				if winner == nil && !stopped && next < len(addrs) {
					start() // a failure hands over at once
				}
			case winner == nil && !stopped:
				winner = res.conn
				cancel()
			default:
				res.conn.Close()
			}
			arm()
		case <-fired:
			start()
			arm()
		case <-done:
			// Either a winner cancelled ctx, or the caller gave up: start
			// nothing more and wait for the attempts in flight to return.
			stopped, done = true, nil
			arm()
		}
	}
	if winner != nil {
		return winner, nil
	}
	if len(errs) == 0 {
		return nil, context.Canceled
	}
	return nil, errs[0]
}
