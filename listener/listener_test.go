package listener

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/net/nettest"

	"github.com/teredo-go/teredo/dialer"
	"github.com/teredo-go/teredo/link/linktest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	addrA = netip.MustParseAddr("2001:0:7f00:1::a")
	addrB = netip.MustParseAddr("2001:0:7f00:1::b")
)

func pair(t *testing.T) (a, b *linktest.Host) {
	n := linktest.NewNetwork()
	return n.NewHost(t, addrA), n.NewHost(t, addrB)
}

func TestConn(t *testing.T) {
	a, b := pair(t)
	ln, err := Listen(b, "tcp6", ":80")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := dialer.New(a)
	nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
		type res struct {
			c   net.Conn
			err error
		}
		accepted := make(chan res, 1)
		go func() {
			c, err := ln.Accept()
			accepted <- res{c, err}
		}()
		c1, err = d.Dial("tcp", netip.AddrPortFrom(addrB, 80).String())
		if err != nil {
			return nil, nil, nil, err
		}
		r := <-accepted
		if r.err != nil {
			c1.Close()
			return nil, nil, nil, r.err
		}
		return c1, r.c, func() { c1.Close(); r.c.Close() }, nil
	})
}

func TestAcceptAfterClose(t *testing.T) {
	_, b := pair(t)
	ln, err := Listen(b, "tcp", "[::]:0")
	if err != nil {
		t.Fatal(err)
	}
	if a := ln.Addr().(*net.TCPAddr); a.Port == 0 || !a.IP.Equal(addrB.AsSlice()) {
		t.Errorf("Addr = %v", a)
	}
	pending := make(chan error, 1)
	go func() {
		_, err := ln.Accept()
		pending <- err
	}()
	time.Sleep(20 * time.Millisecond)
	ln.Close()
	select {
	case err := <-pending:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("pending Accept = %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock Accept")
	}
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close = %v, want net.ErrClosed", err)
	}
	if err := ln.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close = %v, want net.ErrClosed", err)
	}
}

// TestAddressChange checks that a listener keeps accepting on the new
// address after the stack's address changes.
func TestAddressChange(t *testing.T) {
	a, b := pair(t)
	ln, err := Listen(b, "tcp6", ":80")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	d := dialer.New(a)
	check := func(dst netip.Addr) {
		t.Helper()
		c, err := d.Dial("tcp", netip.AddrPortFrom(dst, 80).String())
		if err != nil {
			t.Fatalf("dial %v: %v", dst, err)
		}
		defer c.Close()
		buf := make([]byte, 2)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(buf); err != nil || string(buf) != "hi" {
			t.Fatalf("read %q, %v", buf, err)
		}
	}
	check(addrB)
	newB := netip.MustParseAddr("2001:0:7f00:1::b2")
	b.SetAddr(t, newB)
	check(newB)
	if got := ln.Addr().(*net.TCPAddr).IP; !got.Equal(newB.AsSlice()) {
		t.Errorf("Addr after change = %v, want %v", got, newB)
	}
}

func TestListenPacket(t *testing.T) {
	a, b := pair(t)
	pc, err := ListenPacket(b, "udp6", ":53")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	c, err := dialer.New(a).Dial("udp", netip.AddrPortFrom(addrB, 53).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("q"))
	buf := make([]byte, 8)
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "q" {
		t.Fatalf("ReadFrom = %q, %v", buf[:n], err)
	}
	if _, err := pc.WriteTo([]byte("r"), from); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "r" {
		t.Fatalf("Read = %q, %v", buf[:n], err)
	}
	pc.Close()
	if _, _, err := pc.ReadFrom(buf); !errors.Is(err, net.ErrClosed) {
		t.Errorf("ReadFrom after Close = %v, want net.ErrClosed", err)
	}
}

func TestBindErrors(t *testing.T) {
	_, b := pair(t)
	tests := []struct {
		network, addr string
		want          error
	}{
		{"tcp", "[2001:db8::1]:80", syscall.EADDRNOTAVAIL},
		{"udp6", "[2001:db8::1]:80", syscall.EADDRNOTAVAIL},
		{"tcp4", ":80", nil},
		{"udp", "[2001:0:7f00:1::b]:80", nil},
	}
	for _, tc := range tests {
		var err error
		if tc.network[:3] == "tcp" {
			var l *Listener
			l, err = Listen(b, tc.network, tc.addr)
			if err == nil {
				l.Close()
			}
		} else {
			var c *dialer.UDPConn
			c, err = ListenPacket(b, tc.network, tc.addr)
			if err == nil {
				c.Close()
			}
		}
		switch {
		case tc.network == "tcp4":
			var unk net.UnknownNetworkError
			if !errors.As(err, &unk) {
				t.Errorf("%s %s: %v, want UnknownNetworkError", tc.network, tc.addr, err)
			}
		case tc.want == nil && err != nil:
			t.Errorf("%s %s: %v", tc.network, tc.addr, err)
		case tc.want != nil && !errors.Is(err, tc.want):
			t.Errorf("%s %s: %v, want %v", tc.network, tc.addr, err, tc.want)
		}
	}
	// A port in use.
	l, err := Listen(b, "tcp", ":81")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := Listen(b, "tcp", ":81"); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("second Listen on :81 = %v, want EADDRINUSE", err)
	}
}
