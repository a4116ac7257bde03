package happyeyeballs_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/netip"
	"syscall"

	"github.com/teredo-go/teredo/happyeyeballs"
)

// A name with an IPv6 and an IPv4 address: IPv6 is preferred but its path
// (here a stand-in for a Teredo stack that is not qualified yet) fails at
// once, so the IPv4 attempt through the host starts without waiting out
// the fallback delay. A real program sets Dial6 to a Teredo stack's
// dialer: FromDialContext(dialer.New(s).DialContext).
func Example() {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port

	var host net.Dialer
	d := &happyeyeballs.Dialer{
		Dial6: func(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error) {
			return nil, &net.OpError{Op: "dial", Net: network, Err: syscall.ENETUNREACH}
		},
		Dial4: happyeyeballs.FromDialContext(host.DialContext),
		Lookup: func(ctx context.Context, network, name string) ([]netip.Addr, error) {
			if network == "ip6" {
				return []netip.Addr{netip.MustParseAddr("2001:db8::1")}, nil
			}
			return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
		},
		PreferIPv6: true,
	}
	c, err := d.DialContext(context.Background(), "tcp", fmt.Sprintf("dual.example:%d", port))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	fmt.Println("connected over", c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr())
	// Output: connected over 127.0.0.1
}
