package relay

import (
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/teredo-go/teredo/peer"
	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/relay/tun"
	"github.com/teredo-go/teredo/udpio"
)

// singleDevice hides a device's ReadPackets, so that the relay reads one
// packet per call as it did before it batched.
type singleDevice struct{ Device }

// BenchmarkTUNToTeredo measures the transmit path end to end: a kernel UDP
// socket sends a bulk stream into a TUN device, the relay reads it and
// sends it to a Teredo client on loopback. It reports packets per second and
// the whole process's CPU time per packet (sender, relay and receiver). It
// needs root in a private network namespace, as the TUN device and its
// route to 2001::/32 are real:
//
//	sudo unshare -n go test -run XXX -bench TUNToTeredo ./relay
func BenchmarkTUNToTeredo(b *testing.B) {
	setUpBenchNamespace(b)
	for _, bc := range []struct {
		name       string
		batch, gso bool
	}{
		{"single", false, false},
		{"batch", true, false},
		{"batch+gso", true, true},
	} {
		b.Run(bc.name, func(b *testing.B) { benchTUN(b, bc.batch, bc.gso) })
	}
}

// setUpBenchNamespace skips b unless it runs as root in a private network
// namespace, then brings lo up with the native host's address: the TUN
// benchmarks create a real device and route 2001::/32 into it.
func setUpBenchNamespace(b *testing.B) {
	b.Helper()
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	// A fresh network namespace has nothing but lo: never add a TUN
	// device and a route for 2001::/32 to a real host's.
	if ifs, err := net.Interfaces(); err != nil || len(ifs) != 1 || ifs[0].Name != "lo" {
		b.Skip("run it in a private network namespace: unshare -n go test ...")
	}
	for _, args := range [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"ip", "addr", "replace", native.String() + "/128", "dev", "lo", "nodad"},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			b.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
}

// newBenchRelay builds a relay on a loopback socket opened with relayOpts,
// with d (dev or a wrapper of it) as its IPv6 side, and opens a Teredo
// client's loopback socket with clientOpts, which the caller closes. The
// relay owns dev from here on.
func newBenchRelay(b *testing.B, dev *tun.Device, d Device, relayOpts, clientOpts udpio.Options) (*Relay, *udpio.UDPConn) {
	b.Helper()
	lo := netip.MustParseAddrPort("127.0.0.1:0")
	conn, err := udpio.Listen(lo, relayOpts)
	if err != nil {
		dev.Close()
		b.Fatal(err)
	}
	client, err := udpio.Listen(lo, clientOpts)
	if err != nil {
		conn.Close()
		dev.Close()
		b.Fatal(err)
	}
	r, err := New(Config{Conn: conn, Device: d, IPv4Filter: proto.AnyIPv4})
	if err != nil {
		client.Close()
		conn.Close()
		dev.Close()
		b.Fatal(err)
	}
	return r, client
}

// runBenchRelay runs r until the returned function is called, which closes
// r and reports an error Run returned.
func runBenchRelay(b *testing.B, r *Relay) (stop func()) {
	done := make(chan error, 1)
	go func() { done <- r.Serve(context.Background()) }()
	return func() {
		r.Close()
		if err := <-done; err != nil {
			b.Error(err)
		}
	}
}

func benchTUN(b *testing.B, batch, gso bool) {
	dev, err := tun.Open(tun.Config{Name: "relaybench0", Routes: []netip.Prefix{proto.Prefix}})
	if err != nil {
		b.Fatal(err)
	}
	var d Device = dev
	if !batch {
		d = singleDevice{dev}
	}
	r, rcv := newBenchRelay(b, dev, d, udpio.Options{DisableGSO: !gso, DisableGRO: true}, udpio.Options{DisableGSO: true})
	defer rcv.Close()
	peerAddr := teredoAddr(serverIP, rcv.LocalAddr())
	r.table.Update(peerAddr.As16(), true, r.now(), func(p *peer.Peer) { p.Trust(rcv.LocalAddr()) })
	defer runBenchRelay(b, r)()

	src, err := net.ListenUDP("udp6", &net.UDPAddr{IP: native.AsSlice()})
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	payload := make([]byte, proto.MinMTU-proto.IPv6HeaderLen-8)
	wantLen := proto.MinMTU

	// The receiver counts datagrams of the stream; the sender keeps at most
	// window packets in flight so that no queue overflows.
	var got atomic.Int64
	rdone := make(chan struct{})
	go func() {
		defer close(rdone)
		msgs := make([]udpio.Message, 8)
		for i := range msgs {
			msgs[i].Buffers = [][]byte{make([]byte, udpio.MaxGROSize)}
		}
		for {
			n, err := rcv.ReadBatch(msgs)
			if err != nil {
				return
			}
			for i := range n {
				for rest := msgs[i].Buffers[0][:msgs[i].N]; len(rest) > 0; {
					var dg []byte
					dg, rest = udpio.NextSegment(rest, msgs[i].SegmentSize)
					if len(dg) == wantLen {
						got.Add(1)
					}
				}
			}
		}
	}()
	defer func() { rcv.Close(); <-rdone }()

	const window = 256
	to := netip.AddrPortFrom(peerAddr, 9)
	// Warm up: the first packets also settle the kernel's neighbour state.
	for range window {
		src.WriteToUDPAddrPort(payload, to)
	}
	waitFor(&got, window, time.Second)
	base := got.Load()

	var ru0, ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	b.ResetTimer()
	start := time.Now()
	sent := int64(0)
	for sent < int64(b.N) {
		if sent-(got.Load()-base) >= window {
			if !waitFor(&got, base+sent-window/2, 100*time.Millisecond) {
				base -= window / 2 // lost: stop waiting for them
			}
			continue
		}
		if _, err := src.WriteToUDPAddrPort(payload, to); err != nil {
			b.Fatal(err)
		}
		sent++
	}
	waitFor(&got, base+sent, time.Second)
	elapsed := time.Since(start)
	b.StopTimer()
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := time.Duration(ru1.Utime.Nano() - ru0.Utime.Nano() + ru1.Stime.Nano() - ru0.Stime.Nano())
	recvd := got.Load() - base
	b.ReportMetric(float64(recvd)/elapsed.Seconds(), "pkts/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(max(recvd, 1)), "cpu-ns/pkt")
	b.ReportMetric(float64(sent-recvd)/float64(max(sent, 1)), "loss")
}

// waitFor waits until c reaches n or d passes, and reports whether it did.
func waitFor(c *atomic.Int64, n int64, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for c.Load() < n {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Microsecond)
	}
	return true
}
