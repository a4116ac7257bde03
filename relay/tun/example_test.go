package tun_test

import (
	"fmt"
	"log"
	"net/netip"

	"github.com/teredo-go/teredo/relay/tun"
)

// A relay writes the IPv6 packets it decapsulated from one read together:
// the device merges consecutive TCP segments of a flow into one write that
// the kernel splits again.
func ExampleDevice_WritePackets() {
	d, err := tun.Open(tun.Config{Routes: []netip.Prefix{netip.MustParsePrefix("2001::/32")}})
	if err != nil {
		log.Fatal(err) // needs CAP_NET_ADMIN, or a device made for this user
	}
	defer d.Close()
	var batch [][]byte // IPv6 packets, e.g. a client's TCP upload
	if n, err := d.WritePackets(batch); err != nil {
		log.Printf("%d of %d packets written: %v", n, len(batch), err)
	}
	st := d.Stats()
	fmt.Printf("offload %v: %d packets in %d writes\n", st.Offload, st.Packets, st.Writes)
}

// A relay reads the packets the kernel routed into the device in batches.
// With read offload, one read of a TCP super-packet fills several buffers
// with its segments, each a complete packet of at most the MTU.
func ExampleDevice_ReadPackets() {
	d, err := tun.Open(tun.Config{Routes: []netip.Prefix{netip.MustParsePrefix("2001::/32")}})
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close()
	bufs, sizes := make([][]byte, 32), make([]int, 32)
	for i := range bufs {
		bufs[i] = make([]byte, 8192)
	}
	n, err := d.ReadPackets(bufs, sizes)
	if err != nil {
		log.Fatal(err)
	}
	for i := range n {
		pkt := bufs[i][:sizes[i]] // an IPv6 packet with valid checksums
		_ = pkt
	}
	st := d.Stats()
	fmt.Printf("read offload %v: %d super-packets split into %d segments\n", st.ReadOffload, st.ReadSuper, st.ReadSegments)
}
