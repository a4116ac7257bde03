// Package linktest joins gVisor stacks through link.Endpoints over an
// in-memory udpiotest network, with a plain IPv6-in-UDP tunnel in place of
// the Teredo client, for tests of the packages above link.
package linktest

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/qdisc/fifo"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	tcp "github.com/teredo-go/teredo/internal/gvtcp"
	"github.com/teredo-go/teredo/link"
	"github.com/teredo-go/teredo/udpio"
	"github.com/teredo-go/teredo/udpio/udpiotest"
)

// NIC is the NIC id of every Host's link.
const NIC tcpip.NICID = 1

// Network is a set of Hosts that reach each other by IPv6 address.
type Network struct {
	udp *udpiotest.Network

	mu     sync.Mutex
	routes map[netip.Addr]netip.AddrPort
	next   byte
}

// NewNetwork returns an empty network.
func NewNetwork() *Network {
	return &Network{udp: udpiotest.NewNetwork(), routes: make(map[netip.Addr]netip.AddrPort)}
}

// Host is a gVisor stack with one link on the Network. It implements the
// interfaces dialer and listener take, like stack.Stack does.
type Host struct {
	Stack    *stack.Stack
	Endpoint *link.Endpoint
	Conn     udpio.Conn

	net  *Network
	mu   sync.Mutex
	addr netip.Addr
	dead map[netip.Addr]bool
}

// Netstack returns the host's gVisor stack.
func (h *Host) Netstack() *stack.Stack { return h.Stack }

// NICID returns the link's NIC id.
func (h *Host) NICID() tcpip.NICID { return NIC }

// Addr returns the host's current IPv6 address.
func (h *Host) Addr() netip.Addr {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.addr
}

// Unreachable reports whether SetUnreachable marked dst.
func (h *Host) Unreachable(dst netip.Addr) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.dead[dst]
}

// SetUnreachable marks dst as a peer the tunnel gave up on, as the Teredo
// client does after its bubbles go unanswered.
func (h *Host) SetUnreachable(dst netip.Addr) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dead[dst] = true
}

// SetAddr replaces the host's address, as a Teredo address change does.
func (h *Host) SetAddr(tb testing.TB, a netip.Addr) {
	tb.Helper()
	old := h.Addr()
	if err := h.Stack.RemoveAddress(NIC, tcpip.AddrFrom16(old.As16())); err != nil {
		tb.Fatalf("RemoveAddress: %v", err)
	}
	addAddr(tb, h.Stack, a)
	h.mu.Lock()
	h.addr = a
	h.mu.Unlock()
	h.net.mu.Lock()
	h.net.routes[a] = h.net.routes[old]
	delete(h.net.routes, old)
	h.net.mu.Unlock()
}

// NewHost adds a host with address a, destroyed when tb ends.
func (n *Network) NewHost(tb testing.TB, a netip.Addr) *Host {
	tb.Helper()
	n.mu.Lock()
	n.next++
	ua := netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, n.next}), 40000)
	n.mu.Unlock()
	conn, err := n.udp.Listen(ua)
	if err != nil {
		tb.Fatal(err)
	}
	h := &Host{Conn: conn, net: n, addr: a, dead: make(map[netip.Addr]bool)}
	h.Endpoint = link.New(conn, tunnel{n}, link.Options{DisableGRO: true})
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol6},
	})
	if err := s.CreateNICWithOptions(NIC, h.Endpoint, stack.NICOptions{QDisc: fifo.New(h.Endpoint, 1, 1000)}); err != nil {
		tb.Fatalf("CreateNIC: %v", err)
	}
	addAddr(tb, s, a)
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv6EmptySubnet, NIC: NIC}})
	h.Stack = s
	n.mu.Lock()
	n.routes[a] = ua
	n.mu.Unlock()
	tb.Cleanup(func() {
		done := make(chan struct{})
		go func() { s.Destroy(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			tb.Errorf("linktest: Stack.Destroy hangs")
		}
		conn.Close()
	})
	return h
}

func addAddr(tb testing.TB, s *stack.Stack, a netip.Addr) {
	pa := tcpip.ProtocolAddress{Protocol: ipv6.ProtocolNumber, AddressWithPrefix: tcpip.AddrFrom16(a.As16()).WithPrefix()}
	if err := s.AddProtocolAddress(NIC, pa, stack.AddressProperties{}); err != nil {
		tb.Fatalf("AddProtocolAddress: %v", err)
	}
}

// tunnel routes by destination address; packets to unknown destinations
// vanish, as they would toward a Teredo peer that never answers.
type tunnel struct{ n *Network }

func (t tunnel) Transmit(bufs [][]byte) (netip.AddrPort, bool) {
	dst := netip.AddrFrom16([16]byte(bufs[0][24:40]))
	t.n.mu.Lock()
	ua, ok := t.n.routes[dst]
	t.n.mu.Unlock()
	return ua, ok
}

func (t tunnel) Receive(b []byte, _ netip.AddrPort) []byte {
	if len(b) < header.IPv6MinimumSize {
		return nil
	}
	return b
}
