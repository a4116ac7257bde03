package portmap_test

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/teredo-go/teredo/portmap"
	"github.com/teredo-go/teredo/portmap/portmaptest"
)

// A host maps its UDP port 3544 and pins the packets it sends to its
// Teredo server to the mapped port (PCP PEER). Here the gateway is an
// in-process PCP responder on loopback.
func Example() {
	gw, err := portmaptest.NewServer("127.0.0.1:0", netip.MustParseAddr("198.18.0.12"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer gw.Close()
	m, err := portmap.New(portmap.Config{
		InternalPort: 3544,
		Peers:        []netip.AddrPort{netip.MustParseAddrPort("198.18.0.2:3544")},
		Gateway:      func() (netip.Addr, error) { return netip.MustParseAddr("127.0.0.1"), nil },
		PCPPort:      gw.Addr().Port(),
		Lifetime:     10 * time.Minute,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer m.Close()
	mp, err := m.Start(context.Background())
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(mp.Protocol, mp.External, mp.Lifetime, mp.Peers)
	// Output: pcp 198.18.0.12:3544 10m0s [198.18.0.2:3544]
}
