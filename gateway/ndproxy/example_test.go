package ndproxy_test

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/teredo-go/teredo/gateway/ndproxy"
	"github.com/teredo-go/teredo/proto"
)

// A router asks for a client's public address; the proxy answers with
// its own link-layer address.
func ExampleAppendNA() {
	target := netip.MustParseAddr("2001:db8:2:0:8000:63bf:39ed:fef5")
	router := netip.MustParseAddr("2001:db8:1::1")
	body := make([]byte, 20)
	copy(body[4:], target.AsSlice())
	ns := proto.AppendICMPv6(nil, router, ndproxy.SolicitedNode(target), 255, 135, 0, body)

	req, err := ndproxy.ParseNS(ns)
	if err != nil {
		fmt.Println(err)
		return
	}
	na := ndproxy.AppendNA(nil, &req, net.HardwareAddr{2, 0, 0, 0, 0, 7})
	fmt.Println(proto.Src(na), "->", proto.Dst(na), proto.ValidICMPv6Checksum(na))
	// Output: 2001:db8:2:0:8000:63bf:39ed:fef5 -> 2001:db8:1::1 true
}
