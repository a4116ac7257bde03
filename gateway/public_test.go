package gateway_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/teredo-go/teredo/dialer"
	"github.com/teredo-go/teredo/listener"
	"github.com/teredo-go/teredo/stack"
)

// TestClientToClientPublic connects two clients of the gateway by their
// public addresses: the gateway hairpins the packets in process, and the
// clients, trusting their server for its own public /64, run no echo test
// that each would hold for the other (client/gateway.go). It failed after
// 8 s, both echo tests exhausted, before either fix.
func TestClientToClientPublic(t *testing.T) {
	in, a := start(t)
	g := in.Gateway()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := stack.New(ctx, stack.Config{
		Servers:    in.Servers(),
		LocalAddr:  netip.MustParseAddrPort("127.0.0.1:0"),
		IPv4Filter: in.IPv4Filter(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	l, err := listener.Listen(a, "tcp", ":7000")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	peer := make(chan netip.Addr, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		peer <- c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr()
		io.Copy(c, c)
	}()
	pubA, _ := g.PublicAddr(a.Addr())
	pubB, _ := g.PublicAddr(b.Addr())
	// Well under the 8 s an echo test takes to give up.
	dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
	defer dcancel()
	c, err := dialer.New(b).DialContext(dctx, "tcp", netip.AddrPortFrom(pubA, 7000).String())
	if err != nil {
		t.Fatalf("dial %v: %v; gateway %+v", pubA, err, g.Stats())
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := []byte("between two clients of one gateway, by public address")
	c.Write(msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo %q: %v", got, err)
	}
	if p := <-peer; p != pubB {
		t.Errorf("listener saw %v, want the dialer's public address %v", p, pubB)
	}
	if st := g.Stats(); st.Hairpinned == 0 || st.HairpinDrops != 0 {
		t.Errorf("gateway %+v: want hairpinned packets and no drops", st)
	}
}
