package proto_test

import (
	"fmt"
	"net/netip"

	"github.com/teredo-go/teredo/proto"
)

func ExampleParseAddress() {
	a, ok := proto.ParseAddress(netip.MustParseAddr("2001:0:4136:e378:8000:63bf:3fff:fdd2"))
	fmt.Println(ok, a.Server, a.Mapped, a.Cone())
	// Output: true 65.54.227.120 192.0.2.45:40000 true
}

func ExamplePacket_Parse() {
	server := netip.MustParseAddr("65.54.227.120")
	client := netip.MustParseAddrPort("192.0.2.45:40000")
	payload := proto.AppendRA(nil, &proto.RAParams{Server: server, Client: client, Dst: proto.RSSourceRestricted, MTU: 1280})

	var p proto.Packet
	if err := p.Parse(payload); err != nil {
		fmt.Println(err)
		return
	}
	ra, err := proto.ParseRA(&p)
	if err != nil {
		fmt.Println(err)
		return
	}
	addr := proto.Address{Server: ra.Server, Flags: 0x28cd, Mapped: ra.Mapped}
	fmt.Println(proto.ServerPrefix(ra.Server), addr)
	// Output: 2001:0:4136:e378::/64 2001:0:4136:e378:28cd:63bf:3fff:fdd2
}
