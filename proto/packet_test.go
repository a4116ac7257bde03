package proto

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
)

func isErr(err, target error) bool { return errors.Is(err, target) }

func TestPacketParse(t *testing.T) {
	src := netip.MustParseAddr("2001:db8::1")
	dst := netip.MustParseAddr("2001:0:4136:e378:8000:63bf:3fff:fdd2")
	ip := AppendEcho(nil, src, dst, 64, ICMPEchoRequest, 1, 2, []byte("hello"))
	withOrigin := AppendOrigin(nil, vecClient)
	withAuth := AppendAuth(nil, &Auth{ClientID: []byte("id"), Value: []byte("val"), Nonce: vecNonce, Confirmation: 1})
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

	tests := []struct {
		name    string
		in      []byte
		wantErr error
		auth    bool
		origin  bool
		trailer int
	}{
		{"plain", ip, nil, false, false, 0},
		{"origin", cat(withOrigin, ip), nil, false, true, 0},
		{"auth+origin", cat(withAuth, withOrigin, ip), nil, true, true, 0},
		{"trailer", cat(ip, []byte{1, 4, 1, 2, 3, 4}), nil, false, false, 6},
		{"origin before auth", cat(withOrigin, withAuth, ip), ErrIndication, false, false, 0},
		{"two origins", cat(withOrigin, withOrigin, ip), ErrIndication, false, false, 0},
		{"unknown indication", cat([]byte{0, 2, 0, 0}, ip), ErrIndication, false, false, 0},
		{"truncated auth", []byte{0, 1, 5, 5, 0}, ErrTruncated, false, false, 0},
		{"truncated origin", []byte{0, 0, 1}, ErrTruncated, false, false, 0},
		{"short", ip[:39], ErrTruncated, false, false, 0},
		{"ipv4", append([]byte{0x45}, ip[1:]...), ErrNotIPv6, false, false, 0},
		{"payload too long", ip[:len(ip)-1], ErrBadLength, false, false, 0},
		{"empty", nil, ErrTruncated, false, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p Packet
			err := p.Parse(tt.in)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.HasAuth != tt.auth || p.HasOrigin != tt.origin || len(p.Trailer) != tt.trailer {
				t.Fatalf("parsed %+v", p)
			}
			if !bytes.Equal(p.IPv6, ip) {
				t.Fatalf("IPv6 = %x", p.IPv6)
			}
			if tt.origin && p.Origin != vecClient {
				t.Fatalf("origin %v", p.Origin)
			}
			if tt.auth && (string(p.Auth.ClientID) != "id" || string(p.Auth.Value) != "val" || p.Auth.Nonce != vecNonce || p.Auth.Confirmation != 1) {
				t.Fatalf("auth %+v", p.Auth)
			}
			if got := p.Append(nil); !bytes.Equal(got, tt.in) {
				t.Fatalf("Append = %x, want %x", got, tt.in)
			}
		})
	}
}

func TestTrailers(t *testing.T) {
	in := Trailers{
		HasNonce: true, Nonce: [4]byte{1, 2, 3, 4},
		NumAltAddresses:      2,
		AltAddresses:         [4]netip.AddrPort{netip.MustParseAddrPort("192.168.1.2:3544"), netip.MustParseAddrPort("198.18.0.9:1234")},
		HasNeighborDiscovery: true, DiscoveryType: 1,
		HasRandomPort: true, RandomPort: 4242,
	}
	b := in.Append(nil)
	want := unhex(t, "01 04 01020304 03 0e 0000 c0a80102 0dd8 c6120009 04d2 04 04 01 000000 05 02 1092")
	if !bytes.Equal(b, want) {
		t.Fatalf("Append = %x\nwant %x", b, want)
	}
	out, err := ParseTrailers(append(b, 0x7f, 1, 0))
	if err != nil {
		t.Fatal(err)
	}
	if out.Unknown != 1 {
		t.Fatalf("unknown = %d", out.Unknown)
	}
	out.Unknown = 0
	if out != in {
		t.Fatalf("round trip %+v", out)
	}
	for _, bad := range [][]byte{{1}, {1, 3, 1, 2, 3}, {3, 8, 0, 0, 1, 2, 3, 4, 0, 0}, {3, 9, 0, 0, 1, 2, 3, 4, 0, 1, 0}, {5, 1, 0}, {1, 9}} {
		if _, err := ParseTrailers(bad); !errors.Is(err, ErrBadTrailer) {
			t.Errorf("ParseTrailers(%x) err = %v", bad, err)
		}
	}
}

func TestGlobalUnicast(t *testing.T) {
	tests := []struct {
		a    string
		want bool
	}{
		{"65.54.227.120", true}, {"198.18.0.1", true}, {"8.8.8.8", true}, {"240.0.0.1", true},
		{"0.1.2.3", false}, {"10.0.0.1", false}, {"127.0.0.1", false}, {"169.254.1.1", false},
		{"172.16.0.1", false}, {"172.31.255.255", false}, {"172.32.0.1", true}, {"192.168.1.1", false},
		{"192.88.99.1", false}, {"224.0.0.253", false}, {"239.1.1.1", false}, {"255.255.255.255", false},
		{"2001:db8::1", false},
	}
	for _, tt := range tests {
		if got := IsGlobalUnicastIPv4(netip.MustParseAddr(tt.a)); got != tt.want {
			t.Errorf("IsGlobalUnicastIPv4(%s) = %v", tt.a, got)
		}
	}
	if !AnyIPv4(netip.MustParseAddr("127.0.0.2")) || AnyIPv4(netip.MustParseAddr("0.0.0.0")) {
		t.Error("AnyIPv4")
	}
}

func TestICMPv6ErrorAndEcho(t *testing.T) {
	src := netip.MustParseAddr("2001:0:4136:e378:8000:63bf:3fff:fdd2")
	dst := netip.MustParseAddr("2001:db8::80")
	big := AppendEcho(nil, src, dst, 64, ICMPEchoRequest, 7, 9, make([]byte, 1400))
	if !ValidICMPv6Checksum(big) {
		t.Fatal("echo checksum")
	}
	typ, code, body, ok := ICMPv6(big)
	if !ok || typ != ICMPEchoRequest || code != 0 || len(body) != 1404 {
		t.Fatalf("ICMPv6 = %d %d %d %v", typ, code, len(body), ok)
	}
	if !MayReplyWithError(big) {
		t.Fatal("may reply")
	}
	e := AppendICMPv6Error(nil, dst, ICMPDestUnreachable, UnreachAddress, 0, big)
	if len(e) != MinMTU || !ValidICMPv6Checksum(e) || Dst(e) != src || Src(e) != dst {
		t.Fatalf("error len %d", len(e))
	}
	if MayReplyWithError(e) {
		t.Fatal("error about an error")
	}
	// Odd-length chunks must checksum like the concatenation.
	a, b := []byte{1, 2, 3}, []byte{4, 5, 6, 7, 8}
	if Checksum(src, dst, 58, a, b) != Checksum(src, dst, 58, append(append([]byte{}, a...), b...)) {
		t.Fatal("chunked checksum differs")
	}
}
