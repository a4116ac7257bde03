package lab

import (
	"net/netip"
	"testing"
)

// v6HostIPv4 is the address that makes the IPv6-only host dual-stack for the
// host-specific relay test.
var v6HostIPv4 = netip.MustParseAddr("198.18.0.6")

// TestClientViaHostSpecificRelay makes the IPv6-only host dual-stack and runs the
// project's relay on it with -host-specific, with the relay host switched off: our
// client downloads a file from the host, and the host connects to a listener on
// another of our clients, both straight over IPv4 to the host's own relay.
func TestClientViaHostSpecificRelay(t *testing.T) {
	requireFile(t, ourServerDir)
	requireOurRelay(t)
	l := New(t, Options{Clients: []ClientSpec{{"a1", HomeRouter}, {"a2", HomeRouter}}})
	l.Relay.MustRun(t, "ip", "link", "set", "eth0", "down")
	v6 := l.V6Host
	v6.MustRun(t, "ip", "addr", "add", netip.PrefixFrom(v6HostIPv4, InternetV4.Bits()).String(), "dev", "eth0")
	v6.IPv4 = append(v6.IPv4, v6HostIPv4)
	srv := serverImpls[1].start(t, l)
	r := startOurRelay(t, v6, "-host-specific")
	f := v6.ServeFile(t, netip.AddrPortFrom(V6HostAddr, 8080), 4<<20)

	t.Run("download", func(t *testing.T) {
		p := startProbe(t, l.Clients["a1"], srv, probeOptions{})
		checkDownload(t, p, f)
		checkRelayFlow(t, p, r)
	})
	t.Run("inbound", func(t *testing.T) {
		p := startProbe(t, l.Clients["a2"], srv, probeOptions{})
		checkInbound(t, v6, p, 1<<20)
		checkRelayFlow(t, p, r)
	})
	st := r.status(t)
	t.Logf("host-specific relay: %v", st)
	if !st.HostSpecific {
		t.Errorf("relay status says host_specific=false")
	}
	if st.Counters["rx_forwarded"] == 0 || st.Counters["tx_forwarded"] < (4<<20)/1280 {
		t.Errorf("the traffic did not go through the host-specific relay: %v", st)
	}
}

// checkRelayFlow checks that the client's NAT holds a flow straight to the relay.
func checkRelayFlow(t *testing.T, p *probeClient, r *ourRelay) {
	t.Helper()
	ctx, cancel := contextWithTimeout()
	defer cancel()
	flows, err := p.Host.NAT.ClientFlows(ctx, netip.AddrPortFrom(p.Host.IPv4[0], p.Local.Port()), r.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if len(flows) != 1 || flows[0].ReplyPackets == 0 {
		t.Errorf("NAT of %s: want one flow with replies from %v to the relay %v, got %+v", p.Host.Name, p.Local, r.Addr, flows)
	}
}
