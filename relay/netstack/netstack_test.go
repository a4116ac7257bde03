package netstack

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/relay"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var _ relay.Device = (*Device)(nil)

const (
	nicID    = 1
	hostPort = 4000
	// wait bounds every blocking step; nothing in a passing run comes close.
	wait = 5 * time.Second
)

var (
	// host is the stack's own address on the NIC.
	host = netip.MustParseAddr("2001:db8::1")
	// client is a Teredo client (RFC 4380 §4's example address) reached
	// through the NIC.
	client = netip.MustParseAddr("2001:0:4136:e378:8000:63bf:3fff:fdd2")
)

// newDevice builds a stack with host on NIC nicID, a route for 2001::/32
// into the NIC, and the Device on it. Cleanup closes both.
func newDevice(tb testing.TB) (*stack.Stack, *Device) {
	tb.Helper()
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{udp.NewProtocol, icmp.NewProtocol6},
	})
	d, err := New(s, nicID)
	if err != nil {
		s.Destroy()
		tb.Fatalf("New: %v", err)
	}
	tb.Cleanup(func() {
		d.Close()
		s.Destroy()
	})
	pa := tcpip.ProtocolAddress{
		Protocol:          ipv6.ProtocolNumber,
		AddressWithPrefix: tcpip.AddrFrom16(host.As16()).WithPrefix(),
	}
	if err := s.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
		tb.Fatalf("AddProtocolAddress: %s", err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: teredoSubnet(tb), NIC: nicID}})
	return s, d
}

func teredoSubnet(tb testing.TB) tcpip.Subnet {
	tb.Helper()
	mask := make([]byte, 16)
	copy(mask, []byte{0xff, 0xff, 0xff, 0xff})
	sn, err := tcpip.NewSubnet(tcpip.AddrFrom16(proto.Prefix.Addr().As16()), tcpip.MaskFromBytes(mask))
	if err != nil {
		tb.Fatal(err)
	}
	return sn
}

// listenUDP opens a UDP socket of the stack on host:port.
func listenUDP(tb testing.TB, s *stack.Stack, port uint16) *gonet.UDPConn {
	tb.Helper()
	c, err := gonet.DialUDP(s, &tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom16(host.As16()), Port: port}, nil, ipv6.ProtocolNumber)
	if err != nil {
		tb.Fatalf("DialUDP: %v", err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// udpPacket builds a valid IPv6/UDP packet.
func udpPacket(src, dst netip.AddrPort, payload []byte) []byte {
	p := make([]byte, 40+8+len(payload))
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:], uint16(8+len(payload)))
	p[6] = 17 // UDP
	p[7] = 64
	s, d := src.Addr().As16(), dst.Addr().As16()
	copy(p[8:], s[:])
	copy(p[24:], d[:])
	u := p[40:]
	binary.BigEndian.PutUint16(u[0:], src.Port())
	binary.BigEndian.PutUint16(u[2:], dst.Port())
	binary.BigEndian.PutUint16(u[4:], uint16(8+len(payload)))
	copy(u[8:], payload)
	sum := proto.Checksum(src.Addr(), dst.Addr(), 17, u)
	if sum == 0 {
		sum = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], sum)
	return p
}

type readResult struct {
	n   int
	err error
}

// readOnce runs one ReadPacket into b and waits at most wait for it. On a
// timeout the test fails and Cleanup's Close ends the read.
func readOnce(tb testing.TB, d *Device, b []byte) (int, error) {
	tb.Helper()
	ch := make(chan readResult, 1)
	go func() {
		n, err := d.ReadPacket(b)
		ch <- readResult{n, err}
	}()
	select {
	case r := <-ch:
		return r.n, r.err
	case <-time.After(wait):
		tb.Fatalf("ReadPacket did not return within %v", wait)
		return 0, nil
	}
}

// readUDP reads packets until a UDP one carrying payload, skipping what the
// stack sends on its own (MLD reports, router solicitations, DAD probes) and
// earlier datagrams.
func readUDP(tb testing.TB, d *Device, payload []byte) []byte {
	tb.Helper()
	b := make([]byte, 2*proto.MinMTU)
	for range 64 {
		n, err := readOnce(tb, d, b)
		if err != nil {
			tb.Fatalf("ReadPacket: %v", err)
		}
		if n >= 48 && b[6] == 17 && bytes.Equal(b[48:n], payload) {
			return b[:n]
		}
	}
	tb.Fatalf("no UDP packet with payload %q among the first 64 the stack sent", payload)
	return nil
}

// receive reads one datagram from c with a deadline.
func receive(tb testing.TB, c *gonet.UDPConn) ([]byte, netip.AddrPort) {
	tb.Helper()
	if err := c.SetReadDeadline(time.Now().Add(wait)); err != nil {
		tb.Fatal(err)
	}
	b := make([]byte, 2*proto.MinMTU)
	n, from, err := c.ReadFrom(b)
	if err != nil {
		tb.Fatalf("ReadFrom: %v", err)
	}
	return b[:n], from.(*net.UDPAddr).AddrPort()
}

func TestNewDuplicateNIC(t *testing.T) {
	s, _ := newDevice(t)
	if d, err := New(s, nicID); err == nil {
		d.Close()
		t.Fatal("New with a NIC id in use succeeded")
	}
}

func TestWritePacketDelivers(t *testing.T) {
	s, d := newDevice(t)
	c := listenUDP(t, s, hostPort)
	tests := []struct {
		name    string
		payload []byte
		write   func([]byte) error
	}{
		{"empty", nil, d.WritePacket},
		{"small", []byte("hello"), d.WritePacket},
		{"odd length", []byte("abc"), d.WritePacket},
		{"full MTU", bytes.Repeat([]byte{0xa5}, proto.MinMTU-40-8), d.WritePacket},
		{"WriteIPv6", []byte("via WriteIPv6"), d.WriteIPv6},
	}
	from := netip.AddrPortFrom(client, 40000)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := udpPacket(from, netip.AddrPortFrom(host, hostPort), tt.payload)
			orig := bytes.Clone(p)
			if err := tt.write(p); err != nil {
				t.Fatalf("write: %v", err)
			}
			// The Device must not keep p: scribbling on it now must not
			// change what the socket receives.
			if !bytes.Equal(p, orig) {
				t.Fatal("write modified its argument")
			}
			clear(p)
			got, src := receive(t, c)
			if !bytes.Equal(got, tt.payload) {
				t.Errorf("payload = %x, want %x", got, tt.payload)
			}
			if src != from {
				t.Errorf("source = %v, want %v", src, from)
			}
		})
	}
}

func TestReadPacketFromStack(t *testing.T) {
	s, d := newDevice(t)
	c := listenUDP(t, s, hostPort)
	to := netip.AddrPortFrom(client, 40001)
	payload := []byte("to a Teredo client")
	if _, err := c.WriteTo(payload, net.UDPAddrFromAddrPort(to)); err != nil {
		t.Fatalf("WriteTo: %v", err)
	}
	p := readUDP(t, d, payload)

	if v := p[0] >> 4; v != 6 {
		t.Fatalf("version %d", v)
	}
	if pl := int(binary.BigEndian.Uint16(p[4:])); pl != len(p)-40 {
		t.Errorf("payload length field %d, packet carries %d", pl, len(p)-40)
	}
	if p[7] == 0 {
		t.Error("hop limit 0")
	}
	if got := proto.Src(p); got != host {
		t.Errorf("src = %v, want %v", got, host)
	}
	if got := proto.Dst(p); got != to.Addr() {
		t.Errorf("dst = %v, want %v", got, to.Addr())
	}
	u := p[40:]
	if len(u) < 8 {
		t.Fatalf("UDP part %d bytes", len(u))
	}
	if got := binary.BigEndian.Uint16(u[0:]); got != hostPort {
		t.Errorf("src port %d, want %d", got, hostPort)
	}
	if got := binary.BigEndian.Uint16(u[2:]); got != to.Port() {
		t.Errorf("dst port %d, want %d", got, to.Port())
	}
	if got := int(binary.BigEndian.Uint16(u[4:])); got != len(u) {
		t.Errorf("UDP length %d, want %d", got, len(u))
	}
	if sum := proto.Checksum(host, to.Addr(), 17, u); sum != 0 {
		t.Errorf("UDP checksum does not verify (residue %#04x)", sum)
	}
	if !bytes.Equal(u[8:], payload) {
		t.Errorf("payload %q, want %q", u[8:], payload)
	}
}

// TestReadPacketShortBuffer checks the documented behaviour for a buffer
// smaller than the packet: ErrTooLarge and n == 0, the packet is consumed,
// and the next read with a big enough buffer works.
func TestReadPacketShortBuffer(t *testing.T) {
	s, d := newDevice(t)
	c := listenUDP(t, s, hostPort)
	to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(client, 40002))
	for _, size := range []int{0, 1, 39, 40} {
		n, err := readOnceAfterSend(t, d, c, to, make([]byte, size))
		if !errors.Is(err, ErrTooLarge) {
			t.Errorf("ReadPacket(%d-byte buffer) error = %v, want ErrTooLarge", size, err)
		}
		if n != 0 {
			t.Errorf("ReadPacket(%d-byte buffer) n = %d, want 0", size, n)
		}
	}
	if _, err := c.WriteTo([]byte("after"), to); err != nil {
		t.Fatal(err)
	}
	readUDP(t, d, []byte("after"))
}

// readOnceAfterSend makes the stack send a datagram (so a packet is
// waiting whatever the stack sent before) and does one read into b.
func readOnceAfterSend(tb testing.TB, d *Device, c *gonet.UDPConn, to net.Addr, b []byte) (int, error) {
	tb.Helper()
	if _, err := c.WriteTo([]byte("x"), to); err != nil {
		tb.Fatal(err)
	}
	return readOnce(tb, d, b)
}

func TestWritePacketGarbage(t *testing.T) {
	s, d := newDevice(t)
	c := listenUDP(t, s, hostPort)
	from := netip.AddrPortFrom(client, 40003)
	good := udpPacket(from, netip.AddrPortFrom(host, hostPort), []byte("payload"))
	st := s.Stats()

	mod := func(f func(p []byte) []byte) []byte { return f(bytes.Clone(good)) }
	tests := []struct {
		name    string
		p       []byte
		wantErr bool
		// dropped is the counter that must count the packet when
		// WritePacket accepts it.
		dropped *tcpip.StatCounter
	}{
		{name: "nil", p: nil, wantErr: true},
		{name: "empty", p: []byte{}, wantErr: true},
		{name: "IPv4", p: mod(func(p []byte) []byte { p[0] = 0x45; return p }), wantErr: true},
		{name: "version 0", p: make([]byte, 60), wantErr: true},
		{name: "one byte", p: []byte{0x60}, dropped: st.IP.MalformedPacketsReceived},
		{name: "truncated header", p: good[:39], dropped: st.IP.MalformedPacketsReceived},
		{name: "payload length beyond packet", p: mod(func(p []byte) []byte {
			binary.BigEndian.PutUint16(p[4:], 1000)
			return p
		}), dropped: st.IP.MalformedPacketsReceived},
		{name: "UDP length beyond payload", p: mod(func(p []byte) []byte {
			binary.BigEndian.PutUint16(p[44:], 200)
			return p
		}), dropped: st.UDP.MalformedPacketsReceived},
		{name: "bad UDP checksum", p: mod(func(p []byte) []byte { p[47] ^= 0xff; return p }), dropped: st.UDP.ChecksumErrors},
		{name: "truncated UDP header", p: mod(func(p []byte) []byte {
			binary.BigEndian.PutUint16(p[4:], 4)
			return p[:44]
		}), dropped: st.NICs.MalformedL4RcvdPackets},
		{name: "not our address", p: udpPacket(from, netip.AddrPortFrom(netip.MustParseAddr("2001:db8::99"), hostPort), []byte("x")),
			dropped: st.IP.InvalidDestinationAddressesReceived},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before uint64
			if tt.dropped != nil {
				before = tt.dropped.Value()
			}
			err := d.WritePacket(tt.p)
			switch {
			case tt.wantErr && err == nil:
				t.Fatal("WritePacket accepted it")
			case !tt.wantErr && err != nil:
				t.Fatalf("WritePacket: %v", err)
			}
			if tt.dropped != nil {
				if after := tt.dropped.Value(); after != before+1 {
					t.Errorf("drop counter %d -> %d, want one more", before, after)
				}
			}
			// The stack still works.
			if err := d.WritePacket(good); err != nil {
				t.Fatalf("WritePacket(good): %v", err)
			}
			if got, _ := receive(t, c); string(got) != "payload" {
				t.Fatalf("after garbage got %q", got)
			}
		})
	}
}

func TestCloseUnblocksRead(t *testing.T) {
	_, d := newDevice(t)
	ch := make(chan readResult, 1)
	started := make(chan struct{})
	go func() {
		close(started)
		// The stack's own chatter (MLD, RS) may arrive first.
		b := make([]byte, 2*proto.MinMTU)
		for {
			n, err := d.ReadPacket(b)
			if err != nil {
				ch <- readResult{n, err}
				return
			}
		}
	}()
	<-started
	time.Sleep(10 * time.Millisecond) // let ReadPacket block; correctness does not depend on it
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case r := <-ch:
		if !errors.Is(r.err, net.ErrClosed) {
			t.Errorf("ReadPacket after Close: %v, want net.ErrClosed", r.err)
		}
	case <-time.After(wait):
		t.Fatalf("Close did not unblock ReadPacket within %v", wait)
	}
}

func TestAfterClose(t *testing.T) {
	s, d := newDevice(t)
	c := listenUDP(t, s, hostPort)
	good := udpPacket(netip.AddrPortFrom(client, 1), netip.AddrPortFrom(host, hostPort), []byte("late"))
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := d.WritePacket(good); !errors.Is(err, net.ErrClosed) {
		t.Errorf("WritePacket after Close: %v, want net.ErrClosed", err)
	}
	if err := d.WriteIPv6(good); !errors.Is(err, net.ErrClosed) {
		t.Errorf("WriteIPv6 after Close: %v, want net.ErrClosed", err)
	}
	if _, err := readOnce(t, d, make([]byte, proto.MinMTU)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("ReadPacket after Close: %v, want net.ErrClosed", err)
	}
	// The NIC is gone: the stack has no route left to a Teredo client.
	if _, err := c.WriteTo([]byte("x"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(client, 1))); err == nil {
		t.Error("stack still sends through a closed Device")
	}
	if s.HasNIC(nicID) {
		t.Error("NIC still in the stack after Close")
	}
}

// TestConcurrentWriteReadClose exercises the concurrency contract under
// -race: several writers and a reader while Close happens.
func TestConcurrentWriteReadClose(t *testing.T) {
	s, d := newDevice(t)
	c := listenUDP(t, s, hostPort)
	good := udpPacket(netip.AddrPortFrom(client, 2), netip.AddrPortFrom(host, hostPort), []byte("c"))
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 4 {
		wg.Go(func() {
			for range 500 {
				if err := d.WritePacket(good); err != nil {
					if !errors.Is(err, net.ErrClosed) {
						errs <- err
					}
					return
				}
			}
		})
	}
	wg.Go(func() {
		b := make([]byte, proto.MinMTU)
		for {
			if _, err := d.ReadPacket(b); err != nil {
				if !errors.Is(err, net.ErrClosed) {
					errs <- err
				}
				return
			}
		}
	})
	wg.Go(func() {
		to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(client, 3))
		for range 500 {
			if _, err := c.WriteTo([]byte("out"), to); err != nil {
				return // the NIC went away
			}
		}
	})
	time.Sleep(time.Millisecond)
	d.Close()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatalf("goroutines still running %v after Close", wait)
	}
	close(errs)
	for err := range errs {
		t.Errorf("unexpected error: %v", err)
	}
}

func FuzzWritePacket(f *testing.F) {
	from := netip.AddrPortFrom(client, 40004)
	good := udpPacket(from, netip.AddrPortFrom(host, hostPort), []byte("seed"))
	f.Add(good)
	f.Add([]byte{})
	f.Add([]byte{0x60})
	f.Add(good[:40])
	f.Add(proto.AppendBubble(nil, client, host, 64))
	f.Add(proto.AppendEcho(nil, client, host, 64, 128, 1, 1, []byte("ping")))
	f.Add(udpPacket(from, netip.AddrPortFrom(host, 9), nil)) // no listener: ICMPv6 port unreachable out of the NIC
	s, d := newDevice(f)
	c := listenUDP(f, s, hostPort)
	f.Fuzz(func(t *testing.T, p []byte) {
		orig := bytes.Clone(p)
		err := d.WritePacket(p)
		if err != nil && (len(p) > 0 && p[0]>>4 == 6) {
			t.Fatalf("WritePacket refused an IPv6-looking packet: %v", err)
		}
		if !bytes.Equal(p, orig) {
			t.Fatal("WritePacket modified its argument")
		}
		// Keep the outbound queue and the socket's buffer from growing
		// across iterations; neither read blocks.
		d.ep.Drain()
		c.SetReadDeadline(time.Now())
		c.ReadFrom(make([]byte, 2*proto.MinMTU))
	})
}
