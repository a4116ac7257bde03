package link

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/teredo-go/teredo/client"
	"github.com/teredo-go/teredo/peer"
	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/server"
	"github.com/teredo-go/teredo/udpio"
	"github.com/teredo-go/teredo/udpio/udpiotest"
)

// clientPeers qualifies two Teredo clients with our server on an in-memory
// network and makes them trust each other, so that both are on the fast
// path. The clients' datagrams are read by link endpoints without a stack.
func clientPeers(tb testing.TB) (a, b *client.Client, addrA, addrB netip.AddrPort) {
	tb.Helper()
	network := udpiotest.NewNetwork()
	srv, err := server.New(server.Config{
		Primary:    netip.MustParseAddr("192.0.2.1"),
		IPv4Filter: proto.AnyIPv4,
		Listen:     func(a netip.AddrPort) (udpio.Conn, error) { return network.Listen(a) },
	})
	if err != nil {
		tb.Fatal(err)
	}
	served := make(chan struct{})
	go func() { srv.Serve(context.Background()); close(served) }()
	tb.Cleanup(func() { srv.Close(); <-served })

	newClient := func(local string) (*client.Client, netip.AddrPort) {
		conn, err := network.Listen(netip.MustParseAddrPort(local))
		if err != nil {
			tb.Fatal(err)
		}
		ep := New(conn, nil, Options{DisableGSO: true, DisableGRO: true})
		qualified := make(chan struct{}, 1)
		c, err := client.New(client.Config{
			Transport:  conn,
			Deliver:    func([]byte) {},
			IPv4Filter: proto.AnyIPv4,
			Servers:    []netip.Addr{netip.MustParseAddr("192.0.2.1")},
			OnEvent: func(ev client.Event) {
				if _, ok := ev.(client.Qualified); ok {
					select {
					case qualified <- struct{}{}:
					default:
					}
				}
			},
		})
		if err != nil {
			tb.Fatal(err)
		}
		ep.SetTunnel(c)
		ep.Start()
		tb.Cleanup(func() { c.Close(); ep.Close(); conn.Close() })
		if err := c.Start(); err != nil {
			tb.Fatal(err)
		}
		select {
		case <-qualified:
		case <-time.After(10 * time.Second):
			tb.Fatalf("client %s not qualified: %+v", local, c.Status())
		}
		return c, conn.LocalAddr()
	}
	a, addrA = newClient("192.0.2.10:1000")
	b, addrB = newClient("192.0.2.11:1000")
	ta, _ := a.Addr()
	tb6, _ := b.Addr()
	// Packets each way make the clients exchange bubbles until both trust
	// the other.
	for i := 0; i < 100; i++ {
		if a.PeerState(tb6) == peer.Reachable && b.PeerState(ta) == peer.Reachable {
			return a, b, addrA, addrB
		}
		a.Transmit([][]byte{teredoPacket(ta, tb6, 8)})
		b.Transmit([][]byte{teredoPacket(tb6, ta, 8)})
		time.Sleep(20 * time.Millisecond)
	}
	tb.Fatalf("peers not reachable: %v %v", a.PeerState(tb6), b.PeerState(ta))
	return
}

// teredoPacket is an IPv6 packet from src to dst with n bytes of payload
// and no next header.
func teredoPacket(src, dst netip.Addr, n int) []byte {
	b := make([]byte, header.IPv6MinimumSize+n)
	header.IPv6(b).Encode(&header.IPv6Fields{
		PayloadLength:     uint16(n),
		TransportProtocol: 59,
		HopLimit:          64,
		SrcAddr:           tcpip.AddrFrom16(src.As16()),
		DstAddr:           tcpip.AddrFrom16(dst.As16()),
	})
	return b
}

// BenchmarkClientPath measures our own per-packet path, link endpoint and
// Teredo client together, without gVisor's protocol processing and without
// a socket: transmit routes 1280-byte packets to a trusted peer through
// Client.Transmit into the sendmmsg batch; receive unwraps datagrams from
// that peer through Client.Receive into packet buffers.
func BenchmarkClientPath(b *testing.B) {
	ca, cb, _, addrB := clientPeers(b)
	ta, _ := ca.Addr()
	tb6, _ := cb.Addr()

	b.Run("transmit", func(b *testing.B) {
		ep := New(&sinkConn{from: addrB}, ca, Options{DisableGSO: true, DisableGRO: true})
		const batch = 47
		var pl stack.PacketBufferList
		for range batch {
			raw := teredoPacket(ta, tb6, proto.MinMTU-header.IPv6MinimumSize)
			pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
				ReserveHeaderBytes: header.IPv6MinimumSize,
				Payload:            buffer.MakeWithData(raw[header.IPv6MinimumSize:]),
			})
			copy(pkt.NetworkHeader().Push(header.IPv6MinimumSize), raw)
			pl.PushBack(pkt)
		}
		defer pl.DecRef()
		b.ReportAllocs()
		b.SetBytes(proto.MinMTU)
		b.ResetTimer()
		for i := 0; i < b.N; i += batch {
			ep.WritePackets(pl)
		}
		b.StopTimer()
		if st := ep.Stats(); st.TxTunnel != 0 || st.TxPackets == 0 {
			b.Fatalf("not on the fast path: %+v", st)
		}
	})

	b.Run("receive", func(b *testing.B) {
		conn := &sinkConn{from: addrB, datagram: teredoPacket(tb6, ta, proto.MinMTU-header.IPv6MinimumSize)}
		benchReceive(b, conn, ca, proto.MinMTU)
	})
}
