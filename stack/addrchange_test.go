package stack_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/teredo-go/teredo/client"
	"github.com/teredo-go/teredo/clock"
	"github.com/teredo-go/teredo/dialer"
	"github.com/teredo-go/teredo/listener"
	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/server"
	"github.com/teredo-go/teredo/stack"
	"github.com/teredo-go/teredo/udpio"
	"github.com/teredo-go/teredo/udpio/udpiotest"
)

// nat rewrites one private endpoint to a public one whose port the test
// changes, as a NAT that loses its mapping does.
type nat struct {
	private netip.AddrPort
	public  netip.Addr
	port    atomic.Uint32
}

func (n *nat) mapped() netip.AddrPort {
	return netip.AddrPortFrom(n.public, uint16(n.port.Load()))
}

func (n *nat) hook(p *udpiotest.Packet) bool {
	switch {
	case p.Src == n.private:
		p.Src = n.mapped()
	case p.Dst.Addr() == n.public:
		if p.Dst != n.mapped() {
			return false // a stale mapping
		}
		p.Dst = n.private
	}
	return true
}

// TestAddressChange qualifies a client behind a NAT, changes its mapping
// and checks that the stack moves to the new address: connections on the
// old one fail, listeners accept on the new one.
func TestAddressChange(t *testing.T) {
	network := udpiotest.NewNetwork()
	n := &nat{private: netip.MustParseAddrPort("10.0.0.1:5000"), public: netip.MustParseAddr("203.0.113.1")}
	n.port.Store(40000)
	network.SetHook(n.hook)

	srv, err := server.New(server.Config{
		Primary:    netip.MustParseAddr("192.0.2.1"),
		IPv4Filter: proto.AnyIPv4,
		Listen:     func(a netip.AddrPort) (udpio.Conn, error) { return network.Listen(a) },
	})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { srv.Serve(context.Background()); close(served) }()
	defer func() { srv.Close(); <-served }()

	newStack := func(local string, clk clock.Clock) *stack.Stack {
		conn, err := network.Listen(netip.MustParseAddrPort(local))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := stack.New(ctx, stack.Config{
			Servers:    []netip.Addr{netip.MustParseAddr("192.0.2.1")},
			Conn:       conn,
			Clock:      clk,
			IPv4Filter: proto.AnyIPv4,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	fake := clock.NewFake(time.Now())
	a := newStack("10.0.0.1:5000", fake)
	b := newStack("192.0.2.50:6000", nil)
	oldAddr := a.Addr()
	if ta, _ := proto.ParseAddress(oldAddr); ta.Mapped != n.mapped() {
		t.Fatalf("address %v maps %v, want %v", oldAddr, ta.Mapped, n.mapped())
	}

	changed := make(chan client.AddressChanged, 1)
	defer a.Subscribe(func(ev stack.Event) {
		if ac, ok := ev.(client.AddressChanged); ok {
			changed <- ac
		}
	})()

	// A connection from a to b, and a listener on a.
	lnB, err := listener.Listen(b, "tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	defer lnB.Close()
	go func() {
		for {
			c, err := lnB.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	lnA, err := listener.Listen(a, "tcp", ":81")
	if err != nil {
		t.Fatal(err)
	}
	defer lnA.Close()
	accepted := make(chan net.Addr, 1)
	go func() {
		c, err := lnA.Accept()
		if err != nil {
			return
		}
		accepted <- c.LocalAddr()
		c.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	old, err := dialer.New(a).DialContext(ctx, "tcp", netip.AddrPortFrom(b.Addr(), 80).String())
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()

	// The NAT forgets the mapping; the next refresh learns the new one.
	n.port.Store(40001)
	for i := 0; i < 10 && len(changed) == 0; i++ {
		fake.Advance(client.RefreshInterval)
		time.Sleep(100 * time.Millisecond)
	}
	var ac client.AddressChanged
	select {
	case ac = <-changed:
	case <-time.After(5 * time.Second):
		t.Fatalf("no AddressChanged; status %+v", a.Status().Client)
	}
	if ac.Old != oldAddr || ac.New != a.Addr() {
		t.Fatalf("event %+v, stack address %v", ac, a.Addr())
	}
	if ta, _ := proto.ParseAddress(ac.New); ta.Mapped != n.mapped() {
		t.Fatalf("new address maps %v, want %v", ta.Mapped, n.mapped())
	}

	old.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := old.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNABORTED) {
		t.Errorf("read on a connection from the old address = %v, want ECONNABORTED", err)
	}

	c, err := dialer.New(b).DialContext(ctx, "tcp", netip.AddrPortFrom(ac.New, 81).String())
	if err != nil {
		t.Fatalf("dial the new address: %v", err)
	}
	c.Close()
	select {
	case la := <-accepted:
		if la.(*net.TCPAddr).AddrPort().Addr() != ac.New {
			t.Errorf("accepted on %v, want %v", la, ac.New)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("listener did not accept on the new address")
	}
}
