package proto

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"strings"
	"testing"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var (
	vecServer = netip.MustParseAddr("65.54.227.120")
	vecClient = netip.MustParseAddrPort("192.0.2.45:40000")
	vecNonce  = [8]byte{0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef}
)

// Test vectors computed independently of this code: the address example
// (server 65.54.227.120, cone, client 192.0.2.45:40000) is the one Python's
// ipaddress.IPv6Address(...).teredo decodes, the RFC 5991 form masks random
// flags 0xabcd with 0x3cff, and the RS checksums 0x7d37 (restricted) and
// 0x125d (cone) are the values Miredo hard-codes.
func TestAddressVectors(t *testing.T) {
	tests := []struct {
		name string
		addr Address
		want string
	}{
		{"cone", Address{Server: vecServer, Flags: FlagCone, Mapped: vecClient}, "2001:0:4136:e378:8000:63bf:3fff:fdd2"},
		{"rfc5991", Address{Server: vecServer, Flags: 0xabcd & RandomFlagsMask, Mapped: vecClient}, "2001:0:4136:e378:28cd:63bf:3fff:fdd2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.addr.Addr()
			if got != netip.MustParseAddr(tt.want) {
				t.Fatalf("Addr() = %v, want %v", got, tt.want)
			}
			back, ok := ParseAddress(got)
			if !ok || back != tt.addr {
				t.Fatalf("ParseAddress = %+v, %v; want %+v", back, ok, tt.addr)
			}
		})
	}
	if 0xabcd&RandomFlagsMask != 0x28cd {
		t.Fatal("random mask")
	}
	if _, ok := ParseAddress(netip.MustParseAddr("2001:db8::1")); ok {
		t.Fatal("2001:db8::1 parsed as Teredo")
	}
	if _, ok := ParseAddress(netip.MustParseAddr("192.0.2.1")); ok {
		t.Fatal("IPv4 parsed as Teredo")
	}
}

func TestOriginVector(t *testing.T) {
	got := AppendOrigin(nil, netip.MustParseAddrPort("1.2.3.4:337"))
	if want := unhex(t, "0000FEAEFEFDFCFB"); !bytes.Equal(got, want) {
		t.Fatalf("origin = %x, want %x", got, want)
	}
}

func TestLinkLocalVectors(t *testing.T) {
	tests := []struct {
		got  netip.Addr
		want string
	}{
		{RSSourceRestricted, "fe80::ffff:ffff:ffff"},
		{RSSourceCone, "fe80::8000:5445:5245:444f"},
		{ServerLinkLocal(vecServer), "fe80::8000:f227:bec9:1c87"},
		{AllRouters, "ff02::2"},
		{AllNodes, "ff02::1"},
		{LinkLocalFromID([8]byte{0xff, 1, 2, 3, 4, 5, 6, 7}), "fe80::fc01:203:405:607"},
	}
	for _, tt := range tests {
		if tt.got != netip.MustParseAddr(tt.want) {
			t.Errorf("got %v, want %v", tt.got, tt.want)
		}
	}
}

func TestRSChecksums(t *testing.T) {
	body := []byte{133, 0, 0, 0, 0, 0, 0, 0}
	tests := []struct {
		src  string
		want uint16
	}{
		{"fe80::ffff:ffff:ffff", 0x7d37},
		{"fe80::8000:5445:5245:444f", 0x125d},
		{"fe80::5445:5245:444f", 0x925d},
		{"fe80::ffff:ffff:fffe", 0x7d38},
	}
	for _, tt := range tests {
		if got := Checksum(netip.MustParseAddr(tt.src), AllRouters, ProtoICMPv6, body); got != tt.want {
			t.Errorf("checksum from %s = %#04x, want %#04x", tt.src, got, tt.want)
		}
	}
}

func TestRSVector(t *testing.T) {
	want := unhex(t, "000100000123456789abcdef00 6000000000083aff fe800000000000000000ffffffffffff ff020000000000000000000000000002 85007d3700000000")
	got := AppendRS(nil, vecNonce, false)
	if !bytes.Equal(got, want) {
		t.Fatalf("RS\n got %x\nwant %x", got, want)
	}
	var p Packet
	if err := p.Parse(got); err != nil {
		t.Fatal(err)
	}
	if !p.HasAuth || p.Auth.Nonce != vecNonce || p.HasOrigin {
		t.Fatalf("parsed %+v", p)
	}
	if rs, cone := IsRS(p.IPv6); !rs || cone {
		t.Fatalf("IsRS = %v, %v", rs, cone)
	}
	if rs, cone := IsRS(AppendRS(nil, vecNonce, true)[13:]); !rs || !cone {
		t.Fatalf("cone IsRS = %v, %v", rs, cone)
	}
}

func TestRAVector(t *testing.T) {
	want := unhex(t, "000100000123456789abcdef00 000063bf3ffffdd2 "+
		"6000000000383afffe800000000000008000f227bec91c87fe800000000000000000ffffffffffff "+
		"8600954c0000000000000000000007d0 "+
		"03044040ffffffffffffffff00000000200100004136e3780000000000000000 0501000000000500")
	got := AppendRA(nil, &RAParams{Nonce: vecNonce, Server: vecServer, Client: vecClient, Dst: RSSourceRestricted, MTU: 1280})
	if !bytes.Equal(got, want) {
		t.Fatalf("RA\n got %x\nwant %x", got, want)
	}
	if len(got) != 117 {
		t.Fatalf("len %d", len(got))
	}
	var p Packet
	if err := p.Parse(got); err != nil {
		t.Fatal(err)
	}
	ra, err := ParseRA(&p)
	if err != nil {
		t.Fatal(err)
	}
	if ra.Nonce != vecNonce || ra.Mapped != vecClient || ra.Server != vecServer || ra.MTU != 1280 || ra.Dst != RSSourceRestricted {
		t.Fatalf("ParseRA = %+v", ra)
	}
}

func TestBubbleVector(t *testing.T) {
	src := netip.MustParseAddr("2001:0:4136:e378:8000:63bf:3fff:fdd2")
	dst := netip.MustParseAddr("2001:0:4136:e378:28cd:63bf:3fff:fdd2")
	got := AppendBubble(nil, src, dst, 0)
	want := append(unhex(t, "6000000000003b00"), append(src.AsSlice(), dst.AsSlice()...)...)
	if !bytes.Equal(got, want) {
		t.Fatalf("bubble %x", got)
	}
	if !IsBubble(got) {
		t.Fatal("IsBubble false")
	}
	disc := AppendBubble(nil, src, AllNodes, 1)
	if !bytes.Equal(disc[:8], unhex(t, "6000000000003b01")) || Dst(disc) != AllNodes {
		t.Fatalf("discovery bubble %x", disc)
	}
}

func TestParseRARejects(t *testing.T) {
	good := AppendRA(nil, &RAParams{Nonce: vecNonce, Server: vecServer, Client: vecClient, Dst: RSSourceRestricted, MTU: 1280})
	mutate := func(f func(b []byte) []byte) []byte {
		b := append([]byte(nil), good...)
		return f(b)
	}
	// Offsets: 13 auth + 8 origin = 21; IPv6 at 21, ICMPv6 at 61, options at 77.
	fixsum := func(b []byte) []byte {
		ip := b[21:]
		binary.BigEndian.PutUint16(ip[42:], 0)
		binary.BigEndian.PutUint16(ip[42:], Checksum(Src(ip), Dst(ip), ProtoICMPv6, ip[40:]))
		return b
	}
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"no origin", mutate(func(b []byte) []byte { return append(b[:13], b[21:]...) }), ErrRANoOrigin},
		{"no auth", mutate(func(b []byte) []byte { return b[13:] }), ErrRANoAuth},
		{"bad checksum", mutate(func(b []byte) []byte { b[63] ^= 1; return b }), ErrBadChecksum},
		{"wrong prefix", mutate(func(b []byte) []byte { b[77+16] = 0x30; return fixsum(b) }), ErrRAPrefix},
		{"prefix length 48", mutate(func(b []byte) []byte { b[77+2] = 48; return fixsum(b) }), ErrRAPrefix},
		{"two prefixes", mutate(func(b []byte) []byte {
			pio := append([]byte(nil), b[77:109]...)
			b = append(b, pio...)
			binary.BigEndian.PutUint16(b[21+4:], uint16(len(b)-21-40))
			return fixsum(b)
		}), ErrRAPrefix},
		{"zero-length option", mutate(func(b []byte) []byte { b[109+1] = 0; return fixsum(b) }), ErrRAOption},
		{"not RA", AppendRS(nil, vecNonce, false), ErrNotRA},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p Packet
			if err := p.Parse(tt.b); err != nil {
				t.Fatal(err)
			}
			if _, err := ParseRA(&p); err != tt.want && !isErr(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
	// MTU out of range is ignored, not fatal.
	b := mutate(func(b []byte) []byte { binary.BigEndian.PutUint32(b[109+4:], 1000); return fixsum(b) })
	var p Packet
	_ = p.Parse(b)
	ra, err := ParseRA(&p)
	if err != nil || ra.MTU != 0 {
		t.Fatalf("MTU 1000: %+v %v", ra, err)
	}
	// The obsolete prefix is accepted.
	b = mutate(func(b []byte) []byte { copy(b[77+16:], obsoletePrefix[:]); return fixsum(b) })
	_ = p.Parse(b)
	if ra, err := ParseRA(&p); err != nil || ra.Server != vecServer {
		t.Fatalf("obsolete prefix: %+v %v", ra, err)
	}
}
