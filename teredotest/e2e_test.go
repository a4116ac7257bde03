package teredotest_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/teredo-go/teredo/dialer"
	"github.com/teredo-go/teredo/listener"
	"github.com/teredo-go/teredo/relay"
	"github.com/teredo-go/teredo/stack"
	"github.com/teredo-go/teredo/teredotest"
)

// newClient qualifies a Teredo client stack against in.
func newClient(t *testing.T, in *teredotest.Internet) *stack.Stack {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := stack.New(ctx, stack.Config{
		Servers:    in.Servers(),
		Secondary:  in.SecondaryAddr(),
		LocalAddr:  netip.MustParseAddrPort("127.0.0.1:0"),
		IPv4Filter: in.IPv4Filter(),
	})
	if err != nil {
		t.Fatalf("qualification: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestClientDownloadsFromIPv6Host: a client fetches a file from an
// IPv6-only host over HTTP; the echo test finds the relay, and the bytes
// arrive intact.
func TestClientDownloadsFromIPv6Host(t *testing.T) {
	in := teredotest.New(t)
	h, err := in.AddHost(netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	url, err := h.ServeHTTP(80, teredotest.DataHandler())
	if err != nil {
		t.Fatal(err)
	}
	s := newClient(t, in)
	d := dialer.New(s)
	tr := &http.Transport{DialContext: d.DialContext}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	const n = 4 << 20
	resp, err := hc.Get(fmt.Sprintf("%s/data?n=%d&seed=42", url, n))
	if err != nil {
		t.Fatalf("GET: %v (relay %v)", err, in.Relay().Status().Counters)
	}
	defer resp.Body.Close()
	sum := sha256.New()
	got, err := io.Copy(sum, resp.Body)
	if err != nil || got != n {
		t.Fatalf("read %d bytes: %v", got, err)
	}
	if hex.EncodeToString(sum.Sum(nil)) != resp.Header.Get("X-Content-SHA256") {
		t.Fatal("checksum mismatch")
	}
	if !bytes.Equal(sum.Sum(nil), teredotest.DataSum(n, 42)) {
		t.Fatal("content differs from Data")
	}
	st := in.Relay().Status()
	if st.Counters[relay.TxForwarded.String()] == 0 || st.Counters[relay.RxForwarded.String()] == 0 {
		t.Errorf("traffic did not cross the relay: %v", st.Counters)
	}
}

// TestIPv6HostDialsClientListener: a native host connects to a listener on
// the client's Teredo address (after the client has talked to it, as a
// NATed client must: its NAT and the relay both learn the path).
func TestIPv6HostDialsClientListener(t *testing.T) {
	in := teredotest.New(t)
	h, err := in.AddHost(netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	s := newClient(t, in)
	l, err := listener.Listen(s, "tcp", ":8080")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := h.DialTCP(ctx, netip.AddrPortFrom(s.Addr(), 8080))
	if err != nil {
		t.Fatalf("host dial: %v (relay %v)", err, in.Relay().Status().Counters)
	}
	defer c.Close()
	msg := bytes.Repeat([]byte("teredo "), 10000)
	go c.Write(msg)
	buf := make([]byte, len(msg))
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("echo: %v", err)
	}
	if !bytes.Equal(buf, msg) {
		t.Fatal("echo differs")
	}
}

// TestClientToClient: two clients of the same server talk directly.
func TestClientToClient(t *testing.T) {
	in := teredotest.New(t)
	a, b := newClient(t, in), newClient(t, in)
	l, err := listener.Listen(b, "tcp", ":9000")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := dialer.New(a).DialContext(ctx, "tcp", net.JoinHostPort(b.Addr().String(), "9000"))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello peer")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello peer" {
		t.Fatalf("got %q, %v", buf, err)
	}
}

// TestClientUDPEcho: UDP through the relay.
func TestClientUDPEcho(t *testing.T) {
	in := teredotest.New(t)
	h, _ := in.AddHost(netip.Addr{})
	port, err := h.ServeUDPEcho(7)
	if err != nil {
		t.Fatal(err)
	}
	s := newClient(t, in)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := dialer.New(s).DialContext(ctx, "udp", netip.AddrPortFrom(h.Addr(), port).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64)
	// The first datagram may wait for the echo test; resend until answered.
	for i := 0; i < 20; i++ {
		c.Write([]byte("udp over teredo"))
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(buf)
		if err == nil {
			if string(buf[:n]) != "udp over teredo" {
				t.Fatalf("got %q", buf[:n])
			}
			return
		}
	}
	t.Fatalf("no UDP echo (relay %v)", in.Relay().Status().Counters)
}
