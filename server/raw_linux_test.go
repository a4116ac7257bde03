package server

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/teredo-go/teredo/proto"
)

// TestRawIPv6 sends an echo reply (which the kernel answers with nothing)
// from a Teredo source to ::1 and checks that it arrives with that source.
func TestRawIPv6(t *testing.T) {
	raw, err := OpenRawIPv6()
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		t.Skip("needs root or CAP_NET_RAW:", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()

	rx, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(rx)
	if err := unix.Bind(rx, &unix.SockaddrInet6{Addr: netip.IPv6Loopback().As16()}); err != nil {
		t.Skip("no IPv6 loopback:", err)
	}
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(rx, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}

	src := proto.Address{Server: tPrimary, Mapped: mapA}.Addr()
	id := uint16(rand.IntN(1 << 16))
	pkt := proto.AppendEcho(nil, src, netip.IPv6Loopback(), 64, proto.ICMPEchoReply, id, 7, []byte("teredo-server raw test"))
	if err := raw.WriteIPv6(pkt); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		n, from, err := unix.Recvfrom(rx, buf, 0)
		if err != nil {
			continue // timeout: look again until the deadline
		}
		sa, ok := from.(*unix.SockaddrInet6)
		if !ok || !bytes.Equal(buf[:n], pkt[proto.IPv6HeaderLen:]) {
			continue // other ICMPv6 traffic on the host
		}
		if got := netip.AddrFrom16(sa.Addr); got != src {
			t.Fatalf("arrived from %v, want %v", got, src)
		}
		if err := raw.Close(); err != nil {
			t.Fatal(err)
		}
		if err := raw.WriteIPv6(pkt); err == nil {
			t.Fatal("write after Close succeeded")
		}
		return
	}
	t.Fatal("packet not received on ::1")
}

func TestRawIPv6Short(t *testing.T) {
	raw, err := OpenRawIPv6()
	if err != nil {
		t.Skip(err)
	}
	defer raw.Close()
	if err := raw.WriteIPv6(make([]byte, 39)); !errors.Is(err, proto.ErrTruncated) {
		t.Fatalf("err = %v", err)
	}
}
