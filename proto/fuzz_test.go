package proto

import (
	"bytes"
	"net/netip"
	"testing"
)

func FuzzPacket(f *testing.F) {
	f.Add(AppendRS(nil, vecNonce, false))
	f.Add(AppendRA(nil, &RAParams{Nonce: vecNonce, Server: vecServer, Client: vecClient, Dst: RSSourceRestricted, MTU: 1280}))
	f.Add(append(AppendOrigin(nil, vecClient), AppendBubble(nil, RSSourceCone, AllNodes, 0)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		var p Packet
		if err := p.Parse(b); err != nil {
			return
		}
		enc := p.Append(nil)
		var q Packet
		if err := q.Parse(enc); err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		if !bytes.Equal(q.Append(nil), enc) {
			t.Fatal("round trip differs")
		}
		if p.HasOrigin != q.HasOrigin || p.Origin != q.Origin || p.HasAuth != q.HasAuth || p.Auth.Nonce != q.Auth.Nonce {
			t.Fatal("fields differ")
		}
		// Everything downstream of Parse must cope with any IPv6 packet.
		if ra, err := ParseRA(&p); err == nil {
			back := AppendRA(nil, &RAParams{Nonce: ra.Nonce, Server: ra.Server, Client: ra.Mapped, Dst: ra.Dst, MTU: ra.MTU})
			var r Packet
			if err := r.Parse(back); err != nil {
				t.Fatal(err)
			}
			ra2, err := ParseRA(&r)
			if err != nil {
				t.Fatalf("rebuilt RA: %v", err)
			}
			ra2.Confirmation = ra.Confirmation
			if ra2 != ra {
				t.Fatalf("RA round trip %+v != %+v", ra2, ra)
			}
		}
		IsRS(p.IPv6)
		IsBubble(p.IPv6)
		ICMPv6(p.IPv6)
		MayReplyWithError(p.IPv6)
		ParseTrailers(p.Trailer)
	})
}

func FuzzTrailers(f *testing.F) {
	f.Add([]byte{1, 4, 1, 2, 3, 4, 3, 8, 0, 0, 1, 2, 3, 4, 0, 1})
	f.Add([]byte{5, 2, 0, 1, 4, 4, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		tr, err := ParseTrailers(b)
		if err != nil {
			return
		}
		tr.Unknown = 0
		tr2, err := ParseTrailers(tr.Append(nil))
		if err != nil || tr2 != tr {
			t.Fatalf("round trip: %+v %v", tr2, err)
		}
	})
}

func FuzzAddress(f *testing.F) {
	f.Add([]byte(netip.MustParseAddr("2001:0:4136:e378:8000:63bf:3fff:fdd2").AsSlice()))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) != 16 {
			return
		}
		ip := netip.AddrFrom16([16]byte(b))
		a, ok := ParseAddress(ip)
		if ok != IsTeredoBytes(b) {
			t.Fatal("IsTeredoBytes disagrees")
		}
		if !ok {
			return
		}
		if a.Addr() != ip {
			// Bytes 2-3 are part of the /32 and must be zero for Teredo.
			t.Fatalf("round trip %v != %v", a.Addr(), ip)
		}
	})
}
