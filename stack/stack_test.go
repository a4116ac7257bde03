package stack_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"gvisor.dev/gvisor/pkg/tcpip"

	"github.com/teredo-go/teredo/client"
	"github.com/teredo-go/teredo/dialer"
	tcp "github.com/teredo-go/teredo/internal/gvtcp"
	"github.com/teredo-go/teredo/listener"
	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/server"
	"github.com/teredo-go/teredo/stack"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	serverPrimary   = netip.MustParseAddr("127.0.0.2")
	serverSecondary = netip.MustParseAddr("127.0.0.3")
)

// freePort returns a UDP port free on both server addresses.
func freePort(t testing.TB) uint16 {
	t.Helper()
	for range 20 {
		c1, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(serverPrimary, 0)))
		if err != nil {
			t.Fatal(err)
		}
		port := uint16(c1.LocalAddr().(*net.UDPAddr).Port)
		c2, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(serverSecondary, port)))
		c1.Close()
		if err == nil {
			c2.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// startServer runs our Teredo server on 127.0.0.2 and 127.0.0.3.
func startServer(t testing.TB, tweaks ...func(*server.Config)) uint16 {
	t.Helper()
	port := freePort(t)
	cfg := server.Config{
		Primary:    serverPrimary,
		Secondary:  serverSecondary,
		Port:       port,
		IPv4Filter: proto.AnyIPv4,
	}
	for _, f := range tweaks {
		f(&cfg)
	}
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { srv.Serve(context.Background()); close(done) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return port
}

func newStack(t testing.TB, port uint16, tweaks ...func(*stack.Config)) *stack.Stack {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cfg := stack.Config{
		Servers:    []netip.Addr{serverPrimary},
		Secondary:  serverSecondary,
		ServerPort: port,
		LocalAddr:  netip.MustParseAddrPort("127.0.0.1:0"),
		IPv4Filter: proto.AnyIPv4,
	}
	for _, f := range tweaks {
		f(&cfg)
	}
	s, err := stack.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestEndToEnd qualifies two clients with our server and exchanges TCP
// both ways between them, directly after the bubbles.
func TestEndToEnd(t *testing.T) {
	port := startServer(t)
	a := newStack(t, port)
	b := newStack(t, port)
	for _, s := range []*stack.Stack{a, b} {
		ta, ok := proto.ParseAddress(s.Addr())
		if !ok || ta.Server != serverPrimary || ta.Mapped != s.LocalAddr() {
			t.Fatalf("address %v decodes to %+v (ok %v), want server %v and mapped %v", s.Addr(), ta, ok, serverPrimary, s.LocalAddr())
		}
		if st := s.Status(); st.Client.State != client.StateQualified {
			t.Fatalf("status %+v", st)
		}
	}

	// TCP as configured: SACK, no RACK (see Config.TCPRACK), large
	// auto-tuned buffers.
	ns := a.Netstack()
	var sack tcpip.TCPSACKEnabled
	var recovery tcpip.TCPRecovery
	var rcv tcpip.TCPReceiveBufferSizeRangeOption
	ns.TransportProtocolOption(tcp.ProtocolNumber, &sack)
	ns.TransportProtocolOption(tcp.ProtocolNumber, &recovery)
	ns.TransportProtocolOption(tcp.ProtocolNumber, &rcv)
	if !sack || recovery != 0 || rcv.Max != stack.DefaultTCPReceiveBufferMax {
		t.Errorf("TCP options: SACK %v, recovery %v, receive buffer %+v", sack, recovery, rcv)
	}
	if mtu := ns.NICInfo()[a.NICID()].MTU; mtu != proto.MinMTU {
		t.Errorf("NIC MTU %d, want %d", mtu, proto.MinMTU)
	}

	// Each side listens and dials the other.
	for _, dir := range []struct {
		name     string
		from, to *stack.Stack
	}{{"a->b", a, b}, {"b->a", b, a}} {
		t.Run(dir.name, func(t *testing.T) {
			ln, err := listener.Listen(dir.to, "tcp6", ":7")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				io.Copy(c, c)
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, err := dialer.New(dir.from).DialContext(ctx, "tcp", netip.AddrPortFrom(dir.to.Addr(), 7).String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			want := bytes.Repeat([]byte("teredo "), 100_000)
			go func() { c.Write(want); c.(*dialer.TCPConn).CloseWrite() }()
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("echo: %d bytes, err %v; want %d bytes", len(got), err, len(want))
			}
		})
	}
	if st := a.Status(); st.Client.Peers == 0 || st.Link.TxPackets == 0 {
		t.Errorf("status after traffic: %+v", st)
	}
}

// TestUnreachablePeer dials a Teredo address whose mapped endpoint answers
// nothing: the dial must fail within seconds with EHOSTUNREACH.
func TestUnreachablePeer(t *testing.T) {
	port := startServer(t)
	a := newStack(t, port)
	// A closed loopback port: bubbles go unanswered.
	dead := proto.Address{Server: serverPrimary, Mapped: netip.MustParseAddrPort("127.0.0.1:9")}.Addr()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := time.Now()
	_, err := dialer.New(a).DialContext(ctx, "tcp", netip.AddrPortFrom(dead, 80).String())
	el := time.Since(start)
	if !errors.Is(err, syscall.EHOSTUNREACH) {
		t.Fatalf("dial after %v: %v, want EHOSTUNREACH", el, err)
	}
	t.Logf("failed after %v: %v", el, err)
	if el > 30*time.Second {
		t.Errorf("dial took %v", el)
	}
}

// TestNoServer checks that New reports which server did not answer.
func TestNoServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	port := freePort(t)
	_, err := stack.New(ctx, stack.Config{
		Servers:    []netip.Addr{serverPrimary},
		ServerPort: port,
		LocalAddr:  netip.MustParseAddrPort("127.0.0.1:0"),
		IPv4Filter: proto.AnyIPv4,
	})
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "no reply from Teredo server 127.0.0.2") {
		t.Fatalf("err = %v", err)
	}
}

// TestTCPRACK checks that Config.TCPRACK turns RACK loss detection back on.
func TestTCPRACK(t *testing.T) {
	s := newStack(t, startServer(t), func(c *stack.Config) { c.TCPRACK = true })
	var recovery tcpip.TCPRecovery
	s.Netstack().TransportProtocolOption(tcp.ProtocolNumber, &recovery)
	if recovery&tcpip.TCPRACKLossDetection == 0 {
		t.Errorf("TCP recovery %v, want RACK loss detection", recovery)
	}
}
