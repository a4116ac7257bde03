package link

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/refs"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/qdisc/fifo"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/teredo-go/teredo/udpio"
	"github.com/teredo-go/teredo/udpio/udpiotest"
)

func TestMain(m *testing.M) {
	flag.Parse()
	// Reference leak checking is slow; benchmarks measure without it.
	leakCheck := flag.Lookup("test.bench").Value.String() == ""
	if leakCheck {
		refs.SetLeakMode(refs.LeaksPanic)
	}
	code := m.Run()
	if code == 0 && leakCheck {
		// Panics, failing the run, if a packet buffer or chunk is left
		// with references once every stack is gone.
		refs.DoLeakCheck()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// directTunnel is plain IPv6-in-UDP to one peer: the simplest Tunnel, so
// that link tests exercise the endpoint and not the Teredo rules.
type directTunnel struct {
	peer     netip.AddrPort
	splitHdr atomic.Int64 // Transmit calls whose first buffer was < 40 bytes
	handled  func(bufs [][]byte) bool
}

func (d *directTunnel) Transmit(bufs [][]byte) (netip.AddrPort, bool) {
	if len(bufs[0]) < header.IPv6MinimumSize {
		d.splitHdr.Add(1)
		return netip.AddrPort{}, false
	}
	if d.handled != nil && d.handled(bufs) {
		return netip.AddrPort{}, false
	}
	return d.peer, true
}

func (d *directTunnel) Receive(b []byte, from netip.AddrPort) []byte {
	if from != d.peer || len(b) < header.IPv6MinimumSize {
		return nil
	}
	return b
}

var (
	addrA = netip.MustParseAddr("2001:0:7f00:1::a")
	addrB = netip.MustParseAddr("2001:0:7f00:1::b")
)

func newNetstack(tb testing.TB, ep stack.LinkEndpoint, addr netip.Addr) *stack.Stack {
	tb.Helper()
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol6},
	})
	if err := s.CreateNICWithOptions(1, ep, stack.NICOptions{QDisc: fifo.New(ep, 1, 1000)}); err != nil {
		tb.Fatalf("CreateNIC: %v", err)
	}
	pa := tcpip.ProtocolAddress{
		Protocol:          ipv6.ProtocolNumber,
		AddressWithPrefix: tcpip.AddrFrom16(addr.As16()).WithPrefix(),
	}
	if err := s.AddProtocolAddress(1, pa, stack.AddressProperties{}); err != nil {
		tb.Fatalf("AddProtocolAddress: %v", err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv6EmptySubnet, NIC: 1}})
	return s
}

// pair is two endpoints with stacks, joined by direct tunnels over conns.
type pair struct {
	connA, connB udpio.Conn
	epA, epB     *Endpoint
	sA, sB       *stack.Stack
}

func newPair(tb testing.TB, connA, connB udpio.Conn, opts Options) *pair {
	tb.Helper()
	p := &pair{connA: connA, connB: connB}
	p.epA = New(connA, &directTunnel{peer: connB.LocalAddr()}, opts)
	p.epB = New(connB, &directTunnel{peer: connA.LocalAddr()}, opts)
	p.sA = newNetstack(tb, p.epA, addrA)
	p.sB = newNetstack(tb, p.epB, addrB)
	tb.Cleanup(func() {
		destroyed := make(chan struct{})
		go func() {
			p.sA.Destroy()
			p.sB.Destroy()
			close(destroyed)
		}()
		select {
		case <-destroyed:
		case <-time.After(10 * time.Second):
			tb.Errorf("Stack.Destroy hangs: the link's reader did not stop on Attach(nil)")
		}
		connA.Close()
		connB.Close()
	})
	return p
}

func memPair(tb testing.TB) (udpio.Conn, udpio.Conn) {
	tb.Helper()
	n := udpiotest.NewNetwork()
	a, err := n.Listen(netip.MustParseAddrPort("192.0.2.1:40000"))
	if err != nil {
		tb.Fatal(err)
	}
	b, err := n.Listen(netip.MustParseAddrPort("192.0.2.2:40001"))
	if err != nil {
		tb.Fatal(err)
	}
	return a, b
}

func loopbackPair(tb testing.TB) (udpio.Conn, udpio.Conn) {
	return loopbackPairOpts(tb, udpio.Options{DisableGSO: true, DisableGRO: true})
}

// offloadPair is loopbackPair with UDP GSO and GRO on both sockets.
func offloadPair(tb testing.TB) (udpio.Conn, udpio.Conn) {
	return loopbackPairOpts(tb, udpio.Options{})
}

func loopbackPairOpts(tb testing.TB, o udpio.Options) (udpio.Conn, udpio.Conn) {
	tb.Helper()
	a, err := udpio.Listen(netip.MustParseAddrPort("127.0.0.1:0"), o)
	if err != nil {
		tb.Fatal(err)
	}
	b, err := udpio.Listen(netip.MustParseAddrPort("127.0.0.1:0"), o)
	if err != nil {
		a.Close()
		tb.Fatal(err)
	}
	return a, b
}

func fullAddr(a netip.Addr, port uint16) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom16(a.As16()), Port: port}
}

// TestTCPTransfer moves data both ways over TCP between two stacks whose
// links are joined by the in-memory network and by loopback UDP sockets.
func TestTCPTransfer(t *testing.T) {
	for _, tc := range []struct {
		name  string
		conns func(testing.TB) (udpio.Conn, udpio.Conn)
		gso   bool
		gro   bool
	}{
		{"memory", memPair, false, false},
		{"memory-gso", memPair, true, false},
		{"memory-gro", memPair, false, true},
		{"loopback-gso-gro", loopbackPair, true, true},
		{"loopback-udp-offload", offloadPair, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := tc.conns(t)
			p := newPair(t, a, b, Options{DisableGSO: !tc.gso, DisableGRO: !tc.gro})
			ln, err := gonet.ListenTCP(p.sB, fullAddr(addrB, 80), ipv6.ProtocolNumber)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			const size = 1 << 20
			want := make([]byte, size)
			for i := range want {
				want[i] = byte(i * 7)
			}
			errc := make(chan error, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					errc <- err
					return
				}
				defer c.Close()
				_, err = io.Copy(c, c) // echo
				errc <- err
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, err := gonet.DialContextTCP(ctx, p.sA, fullAddr(addrB, 80), ipv6.ProtocolNumber)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(20 * time.Second))
			go func() {
				c.Write(want)
				c.CloseWrite()
			}()
			got, err := io.ReadAll(c)
			c.Close()
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("echoed %d bytes, want %d identical", len(got), len(want))
			}
			if err := <-errc; err != nil {
				t.Fatalf("echo: %v", err)
			}
			st := p.epA.Stats()
			if st.TxPackets == 0 || st.RxPackets == 0 || st.TxErrors != 0 {
				t.Errorf("stats A = %+v", st)
			}
			if o, ok := b.(interface{ Offload() (bool, bool) }); ok {
				if _, gro := o.Offload(); gro && p.epB.Stats().RxCoalesced == 0 {
					t.Errorf("UDP GRO on, but no coalesced message: stats B = %+v", p.epB.Stats())
				}
			}
		})
	}
}

// recorder is a NetworkDispatcher that keeps copies of delivered packets.
type recorder struct {
	mu   sync.Mutex
	pkts [][]byte
}

func (r *recorder) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	v := pkt.ToView()
	defer v.Release()
	r.mu.Lock()
	r.pkts = append(r.pkts, bytes.Clone(v.AsSlice()))
	r.mu.Unlock()
}

func (r *recorder) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

func (r *recorder) wait(t *testing.T, n int) [][]byte {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		got := len(r.pkts)
		r.mu.Unlock()
		if got >= n {
			break
		}
		time.Sleep(time.Millisecond)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.pkts) < n {
		t.Fatalf("got %d packets, want %d", len(r.pkts), n)
	}
	return r.pkts
}

// ipv6Packet returns an IPv6 header for a packet with payloadLen bytes of
// payload (next header 59), followed by that payload.
func ipv6Packet(seq byte, payloadLen int) []byte {
	b := make([]byte, header.IPv6MinimumSize+payloadLen)
	ip := header.IPv6(b)
	ip.Encode(&header.IPv6Fields{
		PayloadLength:     uint16(payloadLen),
		TransportProtocol: 59,
		HopLimit:          64,
		SrcAddr:           tcpip.AddrFrom16(addrA.As16()),
		DstAddr:           tcpip.AddrFrom16(addrB.As16()),
	})
	for i := header.IPv6MinimumSize; i < len(b); i++ {
		b[i] = seq
	}
	return b
}

// TestWritePackets checks routing, gather lists whose first view is shorter
// than the IPv6 header, the tunnel's refusal, and that the endpoint leaves
// the packets' references to the caller.
func TestWritePackets(t *testing.T) {
	a, b := memPair(t)
	defer a.Close()
	defer b.Close()
	tun := &directTunnel{peer: b.LocalAddr()}
	tun.handled = func(bufs [][]byte) bool { return header.IPv6(bufs[0]).HopLimit() == 0xee }
	ep := New(a, tun, Options{BatchSize: 4, DisableGSO: true, DisableGRO: true}) // smaller than the list: several batches

	var pl stack.PacketBufferList
	var want [][]byte
	for i := range 10 {
		raw := ipv6Packet(byte(i), 100+i)
		var pkt *stack.PacketBuffer
		switch i % 3 {
		case 0: // one view
			pkt = stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(raw)})
		case 1: // header split across two views: the endpoint must flatten
			buf := buffer.MakeWithData(raw[:13])
			buf.Append(buffer.NewViewWithData(raw[13:]))
			pkt = stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buf})
		case 2: // header pushed in the reserved space, as the stack does
			pkt = stack.NewPacketBuffer(stack.PacketBufferOptions{
				ReserveHeaderBytes: 64,
				Payload:            buffer.MakeWithData(raw[header.IPv6MinimumSize:]),
			})
			copy(pkt.NetworkHeader().Push(header.IPv6MinimumSize), raw)
		}
		if i == 7 {
			header.IPv6(raw).SetHopLimit(0xee)
			pkt.DecRef()
			pkt = stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(raw)})
		} else {
			want = append(want, raw)
		}
		pl.PushBack(pkt)
	}
	n, err := ep.WritePackets(pl)
	if err != nil || n != 10 {
		t.Fatalf("WritePackets = %d, %v", n, err)
	}
	// The packets are still ours: DecRef panics if the endpoint released them.
	pl.DecRef()

	msgs := make([]udpio.Message, 16)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, 2048)}
	}
	var got [][]byte
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	for len(got) < len(want) {
		k, err := b.ReadBatch(msgs)
		if err != nil {
			t.Fatalf("ReadBatch after %d datagrams: %v", len(got), err)
		}
		for _, m := range msgs[:k] {
			got = append(got, bytes.Clone(m.Buffers[0][:m.N]))
		}
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Errorf("datagram %d = %x, want %x", i, got[i], want[i])
		}
	}
	st := ep.Stats()
	if st.TxPackets != 9 || st.TxTunnel != 1 || tun.splitHdr.Load() != 0 {
		t.Errorf("stats = %+v, split headers seen by tunnel = %d", st, tun.splitHdr.Load())
	}
}

// TestReceive checks that datagrams reach the stack only while attached,
// that Deliver injects, and that Attach(nil) stops the reader.
func TestReceive(t *testing.T) {
	a, b := memPair(t)
	defer a.Close()
	defer b.Close()
	ep := New(a, &directTunnel{peer: b.LocalAddr()}, Options{DisableGSO: true, DisableGRO: true})
	ep.Start()
	if err := b.WriteTo(ipv6Packet(1, 8), a.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return ep.Stats().RxNotAttached == 1 })

	var r recorder
	ep.Attach(&r)
	if !ep.IsAttached() {
		t.Fatal("not attached")
	}
	want := [][]byte{ipv6Packet(2, 8), ipv6Packet(3, 16)}
	for _, p := range want {
		if err := b.WriteTo(p, a.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	// A datagram from a stranger is the tunnel's to refuse.
	c, _ := udpiotest.NewNetwork().Listen(netip.MustParseAddrPort("192.0.2.9:1"))
	defer c.Close()
	delivered := ipv6Packet(4, 4)
	ep.Deliver(delivered)
	delivered[header.IPv6MinimumSize] = 0 // Deliver must have copied
	got := r.wait(t, 3)
	// Deliver runs on this goroutine, the reader on its own: the injected
	// packet may come before, between or after the two read ones, which
	// keep their order.
	i := slices.IndexFunc(got, func(p []byte) bool { return bytes.Equal(p, ipv6Packet(4, 4)) })
	if i < 0 {
		t.Errorf("Deliver packet not injected intact: %x", got)
	} else if read := slices.Delete(slices.Clone(got), i, i+1); !bytes.Equal(read[0], want[0]) || !bytes.Equal(read[1], want[1]) {
		t.Errorf("read packets %x, want %x", read, want)
	}

	ep.Attach(nil)
	ep.Wait()
	if ep.IsAttached() {
		t.Fatal("still attached")
	}
	// Attach(nil) does not wait for the reader (see Wait); its done
	// channel says when it has returned.
	ep.mu.Lock()
	done := ep.done
	ep.mu.Unlock()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("reader still running 5 s after Attach(nil)")
	}
	before := ep.Stats().RxDatagrams
	b.WriteTo(ipv6Packet(5, 8), a.LocalAddr())
	if got := ep.Stats().RxDatagrams; got != before {
		t.Errorf("datagrams counted with no reader: %d, was %d", got, before)
	}

	// Attaching again restarts the reader, which picks up the queued datagram.
	ep.Attach(&r)
	r.wait(t, 4)
	ep.Close()
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatal("condition not met in 5 s")
}

// TestCloseWithClosedConn checks that a reader whose socket is closed under
// it exits, and that Close after that does not block.
func TestCloseWithClosedConn(t *testing.T) {
	a, b := memPair(t)
	defer b.Close()
	ep := New(a, &directTunnel{peer: b.LocalAddr()}, Options{DisableGSO: true, DisableGRO: true})
	ep.Start()
	a.Close()
	done := make(chan struct{})
	go func() { ep.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close hangs")
	}
}

// TestDestroyUnderLoad destroys a stack while its reader is busy injecting:
// gVisor holds its stack lock across Attach(nil) and Wait, which the reader
// needs to deliver, so neither may wait for the reader.
func TestDestroyUnderLoad(t *testing.T) {
	for range 5 {
		a, b := memPair(t)
		ep := New(a, &directTunnel{peer: b.LocalAddr()}, Options{DisableGSO: true, DisableGRO: true})
		s := newNetstack(t, ep, addrA)
		stop := make(chan struct{})
		flooded := make(chan struct{})
		go func() {
			defer close(flooded)
			pkt := ipv6Packet(1, 64)
			for i := 0; i < 1_000_000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				b.WriteTo(pkt, a.LocalAddr())
			}
		}()
		waitFor(t, func() bool { return ep.Stats().RxPackets > 100 })
		done := make(chan struct{})
		go func() { s.Destroy(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("Stack.Destroy deadlocks with a busy reader")
		}
		close(stop)
		<-flooded
		a.Close()
		b.Close()
	}
}
