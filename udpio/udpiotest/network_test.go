package udpiotest_test

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/teredo-go/teredo/udpio"
	"github.com/teredo-go/teredo/udpio/udpiotest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	addrA = netip.MustParseAddrPort("192.0.2.1:3544")
	addrB = netip.MustParseAddrPort("198.51.100.2:4000")
)

func listen(t *testing.T, nw *udpiotest.Network, addr netip.AddrPort) udpio.Conn {
	t.Helper()
	c, err := nw.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// read returns the next datagram on c, or fails after a bounded wait.
func read(t *testing.T, c udpio.Conn) (string, netip.AddrPort) {
	t.Helper()
	msgs := []udpio.Message{{Buffers: [][]byte{make([]byte, 2048)}}}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.ReadBatch(msgs); err != nil {
		t.Fatal(err)
	}
	return string(msgs[0].Buffers[0][:msgs[0].N]), msgs[0].Addr
}

// pending reports whether a datagram is queued at c. Delivery on a Network
// is synchronous, so a short deadline is enough to look. (A deadline in the
// past would fail before looking at the queue, as it does on a socket.)
func pending(c udpio.Conn) bool {
	defer c.SetReadDeadline(time.Time{})
	c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	n, err := c.ReadBatch([]udpio.Message{{Buffers: [][]byte{make([]byte, 1)}}})
	return err == nil && n > 0
}

func TestListen(t *testing.T) {
	nw := udpiotest.NewNetwork()
	listen(t, nw, addrA)
	tests := []struct {
		addr netip.AddrPort
		want error
	}{
		{addrA, udpiotest.ErrAddrInUse},
		{netip.AddrPortFrom(netip.AddrFrom16(addrA.Addr().As16()), addrA.Port()), udpiotest.ErrAddrInUse},
		{netip.MustParseAddrPort("[2001:db8::1]:1"), udpio.ErrNotIPv4},
		{netip.MustParseAddrPort("0.0.0.0:1"), udpiotest.ErrUnspecified},
		{netip.AddrPort{}, udpio.ErrNotIPv4},
	}
	for _, tt := range tests {
		if c, err := nw.Listen(tt.addr); !errors.Is(err, tt.want) {
			if c != nil {
				c.Close()
			}
			t.Errorf("Listen(%v) = %v, want %v", tt.addr, err, tt.want)
		}
	}
}

func TestEphemeralPorts(t *testing.T) {
	nw := udpiotest.NewNetwork()
	ip := netip.MustParseAddr("10.0.0.1")
	seen := make(map[netip.AddrPort]bool)
	for range 100 {
		c := listen(t, nw, netip.AddrPortFrom(ip, 0))
		la := c.LocalAddr()
		if la.Addr() != ip || la.Port() < 49152 || seen[la] {
			t.Fatalf("ephemeral LocalAddr %v (seen before: %v)", la, seen[la])
		}
		seen[la] = true
	}
}

func TestCloseFreesAddress(t *testing.T) {
	nw := udpiotest.NewNetwork()
	a := listen(t, nw, addrA)
	b := listen(t, nw, addrB)
	a.Close()
	if err := b.WriteTo([]byte("to closed"), addrA); err != nil {
		t.Fatal(err)
	}
	if s := nw.Stats(); s.DroppedNoDest != 1 || s.Delivered != 0 {
		t.Errorf("Stats = %+v, want one DroppedNoDest", s)
	}
	a2 := listen(t, nw, addrA)
	if err := b.WriteTo([]byte("to new"), addrA); err != nil {
		t.Fatal(err)
	}
	if got, from := read(t, a2); got != "to new" || from != addrB {
		t.Errorf("got %q from %v", got, from)
	}
}

func TestQueueFullDrops(t *testing.T) {
	nw := udpiotest.NewNetwork()
	nw.QueueLen = 4
	a := listen(t, nw, addrA)
	b := listen(t, nw, addrB)
	for i := range 10 {
		if err := a.WriteTo(fmt.Appendf(nil, "%d", i), addrB); err != nil {
			t.Fatal(err)
		}
	}
	if s := nw.Stats(); s.Delivered != 4 || s.DroppedFull != 6 {
		t.Errorf("Stats = %+v, want 4 delivered, 6 dropped full", s)
	}
	msgs := make([]udpio.Message, 8)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, 16)}
	}
	n, err := b.ReadBatch(msgs)
	if err != nil || n != 4 {
		t.Fatalf("ReadBatch = %d, %v; want the 4 queued", n, err)
	}
	for i, m := range msgs[:n] {
		if got := string(m.Buffers[0][:m.N]); got != fmt.Sprint(i) {
			t.Errorf("datagram %d = %q", i, got)
		}
	}
}

func TestDataIsCopied(t *testing.T) {
	nw := udpiotest.NewNetwork()
	a := listen(t, nw, addrA)
	b := listen(t, nw, addrB)
	buf := []byte("original")
	if err := a.WriteTo(buf, addrB); err != nil {
		t.Fatal(err)
	}
	copy(buf, "SCRIBBLE")
	if got, _ := read(t, b); got != "original" {
		t.Errorf("receiver saw the sender's later write: %q", got)
	}
}

func TestHook(t *testing.T) {
	nw := udpiotest.NewNetwork()
	a := listen(t, nw, addrA)
	b := listen(t, nw, addrB)
	mapped := netip.MustParseAddrPort("203.0.113.9:61000")
	var seen []udpiotest.Packet
	nw.SetHook(func(p *udpiotest.Packet) bool {
		seen = append(seen, udpiotest.Packet{Src: p.Src, Dst: p.Dst, Data: bytes.Clone(p.Data)})
		if string(p.Data) == "drop me" {
			return false
		}
		if p.Src == addrA {
			p.Src = mapped // a NAT rewriting the source
		}
		p.Data[0] = 'H' // and scribbling on the payload
		return true
	})
	sent := []byte("hello")
	if err := a.WriteTo([]byte("drop me"), addrB); err != nil {
		t.Fatal(err)
	}
	if err := a.WriteTo(sent, addrB); err != nil {
		t.Fatal(err)
	}
	if got, from := read(t, b); got != "Hello" || from != mapped {
		t.Errorf("got %q from %v, want \"Hello\" from %v", got, from, mapped)
	}
	if string(sent) != "hello" {
		t.Errorf("hook modified the sender's buffer: %q", sent)
	}
	if len(seen) != 2 || seen[0].Src != addrA || seen[0].Dst != addrB {
		t.Errorf("hook saw %+v", seen)
	}
	if s := nw.Stats(); s.DroppedByHook != 1 || s.Delivered != 1 {
		t.Errorf("Stats = %+v", s)
	}
	nw.SetHook(nil)
	if err := a.WriteTo([]byte("plain"), addrB); err != nil {
		t.Fatal(err)
	}
	if got, from := read(t, b); got != "plain" || from != addrA {
		t.Errorf("without hook: got %q from %v", got, from)
	}
	if pending(b) {
		t.Error("unexpected extra datagram")
	}
}

func TestTooLarge(t *testing.T) {
	nw := udpiotest.NewNetwork()
	a := listen(t, nw, addrA)
	listen(t, nw, addrB)
	big := make([]byte, 40000)
	n, err := a.WriteBatch([]udpio.Message{
		{Buffers: [][]byte{[]byte("ok")}, Addr: addrB},
		{Buffers: [][]byte{big, big}, Addr: addrB},
	})
	if n != 1 || !errors.Is(err, udpiotest.ErrTooLarge) {
		t.Errorf("WriteBatch = %d, %v; want 1, ErrTooLarge", n, err)
	}
}

func TestSteadyStateAllocs(t *testing.T) {
	nw := udpiotest.NewNetwork()
	nw.QueueLen = 64 // the ring's slots keep their buffers after one lap
	a := listen(t, nw, addrA)
	b := listen(t, nw, addrB)
	out := make([]udpio.Message, 32)
	in := make([]udpio.Message, 32)
	for i := range out {
		out[i] = udpio.Message{Buffers: [][]byte{make([]byte, 1280)}, Addr: addrB}
		in[i].Buffers = [][]byte{make([]byte, 2048)}
	}
	var failed error
	roundTrip := func() {
		if _, err := a.WriteBatch(out); err != nil {
			failed = err
		}
		for got := 0; got < len(out) && failed == nil; {
			n, err := b.ReadBatch(in)
			failed = err
			got += n
		}
	}
	roundTrip() // the first lap around the ring fills its slots
	allocs := testing.AllocsPerRun(50, roundTrip)
	if failed != nil {
		t.Fatal(failed)
	}
	if allocs != 0 {
		t.Errorf("%v allocations per 32-datagram round trip, want 0", allocs)
	}
}

func ExampleNetwork() {
	nw := udpiotest.NewNetwork()
	client, _ := nw.Listen(netip.MustParseAddrPort("192.168.1.10:0"))
	defer client.Close()
	server, _ := nw.Listen(netip.MustParseAddrPort("192.0.2.1:3544"))
	defer server.Close()

	// A NAT between client and server: the server sees the public mapping.
	public := netip.MustParseAddrPort("203.0.113.5:40000")
	nw.SetHook(func(p *udpiotest.Packet) bool {
		if p.Src == client.LocalAddr() {
			p.Src = public
		}
		return true
	})

	client.WriteTo([]byte("RS"), server.LocalAddr())
	msgs := []udpio.Message{{Buffers: [][]byte{make([]byte, 1500)}}}
	n, _ := server.ReadBatch(msgs)
	fmt.Println(n, string(msgs[0].Buffers[0][:msgs[0].N]), msgs[0].Addr)
	// Output: 1 RS 203.0.113.5:40000
}
