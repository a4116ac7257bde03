package stack_test

import (
	"context"
	"errors"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/teredo-go/teredo/dialer"
	"github.com/teredo-go/teredo/stack"
	"github.com/teredo-go/teredo/teredotest"
)

// TestNativeDestinations uses the in-process Teredo internet: a native
// IPv6 host is reached through the relay, and a native address where no
// host answers the echo test fails promptly with EHOSTUNREACH.
// qualifyOn returns a stack qualified, within ctx, by the server of in,
// from a socket on loopback. The caller closes it: benchmarks run their
// function several times, and cleanups would pile stacks up until the end.
func qualifyOn(tb testing.TB, ctx context.Context, in *teredotest.Internet) *stack.Stack {
	tb.Helper()
	s, err := stack.New(ctx, stack.Config{
		Servers:    in.Servers(),
		Secondary:  in.SecondaryAddr(),
		LocalAddr:  netip.MustParseAddrPort("127.0.0.1:0"),
		IPv4Filter: in.IPv4Filter(),
	})
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func TestNativeDestinations(t *testing.T) {
	in := teredotest.New(t)
	h, err := in.AddHost(netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	port, err := h.ServeUDPEcho(0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := qualifyOn(t, ctx, in)
	defer s.Close()
	d := dialer.New(s)

	c, err := d.DialContext(ctx, "udp6", netip.AddrPortFrom(h.Addr(), port).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 16)
	for i := 0; ; i++ { // the first datagram waits for the echo test
		c.Write([]byte("echo"))
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(buf)
		if err == nil && string(buf[:n]) == "echo" {
			break
		}
		if i == 10 {
			t.Fatalf("no echo: %v", err)
		}
	}

	nobody := netip.MustParseAddr("2001:db8:ffff::1")
	start := time.Now()
	_, err = d.DialContext(ctx, "tcp", netip.AddrPortFrom(nobody, 80).String())
	if !errors.Is(err, syscall.EHOSTUNREACH) {
		t.Fatalf("dial %v after %v: %v, want EHOSTUNREACH", nobody, time.Since(start), err)
	}
	t.Logf("unreachable native host: %v after %v", err, time.Since(start))
}
