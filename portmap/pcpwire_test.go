package portmap

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var testNonce = [12]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}

// The vectors follow RFC 6887 §7.1 (header), §11.1 (MAP) and §12.1 (PEER)
// field by field.
const (
	// MAP, lifetime 3600, client 192.168.3.2, UDP internal port 3544, no
	// suggestion.
	mapRequestHex = `02 01 0000 00000e10 00000000000000000000ffffc0a80302
		0102030405060708090a0b0c 11 000000 0dd8 0000 00000000000000000000000000000000`
	// PEER to 198.18.0.2:3544 with suggested external 198.18.0.12:40000.
	peerRequestHex = `02 02 0000 00000e10 00000000000000000000ffffc0a80302
		0102030405060708090a0b0c 11 000000 0dd8 9c40 00000000000000000000ffffc612000c
		0dd8 0000 00000000000000000000ffffc6120002`
	// SUCCESS answer to the MAP: lifetime 120 (the server's minimum),
	// epoch 7, external 198.18.0.12:40000.
	mapResponseHex = `02 81 00 00 00000078 00000007 000000000000000000000000
		0102030405060708090a0b0c 11 000000 0dd8 9c40 00000000000000000000ffffc612000c`
	// Captured from miniupnpd 2.3.1 in the lab (TestMiniUPnPd/pcp-wire): the
	// answer to a MAP from 192.168.1.2 for UDP 3544, lifetime 3600,
	// suggesting port 3544: granted 198.18.0.10:3544, epoch 0.
	miniupnpdRequestHex = `0201000000000e1000000000000000000000ffffc0a80102
		0102030405060708090a0b0c110000000dd80dd800000000000000000000ffff00000000`
	miniupnpdResponseHex = `0281000000000e10000000000000000000000000000000000102030405060708090a0b0c
		110000000dd80dd800000000000000000000ffffc612000a`
	// NAT-PMP's answer to a version 2 request: version 0, UNSUPP_VERSION.
	natpmpUnsuppHex = `00 81 0001 00000007`
)

func TestPCPRequestVectors(t *testing.T) {
	client := netip.MustParseAddr("192.168.3.2")
	for _, tc := range []struct {
		name string
		req  pcpRequest
		want string
	}{
		{"map", pcpRequest{Opcode: pcpOpMap, Lifetime: 3600, Client: client, Nonce: testNonce, Internal: 3544}, mapRequestHex},
		{"peer", pcpRequest{Opcode: pcpOpPeer, Lifetime: 3600, Client: client, Nonce: testNonce, Internal: 3544,
			SuggestedExternal: netip.MustParseAddrPort("198.18.0.12:40000"),
			Remote:            netip.MustParseAddrPort("198.18.0.2:3544")}, peerRequestHex},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := appendPCPRequest(nil, &tc.req)
			if err != nil {
				t.Fatal(err)
			}
			want := unhex(t, tc.want)
			if !bytes.Equal(got, want) {
				t.Fatalf("encoded\n%x\nwant\n%x", got, want)
			}
			back, err := parsePCPRequest(got)
			if err != nil {
				t.Fatal(err)
			}
			if *back != tc.req {
				t.Fatalf("round trip %+v, want %+v", *back, tc.req)
			}
		})
	}
}

func TestPCPResponseVector(t *testing.T) {
	r, err := parsePCPResponse(unhex(t, mapResponseHex))
	if err != nil {
		t.Fatal(err)
	}
	want := pcpResponse{Opcode: pcpOpMap, Lifetime: 120, Epoch: 7, Nonce: testNonce, Protocol: protocolUDP,
		Internal: 3544, External: netip.MustParseAddrPort("198.18.0.12:40000")}
	if *r != want {
		t.Fatalf("got %+v, want %+v", *r, want)
	}
}

func TestPCPResponseErrors(t *testing.T) {
	good := unhex(t, mapResponseHex)
	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, errShort},
		{"natpmp", unhex(t, natpmpUnsuppHex), ErrUnsupportedVersion},
		{"version 1", append([]byte{1}, good[1:]...), ErrUnsupportedVersion},
		{"request", append([]byte{2, 1}, good[2:]...), errNotResponse},
		{"header only", good[:24], errShort},
		{"truncated data", good[:56], errShort},
		{"odd length", append(append([]byte(nil), good...), 0), errShort},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := parsePCPResponse(tc.b); !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := parsePCPResponse(append([]byte{2, 0x83}, good[2:]...)); err == nil {
		t.Fatal("opcode 3 accepted")
	}
}

func FuzzPCPResponse(f *testing.F) {
	f.Add(unhex(f, mapResponseHex))
	f.Add(unhex(f, natpmpUnsuppHex))
	f.Add(unhex(f, miniupnpdResponseHex))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parsePCPResponse(b)
		if err != nil {
			return
		}
		if r.Opcode != pcpOpMap && r.Opcode != pcpOpPeer {
			t.Fatalf("opcode %d accepted", r.Opcode)
		}
	})
}

func FuzzPCPRequest(f *testing.F) {
	f.Add(unhex(f, mapRequestHex))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parsePCPRequest(b)
		if err != nil {
			return
		}
		enc, err := appendPCPRequest(nil, r)
		if err != nil {
			t.Fatal(err)
		}
		back, err := parsePCPRequest(enc)
		if err != nil {
			t.Fatal(err)
		}
		if *back != *r {
			t.Fatalf("round trip %+v != %+v", back, r)
		}
	})
}

const procNetRoute = `Iface	Destination	Gateway 	Flags	RefCnt	Use	Metric	Mask		MTU	Window	IRTT
eth1	00000000	0103A8C0	0003	0	0	200	00000000	0	0	0
eth0	00000000	0101A8C0	0003	0	0	100	00000000	0	0	0
eth0	0001A8C0	00000000	0001	0	0	0	00FFFFFF	0	0	0
`

func TestParseProcNetRoute(t *testing.T) {
	gw, err := parseProcNetRoute([]byte(procNetRoute), false)
	if err != nil || gw != netip.MustParseAddr("192.168.1.1") {
		t.Fatalf("got %v %v, want 192.168.1.1 (lowest metric)", gw, err)
	}
	gw, err = parseProcNetRoute([]byte(strings.ReplaceAll(procNetRoute, "0101A8C0", "C0A80101")), true)
	if err != nil || gw != netip.MustParseAddr("192.168.1.1") {
		t.Fatalf("big-endian: got %v %v", gw, err)
	}
	noDefault := strings.Join(strings.Split(procNetRoute, "\n")[3:], "\n")
	if _, err := parseProcNetRoute([]byte("Iface\n"+noDefault), false); !errors.Is(err, ErrNoGateway) {
		t.Fatalf("no default route: %v", err)
	}
}

func FuzzProcNetRoute(f *testing.F) {
	f.Add([]byte(procNetRoute))
	f.Fuzz(func(t *testing.T, b []byte) {
		gw, err := parseProcNetRoute(b, false)
		if err == nil && !gw.Is4() {
			t.Fatalf("gateway %v", gw)
		}
	})
}

func TestParseSSDPResponse(t *testing.T) {
	gw := netip.MustParseAddr("192.168.3.1")
	ok := "HTTP/1.1 200 OK\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nLOCATION: http://192.168.3.1:5000/rootDesc.xml\r\n\r\n"
	if loc, err := parseSSDPResponse([]byte(ok), gw); err != nil || loc.Port() != "5000" {
		t.Fatalf("%v %v", loc, err)
	}
	for name, b := range map[string]string{
		"elsewhere": strings.Replace(ok, "192.168.3.1:5000", "198.18.0.2:80", 1),
		"https":     strings.Replace(ok, "http://", "https://", 1),
		"st":        strings.Replace(ok, "InternetGatewayDevice", "MediaServer", 1),
		"status":    strings.Replace(ok, "200 OK", "404 Not Found", 1),
		"garbage":   "\x00\x01",
	} {
		if _, err := parseSSDPResponse([]byte(b), gw); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzSSDPResponse(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nLOCATION: http://192.168.3.1:5000/rootDesc.xml\r\n\r\n"))
	gw := netip.MustParseAddr("192.168.3.1")
	f.Fuzz(func(t *testing.T, b []byte) {
		loc, err := parseSSDPResponse(b, gw)
		if err == nil && loc.Hostname() != "192.168.3.1" {
			t.Fatalf("location %v", loc)
		}
	})
}

func TestPCPMiniUPnPdVector(t *testing.T) {
	req := pcpRequest{Opcode: pcpOpMap, Lifetime: 3600, Client: netip.MustParseAddr("192.168.1.2"), Nonce: testNonce,
		Internal: 3544, SuggestedExternal: netip.AddrPortFrom(netip.IPv4Unspecified(), 3544)}
	got, err := appendPCPRequest(nil, &req)
	if err != nil || !bytes.Equal(got, unhex(t, miniupnpdRequestHex)) {
		t.Fatalf("request %x (%v)", got, err)
	}
	r, err := parsePCPResponse(unhex(t, miniupnpdResponseHex))
	if err != nil {
		t.Fatal(err)
	}
	want := pcpResponse{Opcode: pcpOpMap, Lifetime: 3600, Nonce: testNonce, Protocol: protocolUDP,
		Internal: 3544, External: netip.MustParseAddrPort("198.18.0.10:3544")}
	if *r != want {
		t.Fatalf("got %+v, want %+v", *r, want)
	}
}
