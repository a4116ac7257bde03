package lab

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
)

// sendTTL sends one datagram from c to dst with IPv4 TTL ttl.
func sendTTL(t *testing.T, c *net.UDPConn, dst netip.AddrPort, ttl int) {
	t.Helper()
	p := ipv4.NewConn(c)
	if err := p.SetTTL(ttl); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteToUDPAddrPort([]byte("ttl"), dst); err != nil {
		t.Fatal(err)
	}
	if err := p.SetTTL(64); err != nil {
		t.Fatal(err)
	}
}

// TestTransitTopology checks the transit router and the shared LAN: a NAT behind the
// transit router is two routed hops from another one (TTL 2 dies on the way, TTL 3
// arrives), both reach the servers through it with plain masquerade, and two hosts
// behind one NAT share its public address but the NAT does not hairpin.
func TestTransitTopology(t *testing.T) {
	l := New(t, Options{
		Clients:  []ClientSpec{{"b1", OpenMasquerade}, {"b2", OpenMasquerade}, {"e1", HomeRouter}},
		Transit:  []string{"b1", "b2"},
		Behind:   map[string]string{"e2": "e1"},
		NoRelay:  true,
		NoV6Host: true,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, name := range []string{"b1", "b2", "e1", "e2"} {
		pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
		if _, err := l.Clients[name].Ping(pctx, ServerPrimary, 0); err != nil {
			t.Fatalf("ping server from %s: %v", name, err)
		}
		pcancel()
	}
	if l.Clients["e1"].NAT != l.Clients["e2"].NAT || l.Clients["e2"].IPv4[0] != netip.MustParseAddr("192.168.3.3") {
		t.Fatalf("e2 is not behind e1's NAT: %+v", l.Clients["e2"])
	}

	b1, b2 := l.Clients["b1"], l.Clients["b2"]
	sink := newUDPSink(t, b2.NAT.Router, netip.AddrPortFrom(b2.NAT.WAN, 9))
	c, err := b1.ListenUDP("udp4", &net.UDPAddr{IP: b1.IPv4[0].AsSlice(), Port: 40000})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// TTL 2 crosses b1's NAT and dies at the transit router.
	sendTTL(t, c, sink.addr(), 2)
	select {
	case from := <-sink.from:
		t.Fatalf("a TTL 2 datagram from b1 reached b2's NAT (from %v)", from)
	case <-time.After(500 * time.Millisecond):
	}
	// TTL 3 arrives, from b1's NAT's public address.
	sendTTL(t, c, sink.addr(), 3)
	if from := sink.next(t, 3*time.Second); from.Addr() != b1.NAT.WAN {
		t.Fatalf("TTL 3 datagram came from %v, want b1's NAT %v", from, b1.NAT.WAN)
	}

	// No hairpin: e1 sends to e2's public mapping and e2 hears nothing.
	srvSink := newUDPSink(t, l.Server, netip.AddrPortFrom(ServerPrimary, 7))
	e1, e2 := l.Clients["e1"], l.Clients["e2"]
	c2, err := e2.ListenUDP("udp4", &net.UDPAddr{IP: e2.IPv4[0].AsSlice(), Port: 40002})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	m2 := probe(t, c2, srvSink.addr(), srvSink)
	if m2.Addr() != e1.NAT.WAN {
		t.Fatalf("e2 mapped to %v, want e1's NAT %v", m2, e1.NAT.WAN)
	}
	receives(c2, 200*time.Millisecond) // the server's echo
	c1, err := e1.ListenUDP("udp4", &net.UDPAddr{IP: e1.IPv4[0].AsSlice(), Port: 40001})
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	if _, err := c1.WriteToUDPAddrPort([]byte("hairpin?"), m2); err != nil {
		t.Fatal(err)
	}
	if receives(c2, 500*time.Millisecond) {
		t.Fatalf("e1's datagram to e2's mapping %v was hairpinned", m2)
	}
	// The LAN itself works.
	if _, err := c1.WriteToUDPAddrPort([]byte("lan"), netip.AddrPortFrom(e2.IPv4[0], 40002)); err != nil {
		t.Fatal(err)
	}
	if !receives(c2, 2*time.Second) {
		t.Fatal("e1 cannot reach e2 on their LAN")
	}
}

// addr is the sink's local address.
func (s *udpSink) addr() netip.AddrPort {
	return s.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}
