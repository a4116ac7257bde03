package netstack_test

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/relay/netstack"
)

// A host of the stack sends a datagram to a Teredo client; the relay would
// read it from the Device and encapsulate it towards the client.
func Example() {
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{udp.NewProtocol},
	})
	defer s.Destroy()
	const nic = 1
	dev, err := netstack.New(s, nic)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer dev.Close()

	// The host's address, and the Teredo prefix routed into the Device.
	host := netip.MustParseAddr("2001:db8::1")
	s.AddProtocolAddress(nic, tcpip.ProtocolAddress{
		Protocol:          ipv6.ProtocolNumber,
		AddressWithPrefix: tcpip.AddrFrom16(host.As16()).WithPrefix(),
	}, stack.AddressProperties{})
	teredo, _ := tcpip.NewSubnet(tcpip.AddrFrom16(proto.Prefix.Addr().As16()),
		tcpip.MaskFromBytes(net.CIDRMask(proto.Prefix.Bits(), 128)))
	s.SetRouteTable([]tcpip.Route{{Destination: teredo, NIC: nic}})

	conn, err := gonet.DialUDP(s, &tcpip.FullAddress{NIC: nic, Addr: tcpip.AddrFrom16(host.As16()), Port: 4000}, nil, ipv6.ProtocolNumber)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.Close()
	client := netip.MustParseAddrPort("[2001:0:4136:e378:8000:63bf:3fff:fdd2]:40000")
	conn.WriteTo([]byte("hello"), net.UDPAddrFromAddrPort(client))

	// Close unblocks ReadPacket, which bounds the wait below. The stack
	// also sends packets of its own (MLD reports): skip them.
	stop := time.AfterFunc(5*time.Second, func() { dev.Close() })
	defer stop.Stop()
	b := make([]byte, proto.MinMTU)
	for range 16 {
		n, err := dev.ReadPacket(b)
		if err != nil {
			fmt.Println(err)
			return
		}
		if p := b[:n]; proto.NextHeader(p) == 17 {
			fmt.Printf("%v -> %v: %q\n", proto.Src(p), proto.Dst(p), proto.Payload(p)[8:])
			return
		}
	}
	// Output: 2001:db8::1 -> 2001:0:4136:e378:8000:63bf:3fff:fdd2: "hello"
}
