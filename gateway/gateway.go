// Package gateway is a Teredo server and relay on one IPv4 address whose
// clients reach the IPv6 internet from an operator's /64 through stateless
// prefix translation (package nptv6): what one VPS needs to give Teredo
// clients working IPv6 without two IPv4 addresses or a BGP route for
// 2001::/32.
//
// The server and the relay share one UDP socket on port 3544. The relay
// reads it; what a relay does not forward (router solicitations, bubbles
// and ICMPv6 messages between Teredo clients) it hands to the server's
// Processor. Clients' relay-discovery echo requests to native hosts are
// relayed data like any other: their source is translated, so the replies
// return to the gateway, and clients adopt it as their relay. The relay's
// indirect bubbles to its own clients, which would loop through the
// socket, are relayed in process as the server would.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/teredo-go/teredo/clock"
	"github.com/teredo-go/teredo/nptv6"
	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/relay"
	"github.com/teredo-go/teredo/server"
	"github.com/teredo-go/teredo/udpio"
)

// Config configures a Gateway.
type Config struct {
	// Addr is the gateway's IPv4 address: the Teredo server address
	// clients are configured with. Required.
	Addr netip.Addr
	// Port is the UDP port; zero means 3544. Relays send indirect bubbles
	// to port 3544 only, so other values are for tests.
	Port uint16
	// SecondaryPort, if non-zero, opens a second socket on Addr that plays
	// the server's secondary address for clients configured with it
	// (server.Config.SecondaryPort, an extension).
	SecondaryPort uint16
	// Prefix6 is the operator's /64 to which the clients' Teredo /64
	// (2001:0:<Addr>::/64) is mapped. Required.
	Prefix6 netip.Prefix
	// Device is the IPv6 side, on which Prefix6 is routed to the gateway.
	// The gateway owns it and closes it.
	Device relay.Device

	// Bind is where the socket listens; the zero value means Addr:Port.
	// A VPS whose provider maps a public IPv4 1:1 to a private one binds
	// the private address (or 0.0.0.0) while Addr is the public one.
	Bind netip.AddrPort
	// Conn is the socket on Bind; nil opens one with Listen. The gateway
	// owns it.
	Conn udpio.Conn
	// Listen opens sockets; nil means udpio.Listen with GSO and GRO.
	Listen func(netip.AddrPort) (udpio.Conn, error)

	// MTU, RateLimit and IPv4Filter are as in server.Config.
	MTU        uint32
	RateLimit  server.RateLimit
	IPv4Filter proto.IPv4Filter
	// Relay, if set, adjusts the relay's configuration before it starts.
	Relay func(*relay.Config)

	Clock  clock.Clock
	Logger *slog.Logger
}

// ErrConfig is wrapped by every configuration error.
var ErrConfig = errors.New("gateway: invalid configuration")

// Gateway is a running Teredo server, relay and prefix translator.
type Gateway struct {
	addr   netip.AddrPort
	log    *slog.Logger
	conn   udpio.Conn // shared by the server and the relay
	sec    udpio.Conn // the secondary port, or nil
	srv    *server.Processor
	relay  *relay.Relay
	nat    *nptv6.Translator
	filter proto.IPv4Filter
	ctr    counters

	closeOnce sync.Once
	wg        sync.WaitGroup
}

// counters are the gateway's own: what the relay and server count is in
// their statuses.
type counters struct {
	toServer      atomic.Uint64 // datagrams handed to the server
	localBubbles  atomic.Uint64 // relay bubbles relayed in process
	localDrops    atomic.Uint64 // relay bubbles that could not be
	translatedOut atomic.Uint64
	translatedIn  atomic.Uint64
	foreignSource atomic.Uint64 // outbound with a source outside our Teredo /64
	passedIn      atomic.Uint64 // inbound outside Prefix6, passed unchanged
	malformed     atomic.Uint64
}

// New returns a gateway for cfg; Run starts it.
func New(cfg Config) (*Gateway, error) {
	if !cfg.Addr.Is4() {
		return nil, fmt.Errorf("%w: address %v is not IPv4", ErrConfig, cfg.Addr)
	}
	if cfg.Device == nil {
		return nil, fmt.Errorf("%w: no IPv6 device", ErrConfig)
	}
	if cfg.Port == 0 {
		cfg.Port = proto.Port
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.IPv4Filter == nil {
		cfg.IPv4Filter = proto.IsGlobalUnicastIPv4
	}
	if cfg.Listen == nil {
		cfg.Listen = func(ap netip.AddrPort) (udpio.Conn, error) {
			return udpio.Listen(ap, udpio.Options{ReadBuffer: 16 << 20})
		}
	}
	nat, err := nptv6.New(proto.ServerPrefix(cfg.Addr), cfg.Prefix6)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	srv, err := server.NewProcessor(server.Config{
		Primary:       cfg.Addr,
		Port:          cfg.Port,
		SingleAddress: true,
		SecondaryPort: cfg.SecondaryPort,
		PublicPrefix:  nat.Outside(),
		MTU:           cfg.MTU,
		IPv4Filter:    cfg.IPv4Filter,
		RateLimit:     cfg.RateLimit,
		Clock:         cfg.Clock,
		Logger:        cfg.Logger.With("role", "server"),
	})
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	g := &Gateway{
		addr:   netip.AddrPortFrom(cfg.Addr, cfg.Port),
		log:    cfg.Logger,
		srv:    srv,
		nat:    nat,
		filter: cfg.IPv4Filter,
	}
	bind := cfg.Bind
	if !bind.IsValid() {
		bind = g.addr
	}
	g.conn = cfg.Conn
	if g.conn == nil {
		if g.conn, err = cfg.Listen(bind); err != nil {
			return nil, fmt.Errorf("gateway: listen on %v: %w", bind, err)
		}
	}
	if cfg.SecondaryPort != 0 {
		ap := netip.AddrPortFrom(bind.Addr(), cfg.SecondaryPort)
		if g.sec, err = cfg.Listen(ap); err != nil {
			g.conn.Close()
			return nil, fmt.Errorf("gateway: listen on %v: %w", ap, err)
		}
	}
	rc := relay.Config{
		Conn:       &relayConn{Conn: g.conn, g: g},
		Device:     &device{dev: cfg.Device, g: g},
		Clock:      cfg.Clock,
		Logger:     cfg.Logger.With("role", "relay"),
		IPv4Filter: cfg.IPv4Filter,
		Other:      g.toServer,
	}
	if cfg.Relay != nil {
		cfg.Relay(&rc)
	}
	if g.relay, err = relay.New(rc); err != nil {
		g.conn.Close()
		if g.sec != nil {
			g.sec.Close()
		}
		return nil, fmt.Errorf("gateway: %w", err)
	}
	return g, nil
}

// Addr is the gateway's UDP address: server and relay.
func (g *Gateway) Addr() netip.AddrPort { return g.addr }

// TeredoPrefix is the /64 of the gateway's clients, 2001:0:<Addr>::/64.
func (g *Gateway) TeredoPrefix() netip.Prefix { return g.nat.Inside() }

// PublicPrefix is the operator /64 the clients appear on.
func (g *Gateway) PublicPrefix() netip.Prefix { return g.nat.Outside() }

// PublicAddr returns the public address of the gateway's client with
// Teredo address a.
func (g *Gateway) PublicAddr(a netip.Addr) (netip.Addr, bool) { return g.nat.ToOutside(a) }

// MayBeClient reports whether a, an address in the public prefix, can
// belong to a client: its Teredo counterpart embeds a global IPv4 mapping
// with a non-zero port. Proxy NDP answers only for such addresses, so
// that the provider's router and the host's own addresses in the same
// /64 (such as ::1) are never claimed.
func (g *Gateway) MayBeClient(a netip.Addr) bool {
	t, ok := g.nat.ToInside(a)
	if !ok {
		return false
	}
	ta, ok := proto.ParseAddress(t)
	if !ok || ta.Mapped.Port() == 0 {
		return false
	}
	// Low interface identifiers (::1, ::2, what routers and hosts use)
	// decode to 255.255.x.x; no mapping is ever multicast or reserved,
	// whatever the filter (tests accept everything else).
	m := ta.Mapped.Addr().As4()
	return m[0] != 0 && m[0] < 224 && g.filter(ta.Mapped.Addr())
}

// Serve serves until ctx is done or Close is called. It returns nil after a
// normal stop, or the error that stopped the relay.
func (g *Gateway) Serve(ctx context.Context) error {
	if g.sec != nil {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			g.readSecondary()
		}()
	}
	g.log.Info("teredo gateway running", "addr", g.addr, "teredo_prefix", g.nat.Inside(), "public_prefix", g.nat.Outside())
	err := g.relay.Serve(ctx)
	g.Close()
	return err
}

// Close stops the gateway and releases its sockets and device.
func (g *Gateway) Close() error {
	g.closeOnce.Do(func() {
		g.relay.Close() // closes the shared socket and the device
		if g.sec != nil {
			g.sec.Close()
		}
	})
	g.wg.Wait()
	return nil
}

// readSecondary feeds the secondary port's datagrams to the server.
func (g *Gateway) readSecondary() {
	msgs := make([]udpio.Message, 8)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, 2048)}
	}
	tx := sender{g}
	for {
		n, err := g.sec.ReadBatch(msgs)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				g.log.Warn("secondary socket", "err", err)
			}
			return
		}
		for i := range msgs[:n] {
			g.srv.Process(server.Secondary, msgs[i].Buffers[0][:msgs[i].N], msgs[i].Addr, tx)
		}
	}
}

// toServer is the relay's Other hook: the server's share of the socket.
func (g *Gateway) toServer(b []byte, from netip.AddrPort) {
	g.ctr.toServer.Add(1)
	g.srv.Process(server.Primary, b, from, sender{g})
}

// sender sends the server's datagrams on the gateway's sockets.
type sender struct{ g *Gateway }

func (s sender) SendFrom(sock server.Socket, b []byte, dst netip.AddrPort) error {
	switch {
	case sock == server.Primary:
		return s.g.conn.WriteTo(b, dst)
	case sock == server.Secondary && s.g.sec != nil:
		return s.g.sec.WriteTo(b, dst)
	}
	return errNoSocket
}

var errNoSocket = errors.New("gateway: no such socket")

// relayConn is the relay's view of the shared socket: its bubbles to the
// gateway's own clients go through their server, which is this process.
type relayConn struct {
	udpio.Conn
	g *Gateway
}

func (c *relayConn) WriteTo(b []byte, to netip.AddrPort) error {
	if to != c.g.addr {
		return c.Conn.WriteTo(b, to)
	}
	return c.g.localBubble(b)
}

// Offload passes the socket's offload state on to the relay.
func (c *relayConn) Offload() (gso, gro bool) {
	if o, ok := c.Conn.(interface{ Offload() (gso, gro bool) }); ok {
		return o.Offload()
	}
	return false, false
}

// Errors of the relay's bubbles to the gateway's own address.
var (
	errNotBubble     = errors.New("gateway: not a bubble")
	errForeignBubble = errors.New("gateway: bubble to a client of another server")
)

// localBubble relays the relay's indirect bubble b to one of the
// gateway's clients as the server would (RFC 4380 §5.3.1): with an origin
// indication of the relay's endpoint, to the client's mapped endpoint.
func (g *Gateway) localBubble(b []byte) error {
	var pkt proto.Packet
	if pkt.Parse(b) != nil || !proto.IsBubble(pkt.IPv6) || pkt.HasAuth || pkt.HasOrigin {
		g.ctr.localDrops.Add(1)
		return errNotBubble
	}
	dst := pkt.IPv6[24:40]
	mapped := proto.MappedBytes(dst)
	if !proto.IsTeredoBytes(dst) || proto.ServerBytes(dst) != g.addr.Addr() || mapped.Port() == 0 || !g.filter(mapped.Addr()) {
		g.ctr.localDrops.Add(1)
		return errForeignBubble
	}
	var buf [proto.MaxIndicationsLen + proto.IPv6HeaderLen + 64]byte
	out := proto.AppendOrigin(buf[:0], g.addr)
	out = append(out, b...)
	g.ctr.localBubbles.Add(1)
	return g.conn.WriteTo(out, mapped)
}
