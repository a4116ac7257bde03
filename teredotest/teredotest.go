// Package teredotest is an in-process Teredo internet for tests and demos,
// in the spirit of net/http/httptest: a Teredo server on two consecutive
// loopback addresses, a relay whose IPv6 side is an embedded netstack
// "IPv6 internet", and IPv6-only hosts on that internet with TCP and UDP
// services. Nothing needs privileges.
//
// The server's IPv6 output (where relay-discovery echo requests leave) is
// attached to the same netstack, so a client's echo test works end to end:
// the request leaves through the server, the host's reply comes back through
// the relay, and the client learns the relay from it.
//
// Linux only: other systems route only 127.0.0.1 on the loopback interface,
// and the server must own two consecutive 127/8 addresses on port 3544,
// because relays send indirect bubbles to the server address embedded in a
// client's Teredo address, always on port 3544. Start returns
// ErrUnsupported elsewhere and New skips the test.
package teredotest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"sync"
	"syscall"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/teredo-go/teredo/gateway"
	tcp "github.com/teredo-go/teredo/internal/gvtcp"
	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/relay"
	"github.com/teredo-go/teredo/relay/netstack"
	"github.com/teredo-go/teredo/server"
	"github.com/teredo-go/teredo/udpio"
)

// ErrUnsupported is returned by Start on systems other than Linux.
var ErrUnsupported = errors.New("teredotest: needs Linux (the whole 127.0.0.0/8 on loopback)")

// HostPrefix is where AddHost's automatic addresses come from: the IPv6
// documentation prefix.
var HostPrefix = netip.MustParsePrefix("2001:db8::/32")

const nicID = 1

// Option configures an Internet.
type Option func(*options)

type options struct {
	logger       *slog.Logger
	relayCfg     func(*relay.Config)
	hostSpecific bool
	attempts     int
	gateway      netip.Prefix
}

// WithGateway replaces the server on two addresses and the relay with one
// teredo-gateway (package gateway) on a single loopback address, whose
// clients appear on the IPv6 internet from public, a /64. The internet
// then routes public, not 2001::/32, to it, as a VPS's provider would;
// Server and Relay return nil, Gateway returns it.
func WithGateway(public netip.Prefix) Option { return func(o *options) { o.gateway = public } }

// WithHostSpecific makes the relay a host-specific relay for the
// Internet's hosts: it forwards decapsulated packets only to addresses
// added with AddHost.
func WithHostSpecific() Option { return func(o *options) { o.hostSpecific = true } }

// WithLogger sends the server's and relay's logs to l.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithRelayConfig lets f adjust the relay's configuration (for example
// DirectBubbles or DropUnknownPeers) before it starts. Conn, Device, Prefix
// and IPv4Filter are already set.
func WithRelayConfig(f func(*relay.Config)) Option { return func(o *options) { o.relayCfg = f } }

// Internet is a running in-process Teredo internet.
type Internet struct {
	log     *slog.Logger
	primary netip.Addr
	server  *server.Server
	relay   *relay.Relay
	gateway *gateway.Gateway
	dev     *netstack.Device
	stack   *stack.Stack

	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	hosts   map[netip.Addr]*Host
	names   map[string][]netip.Addr // lower-case name -> addresses (AddName)
	next    uint32
	closers []io.Closer
	closed  bool
	errs    []error
}

// Start builds and starts an Internet. The caller must Close it.
func Start(opts ...Option) (*Internet, error) {
	if runtime.GOOS != "linux" {
		return nil, ErrUnsupported
	}
	o := options{attempts: 32}
	for _, f := range opts {
		f(&o)
	}
	if o.logger == nil {
		o.logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	in := &Internet{log: o.logger, hosts: make(map[netip.Addr]*Host)}

	in.stack = stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol6},
		HandleLocal:        true,
	})
	dev, err := netstack.New(in.stack, nicID)
	if err != nil {
		in.stack.Destroy()
		return nil, err
	}
	in.dev = dev
	if o.gateway.IsValid() {
		sub, err := subnet(o.gateway)
		if err != nil {
			in.teardown()
			return nil, err
		}
		in.stack.SetRouteTable([]tcpip.Route{{Destination: sub, NIC: nicID}})
		if err := in.listenGateway(o); err != nil {
			in.teardown()
			return nil, err
		}
		ctx, cancel := context.WithCancel(context.Background())
		in.cancel = cancel
		in.wg.Add(1)
		go func() {
			defer in.wg.Done()
			if err := in.gateway.Serve(ctx); err != nil {
				in.recordErr(fmt.Errorf("teredotest: gateway: %w", err))
			}
		}()
		return in, nil
	}
	in.stack.SetRouteTable([]tcpip.Route{{Destination: teredoSubnet(), NIC: nicID}})

	if err := in.listen(o); err != nil {
		in.teardown()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	in.cancel = cancel
	in.wg.Add(2)
	go func() {
		defer in.wg.Done()
		if err := in.server.Serve(ctx); err != nil {
			in.recordErr(fmt.Errorf("teredotest: server: %w", err))
		}
	}()
	go func() {
		defer in.wg.Done()
		if err := in.relay.Serve(ctx); err != nil {
			in.recordErr(fmt.Errorf("teredotest: relay: %w", err))
		}
	}()
	return in, nil
}

// teredoSubnet is 2001::/32 as a gVisor subnet.
func teredoSubnet() tcpip.Subnet {
	mask := make([]byte, 16)
	mask[0], mask[1], mask[2], mask[3] = 0xff, 0xff, 0xff, 0xff
	s, err := tcpip.NewSubnet(tcpip.AddrFromSlice(proto.Prefix.Addr().AsSlice()), tcpip.MaskFromBytes(mask))
	if err != nil {
		panic(err) // constant input
	}
	return s
}

// subnet converts an IPv6 prefix to a gVisor subnet.
func subnet(p netip.Prefix) (tcpip.Subnet, error) {
	if !p.Addr().Is6() {
		return tcpip.Subnet{}, fmt.Errorf("teredotest: %v is not an IPv6 prefix", p)
	}
	p = p.Masked()
	mask := make([]byte, 16)
	for i := range p.Bits() {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	s, err := tcpip.NewSubnet(tcpip.AddrFromSlice(p.Addr().AsSlice()), tcpip.MaskFromBytes(mask))
	if err != nil {
		return tcpip.Subnet{}, fmt.Errorf("teredotest: subnet %v: %w", p, err)
	}
	return s, nil
}

// listenGateway starts a gateway on a free loopback address.
func (in *Internet) listenGateway(o options) error {
	var last error
	for range o.attempts {
		x, y, z := 1+rand.IntN(254), rand.IntN(256), 4*(1+rand.IntN(62))
		addr := netip.AddrFrom4([4]byte{127, byte(x), byte(y), byte(z)})
		g, err := gateway.New(gateway.Config{
			Addr:       addr,
			Prefix6:    o.gateway,
			Device:     in.dev,
			IPv4Filter: proto.AnyIPv4,
			Logger:     in.log.With("role", "gateway"),
			Relay:      o.relayCfg,
			Listen: func(ap netip.AddrPort) (udpio.Conn, error) {
				return udpio.Listen(ap, udpio.Options{DisableGSO: true})
			},
		})
		if err != nil {
			last = err
			if errors.Is(err, syscall.EADDRINUSE) {
				continue
			}
			return err
		}
		in.primary, in.gateway = addr, g
		return nil
	}
	return fmt.Errorf("teredotest: no free loopback address after %d attempts: %w", o.attempts, last)
}

// listen finds a free block of four loopback addresses (server primary and
// secondary on port 3544, relay on port 3544) and opens the sockets.
func (in *Internet) listen(o options) error {
	var last error
	for range o.attempts {
		// 127.x.y.z with z a multiple of 4 in 4..248: primary z, secondary
		// z+1, relay z+2; never 127.0.0.0/24, where other tests live.
		x, y, z := 1+rand.IntN(254), rand.IntN(256), 4*(1+rand.IntN(62))
		primary := netip.AddrFrom4([4]byte{127, byte(x), byte(y), byte(z)})
		relayAP := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, byte(x), byte(y), byte(z + 2)}), proto.Port)
		rconn, err := udpio.Listen(relayAP, udpio.Options{DisableGSO: true})
		if err != nil {
			last = err
			if errors.Is(err, syscall.EADDRINUSE) {
				continue
			}
			return fmt.Errorf("teredotest: relay socket: %w", err)
		}
		srv, err := server.New(server.Config{
			Primary:    primary,
			IPv4Filter: proto.AnyIPv4,
			IPv6Output: in.dev,
			Logger:     in.log.With("role", "server"),
		})
		if err != nil {
			rconn.Close()
			last = err
			if errors.Is(err, syscall.EADDRINUSE) {
				continue
			}
			return fmt.Errorf("teredotest: server: %w", err)
		}
		cfg := relay.Config{
			Conn:       rconn,
			Device:     in.dev,
			IPv4Filter: proto.AnyIPv4,
			Logger:     in.log.With("role", "relay"),
		}
		if o.hostSpecific {
			cfg.HostSpecific, cfg.IsLocal = true, in.isHost
		}
		if o.relayCfg != nil {
			o.relayCfg(&cfg)
		}
		r, err := relay.New(cfg)
		if err != nil {
			srv.Close()
			rconn.Close()
			return fmt.Errorf("teredotest: relay: %w", err)
		}
		in.primary, in.server, in.relay = primary, srv, r
		return nil
	}
	return fmt.Errorf("teredotest: no free loopback block after %d attempts: %w", o.attempts, last)
}

// New starts an Internet for a test or benchmark and closes it when tb
// ends. It skips tb on systems other than Linux.
func New(tb testing.TB, opts ...Option) *Internet {
	tb.Helper()
	in, err := Start(opts...)
	if errors.Is(err, ErrUnsupported) {
		tb.Skip(err)
	}
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := in.Close(); err != nil {
			tb.Error(err)
		}
	})
	return in
}

// ServerAddr is the server's primary IPv4 address, what a client is
// configured with (its port is 3544). The secondary is ServerAddr()+1.
func (in *Internet) ServerAddr() netip.Addr { return in.primary }

// SecondaryAddr is the server's secondary IPv4 address.
func (in *Internet) SecondaryAddr() netip.Addr { return in.primary.Next() }

// Servers returns the server list a client is configured with.
func (in *Internet) Servers() []netip.Addr { return []netip.Addr{in.primary} }

// IPv4Filter is the global-unicast rule a client must use here: everything
// goes, since the whole internet lives on loopback.
func (in *Internet) IPv4Filter() proto.IPv4Filter { return proto.AnyIPv4 }

// RelayAddr is the relay's Teredo-side endpoint.
func (in *Internet) RelayAddr() netip.AddrPort {
	if in.gateway != nil {
		return in.gateway.Addr()
	}
	return in.relay.Addr()
}

// Gateway returns the gateway of an Internet started WithGateway, or nil.
func (in *Internet) Gateway() *gateway.Gateway { return in.gateway }

// Relay returns the relay, for its counters and status.
func (in *Internet) Relay() *relay.Relay { return in.relay }

// Server returns the server, for its counters and status.
func (in *Internet) Server() *server.Server { return in.server }

// Stack returns the netstack that holds the IPv6-only hosts.
func (in *Internet) Stack() *stack.Stack { return in.stack }

// isHost reports whether a is one of the Internet's hosts.
func (in *Internet) isHost(a netip.Addr) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.hosts[a] != nil
}

func (in *Internet) recordErr(err error) {
	in.mu.Lock()
	in.errs = append(in.errs, err)
	in.mu.Unlock()
}

// Close stops every service, the server, the relay and the netstack, and
// returns the first error any of them reported while running.
func (in *Internet) Close() error {
	in.mu.Lock()
	if in.closed {
		in.mu.Unlock()
		return nil
	}
	in.closed = true
	closers := in.closers
	in.closers = nil
	in.mu.Unlock()
	for i := len(closers) - 1; i >= 0; i-- {
		closers[i].Close()
	}
	in.cancel()
	in.wg.Wait()
	in.teardown()
	in.mu.Lock()
	defer in.mu.Unlock()
	return errors.Join(in.errs...)
}

func (in *Internet) teardown() {
	if in.gateway != nil {
		in.gateway.Close()
	}
	if in.relay != nil {
		in.relay.Close()
	}
	if in.server != nil {
		in.server.Close()
	}
	if in.dev != nil {
		in.dev.Close()
	}
	in.stack.Destroy()
}
