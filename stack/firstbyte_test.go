package stack_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/proxy"

	"github.com/teredo-go/teredo/dialer"
	"github.com/teredo-go/teredo/happyeyeballs"
	"github.com/teredo-go/teredo/socks5"
	"github.com/teredo-go/teredo/teredotest"
)

// BenchmarkFirstByte measures what the WAN benchmark's first-byte figure
// measures, in process: a new TCP connection to an HTTP server on an
// IPv6-only host (through the in-process relay), a GET of 1 KiB, and the
// time to the response's first byte. "dialer" connects with the stack's
// dialer; "socks" goes as curl --socks5-hostname does through teredo-socks
// with an address: SOCKS5 greeting and CONNECT over loopback to our
// socks5 server, which dials through happyeyeballs and the dialer. The
// paths' round trips are loopback's, so what is measured is the time our
// code and gVisor add. Metrics: connect-µs (to the dialer's return or the
// SOCKS reply), then-first-byte-µs (GET written to first byte).
func BenchmarkFirstByte(b *testing.B) {
	in := teredotest.New(b)
	h, err := in.AddHost(netip.Addr{})
	if err != nil {
		b.Fatal(err)
	}
	body := strings.Repeat("x", 1024)
	base, err := h.ServeHTTP(80, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) }))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := qualifyOn(b, ctx, in)
	defer s.Close()
	d := dialer.New(s)
	he := &happyeyeballs.Dialer{Dial6: happyeyeballs.FromDialContext(d.DialContext)}
	srv := &socks5.Server{Dial: he.DialContext}
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
	target := netip.AddrPortFrom(h.Addr(), 80).String()
	get := fmt.Sprintf("GET / HTTP/1.1\r\nHost: %s\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n", strings.TrimPrefix(base, "http://"))

	for _, tc := range []struct {
		name string
		dial func() (net.Conn, error)
	}{
		{"dialer", func() (net.Conn, error) { return d.DialContext(ctx, "tcp", target) }},
		{"socks", func() (net.Conn, error) { return socks.Dial("tcp", target) }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var connect, first time.Duration
			buf := make([]byte, 1)
			// One connection first: the relay and the peer entry are set
			// up once, as the WAN benchmark's warm-up does.
			for i := -1; i < b.N; i++ {
				t0 := time.Now()
				c, err := tc.dial()
				if err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if _, err := io.WriteString(c, get); err != nil {
					b.Fatal(err)
				}
				br := bufio.NewReader(c)
				if _, err := io.ReadFull(br, buf); err != nil {
					b.Fatal(err)
				}
				t2 := time.Now()
				c.Close()
				if i >= 0 {
					connect += t1.Sub(t0)
					first += t2.Sub(t1)
				}
			}
			n := float64(b.N)
			b.ReportMetric(float64(connect.Microseconds())/n, "connect-µs")
			b.ReportMetric(float64(first.Microseconds())/n, "then-first-byte-µs")
		})
	}
}
