package main

import (
	"context"
	"io"
	"net/netip"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/teredo-go/teredo/internal/echotest"
	"github.com/teredo-go/teredo/teredotest"
)

// TestProxyBehindGateway runs the proxy against a teredo-gateway: it
// prints and reports its public address, and its -forward service is
// reachable there from an IPv6-only host.
func TestProxyBehindGateway(t *testing.T) {
	public := netip.MustParsePrefix("2001:db8:2::/64")
	in := teredotest.New(t, teredotest.WithGateway(public))
	if err := addDemoHost(in); err != nil {
		t.Fatal(err)
	}
	echo := echotest.StartTCP(t)
	p := startProxy(t, in, nil, "-forward", "8080=127.0.0.1:"+strconv.Itoa(int(echo.Port())))
	m := p.out.wait(t, regexp.MustCompile(`^teredo-socks: public address (\S+) \(the gateway maps (\S+) to it\)$`), time.Second)
	pub := netip.MustParseAddr(m[1])
	if want, _ := in.Gateway().PublicAddr(p.teredo); pub != want || m[2] != p.teredo.String() {
		t.Fatalf("printed %q, want public address %v", m[0], want)
	}
	if st := getStatus(t, p); st["public_address"] != pub.String() {
		t.Fatalf("/status public_address = %v, want %v", st["public_address"], pub)
	}
	h, err := in.AddHost(netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := h.DialTCP(ctx, netip.AddrPortFrom(pub, 8080))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := c.Write([]byte("ping through the gateway")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len("ping through the gateway"))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping through the gateway" {
		t.Fatalf("echo %q: %v", buf, err)
	}
}
