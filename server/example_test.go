package server_test

import (
	"encoding/json"
	"fmt"
	"net/netip"

	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/server"
)

// printSender prints what the processor sends instead of sending it.
type printSender struct{}

func (printSender) SendFrom(sock server.Socket, b []byte, dst netip.AddrPort) error {
	var pkt proto.Packet
	if err := pkt.Parse(b); err != nil {
		return err
	}
	if ra, err := proto.ParseRA(&pkt); err == nil {
		fmt.Printf("RA from the %v socket to %v: prefix of %v, mapped %v, MTU %d\n", sock, dst, ra.Server, ra.Mapped, ra.MTU)
		return nil
	}
	fmt.Printf("%d bytes from the %v socket to %v, origin %v\n", len(b), sock, dst, pkt.Origin)
	return nil
}

// The processing core can be driven without sockets: here it answers a
// client's router solicitation and relays the client's indirect bubble to
// a peer.
func ExampleProcessor() {
	p, err := server.NewProcessor(server.Config{Primary: netip.MustParseAddr("198.18.0.1")})
	if err != nil {
		panic(err)
	}
	client := netip.MustParseAddrPort("203.0.113.5:40000")
	rs := proto.AppendRS(nil, [8]byte{1, 2, 3, 4, 5, 6, 7, 8}, false)
	r := p.Process(server.Primary, rs, client, printSender{})
	fmt.Println(r.Action)

	me := proto.Address{Server: netip.MustParseAddr("198.18.0.1"), Mapped: client}.Addr()
	peer := proto.Address{Server: netip.MustParseAddr("198.18.0.1"), Mapped: netip.MustParseAddrPort("198.51.100.7:50000")}.Addr()
	r = p.Process(server.Primary, proto.AppendBubble(nil, me, peer, 0), client, printSender{})
	fmt.Println(r.Action)

	r = p.Process(server.Primary, []byte("not teredo"), client, printSender{})
	fmt.Println(r.Action, r.Reason, p.Stats().Drops[server.DropMalformed])
	// Output:
	// RA from the primary socket to 203.0.113.5:40000: prefix of 198.18.0.1, mapped 203.0.113.5:40000, MTU 1280
	// answered-rs
	// 48 bytes from the primary socket to 198.51.100.7:50000, origin 203.0.113.5:40000
	// forwarded-teredo
	// dropped malformed 1
}

// A Go client that keeps Stats as JSON decodes them back; drop reasons it
// does not know, from a newer server, are ignored.
func ExampleDropCounts_UnmarshalJSON() {
	page := `{"received": 12, "dropped": 3,
	  "drops": {"malformed": 2, "rate_limited": 1, "reason_from_the_future": 5}}`
	var st server.Stats
	if err := json.Unmarshal([]byte(page), &st); err != nil {
		panic(err)
	}
	fmt.Println(st.Received, st.Dropped, st.Drops[server.DropMalformed], st.Drops[server.DropRateLimited])
	// Output: 12 3 2 1
}
