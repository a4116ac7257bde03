package udpiotest_test

import (
	"errors"
	"testing"

	"github.com/teredo-go/teredo/udpio"
	"github.com/teredo-go/teredo/udpio/udpiotest"
)

// TestTTL checks that a hook sees the TTL of each datagram and can drop the
// ones too small to cross the routers it models.
func TestTTL(t *testing.T) {
	nw := udpiotest.NewNetwork()
	a := listen(t, nw, addrA)
	b := listen(t, nw, addrB)
	var seen []int
	const hops = 2 // routers between a and b: TTL 2 dies at the second
	nw.SetHook(func(p *udpiotest.Packet) bool {
		seen = append(seen, p.TTL)
		return p.TTL > hops
	})
	w := a.(udpio.TTLWriter)
	for _, ttl := range []int{2, 3} {
		if err := w.WriteToTTL([]byte("x"), addrB, ttl); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.WriteTo([]byte("plain"), addrB); err != nil {
		t.Fatal(err)
	}
	if got := []int{2, 3, udpiotest.DefaultTTL}; len(seen) != 3 || seen[0] != got[0] || seen[1] != got[1] || seen[2] != got[2] {
		t.Fatalf("hook saw TTLs %v, want %v", seen, got)
	}
	if s, _ := read(t, b); s != "x" {
		t.Fatalf("first datagram = %q, want the TTL 3 one", s)
	}
	if s, _ := read(t, b); s != "plain" {
		t.Fatalf("second datagram = %q", s)
	}
	if pending(b) {
		t.Fatal("the TTL 2 datagram was delivered")
	}
	if st := nw.Stats(); st.DroppedByHook != 1 {
		t.Errorf("DroppedByHook = %d, want 1", st.DroppedByHook)
	}
	if err := w.WriteToTTL([]byte("x"), addrB, 0); !errors.Is(err, udpio.ErrBadTTL) {
		t.Errorf("TTL 0: %v, want ErrBadTTL", err)
	}
}
