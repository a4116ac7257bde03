package socks5

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// udpServer returns a server whose datagrams go out through loopback
// sockets and whose resolver knows only echo.test.
func udpServer(echo netip.AddrPort, resolves *atomic.Int32) *Server {
	return &Server{
		ListenPacket: loopbackListenPacket,
		Resolve: func(ctx context.Context, host string) (netip.Addr, error) {
			if resolves != nil {
				resolves.Add(1)
			}
			if host == "echo.test" {
				return echo.Addr(), nil
			}
			return netip.Addr{}, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		},
	}
}

func TestUDPAssociate(t *testing.T) {
	echo := startUDPEcho(t)
	var resolves atomic.Int32
	s := udpServer(echo, &resolves)
	u := associate(t, startServer(t, s), netip.AddrPort{})

	byIP := addrFromAddrPort(echo)
	byName := addr{name: "echo.test", port: echo.Port()}
	for i, dst := range []addr{byIP, byName, byName, byIP} {
		msg := fmt.Appendf(nil, "datagram %d to %v", i, dst)
		u.sendTo(dst, msg)
		src, got := u.recv()
		// Replies name the real source, by IP, whatever the client used.
		if src != byIP || string(got) != string(msg) {
			t.Fatalf("got %q from %v, want %q from %v", got, src, msg, byIP)
		}
	}
	if n := resolves.Load(); n != 1 {
		t.Errorf("resolved %d times, want 1 (cached per association)", n)
	}
	st := s.Stats()
	if st.UDPUp != 4 || st.UDPDown != 4 || st.Associations != 1 || st.ActiveAssociations != 1 {
		t.Errorf("stats %+v", st)
	}
	if st.UDPDrop.Total() != 0 {
		t.Errorf("drops %+v", st.UDPDrop)
	}
}

func TestUDPDrops(t *testing.T) {
	echo := startUDPEcho(t)
	s := udpServer(echo, nil)
	u := associate(t, startServer(t, s), netip.AddrPort{})
	dst := addrFromAddrPort(echo)

	// Each bad datagram is followed by a good one; its echo proves the bad
	// one was processed (one goroutine handles them in order) and dropped.
	probe := func(what string, field func(UDPDrops) uint64, bad func()) {
		t.Helper()
		before := field(s.Stats().UDPDrop)
		bad()
		u.sendTo(dst, []byte("probe"))
		if _, got := u.recv(); string(got) != "probe" {
			t.Fatalf("%s: got %q, want the probe (the bad datagram was relayed?)", what, got)
		}
		if after := field(s.Stats().UDPDrop); after != before+1 {
			t.Fatalf("%s: drop counter %d → %d, want +1", what, before, after)
		}
	}
	// The client's port is learned from its first datagram.
	u.sendTo(dst, []byte("hello"))
	u.recv()

	probe("fragment", func(d UDPDrops) uint64 { return d.Fragmented }, func() {
		b := append(appendUDPHeader(nil, dst), "frag"...)
		b[2] = 1
		u.pc.WriteToUDPAddrPort(b, u.relay)
	})
	probe("truncated header", func(d UDPDrops) uint64 { return d.Malformed }, func() {
		u.pc.WriteToUDPAddrPort([]byte{0, 0, 0, atypIPv6, 1, 2}, u.relay)
	})
	probe("unknown ATYP", func(d UDPDrops) uint64 { return d.Malformed }, func() {
		u.pc.WriteToUDPAddrPort([]byte{0, 0, 0, 7, 1, 2, 3, 4, 0, 7}, u.relay)
	})
	probe("bad name", func(d UDPDrops) uint64 { return d.Malformed }, func() {
		u.sendTo(addr{name: "bad name", port: 7}, []byte("x"))
	})
	probe("unknown name", func(d UDPDrops) uint64 { return d.Resolve }, func() {
		u.sendTo(addr{name: "nx.test", port: 7}, []byte("x"))
	})
	probe("other port", func(d UDPDrops) uint64 { return d.Source }, func() {
		other, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		other.WriteToUDPAddrPort(append(appendUDPHeader(nil, dst), "intruder"...), u.relay)
	})
	probe("send refused", func(d UDPDrops) uint64 { return d.Send }, func() {
		// The outbound loopback socket is IPv4: an IPv6 destination fails.
		u.sendTo(addr{ip: netip.IPv6Loopback(), port: 7}, []byte("x"))
	})
}

func TestUDPDeclaredSource(t *testing.T) {
	echo := startUDPEcho(t)
	s := udpServer(echo, nil)
	server := startServer(t, s)
	dst := addrFromAddrPort(echo)

	// The client declares the socket it will send from; another socket on
	// the same IP is refused even if it sends first.
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	u := associate(t, server, pc.LocalAddr().(*net.UDPAddr).AddrPort())
	u.sendTo(dst, []byte("from the wrong socket"))
	u.pc.Close()
	u.pc = pc
	u.sendTo(dst, []byte("declared"))
	if _, got := u.recv(); string(got) != "declared" {
		t.Fatalf("got %q", got)
	}
	if d := s.Stats().UDPDrop; d.Source != 1 {
		t.Fatalf("source drops %d, want 1", d.Source)
	}

	// A declared IP that is not the sender's refuses everything.
	u2 := associate(t, server, netip.MustParseAddrPort("127.0.0.2:0"))
	u2.sendTo(dst, []byte("x"))
	waitFor(t, "the datagram to be refused", func() bool { return s.Stats().UDPDrop.Source == 2 })
}

func TestUDPEndsWithControl(t *testing.T) {
	echo := startUDPEcho(t)
	s := udpServer(echo, nil)
	u := associate(t, startServer(t, s), netip.AddrPort{})
	u.sendTo(addrFromAddrPort(echo), []byte("x"))
	u.recv()
	u.ctrl.Close()
	waitFor(t, "the association to end", func() bool {
		st := s.Stats()
		return st.ActiveAssociations == 0 && st.Active == 0
	})
	if st := s.Stats(); st.ExpiredAssociations != 0 {
		t.Fatalf("counted as expired: %+v", st)
	}
}

func TestUDPIdleExpiry(t *testing.T) {
	echo := startUDPEcho(t)
	s := udpServer(echo, nil)
	s.UDPIdleTimeout = 300 * time.Millisecond
	server := startServer(t, s)

	// Traffic keeps an association alive well past the idle timeout...
	u := associate(t, server, netip.AddrPort{})
	start := time.Now()
	for time.Since(start) < 3*s.UDPIdleTimeout {
		u.sendTo(addrFromAddrPort(echo), []byte("keepalive"))
		u.recv() // the relay touched the association before sending this
		// Real time must pass for the idle timeout (the control
		// connection's read deadline) to matter: this paces the traffic,
		// it does not wait for anything.
		time.Sleep(s.UDPIdleTimeout / 6)
	}
	if st := s.Stats(); st.ActiveAssociations != 1 || st.ExpiredAssociations != 0 {
		t.Fatalf("association with traffic expired: %+v", st)
	}
	// ...and silence ends it, closing the control connection.
	u.ctrl.expectClosed()
	waitFor(t, "the association to end", func() bool { return s.Stats().ActiveAssociations == 0 })
	if st := s.Stats(); st.ExpiredAssociations != 1 {
		t.Fatalf("ExpiredAssociations = %d, want 1", st.ExpiredAssociations)
	}
}

func TestUDPListenErrors(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want Reply
	}{
		{fmt.Errorf("stack: %w", ErrNotAllowed), ReplyNotAllowed},
		{errors.New("stack: not qualified"), ReplyGeneralFailure},
	} {
		s := &Server{ListenPacket: func(context.Context) (net.PacketConn, error) { return nil, tt.err }}
		c := dialRaw(t, startServer(t, s))
		c.request(cmdAssociate, addr{ip: netip.IPv4Unspecified()})
		if rep, _ := c.readReply(); rep != tt.want {
			t.Errorf("%v: reply %v, want %v", tt.err, rep, tt.want)
		}
		c.expectClosed()
	}
}

func TestUDPCloseServer(t *testing.T) {
	echo := startUDPEcho(t)
	s := udpServer(echo, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	u := associate(t, ln.Addr().String(), netip.AddrPort{})
	u.sendTo(addrFromAddrPort(echo), []byte("x"))
	u.recv()
	s.Close() // goleak in TestMain checks the relay goroutines are gone
	u.ctrl.expectClosed()
}
