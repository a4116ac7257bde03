package socksd

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/stack"
	"github.com/teredo-go/teredo/teredotest"
)

// TestStackStarterUnqualified starts a stack whose server never answers:
// the start returns at once, and IPv6 fails at once with "network
// unreachable" rather than waiting.
func TestStackStarterUnqualified(t *testing.T) {
	// A UDP port on loopback that nobody listens on.
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	pc.Close()
	n, err := StackStarter(stack.Config{
		Servers:    []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		ServerPort: port,
		IPv4Filter: proto.AnyIPv4,
		LocalAddr:  netip.MustParseAddrPort("127.0.0.1:0"),
	}, nil, nil)(context.Background(), func(Event) {})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if st := n.Status(); st.State != "qualifying" || st.Addr.IsValid() {
		t.Fatalf("status %+v", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := n.Dial(ctx, "tcp6", netip.MustParseAddrPort("[2001:db8::1]:80")); !errors.Is(err, syscall.ENETUNREACH) || !errors.Is(err, stack.ErrNotQualified) {
		t.Fatalf("dial: %v", err)
	}
	if _, err := n.ListenPacket(ctx); !errors.Is(err, stack.ErrNotQualified) {
		t.Fatalf("listen packet: %v", err)
	}
}

// TestStackStarterQualifies goes the production path against a teredotest
// internet: events, status with the netstack's counters, NAT type.
func TestStackStarterQualifies(t *testing.T) {
	in := teredotest.New(t)
	events := make(chan Event, 64)
	n, err := StackStarter(stack.Config{
		ServerNames: []string{in.ServerAddr().String()},
		Secondary:   in.SecondaryAddr(),
		IPv4Filter:  in.IPv4Filter(),
		LocalAddr:   netip.MustParseAddrPort("127.0.0.1:0"),
	}, nil, nil)(context.Background(), func(e Event) {
		select {
		case events <- e:
		default: // a wake-up is already pending
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	// Events before the subscription are not seen, so the status is
	// checked first and again after each event.
	deadline := time.After(20 * time.Second)
	for {
		st := n.Status()
		if st.State == "qualified" && st.NAT != "unknown" {
			break
		}
		select {
		case <-events:
		case <-deadline:
			t.Fatalf("not qualified and classified: %+v", st)
		}
	}
	st := n.Status()
	a, ok := proto.ParseAddress(st.Addr)
	if st.State != "qualified" || !ok || a.Server != in.ServerAddr() || st.Server != in.ServerAddr() || st.MTU != 1280 || st.LastError != "" {
		t.Fatalf("status %+v", st)
	}
	// The netstack's TCP counters are part of the status, for /metrics.
	for _, k := range []string{"tcp_segments_sent", "tcp_retransmits", "tcp_sack_recoveries", "tcp_segment_send_errors"} {
		if _, ok := st.Counters[k]; !ok {
			t.Errorf("status counters lack %q", k)
		}
	}
	if got := n.ServerName(in.ServerAddr()); got != in.ServerAddr().String() {
		t.Errorf("ServerName = %q", got)
	}
	if st.NAT != "restricted" {
		t.Errorf("NAT %q, want restricted on loopback", st.NAT)
	}
}
