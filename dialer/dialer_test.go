package dialer

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/net/nettest"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"

	"github.com/teredo-go/teredo/link/linktest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	addrA  = netip.MustParseAddr("2001:0:7f00:1::a")
	addrB  = netip.MustParseAddr("2001:0:7f00:1::b")
	addrNo = netip.MustParseAddr("2001:0:7f00:1::dead") // nobody answers
)

func pair(t *testing.T) (a, b *linktest.Host) {
	n := linktest.NewNetwork()
	return n.NewHost(t, addrA), n.NewHost(t, addrB)
}

func listen(t *testing.T, h *linktest.Host, port uint16) *gonet.TCPListener {
	t.Helper()
	ln, err := gonet.ListenTCP(h.Stack, tcpip.FullAddress{NIC: linktest.NIC, Port: port}, ipv6.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func TestConnTCP(t *testing.T) {
	a, b := pair(t)
	ln := listen(t, b, 80)
	d := New(a)
	nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
		accepted := make(chan net.Conn, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				accepted <- nil
				return
			}
			accepted <- NewTCPConn(c.(*gonet.TCPConn))
		}()
		c1, err = d.Dial("tcp6", "[2001:0:7f00:1::b]:80")
		if err != nil {
			return nil, nil, nil, err
		}
		c2 = <-accepted
		if c2 == nil {
			c1.Close()
			return nil, nil, nil, errors.New("accept failed")
		}
		return c1, c2, func() { c1.Close(); c2.Close() }, nil
	})
}

func TestConnUDP(t *testing.T) {
	a, b := pair(t)
	full := tcpip.FullAddress{NIC: linktest.NIC, Port: 53}
	srv, err := gonet.DialUDP(b.Stack, &full, nil, ipv6.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c, err := New(a).DialContext(context.Background(), "udp", "[2001:0:7f00:1::b]:53")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := srv.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("server got %q, %v", buf[:n], err)
	}
	if _, err := srv.WriteTo([]byte("pong"), from); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err = c.Read(buf)
	if err != nil || string(buf[:n]) != "pong" {
		t.Fatalf("client got %q, %v", buf[:n], err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	_, err = c.Read(buf)
	checkTimeout(t, err)
	c.Close()
	if _, err := c.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close = %v, want net.ErrClosed", err)
	}
}

func checkTimeout(t *testing.T, err error) {
	t.Helper()
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("err = %v (%T), want a net.Error timeout wrapping os.ErrDeadlineExceeded", err, err)
	}
}

// fakeResolver answers from fixed tables; it stands in for the host's DNS.
type fakeResolver map[string][]netip.Addr

func (r fakeResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, a := range r[host] {
		if (network == "ip6") == a.Is6() {
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return out, nil
}

func TestDialErrors(t *testing.T) {
	a, b := pair(t)
	ln := listen(t, b, 80)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	a.SetUnreachable(netip.MustParseAddr("2001:0:7f00:1::bad"))
	res := fakeResolver{
		"v6.example":   {addrNo, addrB}, // first address dead: falls through to the second
		"v4.example":   {netip.MustParseAddr("192.0.2.1")},
		"both.example": {netip.MustParseAddr("192.0.2.1"), addrB},
	}
	d := &Dialer{Network: a, Resolver: res}
	tests := []struct {
		name, network, addr string
		timeout             time.Duration
		want                []error // nil: success
	}{
		{"literal", "tcp", "[2001:0:7f00:1::b]:80", 0, nil},
		{"name", "tcp6", "both.example:80", 0, nil},
		{"fallback", "tcp", "v6.example:80", 2 * time.Second, nil},
		{"named port", "tcp", "both.example:http", 0, nil},
		{"refused", "tcp", "[2001:0:7f00:1::b]:81", 0, []error{syscall.ECONNREFUSED}},
		{"unreachable", "tcp", "[2001:0:7f00:1::bad]:80", 0, []error{syscall.EHOSTUNREACH}},
		{"unreachable udp", "udp", "[2001:0:7f00:1::bad]:80", 0, []error{syscall.EHOSTUNREACH}},
		{"timeout", "tcp", "[2001:0:7f00:1::dead]:80", 100 * time.Millisecond, []error{os.ErrDeadlineExceeded, context.DeadlineExceeded}},
		{"ipv4 literal", "tcp", "192.0.2.1:80", 0, []error{ErrIPv4}},
		{"ipv4-mapped", "udp", "[::ffff:192.0.2.1]:80", 0, []error{ErrIPv4}},
		{"ipv4-only name", "tcp", "v4.example:80", 0, []error{ErrIPv4}},
		{"no such host", "tcp", "nx.example:80", 0, nil},
		{"tcp4", "tcp4", "[2001:0:7f00:1::b]:80", 0, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			if tc.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.timeout)
				defer cancel()
			}
			c, err := d.DialContext(ctx, tc.network, tc.addr)
			switch tc.name {
			case "no such host":
				var dnsErr *net.DNSError
				if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
					t.Errorf("err = %v, want a not-found DNSError", err)
				}
				return
			case "tcp4":
				var unk net.UnknownNetworkError
				if !errors.As(err, &unk) {
					t.Errorf("err = %v, want UnknownNetworkError", err)
				}
				return
			}
			if tc.want == nil {
				if err != nil {
					t.Fatalf("dial: %v", err)
				}
				c.Close()
				return
			}
			if err == nil {
				c.Close()
				t.Fatal("dial succeeded")
			}
			for _, w := range tc.want {
				if !errors.Is(err, w) {
					t.Errorf("err = %v, want errors.Is %v", err, w)
				}
			}
		})
	}
}

// TestUnreachablePrompt checks that a dial whose peer the tunnel gives up
// on while the handshake is pending ends within the poll interval.
func TestUnreachablePrompt(t *testing.T) {
	a, _ := pair(t)
	d := &Dialer{Network: a, PollInterval: 10 * time.Millisecond}
	time.AfterFunc(100*time.Millisecond, func() { a.SetUnreachable(addrNo) })
	start := time.Now()
	_, err := d.Dial("tcp", "[2001:0:7f00:1::dead]:80")
	if !errors.Is(err, syscall.EHOSTUNREACH) {
		t.Fatalf("err = %v, want EHOSTUNREACH", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("dial took %v", el)
	}
}

func TestCancel(t *testing.T) {
	a, _ := pair(t)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	_, err := New(a).DialContext(ctx, "tcp", "[2001:0:7f00:1::dead]:80")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestConnErrors(t *testing.T) {
	a, b := pair(t)
	ln := listen(t, b, 80)
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := New(a).Dial("tcp", "[2001:0:7f00:1::b]:80")
	if err != nil {
		t.Fatal(err)
	}
	srv := <-accepted
	buf := make([]byte, 8)

	c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	_, err = c.Read(buf)
	checkTimeout(t, err)
	c.SetReadDeadline(time.Time{})

	srv.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err = c.Read(buf); err != io.EOF {
		t.Errorf("read after peer close = %v, want io.EOF", err)
	}
	c.Close()
	if _, err := c.Write(buf); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close = %v, want net.ErrClosed", err)
	}
	if err := c.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close = %v, want net.ErrClosed", err)
	}
}

func TestFromTCPIP(t *testing.T) {
	tests := []struct {
		in   tcpip.Error
		want error
	}{
		{&tcpip.ErrConnectionRefused{}, syscall.ECONNREFUSED},
		{&tcpip.ErrHostUnreachable{}, syscall.EHOSTUNREACH},
		{&tcpip.ErrNetworkUnreachable{}, syscall.ENETUNREACH},
		{&tcpip.ErrTimeout{}, syscall.ETIMEDOUT},
		{&tcpip.ErrConnectionReset{}, syscall.ECONNRESET},
		{&tcpip.ErrConnectionAborted{}, syscall.ECONNABORTED},
		{&tcpip.ErrInvalidEndpointState{}, net.ErrClosed},
		{&tcpip.ErrPortInUse{}, syscall.EADDRINUSE},
		{&tcpip.ErrClosedForSend{}, syscall.EPIPE},
	}
	for _, tc := range tests {
		err := FromTCPIP(tc.in)
		if !errors.Is(err, tc.want) {
			t.Errorf("FromTCPIP(%T) = %v, want errors.Is %v", tc.in, err, tc.want)
		}
	}
	if FromTCPIP(nil) != nil {
		t.Error("FromTCPIP(nil) != nil")
	}
}

func TestPing(t *testing.T) {
	a, _ := pair(t)
	for _, addr := range []string{"2001:0:7f00:1::b", "[2001:0:7f00:1::b]", "[2001:0:7f00:1::b]:0"} {
		c, err := New(a).Dial("ping6", addr)
		if err != nil {
			t.Fatalf("%s: %v", addr, err)
		}
		req := []byte{128, 0, 0, 0, 0, 0, 0, 7, 'h', 'i'} // echo request, seq 7
		if _, err := c.Write(req); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("%s: %v", addr, err)
		}
		if n != len(req) || buf[0] != 129 || buf[7] != 7 || string(buf[8:n]) != "hi" {
			t.Errorf("%s: reply %x", addr, buf[:n])
		}
		c.Close()
	}
}

// TestByMessage checks that every gVisor error whose message gonet may hand
// back is one errnoOf translates, and that TranslateError recovers it from
// the flattened message as FromTCPIP does from the typed error.
func TestByMessage(t *testing.T) {
	for msg, terr := range byMessage {
		if errno, _ := errnoOf(terr); errno == 0 {
			t.Errorf("%T (%q) has no errno", terr, msg)
		}
		want, _ := errnoOf(terr)
		flat := &net.OpError{Op: "read", Net: "tcp", Err: errors.New(msg)}
		if got := TranslateError(flat); !errors.Is(got, want) {
			t.Errorf("TranslateError(%q) = %v, want errors.Is %v", msg, got, want)
		}
		if got := FromTCPIP(terr); !errors.Is(got, want) {
			t.Errorf("FromTCPIP(%T) = %v, want errors.Is %v", terr, got, want)
		}
	}
	if got := TranslateError(errors.New("something else")); got.Error() != "something else" {
		t.Errorf("unknown error rewritten to %v", got)
	}
}
