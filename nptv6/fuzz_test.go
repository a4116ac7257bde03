package nptv6

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/teredo-go/teredo/proto"
)

// FuzzTranslate feeds arbitrary packets both ways. A translation never
// panics, leaves a refused packet untouched, changes only what it may, and
// keeps a simple packet's checksum exactly as valid, or as invalid, as it
// was.
func FuzzTranslate(f *testing.F) {
	f.Add(ipv6(client, host, protoTCP, tcpSYN(), 16), false)
	f.Add(ipv6(host, clientPb, protoUDP, udpDatagram("hi"), 6), true)
	f.Add(proto.AppendEcho(nil, client, host, 64, proto.ICMPEchoRequest, 1, 2, []byte("x")), false)
	q := ipv6(clientPb, host, protoTCP, tcpSYN(), 16)
	f.Add(proto.AppendICMPv6Error(nil, host, proto.ICMPDestUnreachable, 4, 0, q), true)
	f.Add(ipv6(client, host, protoHopByHop, append([]byte{protoUDP, 0, 0, 0, 0, 0, 0, 0}, udpDatagram("y")...), -1), false)
	tr, err := New(teredoNet, publicNet)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, pkt []byte, inbound bool) {
		if inbound && len(pkt) >= 32 {
			copy(pkt[24:32], publicNet.Addr().AsSlice())
		} else if !inbound && len(pkt) >= 16 {
			copy(pkt[8:16], teredoNet.Addr().AsSlice())
		}
		simple := len(pkt) >= 48 && pkt[0]>>4 == 6 && int(binary.BigEndian.Uint16(pkt[4:])) == len(pkt)-40 &&
			(pkt[6] == protoTCP && len(pkt) >= 60 || pkt[6] == protoUDP || pkt[6] == protoICMPv6)
		var before bool
		if simple {
			before = checksumOK(pkt)
		}
		orig := bytes.Clone(pkt)
		fn := tr.Outbound
		if inbound {
			fn = tr.Inbound
		}
		if err := fn(pkt); err != nil {
			if !bytes.Equal(pkt, orig) {
				t.Fatalf("refused packet changed: %v", err)
			}
			return
		}
		if len(pkt) != len(orig) || !bytes.Equal(pkt[:8], orig[:8]) {
			t.Fatal("length or header changed")
		}
		if simple && !(pkt[6] == protoUDP && binary.BigEndian.Uint16(orig[46:]) == 0) {
			if after := checksumOK(pkt); after != before {
				t.Fatalf("checksum validity %v before, %v after\n%x\n%x", before, after, orig, pkt)
			}
		}
	})
}
