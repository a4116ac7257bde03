//go:build linux && !udpio_portable

package udpio_test

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/teredo-go/teredo/udpio"
)

// TestWriteToTTL checks that WriteToTTL sets the TTL of that datagram only: a
// receiver asking for IP_RECVTTL sees it, and the next plain write carries the
// socket's default again.
func TestWriteToTTL(t *testing.T) {
	rc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	r := ipv4.NewPacketConn(rc)
	if err := r.SetControlMessage(ipv4.FlagTTL, true); err != nil {
		t.Fatal(err)
	}
	dst := rc.LocalAddr().(*net.UDPAddr).AddrPort()
	c, err := udpio.Listen(netip.MustParseAddrPort("127.0.0.1:0"), udpio.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	recvTTL := func() int {
		t.Helper()
		buf := make([]byte, 64)
		rc.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, cm, _, err := r.ReadFrom(buf)
		if err != nil {
			t.Fatal(err)
		}
		if cm == nil {
			t.Fatal("no control message")
		}
		return cm.TTL
	}
	for _, ttl := range []int{1, 2, 3, 255} {
		if err := c.WriteToTTL([]byte("x"), dst, ttl); err != nil {
			t.Fatal(err)
		}
		if got := recvTTL(); got != ttl {
			t.Errorf("WriteToTTL(%d): received TTL %d", ttl, got)
		}
		if err := c.WriteTo([]byte("y"), dst); err != nil {
			t.Fatal(err)
		}
		if got := recvTTL(); got == ttl || got < 32 {
			t.Errorf("plain write after WriteToTTL(%d): TTL %d, want the default", ttl, got)
		}
	}
	for _, bad := range []int{0, -1, 256} {
		if err := c.WriteToTTL([]byte("x"), dst, bad); !errors.Is(err, udpio.ErrBadTTL) {
			t.Errorf("WriteToTTL(%d) = %v, want ErrBadTTL", bad, err)
		}
	}
	if err := c.WriteToTTL([]byte("x"), netip.MustParseAddrPort("[::1]:9"), 2); !errors.Is(err, udpio.ErrNotIPv4) {
		t.Errorf("WriteToTTL to IPv6 = %v, want ErrNotIPv4", err)
	}
}
