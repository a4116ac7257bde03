package socksd

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/teredo-go/teredo/socks5"
)

// udpEcho answers every datagram on a loopback socket of network and
// returns its address.
func udpEcho(t *testing.T, network, addr string) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket(network, addr)
	if err != nil {
		t.Skipf("no %s loopback here: %v", network, err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

func listenUDP(t *testing.T, network, addr string) net.PacketConn {
	t.Helper()
	pc, err := net.ListenPacket(network, addr)
	if err != nil {
		t.Skipf("no %s loopback here: %v", network, err)
	}
	return pc
}

// TestSplitConn sends through each family's socket and reads the echoes
// back through the one merged ReadFrom.
func TestSplitConn(t *testing.T) {
	echo6 := udpEcho(t, "udp6", "[::1]:0")
	echo4 := udpEcho(t, "udp4", "127.0.0.1:0")
	v6 := listenUDP(t, "udp6", "[::1]:0")
	v4 := listenUDP(t, "udp4", "127.0.0.1:0")
	c := newSplitConn(v6, v4)
	defer c.Close()
	if c.LocalAddr() != v6.LocalAddr() {
		t.Errorf("LocalAddr %v, want the IPv6 side's %v", c.LocalAddr(), v6.LocalAddr())
	}

	mapped := netip.AddrPortFrom(netip.AddrFrom16(echo4.Addr().As16()), echo4.Port())
	for _, dst := range []netip.AddrPort{echo6, echo4, mapped} {
		msg := []byte("to " + dst.String())
		if _, err := c.WriteTo(msg, net.UDPAddrFromAddrPort(dst)); err != nil {
			t.Fatalf("WriteTo %v: %v", dst, err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 100)
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			t.Fatalf("ReadFrom after sending to %v: %v", dst, err)
		}
		want := netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
		if got, _ := netAddrPort(from); got != want || string(buf[:n]) != string(msg) {
			t.Fatalf("got %q from %v, want %q from %v", buf[:n], from, msg, want)
		}
	}

	// A deadline in the past fails at once; one in the future wakes a
	// blocked read.
	c.SetReadDeadline(time.Now().Add(-time.Second))
	if _, _, err := c.ReadFrom(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("past deadline: %v", err)
	}
	c.SetReadDeadline(time.Time{})
	errc := make(chan error, 1)
	go func() { _, _, err := c.ReadFrom(make([]byte, 10)); errc <- err }()
	time.Sleep(20 * time.Millisecond)
	c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	select {
	case err := <-errc:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("deadline set while blocked: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ReadFrom ignored a deadline set while it was blocked")
	}

	// Close unblocks a reader.
	c.SetReadDeadline(time.Time{})
	go func() { _, _, err := c.ReadFrom(make([]byte, 10)); errc <- err }()
	time.Sleep(10 * time.Millisecond)
	c.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock ReadFrom")
	}
	if _, err := v4.WriteTo([]byte("x"), net.UDPAddrFromAddrPort(echo4)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("IPv4 socket still open after Close: %v", err)
	}
}

// TestSplitConnReject refuses IPv4 destinations when there is no IPv4
// socket, with the error that makes socks5 count a policy drop.
func TestSplitConnReject(t *testing.T) {
	v6 := listenUDP(t, "udp6", "[::1]:0")
	c := newSplitConn(v6, nil)
	defer c.Close()
	for _, dst := range []string{"192.0.2.1:53", "[::ffff:192.0.2.1]:53"} {
		_, err := c.WriteTo([]byte("x"), net.UDPAddrFromAddrPort(netip.MustParseAddrPort(dst)))
		if !errors.Is(err, socks5.ErrNotAllowed) {
			t.Errorf("%s: %v, want ErrNotAllowed", dst, err)
		}
	}
}

// TestListenSplitWithoutIPv6 opens an association while Teredo is not
// qualified: IPv4 still works, IPv6 datagrams fail with the stack's
// reason; without IPv4 either, the association fails.
func TestListenSplitWithoutIPv6(t *testing.T) {
	echo4 := udpEcho(t, "udp4", "127.0.0.1:0")
	notQualified := func(context.Context) (net.PacketConn, error) {
		return nil, &net.OpError{Op: "listen", Net: "udp6", Err: syscall.ENETUNREACH}
	}
	listen4 := func(context.Context) (net.PacketConn, error) { return net.ListenPacket("udp4", "127.0.0.1:0") }
	log := slog.New(slog.DiscardHandler)
	c, err := listenSplit(context.Background(), notQualified, listen4, log)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.WriteTo([]byte("x"), net.UDPAddrFromAddrPort(netip.MustParseAddrPort("[2001:db8::1]:53"))); !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("IPv6 datagram: %v, want ENETUNREACH", err)
	}
	if _, err := c.WriteTo([]byte("ping"), net.UDPAddrFromAddrPort(echo4)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16)
	if n, _, err := c.ReadFrom(buf); err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("IPv4 echo: %q %v", buf[:n], err)
	}
	if _, err := listenSplit(context.Background(), notQualified, nil, log); !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("without IPv4 either: %v", err)
	}
}
