package nptv6

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/teredo-go/teredo/proto"
)

var (
	teredoNet = netip.MustParsePrefix("2001:0:c612:1::/64") // server 198.18.0.1
	publicNet = netip.MustParsePrefix("2001:db8:2::/64")
	// A client of server 198.18.0.1 mapped at 198.18.1.10:40000.
	client   = netip.MustParseAddr("2001:0:c612:1:8000:63bf:39ed:fef5")
	clientPb = netip.MustParseAddr("2001:db8:2:0:8000:63bf:39ed:fef5")
	host     = netip.MustParseAddr("2001:db8:1::10")
)

func newT(t testing.TB) *Translator {
	t.Helper()
	tr, err := New(teredoNet, publicNet)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ipv6 builds a packet with the transport payload l4, whose checksum at
// csum (relative to l4; -1: none) is filled in.
func ipv6(src, dst netip.Addr, next uint8, l4 []byte, csum int) []byte {
	b := make([]byte, 40, 40+len(l4))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(len(l4)))
	b[6], b[7] = next, 64
	s, d := src.As16(), dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	b = append(b, l4...)
	if csum >= 0 {
		p := b[40:]
		p[csum], p[csum+1] = 0, 0
		binary.BigEndian.PutUint16(p[csum:], proto.Checksum(src, dst, next, p))
	}
	return b
}

func tcpSYN() []byte {
	l4 := make([]byte, 20)
	binary.BigEndian.PutUint16(l4[0:], 40000)
	binary.BigEndian.PutUint16(l4[2:], 443)
	binary.BigEndian.PutUint32(l4[4:], 0x12345678)
	l4[12], l4[13] = 5<<4, 0x02
	binary.BigEndian.PutUint16(l4[14:], 65535)
	return l4
}

func udpDatagram(data string) []byte {
	l4 := make([]byte, 8, 8+len(data))
	binary.BigEndian.PutUint16(l4[0:], 5353)
	binary.BigEndian.PutUint16(l4[2:], 53)
	binary.BigEndian.PutUint16(l4[4:], uint16(8+len(data)))
	return append(l4, data...)
}

// checksumOK verifies the transport checksum of an unfragmented packet
// without extension headers, independently of the package.
func checksumOK(pkt []byte) bool {
	off := map[uint8]int{protoTCP: 16, protoUDP: 6, protoICMPv6: 2}[pkt[6]]
	if pkt[6] == protoUDP && binary.BigEndian.Uint16(pkt[40+off:]) == 0 {
		return false
	}
	return proto.Checksum(proto.Src(pkt), proto.Dst(pkt), pkt[6], pkt[40:]) == 0
}

func TestNewErrors(t *testing.T) {
	for _, p := range []string{"2001:db8::/48", "10.0.0.0/8", "2001:db8::/96", "::ffff:0:0/64"} {
		if _, err := New(teredoNet, netip.MustParsePrefix(p)); err == nil {
			t.Errorf("New(%s) succeeded", p)
		}
	}
	tr := newT(t)
	if tr.Inside() != teredoNet || tr.Outside() != publicNet {
		t.Fatalf("prefixes %v %v", tr.Inside(), tr.Outside())
	}
}

func TestAddresses(t *testing.T) {
	tr := newT(t)
	if a, ok := tr.ToOutside(client); !ok || a != clientPb {
		t.Fatalf("ToOutside = %v %v, want %v", a, ok, clientPb)
	}
	if a, ok := tr.ToInside(clientPb); !ok || a != client {
		t.Fatalf("ToInside = %v %v, want %v", a, ok, client)
	}
	if _, ok := tr.ToOutside(host); ok {
		t.Fatal("mapped an outside address")
	}
	if _, ok := tr.ToInside(netip.MustParseAddr("10.0.0.1")); ok {
		t.Fatal("mapped IPv4")
	}
}

// TestVector translates an ICMPv6 echo request as Linux ping sends it from
// a Teredo client (8 data bytes) and checks every byte of the result; the
// expected checksum was computed over the whole translated packet.
func TestVector(t *testing.T) {
	in := unhex(t, `
		60000000 0010 3a40
		20010000c6120001 800063bf39edfef5
		20010db800010000 0000000000000010
		8000 bd95 0007 0001 6162636465666768`)
	if !checksumOK(in) {
		t.Fatal("vector's checksum is wrong")
	}
	want := unhex(t, `
		60000000 0010 3a40
		20010db800020000 800063bf39edfef5
		20010db800010000 0000000000000010
		8000 75ef 0007 0001 6162636465666768`)
	out := bytes.Clone(in)
	if err := newT(t).Outbound(out); err != nil {
		t.Fatal(err)
	}
	if !checksumOK(out) {
		t.Errorf("checksum invalid after translation")
	}
	if !bytes.Equal(out, want) {
		t.Errorf("got  %x\nwant %x", out, want)
	}
}

func TestTranslate(t *testing.T) {
	tr := newT(t)
	echo := proto.AppendEcho(nil, client, host, 64, proto.ICMPEchoRequest, 7, 1, []byte("abcdefgh"))
	reply := proto.AppendEcho(nil, host, clientPb, 64, proto.ICMPEchoReply, 7, 1, []byte("abcdefgh"))
	for _, tt := range []struct {
		name    string
		pkt     []byte
		inbound bool
		want    netip.Addr // the translated address
	}{
		{"tcp out", ipv6(client, host, protoTCP, tcpSYN(), 16), false, clientPb},
		{"udp out", ipv6(client, host, protoUDP, udpDatagram("hello"), 6), false, clientPb},
		{"udp odd length out", ipv6(client, host, protoUDP, udpDatagram("hell"), 6), false, clientPb},
		{"echo out", echo, false, clientPb},
		{"tcp in", ipv6(host, clientPb, protoTCP, tcpSYN(), 16), true, client},
		{"udp in", ipv6(host, clientPb, protoUDP, udpDatagram("x"), 6), true, client},
		{"echo reply in", reply, true, client},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pkt := bytes.Clone(tt.pkt)
			fn, at := tr.Outbound, 8
			if tt.inbound {
				fn, at = tr.Inbound, 24
			}
			if err := fn(pkt); err != nil {
				t.Fatal(err)
			}
			if got := netip.AddrFrom16([16]byte(pkt[at:])); got != tt.want {
				t.Fatalf("address %v, want %v", got, tt.want)
			}
			if !checksumOK(pkt) {
				t.Fatal("checksum invalid after translation")
			}
			// Nothing else changed but the prefix and the checksum.
			off := map[uint8]int{protoTCP: 16, protoUDP: 6, protoICMPv6: 2}[pkt[6]]
			a, b := bytes.Clone(tt.pkt), bytes.Clone(pkt)
			for _, x := range [][]byte{a, b} {
				clear(x[at : at+8])
				clear(x[40+off : 40+off+2])
			}
			if !bytes.Equal(a, b) {
				t.Fatalf("other bytes changed:\n%x\n%x", tt.pkt, pkt)
			}
			// Corrupt the original: the translation must not repair it.
			bad := bytes.Clone(tt.pkt)
			bad[len(bad)-1] ^= 0x40
			if err := fn(bad); err != nil {
				t.Fatal(err)
			}
			if checksumOK(bad) {
				t.Fatal("a corrupted packet became valid")
			}
		})
	}
}

func TestUDPZeroChecksum(t *testing.T) {
	pkt := ipv6(client, host, protoUDP, udpDatagram("zero"), -1)
	if err := newT(t).Outbound(pkt); err != nil {
		t.Fatal(err)
	}
	if c := binary.BigEndian.Uint16(pkt[46:]); c != 0 {
		t.Fatalf("zero UDP checksum became %#04x", c)
	}
}

// TestICMPv6Error maps an error about a packet the client sent (inbound)
// and one about a packet it received (outbound), quoted whole and
// truncated.
func TestICMPv6Error(t *testing.T) {
	tr := newT(t)
	for _, tt := range []struct {
		name    string
		inbound bool
		trunc   int // bytes of the quoted transport header kept
	}{
		{"inbound whole", true, 20},
		{"inbound truncated", true, 8},
		{"outbound whole", false, 20},
		{"outbound short", false, 4},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var quoted, pkt []byte
			if tt.inbound {
				quoted = ipv6(clientPb, host, protoTCP, tcpSYN(), 16)
				pkt = proto.AppendICMPv6Error(nil, host, proto.ICMPDestUnreachable, 4, 0, quoted[:40+tt.trunc])
				// AppendICMPv6Error addresses the error to the quoted source.
				if proto.Dst(pkt) != clientPb {
					t.Fatalf("error to %v", proto.Dst(pkt))
				}
			} else {
				quoted = ipv6(host, client, protoTCP, tcpSYN(), 16)
				pkt = proto.AppendICMPv6Error(nil, client, proto.ICMPDestUnreachable, 4, 0, quoted[:40+tt.trunc])
			}
			if !checksumOK(pkt) {
				t.Fatal("built error has a bad checksum")
			}
			fn, qat, want := tr.Outbound, 24, clientPb
			if tt.inbound {
				fn, qat, want = tr.Inbound, 8, client
			}
			if err := fn(pkt); err != nil {
				t.Fatal(err)
			}
			if !checksumOK(pkt) {
				t.Fatal("error's checksum invalid after translation")
			}
			q := pkt[48:]
			if got := netip.AddrFrom16([16]byte(q[qat:])); got != want {
				t.Fatalf("quoted address %v, want %v", got, want)
			}
			if tt.trunc >= 18 && proto.Checksum(proto.Src(q), proto.Dst(q), protoTCP, q[40:]) != 0 {
				t.Fatal("quoted TCP checksum invalid after translation")
			}
		})
	}
}

func TestFragments(t *testing.T) {
	tr := newT(t)
	frag := func(offset uint16, rest []byte) []byte {
		h := make([]byte, 8)
		h[0] = protoUDP
		binary.BigEndian.PutUint16(h[2:], offset<<3|1)
		return ipv6(client, host, protoFragment, append(h, rest...), -1)
	}
	// The first fragment's checksum covers the whole datagram, so its
	// update is the same as for an unfragmented one.
	whole := ipv6(client, host, protoUDP, udpDatagram("0123456789abcdef"), 6)
	first := frag(0, whole[40:48+8])
	if err := tr.Outbound(first); err != nil {
		t.Fatal(err)
	}
	if err := tr.Outbound(whole); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first[48+6:48+8], whole[46:48]) {
		t.Fatalf("first fragment checksum %x, whole datagram %x", first[54:56], whole[46:48])
	}
	later := frag(2, []byte("89abcdef"))
	orig := bytes.Clone(later)
	if err := tr.Outbound(later); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(later[16:], orig[16:]) {
		t.Fatal("a later fragment's payload changed")
	}
}

func TestErrors(t *testing.T) {
	tr := newT(t)
	tcp := ipv6(client, host, protoTCP, tcpSYN(), 16)
	hbh := ipv6(client, host, protoHopByHop, []byte{protoTCP, 200}, -1)
	for _, tt := range []struct {
		name string
		pkt  []byte
		fn   func([]byte) error
		want error
	}{
		{"short", tcp[:39], tr.Outbound, ErrMalformed},
		{"IPv4", append([]byte{0x45}, tcp[1:]...), tr.Outbound, ErrMalformed},
		{"truncated TCP", tcp[:50], tr.Outbound, ErrMalformed},
		{"truncated extension header", hbh, tr.Outbound, ErrMalformed},
		{"source not inside", ipv6(host, client, protoTCP, tcpSYN(), 16), tr.Outbound, ErrNotMapped},
		{"destination not outside", tcp, tr.Inbound, ErrNotMapped},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pkt := bytes.Clone(tt.pkt)
			if err := tt.fn(pkt); !errors.Is(err, tt.want) {
				t.Fatalf("err %v, want %v", err, tt.want)
			}
			if !bytes.Equal(pkt, tt.pkt) {
				t.Fatal("a refused packet was changed")
			}
		})
	}
}

func TestNoAllocs(t *testing.T) {
	tr := newT(t)
	pkt := ipv6(client, host, protoTCP, append(tcpSYN(), make([]byte, 1200)...), 16)
	back := ipv6(host, clientPb, protoTCP, append(tcpSYN(), make([]byte, 1200)...), 16)
	if n := testing.AllocsPerRun(100, func() {
		copy(pkt[8:16], teredoNet.Addr().AsSlice())
		tr.Outbound(pkt)
		copy(back[24:32], publicNet.Addr().AsSlice())
		tr.Inbound(back)
	}); n != 0 {
		t.Fatalf("%v allocations per packet", n)
	}
}

func BenchmarkOutbound(b *testing.B) {
	tr := newT(b)
	pkt := ipv6(client, host, protoTCP, append(tcpSYN(), make([]byte, 1200)...), 16)
	inside := teredoNet.Addr().AsSlice()
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	for b.Loop() {
		copy(pkt[8:16], inside)
		if err := tr.Outbound(pkt); err != nil {
			b.Fatal(err)
		}
	}
}

func ExampleTranslator() {
	tr, _ := New(netip.MustParsePrefix("2001:0:c612:1::/64"), netip.MustParsePrefix("2001:db8:2::/64"))
	pkt := proto.AppendEcho(nil, netip.MustParseAddr("2001:0:c612:1:8000:63bf:39ed:fef5"),
		netip.MustParseAddr("2001:db8:1::10"), 64, proto.ICMPEchoRequest, 1, 1, nil)
	if err := tr.Outbound(pkt); err != nil {
		panic(err)
	}
	a, _ := tr.ToInside(proto.Src(pkt))
	fmt.Println(proto.Src(pkt), "is", a)
	// Output: 2001:db8:2:0:8000:63bf:39ed:fef5 is 2001:0:c612:1:8000:63bf:39ed:fef5
}
