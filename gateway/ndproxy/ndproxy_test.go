package ndproxy

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/teredo-go/teredo/proto"
)

var (
	solicitor = netip.MustParseAddr("2001:db8:1::6")
	target    = netip.MustParseAddr("2001:db8:2:0:8000:63bf:39ed:fef5")
	mac       = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x06}
	ourMAC    = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x07}
)

// ns builds a solicitation as Linux sends it: to the target's
// solicited-node group, with a source link-layer address option.
func ns(src, dst, tgt netip.Addr, opts []byte) []byte {
	body := make([]byte, 20, 20+len(opts))
	t := tgt.As16()
	copy(body[4:], t[:])
	return proto.AppendICMPv6(nil, src, dst, 255, typeNS, 0, append(body, opts...))
}

func sll(m net.HardwareAddr) []byte { return append([]byte{optSourceLL, 1}, m...) }

func TestParseNS(t *testing.T) {
	good := ns(solicitor, SolicitedNode(target), target, sll(mac))
	hop64 := bytes.Clone(good)
	hop64[7] = 64
	badSum := bytes.Clone(good)
	badSum[len(badSum)-1] ^= 1
	for _, tt := range []struct {
		name string
		pkt  []byte
		want error
	}{
		{"solicited-node", good, nil},
		{"unicast NUD", ns(solicitor, target, target, nil), nil},
		{"DAD", ns(netip.IPv6Unspecified(), SolicitedNode(target), target, nil), ErrDAD},
		{"DAD with source option", ns(netip.IPv6Unspecified(), SolicitedNode(target), target, sll(mac)), ErrMalformed},
		{"hop limit 64", hop64, ErrMalformed},
		{"bad checksum", badSum, ErrMalformed},
		{"wrong group", ns(solicitor, SolicitedNode(solicitor), target, nil), ErrMalformed},
		{"multicast target", ns(solicitor, SolicitedNode(target), netip.MustParseAddr("ff02::1"), nil), ErrMalformed},
		{"zero-length option", ns(solicitor, SolicitedNode(target), target, make([]byte, 8)), ErrMalformed},
		{"echo", proto.AppendEcho(nil, solicitor, target, 255, proto.ICMPEchoRequest, 1, 1, nil), ErrNotNS},
		{"short", good[:50], ErrMalformed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseNS(tt.pkt)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err %v, want %v", err, tt.want)
			}
			if err == nil && (got.Target != target || got.Src != solicitor) {
				t.Fatalf("parsed %+v", got)
			}
		})
	}
}

func TestAppendNA(t *testing.T) {
	n, err := ParseNS(ns(solicitor, SolicitedNode(target), target, sll(mac)))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(n.SourceLL, mac) {
		t.Fatalf("source link-layer %v", n.SourceLL)
	}
	na := AppendNA(nil, &n, ourMAC)
	if proto.Src(na) != target || proto.Dst(na) != solicitor || na[7] != 255 || !proto.ValidICMPv6Checksum(na) {
		t.Fatalf("NA %x", na)
	}
	icmp := na[40:]
	if icmp[0] != typeNA || icmp[4] != flagRouter|flagSolicited || !bytes.Equal(icmp[8:24], target.AsSlice()) ||
		icmp[24] != optTargetLL || icmp[25] != 1 || !bytes.Equal(icmp[26:32], ourMAC) {
		t.Fatalf("NA body %x", icmp)
	}
}

func TestSolicitedNode(t *testing.T) {
	if g := SolicitedNode(target); g != netip.MustParseAddr("ff02::1:ffed:fef5") {
		t.Fatalf("group %v", g)
	}
}

func FuzzParseNS(f *testing.F) {
	f.Add(ns(solicitor, SolicitedNode(target), target, sll(mac)))
	f.Add(ns(solicitor, target, target, nil))
	f.Fuzz(func(t *testing.T, pkt []byte) {
		n, err := ParseNS(pkt)
		if err != nil {
			return
		}
		na := AppendNA(nil, &n, ourMAC)
		if !proto.ValidICMPv6Checksum(na) || proto.Src(na) != n.Target {
			t.Fatalf("bad NA for %x", pkt)
		}
	})
}
