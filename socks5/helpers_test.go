package socks5

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// ioTimeout guards every blocking step of a test so a server that hangs
// fails the test instead of stalling it.
const ioTimeout = 5 * time.Second

// startServer serves s on a fresh loopback listener and closes it when the
// test ends, checking that Serve returns ErrServerClosed.
func startServer(t testing.TB, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ln) }()
	t.Cleanup(func() {
		s.Close()
		select {
		case err := <-errc:
			if !errors.Is(err, ErrServerClosed) {
				t.Errorf("Serve returned %v, want ErrServerClosed", err)
			}
		case <-time.After(ioTimeout):
			t.Error("Serve did not return after Close")
		}
	})
	return ln.Addr().String()
}

// loopbackDial is a Dial for tests: it reaches loopback only, and maps the
// host names in names to loopback addresses so name pass-through can be
// checked without DNS.
func loopbackDial(names map[string]string) func(ctx context.Context, network, address string) (net.Conn, error) {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(address)
		if err != nil {
			return nil, err
		}
		if ip, ok := names[host]; ok {
			host = ip
		}
		ip, err := netip.ParseAddr(host)
		if err != nil || !ip.IsLoopback() {
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		}
		var d net.Dialer
		return d.DialContext(ctx, network, net.JoinHostPort(host, port))
	}
}

// loopbackListenPacket is a ListenPacket for tests.
func loopbackListenPacket(ctx context.Context) (net.PacketConn, error) {
	var lc net.ListenConfig
	return lc.ListenPacket(ctx, "udp4", "127.0.0.1:0")
}

// startEcho runs a TCP echo server that half-closes after echoing to EOF.
func startEcho(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(time.Minute))
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return ln.Addr().String()
}

// startUDPEcho runs a UDP echo server on loopback.
func startUDPEcho(t testing.TB) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1<<16)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			pc.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// rawClient speaks SOCKS5 byte by byte, for what x/net/proxy cannot do.
type rawClient struct {
	t testing.TB
	net.Conn
}

func dialRaw(t testing.TB, server string) *rawClient {
	t.Helper()
	c, err := net.DialTimeout("tcp", server, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(ioTimeout))
	t.Cleanup(func() { c.Close() })
	return &rawClient{t, c}
}

func (c *rawClient) send(b ...byte) {
	c.t.Helper()
	if _, err := c.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *rawClient) expect(want ...byte) {
	c.t.Helper()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		c.t.Fatalf("reading %x: %v", want, err)
	}
	if !bytes.Equal(got, want) {
		c.t.Fatalf("got %x, want %x", got, want)
	}
}

// readReply reads a SOCKS5 reply and returns its code and bound address.
func (c *rawClient) readReply() (Reply, addr) {
	c.t.Helper()
	var h [3]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		c.t.Fatalf("reading reply: %v", err)
	}
	if h[0] != socksVersion {
		c.t.Fatalf("reply version %d", h[0])
	}
	var scratch [258]byte
	a, err := readAddr(c, scratch[:])
	if err != nil {
		c.t.Fatalf("reading reply address: %v", err)
	}
	return Reply(h[1]), a
}

// request sends a no-auth greeting and a request for cmd to dst.
func (c *rawClient) request(cmd byte, dst addr) {
	c.t.Helper()
	c.send(socksVersion, 1, methodNoAuth)
	c.expect(socksVersion, methodNoAuth)
	c.send(appendRequest(nil, request{cmd: cmd, dst: dst})...)
}

// expectClosed reads until the server closes the connection, and fails if
// it sends anything or does not close within ioTimeout.
func (c *rawClient) expectClosed() {
	c.t.Helper()
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	b, err := io.ReadAll(c)
	if len(b) > 0 {
		c.t.Fatalf("unexpected bytes before close: %x", b)
	}
	if err != nil && !isReset(err) {
		c.t.Fatalf("connection not closed: %v", err)
	}
}

// isReset accepts a reset as a close: the server closing with unread input
// makes the kernel send RST instead of FIN.
func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }

// udpClient is the test's UDP ASSOCIATE client.
type udpClient struct {
	t     testing.TB
	ctrl  *rawClient
	relay netip.AddrPort
	pc    *net.UDPConn
}

// associate opens an association declaring the source declared (zero for
// "unknown"), sending from a fresh loopback socket.
func associate(t testing.TB, server string, declared netip.AddrPort) *udpClient {
	t.Helper()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	ctrl := dialRaw(t, server)
	d := addr{ip: netip.IPv4Unspecified()}
	if declared.IsValid() {
		d = addrFromAddrPort(declared)
	}
	ctrl.request(cmdAssociate, d)
	rep, bnd := ctrl.readReply()
	if rep != ReplySucceeded {
		t.Fatalf("ASSOCIATE reply %v", rep)
	}
	if !bnd.ip.IsLoopback() || bnd.port == 0 {
		t.Fatalf("relay bound on %v, want a loopback address", bnd)
	}
	return &udpClient{t: t, ctrl: ctrl, relay: netip.AddrPortFrom(bnd.ip, bnd.port), pc: pc}
}

func (u *udpClient) sendTo(dst addr, payload []byte) {
	u.t.Helper()
	b := append(appendUDPHeader(nil, dst), payload...)
	if _, err := u.pc.WriteToUDPAddrPort(b, u.relay); err != nil {
		u.t.Fatal(err)
	}
}

// recv reads one datagram from the relay and returns its source header
// address and payload.
func (u *udpClient) recv() (addr, []byte) {
	u.t.Helper()
	buf := make([]byte, 1<<16)
	u.pc.SetReadDeadline(time.Now().Add(ioTimeout))
	n, from, err := u.pc.ReadFromUDPAddrPort(buf)
	if err != nil {
		u.t.Fatalf("no datagram from relay: %v", err)
	}
	if from != u.relay {
		u.t.Fatalf("datagram from %v, want the relay %v", from, u.relay)
	}
	src, frag, payload, err := parseUDPHeader(buf[:n])
	if err != nil || frag != 0 {
		u.t.Fatalf("bad header from relay: frag %d, %v", frag, err)
	}
	return src, payload
}

// waitFor polls cond, bounded by ioTimeout, for effects that have no
// event to wait on (counters updated after a socket closes).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(ioTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
