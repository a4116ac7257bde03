package link

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"

	tcp "github.com/teredo-go/teredo/internal/gvtcp"
	"github.com/teredo-go/teredo/udpio"
)

// sinkConn is a udpio.Conn that discards writes and replays one datagram
// to readers, so that benchmarks measure the endpoint, not a socket. No
// reader goroutine runs on it: benchmarks drive the receive path directly.
// With segments > 0 it acts as a socket with UDP GRO and puts that many
// copies of the datagram in each message.
type sinkConn struct {
	datagram []byte
	from     netip.AddrPort
	segments int
}

func (c *sinkConn) ReadBatch(msgs []udpio.Message) (int, error) {
	for i := range msgs {
		m := &msgs[i]
		m.N, m.SegmentSize = 0, 0
		for range max(c.segments, 1) {
			m.N += copy(m.Buffers[0][m.N:], c.datagram)
		}
		if c.segments > 0 {
			m.SegmentSize = len(c.datagram)
		}
		m.Addr = c.from
	}
	return len(msgs), nil
}

// Offload reports UDP GRO when the conn coalesces, so that the endpoint
// sizes its receive buffers for it.
func (c *sinkConn) Offload() (gso, gro bool) { return false, c.segments > 0 }

func (c *sinkConn) WriteBatch(msgs []udpio.Message) (int, error) { return len(msgs), nil }
func (c *sinkConn) WriteTo([]byte, netip.AddrPort) error         { return nil }
func (c *sinkConn) LocalAddr() netip.AddrPort                    { return c.from }
func (c *sinkConn) SetReadDeadline(time.Time) error              { return nil }
func (c *sinkConn) Close() error                                 { return nil }

// BenchmarkWritePackets measures the endpoint's transmit path per packet:
// routing through the tunnel and building the sendmmsg batch.
func BenchmarkWritePackets(b *testing.B) {
	peer := netip.MustParseAddrPort("192.0.2.2:40001")
	ep := New(&sinkConn{from: peer}, &directTunnel{peer: peer}, Options{DisableGSO: true, DisableGRO: true})
	const batch = 47 // fifo.BatchSize
	var pl stack.PacketBufferList
	for i := range batch {
		raw := ipv6Packet(byte(i), 1240)
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
			ReserveHeaderBytes: header.IPv6MinimumSize,
			Payload:            buffer.MakeWithData(raw[header.IPv6MinimumSize:]),
		})
		copy(pkt.NetworkHeader().Push(header.IPv6MinimumSize), raw)
		pl.PushBack(pkt)
	}
	defer pl.DecRef()
	b.ReportAllocs()
	b.SetBytes(1280)
	b.ResetTimer()
	for i := 0; i < b.N; i += batch {
		// The list is the endpoint's to consume, not its packets: reuse them.
		if _, err := ep.WritePackets(pl); err != nil {
			b.Fatal(err)
		}
	}
}

// handoffDispatcher passes packets, 64 at a time, to another goroutine,
// which drops them, so that the receive benchmark measures the endpoint
// and gVisor's packet buffers only, with buffers released away from the
// reader as in a stack (by TCP's processor or the application's read):
// gVisor's pools then behave as they do in a stack, not as for a reader
// that gets back the buffer it just released.
type handoffDispatcher struct {
	batch      []*stack.PacketBuffer
	full, free chan []*stack.PacketBuffer
}

func newHandoffDispatcher(tb testing.TB) *handoffDispatcher {
	const size, n = 64, 16
	d := &handoffDispatcher{full: make(chan []*stack.PacketBuffer, n), free: make(chan []*stack.PacketBuffer, n)}
	for range n - 1 {
		d.free <- make([]*stack.PacketBuffer, 0, size)
	}
	d.batch = make([]*stack.PacketBuffer, 0, size)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ps := range d.full {
			for _, p := range ps {
				p.DecRef()
			}
			d.free <- ps[:0]
		}
	}()
	tb.Cleanup(func() {
		d.full <- d.batch
		close(d.full)
		<-done
	})
	return d
}

func (d *handoffDispatcher) DeliverNetworkPacket(_ tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	// IncRef, not Clone: the other goroutine only drops the reference.
	d.batch = append(d.batch, pkt.IncRef())
	if len(d.batch) == cap(d.batch) {
		d.full <- d.batch
		d.batch = <-d.free
	}
}

func (d *handoffDispatcher) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// BenchmarkReceive measures the endpoint's receive path per packet: the
// reader goroutine's handling of a batch (the sinkConn's copy into the
// receive buffers stands for the kernel's), unwrapping through the tunnel
// and building the packet buffers to inject, which another goroutine
// releases. "datagrams" has one 1280-byte
// datagram per message, "coalesced" 45 per message, as UDP GRO delivers a
// bulk transfer.
func BenchmarkReceive(b *testing.B) {
	peer := netip.MustParseAddrPort("192.0.2.2:40001")
	for _, segs := range []int{0, 45} {
		name := "datagrams"
		if segs > 0 {
			name = "coalesced"
		}
		b.Run(name, func(b *testing.B) {
			conn := &sinkConn{from: peer, datagram: ipv6Packet(1, 1240), segments: segs}
			benchReceive(b, conn, &directTunnel{peer: peer}, 1280)
		})
	}
}

// benchReceive runs the reader's batches on conn through tun until b.N
// packets of size bytes have been handed to a dispatcher that drops them
// on another goroutine.
func benchReceive(b *testing.B, conn *sinkConn, tun Tunnel, size int) {
	ep := New(conn, tun, Options{DisableGSO: true, DisableGRO: true})
	ep.disp.Store(&dispatcherBox{newHandoffDispatcher(b)})
	var coalescer gro.GRO
	coalescer.Init(false)
	b.ReportAllocs()
	b.SetBytes(int64(size))
	b.ResetTimer()
	for ep.rxPackets.Load() < uint64(b.N) {
		n, _ := ep.readBatch()
		ep.handleBatch(ep.rmsgs[:n], &coalescer)
	}
	b.StopTimer()
	st := ep.Stats()
	if st.RxPackets != st.RxDatagrams {
		b.Fatalf("not every datagram delivered: %+v", st)
	}
}

// BenchmarkStreamLoopback measures one TCP stream between two gVisor
// stacks whose links are joined by plain IPv6-in-UDP tunnels over loopback
// sockets: the link and gVisor without the Teredo client. One op is one
// 128 KiB write.
func BenchmarkStreamLoopback(b *testing.B) {
	for _, gro := range []bool{false, true} {
		b.Run(fmt.Sprintf("gro=%v", gro), func(b *testing.B) { benchStream(b, loopbackPair, Options{DisableGRO: !gro}) })
	}
	b.Run("gro=true/udp-offload", func(b *testing.B) { benchStream(b, offloadPair, Options{}) })
}

func benchStream(b *testing.B, conns func(testing.TB) (udpio.Conn, udpio.Conn), opts Options) {
	a, c := conns(b)
	p := newPair(b, a, c, opts)
	for _, s := range []*stack.Stack{p.sA, p.sB} {
		rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: tcp.DefaultReceiveBufferSize, Max: 8 << 20}
		snd := tcpip.TCPSendBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: tcp.DefaultSendBufferSize, Max: 6 << 20}
		s.SetTransportProtocolOption(tcp.ProtocolNumber, &rcv)
		s.SetTransportProtocolOption(tcp.ProtocolNumber, &snd)
	}
	ln, err := gonet.ListenTCP(p.sB, fullAddr(addrB, 80), ipv6.ProtocolNumber)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	received := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			received <- -1
			return
		}
		n, _ := io.Copy(io.Discard, c)
		c.Close()
		received <- n
	}()
	conn, err := gonet.DialContextTCP(context.Background(), p.sA, fullAddr(addrB, 80), ipv6.ProtocolNumber)
	if err != nil {
		b.Fatal(err)
	}
	const chunk = 128 << 10
	buf := make([]byte, chunk)
	for range 64 {
		conn.Write(buf)
	}
	b.SetBytes(chunk)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	cpu0 := cpuTime()
	for range b.N {
		if _, err := conn.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	conn.CloseWrite()
	n := <-received
	el := time.Since(start)
	cpu := cpuTime() - cpu0
	b.StopTimer()
	conn.Close()
	if n != int64(b.N+64)*chunk {
		b.Fatalf("received %d bytes", n)
	}
	b.ReportMetric(float64(b.N)*chunk*8/el.Seconds()/1e6, "Mbit/s")
	// CPU time per op is steadier than throughput on a shared machine.
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	sa, sb := p.epA.Stats(), p.epB.Stats()
	b.ReportMetric(float64(sa.TxPackets)/float64(max(sa.TxBatches, 1)), "tx-pkts/batch")
	b.ReportMetric(float64(sb.RxDatagrams)/float64(max(sb.RxBatches, 1)), "rx-pkts/batch")
}

// cpuTime returns the CPU time (user and system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
