package client_test

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/teredo-go/teredo/client"
	"github.com/teredo-go/teredo/clock"
	"github.com/teredo-go/teredo/proto"
)

// udp stands for the client's UDP socket; here it keeps the last datagram.
type udp struct {
	last []byte
	to   netip.AddrPort
}

func (u *udp) WriteTo(b []byte, to netip.AddrPort) error {
	u.last, u.to = append([]byte(nil), b...), to
	return nil
}

func Example() {
	server := netip.MustParseAddr("198.18.0.1")
	sock := &udp{}
	c, err := client.New(client.Config{
		Transport: sock,
		Deliver:   func([]byte) {},
		Clock:     clock.NewFake(time.Unix(0, 0)),
		Servers:   []netip.Addr{server},
		OnEvent: func(e client.Event) {
			if q, ok := e.(client.Qualified); ok {
				fmt.Println("qualified, mapped", q.Mapped, "MTU", q.MTU)
			}
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	c.Start()
	fmt.Println("router solicitation to", sock.to)

	// The server answers; in real life this comes from the UDP socket.
	var rs proto.Packet
	rs.Parse(sock.last)
	ra := proto.AppendRA(nil, &proto.RAParams{
		Nonce:  rs.Auth.Nonce,
		Server: server,
		Client: netip.MustParseAddrPort("198.51.100.7:40000"),
		Dst:    proto.Src(rs.IPv6),
	})
	c.Receive(ra, sock.to)

	addr, _ := c.Addr()
	fmt.Println(proto.ServerPrefix(server).Contains(addr), c.Status().State)
	// Output:
	// router solicitation to 198.18.0.1:3544
	// qualified, mapped 198.51.100.7:40000 MTU 1280
	// true qualified
}
