package proto

import (
	"net/netip"
	"testing"
)

func TestBubbleSource(t *testing.T) {
	var k1, k2 [32]byte
	k2[0] = 1
	p1 := netip.MustParseAddr("2001:0:c000:201::1").As16()
	p2 := netip.MustParseAddr("2001:0:c000:201::2").As16()
	a := BubbleSource(&k1, &p1)
	if !a.IsLinkLocalUnicast() || a.As16()[8]&0x03 != 0 {
		t.Errorf("BubbleSource = %v, want fe80::/64 with the u/l and group bits clear", a)
	}
	if BubbleSource(&k1, &p1) != a {
		t.Error("BubbleSource is not deterministic")
	}
	if BubbleSource(&k2, &p1) == a || BubbleSource(&k1, &p2) == a {
		t.Error("BubbleSource ignores the secret or the peer")
	}
	if n := testing.AllocsPerRun(100, func() { BubbleSource(&k1, &p1) }); n != 0 {
		t.Errorf("BubbleSource allocates %v times", n)
	}
}
