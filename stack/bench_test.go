package stack_test

import (
	"context"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/teredo-go/teredo/dialer"
	"github.com/teredo-go/teredo/listener"
	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/server"
	"github.com/teredo-go/teredo/stack"
	"github.com/teredo-go/teredo/teredotest"
)

// BenchmarkTCPStream measures one TCP stream between two stacks in this
// process over loopback UDP: qualified through our server, then directly
// from client to client. One op is one 128 KiB write.
func BenchmarkTCPStream(b *testing.B) {
	b.Run("default", func(b *testing.B) { benchStream(b) })
	b.Run("no-gro", func(b *testing.B) { benchStream(b, func(c *stack.Config) { c.DisableGRO = true }) })
	b.Run("no-udp-gso", func(b *testing.B) { benchStream(b, func(c *stack.Config) { c.Socket.DisableGSO = true }) })
	b.Run("no-udp-gro", func(b *testing.B) { benchStream(b, func(c *stack.Config) { c.Socket.DisableGRO = true }) })
	b.Run("no-udp-offload", func(b *testing.B) {
		benchStream(b, func(c *stack.Config) { c.Socket.DisableGSO, c.Socket.DisableGRO = true, true })
	})
}

func benchStream(b *testing.B, tweaks ...func(*stack.Config)) {
	port := startServer(b)
	src := newStack(b, port, tweaks...)
	dst := newStack(b, port, tweaks...)
	ln, err := listener.Listen(dst, "tcp6", ":5001")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	received := discardOne(ln)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := dialer.New(src).DialContext(ctx, "tcp", netip.AddrPortFrom(dst.Addr(), 5001).String())
	if err != nil {
		b.Fatal(err)
	}
	streamOps(b, c, received, src)
}

// streamOps writes b.N 128 KiB chunks on c after a warm-up, closes it for
// writing, checks that the receiver counted every byte, and reports
// throughput, CPU time and the sender's retransmissions.
func streamOps(b *testing.B, c net.Conn, received <-chan int64, src *stack.Stack) {
	const chunk = 128 << 10
	buf := make([]byte, chunk)
	// Warm up: bubbles, slow start and buffer auto-tuning.
	for range 64 {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(chunk)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	cpu0 := cpuTime()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.(*dialer.TCPConn).CloseWrite()
	n := <-received
	el := time.Since(start)
	cpu := cpuTime() - cpu0
	b.StopTimer()
	c.Close()
	if want := int64(b.N+64) * chunk; n != want {
		b.Fatalf("received %d bytes, want %d", n, want)
	}
	b.ReportMetric(float64(b.N)*chunk*8/el.Seconds()/1e6, "Mbit/s")
	// CPU time per op is steadier than throughput on a shared machine.
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(src.Netstack().Stats().TCP.Retransmits.Value()), "retransmits")
}

// cpuTime returns the CPU time (user and system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkQualify measures stack.New against our server on loopback: the
// socket, one RS/RA exchange with the server (a loopback round trip) and
// building the gVisor stack. Close is not timed. The server's per-source
// rate limit is off: at its default (50 datagrams a second from one IPv4
// address, two RAs per qualification) it, not the client, would set the
// pace once its burst is spent.
func BenchmarkQualify(b *testing.B) {
	port := startServer(b, func(c *server.Config) { c.RateLimit.PerSecond = -1 })
	cfg := stack.Config{
		Servers:    []netip.Addr{serverPrimary},
		Secondary:  serverSecondary,
		ServerPort: port,
		LocalAddr:  netip.MustParseAddrPort("127.0.0.1:0"),
		IPv4Filter: proto.AnyIPv4,
	}
	b.ReportAllocs()
	var newTime, closeTime time.Duration
	for b.Loop() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		t0 := time.Now()
		s, err := stack.New(ctx, cfg)
		newTime += time.Since(t0)
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		t0 = time.Now()
		s.Close()
		closeTime += time.Since(t0)
		b.StartTimer()
	}
	b.ReportMetric(float64(newTime.Nanoseconds())/float64(b.N), "new-ns/op")
	b.ReportMetric(float64(closeTime.Nanoseconds())/float64(b.N), "close-ns/op")
}

// BenchmarkRelayStream measures one TCP stream from a stack through the
// in-process relay (teredotest) to an IPv6-only host: the stack's link,
// the relay's two sides and the host's netstack all run in this process.
// One op is one 128 KiB write.
func BenchmarkRelayStream(b *testing.B) {
	in := teredotest.New(b)
	h, err := in.AddHost(netip.Addr{})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := h.ListenTCP(9)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	received := discardOne(ln)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := qualifyOn(b, ctx, in)
	defer s.Close()
	c, err := dialer.New(s).DialContext(ctx, "tcp", netip.AddrPortFrom(h.Addr(), 9).String())
	if err != nil {
		b.Fatal(err)
	}
	streamOps(b, c, received, s)
}

// BenchmarkTCPTransfers opens a new connection per op between two stacks
// over loopback, moves 8 MiB, half-closes and waits for the receiver's
// EOF. Besides the mean it reports the slowest op. With RACK loss
// detection on (Config.TCPRACK) and a loaded machine, gVisor at our pin
// sometimes falls into a run of retransmission timeouts at loopback round
// trips of tens of microseconds that stalls a transfer for seconds to
// minutes, with nothing lost on the UDP path; the "rack" case shows it
// beside a CPU hog:
//
//	go test -run xxx -bench TCPTransfers -benchtime 100x ./stack
func BenchmarkTCPTransfers(b *testing.B) {
	b.Run("default", func(b *testing.B) { benchTransfers(b) })
	b.Run("rack", func(b *testing.B) { benchTransfers(b, func(c *stack.Config) { c.TCPRACK = true }) })
}

func benchTransfers(b *testing.B, tweaks ...func(*stack.Config)) {
	port := startServer(b)
	src := newStack(b, port, tweaks...)
	dst := newStack(b, port, tweaks...)
	ln, err := listener.Listen(dst, "tcp6", ":5001")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	got := make(chan int64, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n, _ := io.Copy(io.Discard, c)
			c.Close()
			got <- n
		}
	}()
	const size = 8 << 20
	buf := make([]byte, 128<<10)
	d := dialer.New(src)
	var worst time.Duration
	retx0 := src.Netstack().Stats().TCP.Retransmits.Value()
	b.SetBytes(size)
	b.ReportAllocs()
	for b.Loop() {
		start := time.Now()
		c, err := d.DialContext(context.Background(), "tcp", netip.AddrPortFrom(dst.Addr(), 5001).String())
		if err != nil {
			b.Fatal(err)
		}
		for range size / len(buf) {
			if _, err := c.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		c.(*dialer.TCPConn).CloseWrite()
		if n := <-got; n != size {
			b.Fatalf("received %d bytes, want %d", n, size)
		}
		c.Close()
		worst = max(worst, time.Since(start))
	}
	b.ReportMetric(float64(worst.Microseconds())/1e3, "worst-ms")
	b.ReportMetric(float64(src.Netstack().Stats().TCP.Retransmits.Value()-retx0)/float64(b.N), "retransmits/op")
}

// discardOne accepts one connection on ln and reads it to the end; the
// channel gets the byte count, or -1 if Accept failed.
func discardOne(ln net.Listener) <-chan int64 {
	received := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			received <- -1
			return
		}
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		received <- n
	}()
	return received
}
