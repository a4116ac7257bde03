package udpiotest_test

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/teredo-go/teredo/udpio"
	"github.com/teredo-go/teredo/udpio/udpiotest"
)

// A hook models two routers between the endpoints: a datagram sent with
// WriteToTTL and a TTL of 2 dies on the way, the default TTL gets through.
func ExampleNetwork_SetHook_ttl() {
	nw := udpiotest.NewNetwork()
	a, _ := nw.Listen(netip.MustParseAddrPort("192.0.2.1:3544"))
	b, _ := nw.Listen(netip.MustParseAddrPort("198.51.100.2:4000"))
	defer a.Close()
	defer b.Close()
	nw.SetHook(func(p *udpiotest.Packet) bool { return p.TTL > 2 })

	a.(udpio.TTLWriter).WriteToTTL([]byte("short"), b.LocalAddr(), 2)
	a.WriteTo([]byte("default"), b.LocalAddr())

	msgs := []udpio.Message{{Buffers: [][]byte{make([]byte, 64)}}, {Buffers: [][]byte{make([]byte, 64)}}}
	b.SetReadDeadline(time.Now().Add(time.Second))
	n, _ := b.ReadBatch(msgs)
	for _, m := range msgs[:n] {
		fmt.Printf("%s\n", m.Buffers[0][:m.N])
	}
	fmt.Println("dropped:", nw.Stats().DroppedByHook)
	// Output:
	// default
	// dropped: 1
}
