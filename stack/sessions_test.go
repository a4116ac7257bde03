package stack_test

import (
	"context"
	"flag"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/proxy"

	"github.com/teredo-go/teredo/dialer"
	"github.com/teredo-go/teredo/socks5"
	"github.com/teredo-go/teredo/teredotest"
)

// BenchmarkIdleSessions measures the memory of idle SOCKS CONNECT sessions
// as teredo-socks holds them: a SOCKS client on loopback, our socks5
// server, a Teredo stack, and through the in-process relay a TCP echo
// service on an IPv6-only host. Each op opens 1000 sessions, checks each
// one end to end with a byte echoed, and measures the process's growth
// once they sit idle:
//
//	go test -run xxx -bench IdleSessions -benchtime 1x ./stack
//
// Use one run per process: a second run reuses the pages the first one
// made resident, so its RSS growth understates.
//
// The relay's netstack and the host's endpoints (with a 64-byte echo
// buffer each) live in this process too, so the numbers are a slight
// overestimate for teredo-socks.
func BenchmarkIdleSessions(b *testing.B) {
	const sessions = 1000
	if *sessionsHeapProfile != "" {
		// Every allocation, so that the profile's per-session figures
		// are exact rather than sampled every 512 KiB.
		defer func(r int) { runtime.MemProfileRate = r }(runtime.MemProfileRate)
		runtime.MemProfileRate = 1
	}
	in := teredotest.New(b)
	h, err := in.AddHost(netip.Addr{})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := h.ListenTCP(7)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				// A small buffer, so that the host's side of the
				// sessions weighs little in what is measured.
				defer c.Close()
				io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, make([]byte, 64))
			}()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := qualifyOn(b, ctx, in)
	defer s.Close()
	srv := &socks5.Server{Dial: dialer.New(s).DialContext, MaxConns: -1}
	sl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	serveDone := make(chan struct{})
	go func() { srv.Serve(sl); close(serveDone) }()
	defer func() { srv.Close(); <-serveDone }()
	socks, err := proxy.SOCKS5("tcp", sl.Addr().String(), nil, proxy.Direct)
	if err != nil {
		b.Fatal(err)
	}
	target := netip.AddrPortFrom(h.Addr(), 7).String()

	// One session first: the echo test and relay discovery happen once.
	open := func() net.Conn {
		c, err := socks.Dial("tcp", target)
		if err != nil {
			b.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		var one [1]byte
		if _, err := c.Write([]byte{'x'}); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, one[:]); err != nil {
			b.Fatal(err)
		}
		return c
	}
	open().Close()

	var heap, stacks, rss, goroutines float64
	for b.Loop() {
		h0, r0, g0 := footprint()
		s0 := stackInuse()
		conns := make([]net.Conn, sessions)
		for i := range conns {
			conns[i] = open()
		}
		time.Sleep(100 * time.Millisecond) // let delayed ACKs go out
		h1, r1, g1 := footprint()
		stacks += float64(stackInuse() - s0)
		if *sessionsHeapProfile != "" {
			writeHeapProfile(b, *sessionsHeapProfile)
		}
		heap += float64(h1 - h0)
		rss += float64(r1 - r0)
		goroutines += float64(g1 - g0)
		for _, c := range conns {
			c.Close()
		}
	}
	n := float64(b.N)
	b.ReportMetric(heap/n/1e6, "heap-MB/1000-sessions")
	b.ReportMetric(stacks/n/1e6, "stacks-MB/1000-sessions")
	b.ReportMetric(rss/n/1e6, "RSS-MB/1000-sessions")
	b.ReportMetric(goroutines/n/sessions, "goroutines/session")
	_, r, _ := footprint()
	b.ReportMetric(float64(r)/1e6, "RSS-MB-total")
}

// sessionsHeapProfile names a file for a heap profile taken while
// BenchmarkIdleSessions holds its sessions open (go test's -memprofile is
// written at the end, when they are closed):
//
//	go test -run xxx -bench IdleSessions -benchtime 1x ./stack -sessions.heapprofile /tmp/idle.prof
//	go tool pprof -sample_index=inuse_space -top stack.test /tmp/idle.prof
var sessionsHeapProfile = flag.String("sessions.heapprofile", "", "write a heap profile of the idle sessions to this file")

// writeHeapProfile writes the heap profile as of a fresh collection.
func writeHeapProfile(tb testing.TB, path string) {
	tb.Helper()
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	runtime.GC()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		tb.Fatal(err)
	}
}

// footprint returns the live Go memory (heap in use and goroutine stacks)
// after a collection, the resident set size, and the goroutine count.
func footprint() (heap, rss uint64, goroutines int) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse + ms.StackInuse, residentSetSize(), runtime.NumGoroutine()
}

// stackInuse returns the memory of goroutine stacks.
func stackInuse() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.StackInuse
}

// residentSetSize reads VmRSS from /proc (0 where there is none).
func residentSetSize() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}
