package stack_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/teredo-go/teredo/stack"
	"github.com/teredo-go/teredo/teredotest"
)

// TestStackNet uses the Stack's own net methods against teredotest, with
// its ClientConfig and names: Dial by name over UDP, Listen accepting a
// native host's TCP connection, ListenPacket receiving its datagrams, and
// a name the Internet does not know failing as not found.
func TestStackNet(t *testing.T) {
	in := teredotest.New(t)
	h, err := in.AddHost(netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	if err := in.AddName("echo.test", h.Addr()); err != nil {
		t.Fatal(err)
	}
	port, err := h.ServeUDPEcho(0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := stack.New(ctx, in.ClientConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	t.Run("Dial", func(t *testing.T) {
		c, err := s.Dial("udp", net.JoinHostPort("echo.test", strconv.Itoa(int(port))))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		buf := make([]byte, 16)
		for i := 0; ; i++ { // the first datagram waits for the echo test
			c.Write([]byte("echo"))
			c.SetReadDeadline(time.Now().Add(time.Second))
			n, err := c.Read(buf)
			if err == nil && string(buf[:n]) == "echo" {
				break
			}
			if i == 10 {
				t.Fatalf("no echo: %v", err)
			}
		}
	})

	t.Run("UnknownName", func(t *testing.T) {
		_, err := s.DialContext(ctx, "tcp", "nowhere.test:80")
		var dnsErr *net.DNSError
		if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
			t.Fatalf("dial an unknown name: %v, want a not-found *net.DNSError", err)
		}
	})

	t.Run("Listen", func(t *testing.T) {
		ln, err := s.Listen("tcp6", ":0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		lport := uint16(ln.Addr().(*net.TCPAddr).Port)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			io.Copy(c, c)
		}()
		c, err := h.DialTCP(ctx, netip.AddrPortFrom(s.Addr(), lport))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("echo over the listener: %q, %v", buf, err)
		}
	})

	t.Run("ListenPacket", func(t *testing.T) {
		pc, err := s.ListenPacket("udp6", ":0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		lport := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
		c, err := h.DialUDP(netip.AddrPortFrom(s.Addr(), lport))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		buf := make([]byte, 16)
		for i := 0; ; i++ { // the first datagrams wait for the echo test
			c.Write([]byte("hello"))
			pc.SetReadDeadline(time.Now().Add(time.Second))
			n, from, err := pc.ReadFrom(buf)
			if err == nil {
				if string(buf[:n]) != "hello" || from.(*net.UDPAddr).AddrPort().Addr() != h.Addr() {
					t.Fatalf("got %q from %v", buf[:n], from)
				}
				break
			}
			if i == 10 {
				t.Fatalf("nothing received: %v", err)
			}
		}
	})
}
