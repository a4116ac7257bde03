package socksd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/teredo-go/teredo/socks5"
)

// splitConn is the outbound socket of one UDP association: IPv6
// destinations leave through the Teredo stack's socket (or the host's
// native IPv6 one), IPv4 ones through the host's (or are refused when
// there is none). Reads merge both.
type splitConn struct {
	v6, v4 net.PacketConn // v4 is nil under -ipv4 reject; v6 while not qualified
	v6Err  error          // why v6 is nil

	in   chan packet   // a reader's datagram, handed over without copying
	done chan struct{} // closed by Close
	once sync.Once
	wg   sync.WaitGroup

	mu       sync.Mutex
	deadline time.Time
	changed  chan struct{} // closed and replaced when the read deadline changes
}

// packet is a datagram (or error) lent by a reader goroutine; ReadFrom
// copies it and then signals consumed so the reader may reuse its buffer.
type packet struct {
	b        []byte
	from     net.Addr
	err      error
	consumed chan<- struct{}
}

// listenSplit opens an association's sockets. Without an IPv6 socket (Teredo
// not qualified yet) the association still carries IPv4, and its IPv6
// datagrams fail with the reason (network unreachable); without IPv4
// either, it fails.
func listenSplit(ctx context.Context, listen6, listen4 func(context.Context) (net.PacketConn, error), log *slog.Logger) (net.PacketConn, error) {
	v6, err6 := listen6(ctx)
	if err6 != nil && listen4 == nil {
		return nil, fmt.Errorf("IPv6 UDP socket: %w", err6)
	}
	var v4 net.PacketConn
	if listen4 != nil {
		var err error
		if v4, err = listen4(ctx); err != nil {
			if v6 != nil {
				v6.Close()
			}
			return nil, fmt.Errorf("host UDP socket: %w", err)
		}
	}
	c := newSplitConn(v6, v4)
	if err6 != nil {
		log.Debug("UDP association without IPv6", "err", err6)
		c.v6Err = fmt.Errorf("IPv6 UDP socket: %w", err6)
	}
	return c, nil
}

func newSplitConn(v6, v4 net.PacketConn) *splitConn {
	c := &splitConn{v6: v6, v4: v4, in: make(chan packet), done: make(chan struct{}), changed: make(chan struct{})}
	for _, pc := range []net.PacketConn{v6, v4} {
		if pc != nil {
			c.wg.Add(1)
			go c.read(pc)
		}
	}
	return c
}

// read pumps one socket until it is closed. Other errors are passed on:
// socks5 tolerates a few in a row (a user-space stack reports ICMP errors
// that way) and ends the association if they persist.
func (c *splitConn) read(pc net.PacketConn) {
	defer c.wg.Done()
	buf := make([]byte, 64<<10)
	consumed := make(chan struct{})
	for {
		n, from, err := pc.ReadFrom(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		select {
		case c.in <- packet{b: buf[:n], from: from, err: err, consumed: consumed}:
		case <-c.done:
			return
		}
		select {
		case <-consumed:
		case <-c.done:
			return
		}
		if err != nil {
			// Do not spin on a socket that fails at once, again and again.
			select {
			case <-time.After(10 * time.Millisecond):
			case <-c.done:
				return
			}
		}
	}
}

func (c *splitConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		c.mu.Lock()
		deadline, changed := c.deadline, c.changed
		c.mu.Unlock()
		var t *time.Timer
		var expired <-chan time.Time
		if !deadline.IsZero() {
			d := time.Until(deadline)
			if d <= 0 {
				return 0, nil, os.ErrDeadlineExceeded
			}
			t = time.NewTimer(d)
			expired = t.C
		}
		n, from, again, err := c.wait(b, changed, expired)
		if t != nil {
			t.Stop()
		}
		if !again {
			return n, from, err
		}
	}
}

// wait is one blocking step of ReadFrom; again reports that the deadline
// changed meanwhile.
func (c *splitConn) wait(b []byte, changed <-chan struct{}, expired <-chan time.Time) (n int, from net.Addr, again bool, err error) {
	select {
	case p := <-c.in:
		n := copy(b, p.b)
		p.consumed <- struct{}{}
		return n, p.from, false, p.err
	case <-c.done:
		return 0, nil, false, net.ErrClosed
	case <-changed:
		return 0, nil, true, nil
	case <-expired:
		return 0, nil, false, os.ErrDeadlineExceeded
	}
}

func (c *splitConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	ap, ok := netAddrPort(addr)
	if !ok {
		return 0, &net.AddrError{Err: "not a UDP address", Addr: addr.String()}
	}
	if ap.Addr().Is4() {
		if c.v4 == nil {
			return 0, fmt.Errorf("%w: IPv4 destination %s (-ipv4 reject)", socks5.ErrNotAllowed, ap)
		}
		return c.v4.WriteTo(b, net.UDPAddrFromAddrPort(ap))
	}
	if c.v6 == nil {
		return 0, c.v6Err
	}
	return c.v6.WriteTo(b, addr)
}

// netAddrPort converts a UDP destination, unmapping IPv4-mapped addresses
// so that they take the IPv4 path.
func netAddrPort(a net.Addr) (netip.AddrPort, bool) {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.UDPAddr:
		ap = a.AddrPort()
	default:
		var err error
		if ap, err = netip.ParseAddrPort(a.String()); err != nil {
			return ap, false
		}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), ap.IsValid()
}

func (c *splitConn) Close() error {
	var err error
	c.once.Do(func() {
		close(c.done)
		if c.v6 != nil {
			err = c.v6.Close()
		}
		if c.v4 != nil {
			err = errors.Join(err, c.v4.Close())
		}
		c.wg.Wait()
	})
	return err
}

// LocalAddr is the IPv6 side's, the address this proxy gives its users,
// or the IPv4 side's without one.
func (c *splitConn) LocalAddr() net.Addr {
	if c.v6 == nil {
		return c.v4.LocalAddr()
	}
	return c.v6.LocalAddr()
}

func (c *splitConn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

func (c *splitConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	return nil
}

func (c *splitConn) SetWriteDeadline(t time.Time) error {
	var err error
	if c.v6 != nil {
		err = c.v6.SetWriteDeadline(t)
	}
	if c.v4 != nil {
		err = errors.Join(err, c.v4.SetWriteDeadline(t))
	}
	return err
}
