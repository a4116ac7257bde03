package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"

	"github.com/teredo-go/teredo/internal/cli"
	"github.com/teredo-go/teredo/internal/forward"
	tcp "github.com/teredo-go/teredo/internal/gvtcp"
	"github.com/teredo-go/teredo/relay/netstack"
)

// forwardSpec is one -netstack-forward PORT=HOST:PORT.
type forwardSpec struct {
	port   uint16
	target string
}

// parseForward parses PORT=HOST:PORT.
func parseForward(s string) (forwardSpec, error) {
	port, target, ok := strings.Cut(s, "=")
	p, err := strconv.ParseUint(port, 10, 16)
	if !ok || err != nil || p == 0 {
		return forwardSpec{}, cli.Usagef("-netstack-forward %q: want PORT=HOST:PORT", s)
	}
	host, tport, err := net.SplitHostPort(target)
	if tp, perr := strconv.ParseUint(tport, 10, 16); err != nil || host == "" || perr != nil || tp == 0 {
		return forwardSpec{}, cli.Usagef("-netstack-forward %q: target %q is not HOST:PORT", s, target)
	}
	return forwardSpec{port: uint16(p), target: target}, nil
}

// netstackNIC is the NIC of the in-process stack that is the relay's
// device.
const netstackNIC = 1

// netstackSide is the unprivileged IPv6 side (-netstack): a gVisor stack
// in the process instead of a TUN device. The host's kernel never sees
// the public prefix, so the IPv6 internet cannot reach the clients; what
// the clients reach is the gateway host itself, at hostAddr(prefix6)
// (ping, and the TCP ports -netstack-forward relays to services of the
// host), and each other at their public addresses, which the gateway
// hairpins.
type netstackSide struct {
	s    *stack.Stack
	dev  *netstack.Device
	addr netip.Addr
	fwds []*forward.Forwarder
}

// hostAddr is the gateway's own address in the public /64, <prefix>::1:
// one no client can have (gateway.MayBeClient).
func hostAddr(prefix netip.Prefix) netip.Addr {
	a := prefix.Masked().Addr().As16()
	a[15] = 1
	return netip.AddrFrom16(a)
}

// openNetstack builds the stack, with hostAddr(prefix) and a route for
// prefix into the device, and starts the forwarders. The device goes to
// the gateway, which closes it; Close closes the rest.
func openNetstack(prefix netip.Prefix, forwards []forwardSpec, log *slog.Logger) (*netstackSide, error) {
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, icmp.NewProtocol6},
	})
	dev, err := netstack.New(s, netstackNIC)
	if err != nil {
		s.Destroy()
		return nil, err
	}
	n := &netstackSide{s: s, dev: dev, addr: hostAddr(prefix)}
	pa := tcpip.ProtocolAddress{Protocol: ipv6.ProtocolNumber, AddressWithPrefix: tcpip.AddrFrom16(n.addr.As16()).WithPrefix()}
	if terr := s.AddProtocolAddress(netstackNIC, pa, stack.AddressProperties{}); terr != nil {
		n.closeAll()
		return nil, fmt.Errorf("netstack: address %v: %s", n.addr, terr)
	}
	sub, err := tcpip.NewSubnet(tcpip.AddrFrom16(prefix.Masked().Addr().As16()), tcpip.MaskFromBytes(net.CIDRMask(prefix.Bits(), 128)))
	if err != nil {
		n.closeAll()
		return nil, fmt.Errorf("netstack: route %v: %w", prefix, err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: sub, NIC: netstackNIC}})
	var d net.Dialer
	for _, f := range forwards {
		full := tcpip.FullAddress{NIC: netstackNIC, Addr: pa.AddressWithPrefix.Address, Port: f.port}
		ln, err := gonet.ListenTCP(s, full, ipv6.ProtocolNumber)
		if err != nil {
			n.closeAll()
			return nil, fmt.Errorf("-netstack-forward %d=%s: %w", f.port, f.target, err)
		}
		n.fwds = append(n.fwds, forward.New(ln, f.target, d.DialContext, log))
		log.Info("forwarding", "from", netip.AddrPortFrom(n.addr, f.port), "to", f.target)
	}
	return n, nil
}

// Close stops the forwarders and the stack; the gateway has closed the
// device by then.
func (n *netstackSide) Close() {
	for _, f := range n.fwds {
		f.Close()
	}
	n.s.Destroy()
}

// closeAll is Close for a side whose device no gateway took.
func (n *netstackSide) closeAll() {
	for _, f := range n.fwds {
		f.Close()
	}
	n.dev.Close()
	n.s.Destroy()
}
