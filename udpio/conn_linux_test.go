//go:build linux && !udpio_portable

package udpio_test

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/teredo-go/teredo/udpio"
)

func listen(t *testing.T, opts udpio.Options) *udpio.UDPConn {
	t.Helper()
	c, err := udpio.Listen(loopback, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func sockopt(t *testing.T, c *udpio.UDPConn, level, opt int) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var serr error
	if err := rc.Control(func(fd uintptr) { v, serr = unix.GetsockoptInt(int(fd), level, opt) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	return v
}

// RFC 4380 §5.1.2: the DF bit is never set on Teredo packets.
func TestPMTUDiscoveryOff(t *testing.T) {
	c := listen(t, plain)
	if got := sockopt(t, c, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER); got != unix.IP_PMTUDISC_DONT {
		t.Errorf("IP_MTU_DISCOVER = %d, want IP_PMTUDISC_DONT (%d)", got, unix.IP_PMTUDISC_DONT)
	}
}

func TestBufferSizes(t *testing.T) {
	sys := listen(t, udpio.Options{ReadBuffer: -1, WriteBuffer: -1, DisableGSO: true, DisableGRO: true})
	sysRcv := sockopt(t, sys, unix.SOL_SOCKET, unix.SO_RCVBUF)
	c := listen(t, udpio.Options{ReadBuffer: 6 << 20, WriteBuffer: 5 << 20, DisableGSO: true, DisableGRO: true})
	rcv := sockopt(t, c, unix.SOL_SOCKET, unix.SO_RCVBUF)
	snd := sockopt(t, c, unix.SOL_SOCKET, unix.SO_SNDBUF)
	t.Logf("system default SO_RCVBUF %d; with options SO_RCVBUF %d SO_SNDBUF %d", sysRcv, rcv, snd)
	if os.Geteuid() != 0 {
		if rcv < sysRcv {
			t.Errorf("SO_RCVBUF %d below the system default %d", rcv, sysRcv)
		}
		return
	}
	// Linux doubles the requested size for bookkeeping; FORCE ignores rmem_max.
	if rcv < 6<<20 || snd < 5<<20 {
		t.Errorf("as root, SO_RCVBUF = %d, SO_SNDBUF = %d; want >= %d, %d", rcv, snd, 6<<20, 5<<20)
	}
}

func TestReuseAddr(t *testing.T) {
	a := listen(t, udpio.Options{ReuseAddr: true, DisableGSO: true, DisableGRO: true})
	b, err := udpio.Listen(a.LocalAddr(), udpio.Options{ReuseAddr: true, DisableGSO: true, DisableGRO: true})
	if err != nil {
		t.Fatalf("second Listen on %v with ReuseAddr: %v", a.LocalAddr(), err)
	}
	b.Close()
	c, err := udpio.Listen(a.LocalAddr(), plain)
	if err == nil {
		c.Close()
		t.Fatalf("second Listen on %v without ReuseAddr succeeded", a.LocalAddr())
	}
}

// deadAddr returns a loopback address where nothing listens, so that a
// datagram sent there draws an ICMP port unreachable.
func deadAddr(t *testing.T) netip.AddrPort {
	t.Helper()
	c, err := udpio.Listen(loopback, plain)
	if err != nil {
		t.Fatal(err)
	}
	addr := c.LocalAddr()
	c.Close()
	return addr
}

// provokeConnRefused makes the kernel leave ECONNREFUSED pending on c, as
// an ICMP port unreachable for an earlier datagram does. Unconnected
// sockets only record it with IP_RECVERR, which the test turns on.
func provokeConnRefused(t *testing.T, c *udpio.UDPConn) {
	t.Helper()
	rc, _ := c.SyscallConn()
	var serr error
	rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVERR, 1) })
	if serr != nil {
		t.Fatal(serr)
	}
	if err := c.WriteTo([]byte("anyone?"), deadAddr(t)); err != nil {
		t.Fatal(err)
	}
	// Wait (bounded) until the ICMP error has reached the socket.
	var revents int16
	rc.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd)}}
		_, serr = unix.Poll(fds, 5000)
		revents = fds[0].Revents
	})
	if serr != nil || revents&unix.POLLERR == 0 {
		t.Fatalf("no ICMP error pending on the socket: poll revents %#x, %v", revents, serr)
	}
}

func TestReadSkipsConnRefused(t *testing.T) {
	a, b := listen(t, plain), listen(t, plain)
	provokeConnRefused(t, a)
	if err := b.WriteTo([]byte("still here"), a.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	got, from := readN(t, a, 1, 64)
	if string(got[0]) != "still here" || from[0] != b.LocalAddr() {
		t.Errorf("got %q from %v", got[0], from[0])
	}
	if s := a.Stats(); s.ReadTransientErrors == 0 {
		t.Errorf("Stats = %+v, want ReadTransientErrors > 0 (the ECONNREFUSED was never seen)", s)
	}
}

func TestWriteRetriesAfterConnRefused(t *testing.T) {
	for _, tc := range []struct {
		name  string
		write func(c *udpio.UDPConn, b []byte, dst netip.AddrPort) error
	}{
		{"WriteBatch", func(c *udpio.UDPConn, b []byte, dst netip.AddrPort) error {
			_, err := c.WriteBatch([]udpio.Message{{Buffers: [][]byte{b}, Addr: dst}})
			return err
		}},
		{"WriteTo", (*udpio.UDPConn).WriteTo},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := listen(t, plain), listen(t, plain)
			provokeConnRefused(t, a)
			if err := tc.write(a, []byte("sent anyway"), b.LocalAddr()); err != nil {
				t.Fatalf("write after ICMP error: %v", err)
			}
			if got, _ := readN(t, b, 1, 64); string(got[0]) != "sent anyway" {
				t.Errorf("got %q", got[0])
			}
			if s := a.Stats(); s.WriteTransientErrors == 0 {
				t.Errorf("Stats = %+v, want WriteTransientErrors > 0", s)
			}
		})
	}
}

// A datagram the kernel rejects in the middle of a batch: sendmmsg sends
// the ones before it, WriteBatch reports exactly which one failed.
func TestWriteBatchPartial(t *testing.T) {
	a, b := listen(t, plain), listen(t, plain)
	dst := b.LocalAddr()
	big := make([]byte, 40000)
	msgs := []udpio.Message{
		{Buffers: [][]byte{[]byte("a")}, Addr: dst},
		{Buffers: [][]byte{[]byte("b")}, Addr: dst},
		{Buffers: [][]byte{big, big}, Addr: dst}, // 80000 bytes: EMSGSIZE
		{Buffers: [][]byte{[]byte("d")}, Addr: dst},
	}
	n, err := a.WriteBatch(msgs)
	if n != 2 || !errors.Is(err, syscall.EMSGSIZE) {
		t.Fatalf("WriteBatch = %d, %v; want 2, EMSGSIZE", n, err)
	}
	if n, err := a.WriteBatch(msgs[3:]); n != 1 || err != nil {
		t.Fatalf("WriteBatch(rest) = %d, %v", n, err)
	}
	got, _ := readN(t, b, 3, 64)
	if !bytes.Equal(bytes.Join(got, nil), []byte("abd")) {
		t.Errorf("got %q", got)
	}
}

func TestTruncatedCounted(t *testing.T) {
	a, b := listen(t, plain), listen(t, plain)
	if err := a.WriteTo(bytes.Repeat([]byte("x"), 100), b.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	got, _ := readN(t, b, 1, 10)
	if len(got[0]) != 10 {
		t.Errorf("N = %d, want 10", len(got[0]))
	}
	if s := b.Stats(); s.Truncated != 1 {
		t.Errorf("Stats = %+v, want Truncated 1", s)
	}
}

// TestSteadyStateAllocs guards the zero-allocation property the benchmarks
// report: a batch round trip allocates nothing once warmed up.
func TestSteadyStateAllocs(t *testing.T) {
	a, b := listen(t, plain), listen(t, plain)
	out, in := batches(32, b.LocalAddr())
	b.SetReadDeadline(time.Now().Add(time.Minute))
	var failed error
	allocs := testing.AllocsPerRun(50, func() {
		if err := roundTrip(a, b, out, in); err != nil && failed == nil {
			failed = err
		}
	})
	if failed != nil {
		t.Fatal(failed)
	}
	if allocs != 0 {
		t.Errorf("%v allocations per 32-datagram round trip, want 0", allocs)
	}
}
