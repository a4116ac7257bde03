package udpio_test

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/teredo-go/teredo/udpio"
)

// datagramSize is a full Teredo packet: IPv6 MTU 1280 plus the UDP payload
// overhead the relay sees is close enough; the kernel cost is per datagram.
const datagramSize = 1280

// batches returns n outgoing messages of datagramSize to dst and n receive
// slots.
func batches(n int, dst netip.AddrPort) (out, in []udpio.Message) {
	out = make([]udpio.Message, n)
	in = make([]udpio.Message, n)
	for i := range n {
		out[i] = udpio.Message{Buffers: [][]byte{make([]byte, datagramSize)}, Addr: dst}
		in[i] = udpio.Message{Buffers: [][]byte{make([]byte, 2048)}}
	}
	return out, in
}

// roundTrip sends out from a and reads as many datagrams on b.
func roundTrip(a, b udpio.Conn, out, in []udpio.Message) error {
	if n, err := a.WriteBatch(out); err != nil {
		return fmt.Errorf("WriteBatch = %d, %w", n, err)
	}
	for got := 0; got < len(out); {
		n, err := b.ReadBatch(in[:min(len(in), len(out)-got)])
		if err != nil {
			return fmt.Errorf("ReadBatch after %d of %d: %w", got, len(out), err)
		}
		for _, m := range in[:n] {
			got += segments(m)
		}
	}
	return nil
}

// segments counts the datagrams in a received message.
func segments(m udpio.Message) int {
	if m.SegmentSize <= 0 || m.N <= m.SegmentSize {
		return 1
	}
	return (m.N + m.SegmentSize - 1) / m.SegmentSize
}

var benchBatches = []int{1, 8, 32}

func benchPair(b *testing.B) (*udpio.UDPConn, *udpio.UDPConn) {
	return benchPairOpts(b, plain, plain)
}

func benchPairOpts(b *testing.B, xo, yo udpio.Options) (*udpio.UDPConn, *udpio.UDPConn) {
	b.Helper()
	x, err := udpio.Listen(loopback, xo)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { x.Close() })
	y, err := udpio.Listen(loopback, yo)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { y.Close() })
	// A lost datagram must fail the benchmark, not hang it.
	y.SetReadDeadline(time.Now().Add(10 * time.Minute))
	return x, y
}

func reportPerDatagram(b *testing.B, perOp int) {
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*perOp), "ns/datagram")
	b.SetBytes(int64(perOp * datagramSize))
}

// BenchmarkRoundTrip: one op is a WriteBatch of n datagrams on loopback and
// the ReadBatch calls that receive them.
func BenchmarkRoundTrip(b *testing.B) {
	for _, n := range benchBatches {
		b.Run(fmt.Sprintf("batch=%d", n), func(b *testing.B) {
			x, y := benchPair(b)
			out, in := batches(n, y.LocalAddr())
			b.ReportAllocs()
			for b.Loop() {
				if err := roundTrip(x, y, out, in); err != nil {
					b.Fatal(err)
				}
			}
			reportPerDatagram(b, n)
		})
	}
}

// BenchmarkRoundTripOffload is BenchmarkRoundTrip with UDP GSO on the
// sender and, in the "gro" cases, UDP GRO on the receiver, which on
// loopback receives each coalesced send as one message.
func BenchmarkRoundTripOffload(b *testing.B) {
	for _, gro := range []bool{false, true} {
		for _, n := range benchBatches[1:] {
			b.Run(fmt.Sprintf("gro=%v/batch=%d", gro, n), func(b *testing.B) {
				x, y := benchPairOpts(b, udpio.Options{DisableGRO: true}, udpio.Options{DisableGSO: true, DisableGRO: !gro})
				if gso, _ := x.Offload(); !gso {
					b.Skip("no UDP GSO")
				}
				out, in := batches(n, y.LocalAddr())
				if gro {
					for i := range in {
						in[i].Buffers[0] = make([]byte, udpio.MaxGROSize)
					}
				}
				b.ReportAllocs()
				for b.Loop() {
					if err := roundTrip(x, y, out, in); err != nil {
						b.Fatal(err)
					}
				}
				reportPerDatagram(b, n)
			})
		}
	}
}

// BenchmarkWriteBatch: one op is a WriteBatch of n datagrams. Nobody reads,
// so once the receiver's buffer is full the kernel drops them on arrival;
// the sending path is what is measured.
func BenchmarkWriteBatch(b *testing.B) {
	for _, n := range benchBatches {
		b.Run(fmt.Sprintf("batch=%d", n), func(b *testing.B) {
			x, y := benchPair(b)
			out, _ := batches(n, y.LocalAddr())
			b.ReportAllocs()
			for b.Loop() {
				if k, err := x.WriteBatch(out); err != nil || k != n {
					b.Fatal(k, err)
				}
			}
			reportPerDatagram(b, n)
		})
	}
}

// BenchmarkReadBatch: one op is a ReadBatch of up to n queued datagrams;
// the queue is refilled with the timer stopped.
func BenchmarkReadBatch(b *testing.B) {
	const fill = 256
	for _, n := range benchBatches {
		b.Run(fmt.Sprintf("batch=%d", n), func(b *testing.B) {
			x, y := benchPair(b)
			out, in := batches(fill, y.LocalAddr())
			in = in[:n]
			queued, read := 0, 0
			b.ReportAllocs()
			for b.Loop() {
				if queued == 0 {
					b.StopTimer()
					if k, err := x.WriteBatch(out); err != nil {
						b.Fatal(k, err)
					}
					queued = fill
					b.StartTimer()
				}
				k, err := y.ReadBatch(in[:min(n, queued)])
				if err != nil {
					b.Fatal(err)
				}
				queued -= k
				read += k
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(read), "ns/datagram")
		})
	}
}

// BenchmarkStdlibRoundTrip is the baseline: one datagram per system call
// through *net.UDPConn.
func BenchmarkStdlibRoundTrip(b *testing.B) {
	x, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(loopback))
	if err != nil {
		b.Fatal(err)
	}
	defer x.Close()
	y, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(loopback))
	if err != nil {
		b.Fatal(err)
	}
	defer y.Close()
	y.SetReadDeadline(time.Now().Add(10 * time.Minute))
	dst := y.LocalAddr().(*net.UDPAddr).AddrPort()
	out, in := make([]byte, datagramSize), make([]byte, 2048)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := x.WriteToUDPAddrPort(out, dst); err != nil {
			b.Fatal(err)
		}
		if _, _, err := y.ReadFromUDPAddrPort(in); err != nil {
			b.Fatal(err)
		}
	}
	reportPerDatagram(b, 1)
}
