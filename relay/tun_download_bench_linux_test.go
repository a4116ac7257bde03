package relay

import (
	"encoding/binary"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/teredo-go/teredo/peer"
	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/relay/tun"
	"github.com/teredo-go/teredo/udpio"
)

// BenchmarkTUNToTeredoTCP measures the transmit path for a download: a
// kernel TCP socket of this network namespace sends a bulk stream to a
// Teredo client on loopback, through the TUN device and the relay, and the
// client's acknowledgments come back, encapsulated, through the relay and
// the device. The client's TCP receiver is minimal (it tracks which bytes
// arrived without keeping them, and sends one acknowledgment with SACK
// blocks per read batch) but the kernel's sender is real, so with
// read offload the kernel hands the device TCP super-packets (TSO), which
// it splits itself. It reports the payload rate, packets per second, the
// whole process's CPU time per packet and, for "tso", the segments per
// super-packet. "plain" is the device without offload, where the kernel
// segments before the device:
//
//	sudo unshare -n go test -run XXX -bench TUNToTeredoTCP -benchtime 200000x ./relay
func BenchmarkTUNToTeredoTCP(b *testing.B) {
	setUpBenchNamespace(b)
	b.Run("plain", func(b *testing.B) { benchDownload(b, false) })
	b.Run("tso", func(b *testing.B) { benchDownload(b, true) })
}

// download is the client end of the benchmark's TCP connection.
type download struct {
	conn  *udpio.UDPConn
	relay netip.AddrPort
	self  netip.AddrPort // the client's Teredo address and port
	iss   uint32
	got   atomic.Int64 // payload bytes received in order
	ooo   atomic.Int64 // data segments received out of order
	dup   atomic.Int64 // data segments received again
}

// span is a range of sequence numbers received beyond a hole, relative to
// the first data byte.
type span struct{ lo, hi int64 }

// addSpan records [lo, hi) in spans, sorted and disjoint, and returns them.
func addSpan(spans []span, lo, hi int64) []span {
	i := 0
	for i < len(spans) && spans[i].hi < lo {
		i++
	}
	j := i
	for j < len(spans) && spans[j].lo <= hi {
		lo, hi = min(lo, spans[j].lo), max(hi, spans[j].hi)
		j++
	}
	return slices.Replace(spans, i, j, span{lo, hi})
}

// run answers the kernel's SYN and acknowledges its data until the socket
// closes.
func (d *download) run() {
	msgs := make([]udpio.Message, 8)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, udpio.MaxGROSize)}
	}
	out := make([]byte, 128)
	opts := make([]byte, 0, 28)
	var (
		u     *upload // builds our segments
		isn   uint32  // the kernel's first data byte
		nxt   int64   // the next byte we expect, from isn
		spans []span  // received beyond nxt
	)
	for {
		n, err := d.conn.ReadBatch(msgs)
		if err != nil {
			return
		}
		ack := false
		for i := range n {
			for rest := msgs[i].Buffers[0][:msgs[i].N]; len(rest) > 0; {
				var p []byte
				p, rest = udpio.NextSegment(rest, msgs[i].SegmentSize)
				if len(p) < 60 || p[6] != proto.ProtoTCP || proto.Dst(p) != d.self.Addr() {
					continue
				}
				t := p[40:]
				seq := binary.BigEndian.Uint32(t[4:])
				if t[13]&0x02 != 0 { // SYN: MSS for 1280-byte packets, window scale 7, SACK
					u = &upload{src: d.self, dst: netip.AddrPortFrom(proto.Src(p), binary.BigEndian.Uint16(t[0:])), ack: seq + 1}
					isn, nxt, spans = seq+1, 0, spans[:0]
					const mss = proto.MinMTU - 60
					d.conn.WriteTo(u.segment(out, d.iss, 0x12, []byte{2, 4, mss >> 8, mss & 0xff, 1, 3, 3, 7, 1, 1, 4, 2}, 0), d.relay)
					continue
				}
				payload := int64(len(p) - 40 - int(t[12]>>4)*4)
				if u == nil || payload <= 0 {
					continue
				}
				ack = true
				// Within 2 GB of nxt: the stream is shorter than that.
				lo := nxt + int64(int32(seq-isn-uint32(nxt)))
				switch {
				case lo+payload <= nxt:
					d.dup.Add(1)
					continue
				case lo > nxt:
					d.ooo.Add(1)
					spans = addSpan(spans, lo, lo+payload)
					continue
				}
				nxt = lo + payload
				for len(spans) > 0 && spans[0].lo <= nxt {
					nxt = max(nxt, spans[0].hi)
					spans = spans[1:]
				}
				d.got.Store(nxt)
			}
		}
		if ack {
			u.ack = isn + uint32(nxt)
			opts = opts[:0]
			if len(spans) > 0 {
				k := min(len(spans), 3)
				opts = append(opts, 1, 1, 5, byte(2+8*k))
				for _, sp := range spans[:k] {
					opts = binary.BigEndian.AppendUint32(opts, isn+uint32(sp.lo))
					opts = binary.BigEndian.AppendUint32(opts, isn+uint32(sp.hi))
				}
			}
			d.conn.WriteTo(u.segment(out, d.iss+1, 0x10, opts, 0), d.relay)
		}
	}
}

func benchDownload(b *testing.B, offload bool) {
	dev, err := tun.Open(tun.Config{Name: "relaydown0", Routes: []netip.Prefix{proto.Prefix}, DisableOffload: !offload})
	if err != nil {
		b.Fatal(err)
	}
	if st := dev.Stats(); st.ReadOffload != offload {
		dev.Close()
		b.Fatalf("read offload %v", st.ReadOffload)
	}
	sock := udpio.Options{}
	r, client := newBenchRelay(b, dev, dev, sock, sock)
	d := &download{
		conn:  client,
		relay: r.Addr(),
		self:  netip.AddrPortFrom(teredoAddr(serverIP, client.LocalAddr()), 40000),
		iss:   1 << 30,
	}
	r.table.Update(d.self.Addr().As16(), true, r.now(), func(p *peer.Peer) { p.Trust(client.LocalAddr()) })
	defer runBenchRelay(b, r)()
	rdone := make(chan struct{})
	go func() { defer close(rdone); d.run() }()
	defer func() { client.Close(); <-rdone }()

	// The native host: a kernel TCP socket that connects to the client and
	// sends b.N full segments.
	dl := net.Dialer{LocalAddr: &net.TCPAddr{IP: native.AsSlice()}, Timeout: 5 * time.Second}
	c, err := dl.Dial("tcp6", d.self.String())
	if err != nil {
		b.Fatalf("connect through the relay: %v (%+v)", err, r.Status().Counters)
	}
	defer c.Close()
	const mss = proto.MinMTU - 60
	total := int64(b.N) * mss
	chunk := make([]byte, 256<<10)
	for i := range chunk {
		chunk[i] = byte(i)
	}
	before := dev.Stats()
	var ru0, ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	b.ResetTimer()
	start := time.Now()
	werr := make(chan error, 1)
	go func() {
		c.SetWriteDeadline(start.Add(120 * time.Second))
		for left := total; left > 0; {
			n, err := c.Write(chunk[:min(left, int64(len(chunk)))])
			left -= int64(n)
			if err != nil {
				werr <- err
				return
			}
		}
		werr <- nil
	}()
	last, lastProgress := int64(0), start
	for {
		got := d.got.Load()
		if got >= total {
			break
		}
		now := time.Now()
		if got != last {
			last, lastProgress = got, now
		} else if now.Sub(lastProgress) > 5*time.Second {
			out, _ := exec.Command("sh", "-c", "ip -s link show relaydown0; nstat -az | grep -iE 'tcp|ip6' | grep -v ' 0 '").CombinedOutput()
			b.Fatalf("stalled at %d of %d bytes (%d out of order, %d again): %+v %+v\n%s", got, total, d.ooo.Load(), d.dup.Load(), dev.Stats(), r.Status().Counters, out)
		}
		time.Sleep(50 * time.Microsecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	if err := <-werr; err != nil {
		b.Fatalf("the socket's write: %v", err)
	}
	cpu := time.Duration(ru1.Utime.Nano() - ru0.Utime.Nano() + ru1.Stime.Nano() - ru0.Stime.Nano())
	segs := int64(b.N)
	b.ReportMetric(float64(total)/elapsed.Seconds()/1e6, "MB/s")
	b.ReportMetric(float64(segs)/elapsed.Seconds(), "pkts/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(max(segs, 1)), "cpu-ns/pkt")
	b.ReportMetric(float64(d.ooo.Load()+d.dup.Load())/float64(max(segs, 1)), "ooo+dup")
	st := dev.Stats()
	if offload {
		b.ReportMetric(float64(st.ReadSegments-before.ReadSegments)/float64(max(st.ReadSuper-before.ReadSuper, 1)), "segs/super")
	}
}
