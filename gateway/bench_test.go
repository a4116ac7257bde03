package gateway_test

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/teredo-go/teredo/dialer"
	"github.com/teredo-go/teredo/stack"
	"github.com/teredo-go/teredo/teredotest"
)

// BenchmarkDownload compares a TCP download from an IPv6-only host through
// the gateway (with its prefix translation) and through teredotest's
// server and relay, in process on loopback.
func BenchmarkDownload(b *testing.B) {
	for _, bc := range []struct {
		name string
		opts []teredotest.Option
	}{
		{"gateway", []teredotest.Option{teredotest.WithGateway(public)}},
		{"server-relay", nil},
	} {
		b.Run(bc.name, func(b *testing.B) {
			in := teredotest.New(b, bc.opts...)
			h, err := in.AddHost(netip.Addr{})
			if err != nil {
				b.Fatal(err)
			}
			const size = 8 << 20
			l, err := h.ListenTCP(0)
			if err != nil {
				b.Fatal(err)
			}
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					go func(c net.Conn) {
						defer c.Close()
						io.Copy(c, teredotest.Data(size, 1))
					}(c)
				}
			}()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			s, err := stack.New(ctx, stack.Config{Servers: in.Servers(), LocalAddr: netip.MustParseAddrPort("127.0.0.1:0"), IPv4Filter: in.IPv4Filter()})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			d := dialer.New(s)
			b.SetBytes(size)
			b.ResetTimer()
			for range b.N {
				c, err := d.DialContext(ctx, "tcp", l.Addr().String())
				if err != nil {
					b.Fatal(err)
				}
				c.SetDeadline(time.Now().Add(time.Minute))
				if n, err := io.Copy(io.Discard, c); err != nil || n != size {
					b.Fatalf("read %d: %v", n, err)
				}
				c.Close()
			}
		})
	}
}
