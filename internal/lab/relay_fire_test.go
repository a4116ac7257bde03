package lab

import (
	"encoding/binary"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/teredo-go/teredo/proto"
)

// relayFireDuration is how long the relay is under fire while a client downloads
// through it.
const relayFireDuration = 6 * time.Second

// relayShot is one datagram fired at the relay.
type relayShot struct {
	kind    string
	payload []byte
	// forged: sent from the raw socket of a host on the internet with this IPv4 source
	// instead of from the attacker's NATed UDP socket.
	forged netip.AddrPort
}

// appendUDP6 appends an IPv6 packet carrying a UDP datagram with a valid checksum.
func appendUDP6(b []byte, src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	udp := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:], sport)
	binary.BigEndian.PutUint16(udp[2:], dport)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	udp = append(udp, payload...)
	binary.BigEndian.PutUint16(udp[6:], proto.Checksum(src, dst, 17, udp))
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(udp)))
	h[6], h[7] = 17, 64
	s, d := src.As16(), dst.As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	return append(append(b, h...), udp...)
}

// relayShots builds a bounded, seeded set of datagrams that the relay must drop: from
// the attacker's own mapping self, and forged from other lab addresses. target is the
// UDP service on the IPv6-only host that none of them may reach.
func relayShots(rng *rand.Rand, srv netip.Addr, self netip.AddrPort, victim netip.Addr, target netip.AddrPort) []relayShot {
	var out []relayShot
	add := func(kind string, p []byte) { out = append(out, relayShot{kind: kind, payload: p}) }
	selfTeredo := proto.Address{Server: srv, Mapped: self}.Addr()
	data := func(src, dst netip.Addr) []byte {
		return appendUDP6(nil, src, dst, 5555, target.Port(), []byte("must not arrive"))
	}
	// Garbage, some starting like an IPv6 header or an indication.
	for range 600 {
		p := make([]byte, 1+rng.IntN(300))
		for i := range p {
			p[i] = byte(rng.Uint32())
		}
		switch rng.IntN(3) {
		case 0:
			p[0] = 0x60
		case 1:
			p = append([]byte{0, 1, byte(rng.Uint32()), byte(rng.Uint32())}, p...)
		}
		add("garbage", p)
	}
	// Truncated: every proper prefix of a valid packet from our own address.
	valid := data(selfTeredo, target.Addr())
	for n := range len(valid) {
		add("truncated", valid[:n])
	}
	// Spoofed Teredo sources: the victim's address and random other mappings, data and
	// bubbles, all from our own UDP mapping.
	for i := range 300 {
		src := victim
		if i%2 == 1 {
			src = proto.Address{Server: srv, Mapped: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(100 + i%50)}), uint16(1024+rng.IntN(60000)))}.Addr()
		}
		if i%3 == 0 {
			add("spoofed-bubble", proto.AppendBubble(nil, src, target.Addr(), 0))
		} else {
			add("spoofed-src", data(src, target.Addr()))
		}
	}
	// Our own address, but towards destinations a relay must not serve, or dressed as
	// server traffic.
	for i := range 150 {
		switch i % 5 {
		case 0:
			add("not-teredo-src", data(target.Addr(), target.Addr()))
		case 1:
			add("dst-teredo", data(selfTeredo, victim))
		case 2:
			add("dst-link-local", data(selfTeredo, netip.MustParseAddr("fe80::1")))
		case 3:
			add("dst-multicast", data(selfTeredo, netip.MustParseAddr("ff02::1")))
		case 4:
			add("indication", append(proto.AppendOrigin(nil, self), data(selfTeredo, target.Addr())...))
		}
	}
	// Oversized garbage.
	for i := range 9 {
		p := make([]byte, []int{1473, 9000, 65507}[i%3])
		for j := range p {
			p[j] = byte(rng.Uint32())
		}
		p[0] = 0x60
		add("oversized", p)
	}
	// Forged IPv4 sources: the server's address with an origin indication (as if it
	// relayed a bubble), other lab addresses claiming a Teredo address of another
	// mapping, or of a non-global server.
	for i := range 150 {
		from := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(60 + i%30)}), uint16(2000+i))
		var s relayShot
		switch i % 3 {
		case 0:
			from = netip.AddrPortFrom(srv, proto.Port)
			s = relayShot{kind: "forged-server", payload: append(proto.AppendOrigin(nil, self), proto.AppendBubble(nil, victim, target.Addr(), 0)...)}
		case 1:
			other := proto.Address{Server: srv, Mapped: netip.AddrPortFrom(from.Addr(), from.Port()+1)}.Addr()
			s = relayShot{kind: "forged-mismatch", payload: data(other, target.Addr())}
		case 2:
			private := proto.Address{Server: netip.MustParseAddr("10.0.0.1"), Mapped: from}.Addr()
			s = relayShot{kind: "forged-private-server", payload: data(private, target.Addr())}
		}
		s.forged = from
		out = append(out, s)
	}
	rng.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

// rawSender sends IPv4/UDP datagrams with any source address from a host's raw socket.
type rawSender struct{ c net.PacketConn }

func newRawSender(t *testing.T, h *Host) *rawSender {
	t.Helper()
	// Protocol 255 (IPPROTO_RAW) implies IP_HDRINCL: we write the whole IPv4 header.
	c, err := h.ListenPacket("ip4:255", "0.0.0.0")
	if err != nil {
		t.Fatalf("raw socket on %s: %v", h.Name, err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawSender{c: c}
}

func (r *rawSender) send(from, to netip.AddrPort, payload []byte) error {
	p := make([]byte, 28, 28+len(payload))
	p[0], p[8], p[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(p[2:], uint16(28+len(payload))) // the kernel fills the checksum
	s, d := from.Addr().As4(), to.Addr().As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[20:], from.Port())
	binary.BigEndian.PutUint16(p[22:], to.Port())
	binary.BigEndian.PutUint16(p[24:], uint16(8+len(payload))) // UDP checksum 0: none
	p = append(p, payload...)
	_, err := r.c.WriteTo(p, &net.IPAddr{IP: to.Addr().AsSlice()})
	return err
}

// TestOurRelayUnderFire fires garbage, truncated, spoofed, misdirected and forged
// datagrams at the project's relay while our client downloads from the IPv6-only host
// through it: every download arrives intact, the relay counts the attack as drops by
// the expected reasons, and none of it reaches the IPv6-only host, whereas one valid
// packet from the attacker does.
func TestOurRelayUnderFire(t *testing.T) {
	requireFile(t, ourServerDir)
	requireOurRelay(t)
	l := New(t, Options{Clients: []ClientSpec{{"a1", HomeRouter}, {"x", OpenMasquerade}}})
	atk, err := l.AddInternetHost("atk", []netip.Addr{netip.MustParseAddr("198.18.0.50")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := serverImpls[1].start(t, l)
	r := startOurRelay(t, l.Relay)
	f := l.V6Host.ServeFile(t, netip.AddrPortFrom(V6HostAddr, 8080), 4<<20)
	target := netip.AddrPortFrom(V6HostAddr, 9999)
	sink, err := l.V6Host.ListenUDP("udp6", net.UDPAddrFromAddrPort(target))
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	var sinkMu sync.Mutex
	var sunk []string
	sinkDone := make(chan struct{})
	go func() {
		defer close(sinkDone)
		buf := make([]byte, 2048)
		for {
			n, from, err := sink.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			sinkMu.Lock()
			sunk = append(sunk, from.String()+": "+string(buf[:n]))
			sinkMu.Unlock()
		}
	}()
	defer func() { sink.Close(); <-sinkDone }()

	p := startProbe(t, l.Clients["a1"], srv, probeOptions{})
	checkDownload(t, p, f) // finds the relay before the fire starts

	x := l.Clients["x"]
	self := netip.AddrPortFrom(x.NAT.WAN, 40000) // the open masquerade keeps the port
	conn, err := x.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(x.IPv4[0], self.Port())))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	raw := newRawSender(t, atk)
	shots := relayShots(rand.New(rand.NewPCG(3, 4)), srv.Primary, self, p.Addr, target)
	before := r.status(t)

	// Download in a loop while the relay is under fire.
	stop := make(chan struct{})
	var downloads int
	var dlErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			got, _, err := p.get(30*time.Second, f.URL)
			if err == nil {
				err = f.Verify(got)
			}
			if err != nil {
				dlErr = err
				return
			}
			downloads++
		}
	})
	start := time.Now()
	gap := relayFireDuration / time.Duration(len(shots))
	counts := map[string]int{}
	for i, s := range shots {
		var err error
		if s.forged.IsValid() {
			err = raw.send(s.forged, r.Addr, s.payload)
		} else {
			_, err = conn.WriteToUDPAddrPort(s.payload, r.Addr)
		}
		if err != nil {
			t.Fatalf("send %s #%d (%d bytes): %v", s.kind, i, len(s.payload), err)
		}
		counts[s.kind]++
		if wait := time.Until(start.Add(time.Duration(i+1) * gap)); wait > 0 {
			time.Sleep(wait)
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("fired %d datagrams in %v: %v", len(shots), time.Since(start).Round(time.Millisecond), counts)
	if dlErr != nil {
		t.Fatalf("download under fire: %v\nrelay: %v", dlErr, r.status(t))
	}
	if downloads < 2 {
		t.Fatalf("only %d downloads completed under fire", downloads)
	}
	t.Logf("%d downloads of %d bytes verified under fire", downloads, f.Want.Size)
	if !r.Proc.Running() {
		t.Fatalf("relay died under fire:\n%s", tail(r.Proc.Output()))
	}

	// Every shot is a drop, by the reason its kind aims at.
	time.Sleep(200 * time.Millisecond) // let the relay read the last datagrams
	after := r.status(t)
	t.Logf("relay after the fire: %v", after)
	delta := func(name string) uint64 { return after.Counters[name] - before.Counters[name] }
	dropDelta := func(reason string) uint64 { return after.Drops[reason] - before.Drops[reason] }
	var drops uint64
	for reason := range after.Drops {
		if strings.HasPrefix(reason, "rx_") {
			drops += dropDelta(reason)
		}
	}
	// Oversized datagrams beyond the relay's buffer may be truncated or refused by the
	// kernel before the relay sees them, so allow a small margin.
	if min := uint64(len(shots)) * 95 / 100; drops < min {
		t.Errorf("relay counted %d drops for %d datagrams (want at least %d)", drops, len(shots), min)
	}
	for _, reason := range []string{"malformed", "src_not_teredo", "mapping_mismatch", "dst_teredo", "dst_scope", "indication", "filtered"} {
		if dropDelta("rx_"+reason) == 0 {
			t.Errorf("no rx_%s drop counted: the attack did not reach that check", reason)
		}
	}
	if n := delta("peer_new"); n != 0 {
		t.Errorf("the attack created %d relay peers", n)
	}
	sinkMu.Lock()
	if len(sunk) > 0 {
		t.Errorf("%d attack datagrams reached the IPv6-only host, e.g. %q", len(sunk), sunk[0])
	}
	sinkMu.Unlock()

	// Control: once the per-source limit has refilled, a valid packet from the
	// attacker's true Teredo address is forwarded, so the sink could see a leak.
	time.Sleep(2500 * time.Millisecond)
	selfTeredo := proto.Address{Server: srv.Primary, Mapped: self}.Addr()
	if _, err := conn.WriteToUDPAddrPort(appendUDP6(nil, selfTeredo, target.Addr(), 5555, target.Port(), []byte("control")), r.Addr); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		sinkMu.Lock()
		got := len(sunk)
		sinkMu.Unlock()
		if got > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("control: a valid packet from %v never reached the IPv6-only host\nrelay: %v", selfTeredo, r.status(t))
		}
		time.Sleep(50 * time.Millisecond)
	}
	// And the relay still serves our client.
	checkDownload(t, p, f)
}
