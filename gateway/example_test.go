package gateway_test

import (
	"fmt"
	"net/netip"

	"github.com/teredo-go/teredo/teredotest"
)

// A gateway's client appears on the operator's prefix with its Teredo
// interface identifier.
func ExampleGateway_PublicAddr() {
	in, err := teredotest.Start(teredotest.WithGateway(netip.MustParsePrefix("2001:db8:2::/64")))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer in.Close()
	g := in.Gateway()
	teredo := g.TeredoPrefix().Addr().As16()
	copy(teredo[8:], []byte{0x80, 0, 0x63, 0xbf, 0x39, 0xed, 0xfe, 0xf5})
	pub, _ := g.PublicAddr(netip.AddrFrom16(teredo))
	fmt.Println(g.PublicPrefix(), pub)
	// Output: 2001:db8:2::/64 2001:db8:2:0:8000:63bf:39ed:fef5
}
