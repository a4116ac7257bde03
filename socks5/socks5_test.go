package socks5

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/proxy"
)

// proxyDial dials target through the SOCKS5 server with x/net/proxy. It
// returns the underlying *net.TCPConn, which after the handshake carries
// the stream, so that tests can half-close it: x/net/proxy's own wrapper
// hides CloseWrite.
func proxyDial(t testing.TB, server, target string, auth *proxy.Auth) (*net.TCPConn, error) {
	t.Helper()
	fwd := &recordingDialer{}
	d, err := proxy.SOCKS5("tcp", server, auth, fwd)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	c, err := d.(proxy.ContextDialer).DialContext(ctx, "tcp", target)
	if fwd.conn != nil {
		t.Cleanup(func() { fwd.conn.Close() })
	}
	if err != nil {
		return nil, err
	}
	if c.RemoteAddr() != fwd.conn.RemoteAddr() {
		t.Fatal("x/net/proxy did not use the forward dialer's connection")
	}
	return fwd.conn, nil
}

// recordingDialer is x/net/proxy's forward dialer; it keeps the connection.
type recordingDialer struct {
	d    net.Dialer
	conn *net.TCPConn
}

func (r *recordingDialer) Dial(network, address string) (net.Conn, error) {
	return r.DialContext(context.Background(), network, address)
}

func (r *recordingDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	c, err := r.d.DialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	r.conn = c.(*net.TCPConn)
	return c, nil
}

// roundTrip writes msg, half-closes, and expects the echo back then EOF.
func roundTrip(t testing.TB, c *net.TCPConn, msg []byte) {
	t.Helper()
	c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo returned %d bytes, want %d", len(got), len(msg))
	}
}

func TestConnect(t *testing.T) {
	echo := startEcho(t)
	_, echoPort, _ := net.SplitHostPort(echo)
	var mu sync.Mutex
	var dialed []string
	dial := loopbackDial(map[string]string{"echo.test": "127.0.0.1"})
	s := &Server{Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
		mu.Lock()
		dialed = append(dialed, network+" "+address)
		mu.Unlock()
		return dial(ctx, network, address)
	}}
	server := startServer(t, s)

	msg := bytes.Repeat([]byte("teredo "), 100_000) // several relay buffers
	for _, target := range []string{echo, net.JoinHostPort("echo.test", echoPort)} {
		t.Run(target, func(t *testing.T) {
			c, err := proxyDial(t, server, target, nil)
			if err != nil {
				t.Fatal(err)
			}
			roundTrip(t, c, msg)
		})
	}
	mu.Lock()
	want := []string{"tcp " + echo, "tcp echo.test:" + echoPort}
	if fmt.Sprint(dialed) != fmt.Sprint(want) {
		t.Errorf("Dial got %q, want %q (names unresolved)", dialed, want)
	}
	mu.Unlock()

	waitFor(t, "sessions to end", func() bool { return s.Stats().Active == 0 })
	st := s.Stats()
	if st.Replies[ReplySucceeded] != 2 || st.Accepted != 2 {
		t.Errorf("stats %+v: want 2 accepted, 2 succeeded", st)
	}
	if st.BytesUp != 2*uint64(len(msg)) || st.BytesDown != 2*uint64(len(msg)) {
		t.Errorf("bytes up/down = %d/%d, want %d each", st.BytesUp, st.BytesDown, 2*len(msg))
	}
}

func TestConnectBoundAddress(t *testing.T) {
	echo := startEcho(t)
	server := startServer(t, &Server{Dial: loopbackDial(nil)})
	c := dialRaw(t, server)
	c.request(cmdConnect, addrFromAddrPort(netip.MustParseAddrPort(echo)))
	rep, bnd := c.readReply()
	if rep != ReplySucceeded {
		t.Fatalf("reply %v", rep)
	}
	// BND is the proxy's end of the outbound connection.
	if !bnd.ip.IsLoopback() || bnd.port == 0 || bnd.String() == echo {
		t.Fatalf("BND %v, want the outbound connection's local address", bnd)
	}
}

func TestConnectAuth(t *testing.T) {
	echo := startEcho(t)
	s := &Server{Dial: loopbackDial(nil), Username: "alice", Password: "s3cret"}
	server := startServer(t, s)

	c, err := proxyDial(t, server, echo, &proxy.Auth{User: "alice", Password: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c, []byte("hello"))

	for _, auth := range []*proxy.Auth{
		{User: "alice", Password: "wrong"},
		{User: "bob", Password: "s3cret"},
		{User: "alice", Password: "s3cret\x00"},
		{User: "a", Password: "b"},
	} {
		if _, err := proxyDial(t, server, echo, auth); err == nil {
			t.Errorf("%+v: dial succeeded, want authentication failure", auth)
		}
	}
	if _, err := proxyDial(t, server, echo, nil); err == nil {
		t.Error("dial without credentials succeeded")
	}
	waitFor(t, "sessions to end", func() bool { return s.Stats().Active == 0 })
	if st := s.Stats(); st.AuthFailures != 4 || st.HandshakeFailures != 1 {
		t.Errorf("auth failures %d, handshake failures %d; want 4 and 1", st.AuthFailures, st.HandshakeFailures)
	}
}

func TestHalfClose(t *testing.T) {
	// The destination reads to EOF before answering, as a request/response
	// protocol that ends requests with shutdown(SHUT_WR) does.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(ioTimeout))
		req, err := io.ReadAll(c)
		if err != nil {
			served <- err
			return
		}
		_, err = c.Write(append([]byte("got "), req...))
		served <- err
	}()
	server := startServer(t, &Server{Dial: loopbackDial(nil)})
	c, err := proxyDial(t, server, ln.Addr().String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(ioTimeout))
	c.Write([]byte("ping"))
	c.CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "got ping" {
		t.Fatalf("got %q, %v; want \"got ping\"", got, err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
}

// timeoutErr is a net.Error that times out without being any sentinel.
type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o took too long" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestReplyCodes(t *testing.T) {
	// A loopback port with nothing listening, for a real refusal.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := ln.Addr().String()
	ln.Close()

	tests := []struct {
		name string
		err  error // returned by Dial; nil means dial for real
		dst  string
		want Reply
	}{
		{"not allowed", fmt.Errorf("dialer: IPv4 destination 192.0.2.1: %w", ErrNotAllowed), "192.0.2.1:80", ReplyNotAllowed},
		{"network unreachable", &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ENETUNREACH)}, "[2001:db8::1]:80", ReplyNetworkUnreachable},
		{"network down", fmt.Errorf("wrapped: %w", syscall.ENETDOWN), "[2001:db8::1]:80", ReplyNetworkUnreachable},
		{"host unreachable", fmt.Errorf("dialer: no route to peer: %w", syscall.EHOSTUNREACH), "[2001:db8::1]:80", ReplyHostUnreachable},
		{"name not found", &net.DNSError{Err: "no such host", Name: "nx.example", IsNotFound: true}, "nx.example:80", ReplyHostUnreachable},
		{"refused (injected)", fmt.Errorf("dialer: %w", syscall.ECONNREFUSED), "[2001:db8::1]:80", ReplyConnectionRefused},
		{"refused (loopback)", nil, closedPort, ReplyConnectionRefused},
		{"deadline", fmt.Errorf("dialer: %w", os.ErrDeadlineExceeded), "[2001:db8::1]:80", ReplyTTLExpired},
		{"context deadline", fmt.Errorf("dialer: %w", context.DeadlineExceeded), "[2001:db8::1]:80", ReplyTTLExpired},
		{"ETIMEDOUT", fmt.Errorf("dialer: %w", syscall.ETIMEDOUT), "[2001:db8::1]:80", ReplyTTLExpired},
		{"net.Error timeout", fmt.Errorf("dialer: %w", timeoutErr{}), "[2001:db8::1]:80", ReplyTTLExpired},
		{"other", errors.New("dialer: stack is not qualified"), "[2001:db8::1]:80", ReplyGeneralFailure},
		{"cancelled", context.Canceled, "[2001:db8::1]:80", ReplyGeneralFailure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &Server{Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
				if tt.err != nil {
					return nil, tt.err
				}
				var d net.Dialer
				return d.DialContext(ctx, network, address)
			}}
			server := startServer(t, s)
			c := dialRaw(t, server)
			c.request(cmdConnect, mustAddr(t, tt.dst))
			rep, _ := c.readReply()
			if rep != tt.want {
				t.Fatalf("reply %v (%d), want %v (%d)", rep, rep, tt.want, tt.want)
			}
			c.expectClosed()
			if n := s.Stats().Replies[tt.want]; n != 1 {
				t.Errorf("Stats.Replies[%v] = %d, want 1", tt.want, n)
			}
		})
	}
}

// mustAddr parses "ip:port" or "name:port".
func mustAddr(t testing.TB, s string) addr {
	t.Helper()
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return addrFromAddrPort(ap)
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		t.Fatal(err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		t.Fatal(err)
	}
	return addr{name: host, port: uint16(p)}
}

func TestDialTimeout(t *testing.T) {
	s := &Server{
		DialTimeout: 50 * time.Millisecond,
		Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			<-ctx.Done() // a destination that never answers
			return nil, fmt.Errorf("dialer: %w", ctx.Err())
		},
	}
	c := dialRaw(t, startServer(t, s))
	c.request(cmdConnect, addr{name: "slow.example", port: 443})
	if rep, _ := c.readReply(); rep != ReplyTTLExpired {
		t.Fatalf("reply %v, want %v", rep, ReplyTTLExpired)
	}
}

func TestSlowDial(t *testing.T) {
	// A dial longer than the handshake timeout still gets its reply.
	echo := startEcho(t)
	dial := loopbackDial(nil)
	s := &Server{
		HandshakeTimeout: 20 * time.Millisecond,
		Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			time.Sleep(100 * time.Millisecond)
			return dial(ctx, network, address)
		},
	}
	c, err := proxyDial(t, startServer(t, s), echo, nil)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c, []byte("slow"))
}

func TestUnsupported(t *testing.T) {
	dst := addr{ip: netip.MustParseAddr("2001:db8::1"), port: 80}
	tests := []struct {
		name string
		s    *Server
		cmd  byte
	}{
		{"BIND", &Server{Dial: loopbackDial(nil)}, cmdBind},
		{"unknown command", &Server{Dial: loopbackDial(nil)}, 0x09},
		{"CONNECT without Dial", &Server{}, cmdConnect},
		{"ASSOCIATE without ListenPacket", &Server{Dial: loopbackDial(nil)}, cmdAssociate},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, startServer(t, tt.s))
			c.request(tt.cmd, dst)
			if rep, _ := c.readReply(); rep != ReplyCommandNotSupported {
				t.Fatalf("reply %v, want %v", rep, ReplyCommandNotSupported)
			}
			c.expectClosed()
		})
	}
}

func TestBadInput(t *testing.T) {
	noAuth := []byte{5, 1, 0}
	okMethod := []byte{5, 0}
	failure := func(r Reply) []byte { return appendReply(nil, r, addr{}) }
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	long := strings.Repeat("a", 254)

	tests := []struct {
		name     string
		auth     bool
		in       []byte
		halfShut bool // send EOF after in, for truncated input
		want     []byte
	}{
		{"empty", false, nil, true, nil},
		{"HTTP request", false, []byte("GET / HTTP/1.1\r\n\r\n"), false, nil},
		{"SOCKS4", false, []byte{4, 1, 0, 80, 127, 0, 0, 1, 0}, false, nil},
		{"zero methods", false, []byte{5, 0}, false, []byte{5, 0xFF}},
		{"only user/pass offered", false, []byte{5, 1, 2}, false, []byte{5, 0xFF}},
		{"only no-auth offered, auth required", true, noAuth, false, []byte{5, 0xFF}},
		{"truncated methods", false, []byte{5, 3, 0}, true, nil},
		{"wrong auth version", true, []byte{5, 1, 2, 5, 1, 'a', 1, 'b'}, false, []byte{5, 2}},
		{"truncated auth", true, []byte{5, 1, 2, 1, 5, 'a'}, true, []byte{5, 2}},
		{"empty credentials", true, []byte{5, 1, 2, 1, 0, 0}, false, []byte{5, 2, 1, 1}},
		{"truncated request", false, cat(noAuth, []byte{5, 1, 0, 1, 127, 0}), true, okMethod},
		{"wrong request version", false, cat(noAuth, []byte{4, 1, 0, 1, 127, 0, 0, 1, 0, 80}), false, okMethod},
		{"unknown address type", false, cat(noAuth, []byte{5, 1, 0, 9}), false, cat(okMethod, failure(ReplyAddressTypeNotSupported))},
		{"zero-length name", false, cat(noAuth, []byte{5, 1, 0, 3, 0, 0, 80}), false, cat(okMethod, failure(ReplyGeneralFailure))},
		{"oversized name", false, cat(noAuth, []byte{5, 1, 0, 3, 254}, []byte(long), []byte{0, 80}), false, cat(okMethod, failure(ReplyGeneralFailure))},
		{"name with colon", false, cat(noAuth, []byte{5, 1, 0, 3, 3, 'a', ':', 'b', 0, 80}), false, cat(okMethod, failure(ReplyGeneralFailure))},
		{"name with NUL", false, cat(noAuth, []byte{5, 1, 0, 3, 3, 'a', 0, 'b', 0, 80}), false, cat(okMethod, failure(ReplyGeneralFailure))},
		{"zoned literal", false, cat(noAuth, []byte{5, 1, 0, 3, 9}, []byte("fe80::1%1"), []byte{0, 80}), false, cat(okMethod, failure(ReplyGeneralFailure))},
		{"truncated name", false, cat(noAuth, []byte{5, 1, 0, 3, 10, 'a', 'b'}), true, okMethod},
		{"unknown command", false, cat(noAuth, []byte{5, 0x7f, 0, 1, 127, 0, 0, 1, 0, 80}), false, cat(okMethod, failure(ReplyCommandNotSupported))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &Server{Dial: func(context.Context, string, string) (net.Conn, error) {
				t.Error("bad input reached Dial")
				return nil, errors.New("unreachable")
			}}
			if tt.auth {
				s.Username, s.Password = "u", "p"
			}
			c := dialRaw(t, startServer(t, s))
			if len(tt.in) > 0 {
				c.send(tt.in...)
			}
			if tt.halfShut {
				c.Conn.(*net.TCPConn).CloseWrite()
			}
			if len(tt.want) > 0 {
				c.expect(tt.want...)
			}
			c.expectClosed()
			waitFor(t, "session to end", func() bool { return s.Stats().Active == 0 })
		})
	}
}

func TestHandshakeTimeout(t *testing.T) {
	s := &Server{HandshakeTimeout: 50 * time.Millisecond, Dial: loopbackDial(nil)}
	server := startServer(t, s)
	for _, partial := range [][]byte{nil, {5}, {5, 1, 0, 5, 1, 0}} {
		c := dialRaw(t, server)
		if len(partial) > 0 {
			c.send(partial...)
		}
		if len(partial) > 3 {
			c.expect(5, 0)
		}
		c.expectClosed()
	}
	waitFor(t, "sessions to end", func() bool { return s.Stats().Active == 0 })
	if st := s.Stats(); st.HandshakeFailures != 3 {
		t.Errorf("HandshakeFailures = %d, want 3", st.HandshakeFailures)
	}
}

func TestMaxConns(t *testing.T) {
	echo := startEcho(t)
	s := &Server{MaxConns: 2, Dial: loopbackDial(nil)}
	server := startServer(t, s)

	var held []*net.TCPConn
	for range 2 {
		c, err := proxyDial(t, server, echo, nil)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	// The third is closed without a byte, whatever it sends.
	c := dialRaw(t, server)
	c.expectClosed()
	if st := s.Stats(); st.Rejected != 1 || st.Active != 2 {
		t.Fatalf("rejected %d, active %d; want 1 and 2", st.Rejected, st.Active)
	}

	held[0].Close()
	waitFor(t, "a slot to free", func() bool { return s.Stats().Active == 1 })
	c2, err := proxyDial(t, server, echo, nil)
	if err != nil {
		t.Fatalf("dial after a slot freed: %v", err)
	}
	roundTrip(t, c2, []byte("again"))
}

func TestShutdown(t *testing.T) {
	echo := startEcho(t)
	s := &Server{Dial: loopbackDial(nil)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ln) }()

	c, err := proxyDial(t, ln.Addr().String(), echo, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown with a busy session = %v, want DeadlineExceeded", err)
	}
	if err := <-errc; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve = %v", err)
	}
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("session survived Shutdown")
	}
	if err := s.Serve(ln); !errors.Is(err, ErrServerClosed) || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Serve after Shutdown = %v", err)
	}
	if st := s.Stats(); st.Active != 0 {
		t.Fatalf("active %d after Shutdown", st.Active)
	}

	// With nothing in flight, Shutdown is graceful.
	idle := &Server{}
	if err := idle.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestCloseCancelsDial(t *testing.T) {
	dialing := make(chan struct{})
	s := &Server{Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
		close(dialing)
		<-ctx.Done()
		return nil, ctx.Err()
	}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	c := dialRaw(t, ln.Addr().String())
	c.request(cmdConnect, addr{name: "example.net", port: 80})
	<-dialing
	closed := make(chan struct{})
	go func() {
		s.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(ioTimeout):
		t.Fatal("Close did not cancel the dial")
	}
}

func TestReplyForUnwrapped(t *testing.T) {
	// Errors that only carry text must not be guessed at.
	if r := ReplyFor(errors.New("connection was refused")); r != ReplyGeneralFailure {
		t.Errorf("ReplyFor(string error) = %v", r)
	}
	if r := ReplyFor(nil); r != ReplyGeneralFailure {
		t.Errorf("ReplyFor(nil) = %v", r)
	}
}

func TestLogger(t *testing.T) {
	var buf bytes.Buffer
	var mu sync.Mutex
	h := slog.NewTextHandler(&lockedWriter{w: &buf, mu: &mu}, &slog.HandlerOptions{Level: slog.LevelDebug})
	s := &Server{Logger: slog.New(h)}
	c := dialRaw(t, startServer(t, s))
	c.request(cmdBind, addr{name: "example.net", port: 80})
	c.readReply()
	c.expectClosed()
	s.Close()
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(buf.String(), "command refused") {
		t.Errorf("log lacks the refusal:\n%s", buf.String())
	}
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (w *lockedWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(b)
}
