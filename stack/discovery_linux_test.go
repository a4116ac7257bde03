package stack

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/teredo-go/teredo/udpio"
)

// TestScopeMulticast checks that the service socket's discovery bubbles
// get IP multicast TTL 1 whatever the socket had before.
func TestScopeMulticast(t *testing.T) {
	c, err := udpio.Listen(netip.MustParseAddrPort("127.0.0.1:0"), udpio.Options{DisableGSO: true, DisableGRO: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	ttl := func() int {
		var v int
		var gerr error
		if err := rc.Control(func(fd uintptr) {
			v, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MULTICAST_TTL)
		}); err != nil {
			t.Fatal(err)
		}
		if gerr != nil {
			t.Fatal(gerr)
		}
		return v
	}
	if err := rc.Control(func(fd uintptr) {
		unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MULTICAST_TTL, 5)
	}); err != nil {
		t.Fatal(err)
	}
	if got := ttl(); got != 5 {
		t.Fatalf("TTL set to %d, want 5", got)
	}
	if err := scopeMulticast(c, nil); err != nil {
		t.Fatal(err)
	}
	if got := ttl(); got != 1 {
		t.Errorf("multicast TTL %d after scopeMulticast, want 1", got)
	}
}
