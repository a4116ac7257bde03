package lab

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

// udpSink is a UDP socket in a lab host that records the source of every datagram it
// receives and echoes it back.
type udpSink struct {
	conn *net.UDPConn
	from chan netip.AddrPort
}

func newUDPSink(t *testing.T, h *Host, addr netip.AddrPort) *udpSink {
	t.Helper()
	c, err := h.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		t.Fatal(err)
	}
	s := &udpSink{conn: c, from: make(chan netip.AddrPort, 64)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			select {
			case s.from <- netip.AddrPortFrom(from.Addr().Unmap(), from.Port()):
			default:
			}
			_, _ = c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return s
}

// next returns the source of the next datagram, or fails after timeout.
func (s *udpSink) next(t *testing.T, timeout time.Duration) netip.AddrPort {
	t.Helper()
	select {
	case ap := <-s.from:
		return ap
	case <-time.After(timeout):
		t.Fatalf("sink %v: nothing received within %v", s.conn.LocalAddr(), timeout)
		return netip.AddrPort{}
	}
}

// probe sends one datagram from c to dst and returns where the sink saw it coming from.
func probe(t *testing.T, c *net.UDPConn, dst netip.AddrPort, sink *udpSink) netip.AddrPort {
	t.Helper()
	if _, err := c.WriteToUDPAddrPort([]byte("probe"), dst); err != nil {
		t.Fatal(err)
	}
	return sink.next(t, 3*time.Second)
}

// receives reports whether c gets a datagram within wait.
func receives(c *net.UDPConn, wait time.Duration) bool {
	buf := make([]byte, 2048)
	_ = c.SetReadDeadline(time.Now().Add(wait))
	defer c.SetReadDeadline(time.Time{})
	for {
		_, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return false
		}
		// Echoes of our own probes are not what we look for.
		if from.Port() != 7 {
			return true
		}
	}
}

func TestTopology(t *testing.T) {
	l := New(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	for _, c := range []struct {
		from *Host
		to   netip.Addr
	}{
		{l.Server, RelayV4},
		{l.Relay, ServerSecondary},
		{l.V6Host, ServerV6},
		{l.Server, V6HostAddr},
		{l.Clients["a1"], ServerPrimary},
		{l.Clients["c"], RelayV4},
	} {
		pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
		rtt, err := c.from.Ping(pctx, c.to, 0)
		pcancel()
		if err != nil {
			t.Fatalf("ping %v from %s: %v", c.to, c.from.Name, err)
		}
		t.Logf("ping %s → %v: %v", c.from.Name, c.to, rtt)
	}
	// The IPv6-only host has no IPv4 at all.
	if out := l.V6Host.MustRun(t, "ip", "-4", "-o", "addr", "show", "scope", "global"); out != "" {
		t.Errorf("IPv6-only host has IPv4 addresses: %s", out)
	}
	// It sends the Teredo prefix to the relay.
	if out := l.V6Host.MustRun(t, "ip", "-6", "route", "get", "2001:0:c612:2::1"); !strings.Contains(out, "via "+RelayV6.String()) {
		t.Errorf("2001::/32 not routed to the relay: %s", out)
	}

	primary := newUDPSink(t, l.Server, netip.AddrPortFrom(ServerPrimary, 7))
	secondary := newUDPSink(t, l.Server, netip.AddrPortFrom(ServerSecondary, 7))
	relay := newUDPSink(t, l.Relay, netip.AddrPortFrom(RelayV4, 7))

	for _, name := range []string{"a1", "a2", "b", "c", "d"} {
		t.Run(name, func(t *testing.T) {
			h := l.Clients[name]
			port := uint16(40000)
			if h.NAT.Kind == FullCone {
				port = h.NAT.ConePort
			}
			local := netip.AddrPortFrom(h.IPv4[0], port)
			c, err := h.ListenUDP("udp4", net.UDPAddrFromAddrPort(local))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()

			toPrimary := probe(t, c, netip.AddrPortFrom(ServerPrimary, 7), primary)
			toSecondary := probe(t, c, netip.AddrPortFrom(ServerSecondary, 7), secondary)
			toRelay := probe(t, c, netip.AddrPortFrom(RelayV4, 7), relay)
			t.Logf("%s NAT maps %v to %v, %v, %v", h.NAT.Kind, local, toPrimary, toSecondary, toRelay)
			for _, ap := range []netip.AddrPort{toPrimary, toSecondary, toRelay} {
				if ap.Addr() != h.NAT.WAN {
					t.Fatalf("seen from %v, want the NAT's WAN address %v", ap, h.NAT.WAN)
				}
			}
			flows, err := h.NAT.ClientFlows(ctx, local, netip.AddrPortFrom(ServerPrimary, 7))
			if err != nil {
				t.Fatal(err)
			}
			if len(flows) != 1 || flows[0].Mapped() != toPrimary {
				t.Fatalf("conntrack flows %+v, want one mapped to %v", flows, toPrimary)
			}

			switch h.NAT.Kind {
			case Symmetric:
				if toPrimary.Port() == toSecondary.Port() && toSecondary.Port() == toRelay.Port() {
					t.Fatalf("symmetric NAT kept port %d for three destinations", toPrimary.Port())
				}
				return
			default:
				if toPrimary != toSecondary || toPrimary != toRelay {
					t.Fatalf("cone-like NAT gave different mappings: %v %v %v", toPrimary, toSecondary, toRelay)
				}
				if toPrimary.Port() != port {
					t.Fatalf("mapped port %d, want the client's port %d preserved", toPrimary.Port(), port)
				}
			}

			// An unsolicited datagram to the mapping from a host the client never
			// talked to, then a first datagram from the client to that host.
			stranger, err := l.Server.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ServerSecondary, 9)))
			if err != nil {
				t.Fatal(err)
			}
			defer stranger.Close()
			if _, err := stranger.WriteToUDPAddrPort([]byte("unsolicited"), toPrimary); err != nil {
				t.Fatal(err)
			}
			got := receives(c, 500*time.Millisecond)
			if want := h.NAT.Kind == FullCone; got != want {
				t.Fatalf("client received unsolicited datagram: %v, want %v", got, want)
			}
			if _, err := c.WriteToUDPAddrPort([]byte("hello"), netip.AddrPortFrom(ServerSecondary, 9)); err != nil {
				t.Fatal(err)
			}
			_ = stranger.SetReadDeadline(time.Now().Add(3 * time.Second))
			_, seen, err := stranger.ReadFromUDPAddrPort(make([]byte, 64))
			if err != nil {
				t.Fatalf("stranger never heard from the client: %v", err)
			}
			t.Logf("after an unsolicited datagram, %v reaches the stranger from %v", local, seen)
			switch h.NAT.Kind {
			case OpenMasquerade:
				// The unsolicited datagram left a conntrack entry owning the mapping
				// towards the stranger, so Linux picked another port.
				if seen.Port() == toPrimary.Port() {
					t.Fatalf("open masquerade kept port %d; expected a remap", seen.Port())
				}
			default:
				if seen != toPrimary {
					t.Fatalf("mapping changed to %v, want %v", seen, toPrimary)
				}
			}
		})
	}
}

// recordTB records what Require decided instead of ending the test.
type recordTB struct {
	testing.TB
	failed, skipped bool
}

var errStop = errors.New("stopped")

func (r *recordTB) Helper()               {}
func (r *recordTB) Fatalf(string, ...any) { r.failed = true; panic(errStop) }
func (r *recordTB) Skipf(string, ...any)  { r.skipped = true; panic(errStop) }

func TestRequireSkipsOrFails(t *testing.T) {
	for _, ci := range []string{"", "false", "true"} {
		t.Run("CI="+ci, func(t *testing.T) {
			t.Setenv(CIEnv, ci)
			r := &recordTB{TB: t}
			func() {
				defer func() {
					if v := recover(); v != nil && v != errStop {
						panic(v)
					}
				}()
				Require(r, "no-such-tool-teredo-lab")
			}()
			if ci == "true" && (!r.failed || r.skipped) {
				t.Fatalf("under CI=true a missing tool must fail the test (failed=%v skipped=%v)", r.failed, r.skipped)
			}
			if ci != "true" && (!r.skipped || r.failed) {
				t.Fatalf("outside CI a missing tool must skip the test (failed=%v skipped=%v)", r.failed, r.skipped)
			}
		})
	}
}

func TestForwardingOnlyInRouters(t *testing.T) {
	l := New(t, Options{Clients: []ClientSpec{{"a1", HomeRouter}}})
	for _, c := range []struct {
		h      *Host
		v4, v6 string
	}{
		{l.Server, "0", "0"},
		{l.V6Host, "0", "0"},
		{l.Relay, "0", "1"},
		{l.Clients["a1"], "0", "0"},
		{l.Clients["a1"].NAT.Router, "1", "1"},
	} {
		v4 := strings.TrimSpace(c.h.MustRun(t, "cat", "/proc/sys/net/ipv4/ip_forward"))
		v6 := strings.TrimSpace(c.h.MustRun(t, "cat", "/proc/sys/net/ipv6/conf/all/forwarding"))
		if v4 != c.v4 || v6 != c.v6 {
			t.Errorf("%s: forwarding ipv4=%s ipv6=%s, want %s %s", c.h.Name, v4, v6, c.v4, c.v6)
		}
	}
	root, err := os.ReadFile("/proc/sys/net/ipv6/conf/all/forwarding")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("root namespace ipv6 forwarding (untouched by the lab): %s", strings.TrimSpace(string(root)))
}
