package proto

import (
	"net/netip"
	"testing"
)

func BenchmarkPacketParse(b *testing.B) {
	src := netip.MustParseAddr("2001:0:4136:e378:8000:63bf:3fff:fdd2")
	dst := netip.MustParseAddr("2001:db8::80")
	pkt := append(AppendOrigin(nil, vecClient), AppendEcho(nil, src, dst, 64, ICMPEchoRequest, 1, 1, make([]byte, 1200))...)
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	var p Packet
	for i := 0; i < b.N; i++ {
		if err := p.Parse(pkt); err != nil {
			b.Fatal(err)
		}
		_ = MappedBytes(p.IPv6[8:24])
	}
}

func BenchmarkParseAddress(b *testing.B) {
	ip := netip.MustParseAddr("2001:0:4136:e378:8000:63bf:3fff:fdd2")
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, ok := ParseAddress(ip); !ok {
			b.Fatal()
		}
	}
}

func BenchmarkParseRA(b *testing.B) {
	ra := AppendRA(nil, &RAParams{Nonce: vecNonce, Server: vecServer, Client: vecClient, Dst: RSSourceRestricted, MTU: 1280})
	b.ReportAllocs()
	var p Packet
	for i := 0; i < b.N; i++ {
		if err := p.Parse(ra); err != nil {
			b.Fatal(err)
		}
		if _, err := ParseRA(&p); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseTrailers(b *testing.B) {
	tr := []byte{1, 4, 1, 2, 3, 4, 3, 8, 0, 0, 1, 2, 3, 4, 0, 1}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := ParseTrailers(tr); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendBubble(b *testing.B) {
	src := netip.MustParseAddr("fe80::1")
	dst := netip.MustParseAddr("2001:0:4136:e378:8000:63bf:3fff:fdd2")
	buf := make([]byte, 0, 64)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		buf = AppendBubble(buf[:0], src, dst, 0)
	}
}
