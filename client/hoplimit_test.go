package client

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/teredo-go/teredo/proto"
)

// ttlNet is a fakeNet that can send with a TTL, or refuses to (unsupported).
type ttlNet struct {
	*fakeNet
	unsupported bool
}

func (n ttlNet) WriteToTTL(b []byte, to netip.AddrPort, ttl int) error {
	if n.unsupported {
		return fmt.Errorf("no TTL here: %w", errors.ErrUnsupported)
	}
	return n.record(sent{b: append([]byte(nil), b...), to: to, ttl: ttl})
}

// TestBubbleTTL checks the TTLs of a series of bubbles to a Teredo peer: the
// first two direct bubbles are hop-limited (BubbleTTL, then one more), the
// last two and every indirect bubble use the socket's TTL, and so do all of
// them when the feature is off or the transport cannot.
func TestBubbleTTL(t *testing.T) {
	for _, tc := range []struct {
		name        string
		cfg         int
		canTTL      bool
		unsupported bool
		want        []int // TTLs of the four direct bubbles
		counted     uint64
	}{
		{"default", 0, true, false, []int{2, 3, 0, 0}, 2},
		{"ttl-5", 5, true, false, []int{5, 6, 0, 0}, 2},
		{"huge", 1000, true, false, []int{253, 254, 0, 0}, 2},
		{"off", -1, true, false, []int{0, 0, 0, 0}, 0},
		{"plain-transport", 0, false, false, []int{0, 0, 0, 0}, 0},
		{"unsupported", 0, true, true, []int{0, 0, 0, 0}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, func(c *Config) {
				c.BubbleTTL = tc.cfg
				if tc.canTTL {
					c.Transport = ttlNet{c.Transport.(*fakeNet), tc.unsupported}
				}
			})
			us := h.qualify()
			h.serve()
			pkt := ipPacket(us, peerAddr, "hello")
			h.c.Transmit([][]byte{pkt})
			var got []int
			for range 4 {
				b, other := bubbles(h.net.take())
				if len(b) != 2 || len(other) != 0 {
					t.Fatalf("bubbles %d, other %d", len(b), len(other))
				}
				if b[0].to != peerMapped || b[1].to != ap(peerServer) {
					t.Fatalf("bubbles to %v and %v", b[0].to, b[1].to)
				}
				if b[1].ttl != 0 {
					t.Fatalf("indirect bubble with TTL %d", b[1].ttl)
				}
				got = append(got, b[0].ttl)
				h.advance(2 * time.Second)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("direct bubble TTLs %v, want %v", got, tc.want)
			}
			if n := h.c.Status().Counters.TTLBubbles; n != tc.counted {
				t.Errorf("TTLBubbles = %d, want %d", n, tc.counted)
			}
		})
	}
}

// TestIndirectBubbleAnswerFullTTL checks that the answer to an indirect
// bubble, which must reach the peer, never uses the short TTL.
func TestIndirectBubbleAnswerFullTTL(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Transport = ttlNet{fakeNet: c.Transport.(*fakeNet)} })
	us := h.qualify()
	h.serve()
	ib := append(proto.AppendOrigin(nil, peerMapped), proto.AppendBubble(nil, peerAddr, us, 0)...)
	h.c.Receive(ib, ap(server1))
	b, _ := bubbles(h.net.take())
	if len(b) != 1 || b[0].to != peerMapped || b[0].ttl != 0 {
		t.Fatalf("answer to the indirect bubble: %+v", b)
	}
}
