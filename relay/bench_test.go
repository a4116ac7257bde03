package relay

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/teredo-go/teredo/peer"
	"github.com/teredo-go/teredo/udpio"
)

// nullConn is a udpio.Conn that discards what is written, so that the
// benchmarks measure the relay's own per-packet cost.
type nullConn struct{ closed chan struct{} }

func (c *nullConn) ReadBatch([]udpio.Message) (int, error) { <-c.closed; return 0, net.ErrClosed }
func (c *nullConn) WriteBatch(m []udpio.Message) (int, error) {
	return len(m), nil
}
func (c *nullConn) WriteTo([]byte, netip.AddrPort) error { return nil }
func (c *nullConn) LocalAddr() netip.AddrPort            { return relayAddr }
func (c *nullConn) SetReadDeadline(time.Time) error      { return nil }
func (c *nullConn) Close() error                         { return nil }

// nullDevice discards written packets.
type nullDevice struct{ closed chan struct{} }

func (d *nullDevice) ReadPacket([]byte) (int, error) { <-d.closed; return 0, net.ErrClosed }
func (d *nullDevice) WritePacket([]byte) error       { return nil }
func (d *nullDevice) Close() error                   { return nil }

func benchRelay(b *testing.B) (*Relay, netip.Addr) {
	r, err := New(Config{Conn: &nullConn{}, Device: &nullDevice{}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.table.Close() })
	peerAddr := teredoAddr(serverIP, clientMap)
	r.table.Update(peerAddr.As16(), true, r.now(), func(p *peer.Peer) { p.Trust(clientMap) })
	return r, peerAddr
}

// BenchmarkTransmitTrusted is the steady-state IPv6-to-Teredo path.
func BenchmarkTransmitTrusted(b *testing.B) {
	r, peerAddr := benchRelay(b)
	pkt := udpPacket(native, peerAddr, make([]byte, 1200))
	var sc scratch
	b.SetBytes(int64(len(pkt)))
	b.ReportAllocs()
	for b.Loop() {
		r.transmit(pkt, &sc)
	}
	if r.Counter(TxForwarded) == 0 {
		b.Fatal("nothing forwarded")
	}
}

// BenchmarkReceiveTrusted is the steady-state Teredo-to-IPv6 path.
func BenchmarkReceiveTrusted(b *testing.B) {
	r, peerAddr := benchRelay(b)
	pkt := udpPacket(peerAddr, native, make([]byte, 1200))
	var sc scratch
	b.SetBytes(int64(len(pkt)))
	b.ReportAllocs()
	for b.Loop() {
		r.receive(pkt, clientMap, &sc)
	}
	if r.Counter(RxForwarded) == 0 {
		b.Fatal("nothing forwarded")
	}
}

func TestSteadyStateAllocs(t *testing.T) {
	r, err := New(Config{Conn: &nullConn{}, Device: &nullDevice{}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.table.Close()
	peerAddr := teredoAddr(serverIP, clientMap)
	r.table.Update(peerAddr.As16(), true, r.now(), func(p *peer.Peer) { p.Trust(clientMap) })
	out := udpPacket(native, peerAddr, make([]byte, 100))
	in := udpPacket(peerAddr, native, make([]byte, 100))
	var sc scratch
	if n := testing.AllocsPerRun(1000, func() { r.transmit(out, &sc) }); n != 0 {
		t.Errorf("transmit allocates %v per packet", n)
	}
	if n := testing.AllocsPerRun(1000, func() { r.receive(in, clientMap, &sc) }); n != 0 {
		t.Errorf("receive allocates %v per packet", n)
	}
}

// BenchmarkTransmitBatch is the steady-state IPv6-to-Teredo path for a
// batch read from a BatchDevice, per packet.
func BenchmarkTransmitBatch(b *testing.B) {
	r, peerAddr := benchRelay(b)
	pkts := make([][]byte, DefaultBatchSize)
	for i := range pkts {
		pkts[i] = udpPacket(native, peerAddr, make([]byte, 1200))
	}
	bufs, sizes, msgs := batchSlots(pkts)
	var sc scratch
	b.SetBytes(int64(len(pkts) * len(pkts[0])))
	b.ReportAllocs()
	for b.Loop() {
		r.transmitBatch(bufs, sizes, msgs, &sc)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(r.Counter(TxForwarded)), "ns/pkt")
}
