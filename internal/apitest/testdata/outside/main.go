// Command outside is built by TestOutsideModule as a module of its own: it
// touches the seams of every public package (their configs, constructors and
// the types they exchange) the way an embedding application would, so that an
// internal type anywhere in them fails the build.
package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"time"

	"github.com/teredo-go/teredo/client"
	"github.com/teredo-go/teredo/clock"
	"github.com/teredo-go/teredo/dialer"
	"github.com/teredo-go/teredo/gateway"
	"github.com/teredo-go/teredo/gateway/ndproxy"
	"github.com/teredo-go/teredo/happyeyeballs"
	"github.com/teredo-go/teredo/link"
	"github.com/teredo-go/teredo/link/linktest"
	"github.com/teredo-go/teredo/listener"
	"github.com/teredo-go/teredo/nptv6"
	"github.com/teredo-go/teredo/peer"
	"github.com/teredo-go/teredo/portmap"
	"github.com/teredo-go/teredo/portmap/portmaptest"
	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/relay"
	"github.com/teredo-go/teredo/relay/netstack"
	"github.com/teredo-go/teredo/relay/tun"
	"github.com/teredo-go/teredo/server"
	"github.com/teredo-go/teredo/socks5"
	"github.com/teredo-go/teredo/stack"
	"github.com/teredo-go/teredo/teredotest"
	"github.com/teredo-go/teredo/udpio"
	"github.com/teredo-go/teredo/udpio/udpiotest"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run() error {
	var clk clock.Clock = clock.NewFake(time.Unix(0, 0))
	nw := udpiotest.NewNetwork()

	// A server on the in-memory network, its metrics and handler.
	srv, err := server.New(server.Config{
		Primary:    netip.MustParseAddr("192.0.2.1"),
		IPv4Filter: proto.AnyIPv4,
		Clock:      clk,
		Listen:     nw.Listen,
	})
	if err != nil {
		return err
	}
	defer srv.Close()
	_ = srv.Handler()
	if err := server.WritePrometheus(io.Discard, srv.Stats()); err != nil {
		return err
	}

	// A relay's configuration, with a socket of the in-memory network.
	conn, err := nw.Listen(netip.MustParseAddrPort("192.0.2.9:3544"))
	if err != nil {
		return err
	}
	var dev relay.Device = (*netstack.Device)(nil)
	rcfg := relay.Config{Conn: conn, Device: dev, Clock: clk, Bubble: peer.DefaultBubbleLimit}
	_ = rcfg
	var r *relay.Relay
	_ = func() error { return r.WritePrometheus(io.Discard) }
	_ = tun.Config{Name: tun.DefaultName}

	// A gateway's configuration and its prefix translator.
	gcfg := gateway.Config{Addr: netip.MustParseAddr("192.0.2.7"), Prefix6: netip.MustParsePrefix("2001:db8:2::/64"),
		Device: dev, Conn: conn, Clock: clk, Relay: func(*relay.Config) {}}
	_ = gcfg
	var g *gateway.Gateway
	_ = func() error { return g.WritePrometheus(io.Discard) }
	nat, err := nptv6.New(proto.ServerPrefix(gcfg.Addr), gcfg.Prefix6)
	if err != nil {
		return err
	}
	if _, ok := nat.ToOutside(netip.MustParseAddr("2001:0:c000:207::1")); !ok {
		return fmt.Errorf("nptv6: a Teredo address of the gateway is not mapped")
	}
	_ = ndproxy.SolicitedNode(gcfg.Prefix6.Addr())

	// A port mapper pointed at an in-process PCP/NAT-PMP responder.
	pms, err := portmaptest.NewServer("127.0.0.1:0", netip.MustParseAddr("192.0.2.77"))
	if err != nil {
		return err
	}
	defer pms.Close()
	_ = portmap.Config{InternalPort: 3545, PCPPort: pms.Addr().Port(), Clock: clk,
		Gateway:  func() (netip.Addr, error) { return pms.Addr().Addr(), nil },
		OnChange: func(m portmap.Mapping) { _ = m.External }}

	// The lower layers.
	var uc udpio.Conn = conn
	ep := link.New(uc, nil, link.Options{MTU: proto.MinMTU})
	_ = ep.Stats()
	_ = linktest.NewNetwork
	tab := peer.New(peer.Config{Clock: clk, MaxPeers: client.DefaultMaxPeers})
	defer tab.Close()

	// The client stack, its dialer, listener and SOCKS5 front end.
	cfg := stack.Config{Servers: []netip.Addr{netip.MustParseAddr("192.0.2.1")}, Conn: conn, Clock: clk}
	var s *stack.Stack
	_ = func() { s, _ = stack.New(context.Background(), cfg) }
	var n dialer.Network = s
	d := dialer.New(n)
	_ = func() (*listener.Listener, error) { return listener.Listen(s, "tcp", ":80") }
	_ = &socks5.Server{Dial: d.DialContext}

	// A stack that returns before qualification, and IPv6 through it
	// raced against IPv4 through the host.
	_ = func() (*stack.Stack, error) {
		return stack.Start(stack.Config{ServerNames: []string{"teredo.example.net"}})
	}
	he := &happyeyeballs.Dialer{Dial6: happyeyeballs.FromDialContext(d.DialContext), Clock: clk}
	_ = &socks5.Server{Dial: he.DialContext, Resolve: he.Resolve}

	// The Stack as a network (tsnet style).
	_ = func() error {
		c, err := s.DialContext(context.Background(), "tcp", "ipv6.example.net:80")
		if err != nil {
			return err
		}
		c.Close()
		ln, err := s.Listen("tcp6", ":8080")
		if err != nil {
			return err
		}
		ln.Close()
		pc, err := s.ListenPacket("udp6", ":0")
		if err != nil {
			return err
		}
		pc.Close()
		_, err = s.HTTPClient().Get("http://ipv6.example.net/")
		return err
	}

	// The in-process internet for tests, and a client configuration for it.
	var in *teredotest.Internet
	_ = func() stack.Config {
		in.AddName("ipv6.example.net", netip.MustParseAddr("2001:db8::80"))
		var r dialer.Resolver = in.Resolver()
		cfg := in.ClientConfig()
		cfg.Resolver = r
		return cfg
	}
	return nil
}
