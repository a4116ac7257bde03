package relay

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/teredo-go/teredo/proto"
)

// TestOther checks which datagrams a relay with an Other hook hands over
// instead of dropping, and that it still forwards data itself.
func TestOther(t *testing.T) {
	peerAddr := teredoAddr(serverIP, clientMap)
	auth := proto.AppendAuth(nil, &proto.Auth{})
	for _, tt := range []struct {
		name  string
		pkt   []byte
		other bool
	}{
		{"router solicitation", proto.AppendRS(nil, [8]byte{1}, false), true},
		{"authentication indication", append(bytes.Clone(auth), udpPacket(peerAddr, native, nil)...), true},
		{"non-Teredo source", proto.AppendBubble(nil, native2, peerAddr, 0), true},
		{"Teredo destination", proto.AppendBubble(nil, peerAddr, teredoAddr(serverIP, clientMap2), 0), true},
		{"data to a native host", udpPacket(peerAddr, native, []byte("x")), false},
		{"malformed", []byte{1, 2, 3}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var got [][]byte
			h := newHarness(t, func(c *Config) {
				c.Other = func(b []byte, from netip.AddrPort) {
					if from != clientMap {
						t.Errorf("from %v", from)
					}
					got = append(got, bytes.Clone(b))
				}
			})
			h.receive(tt.pkt, clientMap)
			if tt.other != (len(got) == 1) {
				t.Fatalf("handed over %d datagrams, want %v", len(got), tt.other)
			}
			if tt.other && !bytes.Equal(got[0], tt.pkt) {
				t.Fatalf("handed over %x, want %x", got[0], tt.pkt)
			}
			if !tt.other && tt.pkt[0] == 0x60 && len(h.dev.take()) != 1 {
				t.Fatal("data not forwarded")
			}
		})
	}
}
