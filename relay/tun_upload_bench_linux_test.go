package relay

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os/exec"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"

	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/relay/tun"
	"github.com/teredo-go/teredo/udpio"
)

// perPacketDevice hides a TUN device's WritePackets (and its offload), so
// that the relay writes one packet per call as it did before it batched.
type perPacketDevice struct{ BatchDevice }

// BenchmarkTeredoToTUN measures the receive path end to end, for an upload:
// a Teredo client on loopback sends a bulk TCP stream, encapsulated in UDP,
// to the relay, which writes it into a TUN device, and the kernel delivers it
// to a TCP socket of this network namespace, whose acknowledgments go back
// through the device and the relay. The client's TCP sender is minimal (a
// window of segments, go-back-N after a silence) but its segments are real:
// the kernel's TCP accepts them. It reports the payload rate, packets per
// second, the whole process's CPU time per packet and the share of
// segments sent again. "per-packet" is the relay writing each packet on its
// own, "coalesced" the IFF_VNET_HDR device merging each batch's segments:
//
//	sudo unshare -n go test -run XXX -bench TeredoToTUN ./relay
func BenchmarkTeredoToTUN(b *testing.B) {
	setUpBenchNamespace(b)
	b.Run("per-packet", func(b *testing.B) { benchUpload(b, false) })
	b.Run("coalesced", func(b *testing.B) { benchUpload(b, true) })
}

// upload is the client end of the benchmark's TCP connection.
type upload struct {
	conn     *udpio.UDPConn
	relay    netip.AddrPort
	src, dst netip.AddrPort
	ack      uint32        // the kernel's sequence number we acknowledge
	isn      uint32        // our first data byte's sequence number
	una      atomic.Uint64 // bytes acknowledged
	wnd      atomic.Uint32 // the kernel's window, scaled
	shift    uint8
	acked    atomic.Int64 // acknowledgments received
}

// segment builds a TCP segment into b and returns it.
func (u *upload) segment(b []byte, seq uint32, flags byte, opts []byte, payload int) []byte {
	th := 20 + len(opts)
	p := b[:40+th+payload]
	clear(p[:40+th])
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:], uint16(th+payload))
	p[6], p[7] = proto.ProtoTCP, 64
	s, d := u.src.Addr().As16(), u.dst.Addr().As16()
	copy(p[8:], s[:])
	copy(p[24:], d[:])
	t := p[40:]
	binary.BigEndian.PutUint16(t[0:], u.src.Port())
	binary.BigEndian.PutUint16(t[2:], u.dst.Port())
	binary.BigEndian.PutUint32(t[4:], seq)
	binary.BigEndian.PutUint32(t[8:], u.ack)
	t[12] = byte(th/4) << 4
	t[13] = flags
	binary.BigEndian.PutUint16(t[14:], 0xffff)
	copy(t[20:], opts)
	binary.BigEndian.PutUint16(t[16:], proto.Checksum(u.src.Addr(), u.dst.Addr(), proto.ProtoTCP, t))
	return p
}

// readAcks follows the kernel's acknowledgments and window until the
// socket closes; the first packet must be the SYN-ACK, which handshake
// waits for.
func (u *upload) readAcks(synack chan<- []byte) {
	msgs := make([]udpio.Message, 8)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, udpio.MaxGROSize)}
	}
	for {
		n, err := u.conn.ReadBatch(msgs)
		if err != nil {
			return
		}
		for i := range n {
			for rest := msgs[i].Buffers[0][:msgs[i].N]; len(rest) > 0; {
				var p []byte
				p, rest = udpio.NextSegment(rest, msgs[i].SegmentSize)
				if len(p) < 60 || p[6] != proto.ProtoTCP || proto.Src(p) != u.dst.Addr() {
					continue
				}
				t := p[40:]
				if t[13]&0x12 == 0x12 { // SYN-ACK
					select {
					case synack <- append([]byte(nil), p...):
					default:
					}
					continue
				}
				ack := binary.BigEndian.Uint32(t[8:])
				una := u.una.Load()
				if d := int32(ack - (u.isn + uint32(una))); d > 0 {
					u.una.Store(una + uint64(d))
				}
				u.wnd.Store(uint32(binary.BigEndian.Uint16(t[14:])) << u.shift)
				u.acked.Add(1)
			}
		}
	}
}

func benchUpload(b *testing.B, coalesce bool) {
	dev, err := tun.Open(tun.Config{Name: "relayup0", Routes: []netip.Prefix{proto.Prefix}, DisableOffload: !coalesce})
	if err != nil {
		b.Fatal(err)
	}
	if dev.Stats().Offload != coalesce {
		dev.Close()
		b.Fatalf("offload %v", dev.Stats().Offload)
	}
	var d Device = dev
	if !coalesce {
		d = perPacketDevice{dev}
	}
	sock := udpio.Options{}
	r, client := newBenchRelay(b, dev, d, sock, sock)
	defer runBenchRelay(b, r)()

	// The native host: a kernel TCP socket that reads and discards.
	ln, err := net.ListenTCP("tcp6", &net.TCPAddr{IP: native.AsSlice()})
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	var received atomic.Int64
	sink := make(chan struct{})
	accepted := make(chan *net.TCPConn, 1)
	go func() {
		defer close(sink)
		c, err := ln.AcceptTCP()
		if err != nil {
			return
		}
		accepted <- c
		buf := make([]byte, 256<<10)
		for {
			n, err := c.Read(buf)
			received.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()

	u := &upload{
		conn:  client,
		relay: r.Addr(),
		src:   netip.AddrPortFrom(teredoAddr(serverIP, client.LocalAddr()), 40000),
		dst:   netip.AddrPortFrom(native, uint16(ln.Addr().(*net.TCPAddr).Port)),
	}
	synack := make(chan []byte, 1)
	rdone := make(chan struct{})
	go func() { defer close(rdone); u.readAcks(synack) }()
	defer func() {
		client.Close()
		<-rdone
		ln.Close()
		select {
		case c := <-accepted:
			c.Close()
		default:
		}
		<-sink
	}()

	// Handshake: MSS for 1280-byte packets and window scaling.
	const iss, mss = 1 << 30, proto.MinMTU - 60
	pkt := make([]byte, proto.MinMTU)
	var sa []byte
	for i := 0; sa == nil; i++ {
		if i == 50 {
			out, _ := exec.Command("sh", "-c", "nstat -az | grep -iE 'tcp|ip6' | grep -v ' 0 '").CombinedOutput()
			b.Fatalf("no SYN-ACK through the relay: %+v\n%s", r.Status(), out)
		}
		syn := u.segment(pkt, iss, 0x02, []byte{2, 4, mss >> 8, mss & 0xff, 1, 3, 3, 7}, 0)
		if err := client.WriteTo(syn, u.relay); err != nil {
			b.Fatal(err)
		}
		select {
		case sa = <-synack:
		case <-time.After(100 * time.Millisecond):
		}
	}
	u.ack = binary.BigEndian.Uint32(sa[44:]) + 1
	for opts := sa[60:min(len(sa), 40+int(sa[52]>>4)*4)]; len(opts) > 0; {
		if opts[0] == 0 {
			break
		}
		if opts[0] == 1 || len(opts) < 2 || int(opts[1]) < 2 || int(opts[1]) > len(opts) {
			opts = opts[1:]
			continue
		}
		if opts[0] == 3 && opts[1] == 3 {
			u.shift = opts[2]
		}
		opts = opts[opts[1]:]
	}
	u.isn = iss + 1
	u.wnd.Store(uint32(binary.BigEndian.Uint16(sa[54:])) << u.shift)
	if err := client.WriteTo(u.segment(pkt, iss+1, 0x10, nil, 0), u.relay); err != nil {
		b.Fatal(err)
	}

	// Data: up to batch segments per WriteBatch (GSO joins them), at most
	// window segments in flight, go-back-N after rto without progress.
	const (
		batch  = 32
		window = 256
		rto    = 20 * time.Millisecond
	)
	mem := make([]byte, batch*proto.MinMTU)
	msgs := make([]udpio.Message, batch)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{nil}
		msgs[i].Addr = u.relay
	}
	var payload [mss]byte
	for i := range payload {
		payload[i] = byte(i)
	}
	end := uint64(b.N) * mss
	nxt := uint64(0)
	resent, lastUna, lastProgress := 0, u.una.Load(), time.Now()
	lastAdvance := lastProgress
	var ru0, ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	b.ResetTimer()
	start := time.Now()
	for {
		una := u.una.Load()
		if una == end {
			break
		}
		now := time.Now()
		if una != lastUna {
			lastUna, lastProgress, lastAdvance = una, now, now
		} else if now.Sub(lastProgress) > rto {
			if now.Sub(start) > 60*time.Second || now.Sub(lastAdvance) > 5*time.Second {
				b.Fatalf("stalled at %d of %d bytes (%d received): %+v", una, end, received.Load(), r.Status().Counters)
			}
			resent += int(nxt-una) / mss
			nxt, lastProgress = una, now
		}
		nxt = max(nxt, una)
		inflight := nxt - una
		limit := uint64(min(u.wnd.Load(), window*mss))
		m := 0
		for m < batch && nxt != end && inflight+mss <= limit {
			seg := u.segment(mem[m*proto.MinMTU:], u.isn+uint32(nxt), 0x10, nil, 0)
			seg = seg[:len(seg)+mss]
			copy(seg[60:], payload[:])
			binary.BigEndian.PutUint16(seg[4:], 20+mss)
			seg[56], seg[57] = 0, 0
			binary.BigEndian.PutUint16(seg[56:], ^checksum.Checksum(seg[40:], pseudo(u, 20+mss)))
			msgs[m].Buffers[0] = seg
			m++
			nxt += mss
			inflight += mss
		}
		if m == 0 {
			time.Sleep(5 * time.Microsecond)
			continue
		}
		for sent := 0; sent < m; {
			n, err := client.WriteBatch(msgs[sent:m])
			if err != nil && !errors.Is(err, syscall.ENOBUFS) {
				b.Fatal(err)
			}
			sent += max(n, 1)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := time.Duration(ru1.Utime.Nano() - ru0.Utime.Nano() + ru1.Stime.Nano() - ru0.Stime.Nano())
	b.ReportMetric(float64(b.N)*mss/elapsed.Seconds()/1e6, "MB/s")
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "pkts/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/pkt")
	b.ReportMetric(float64(resent)/float64(b.N), "resent")
	st := dev.Stats()
	b.ReportMetric(float64(st.Packets)/float64(max(st.Writes, 1)), "pkts/write")
	// The socket must have the whole stream before the connection goes.
	deadline := time.Now().Add(5 * time.Second)
	for received.Load() < int64(b.N)*mss && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := received.Load(); got != int64(b.N)*mss {
		b.Errorf("the socket received %d of %d bytes", got, int64(b.N)*mss)
	}
}

// pseudo is the pseudo-header sum of u's segments of upper-layer length l.
func pseudo(u *upload, l int) uint16 {
	s, d := u.src.Addr().As16(), u.dst.Addr().As16()
	sum := checksum.Checksum(s[:], 0)
	sum = checksum.Checksum(d[:], sum)
	sum = checksum.Combine(sum, uint16(l))
	return checksum.Combine(sum, proto.ProtoTCP)
}
