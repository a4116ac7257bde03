package lab

import (
	"context"
	"net/netip"
	"testing"
	"time"
)

// peerEchoSize is what each TCP check between two of our clients sends and gets back.
const peerEchoSize = 1 << 20

// miredoEchoSize is what each TCP check with a Miredo peer (client or relay) sends and
// gets back: far more than Miredo's UDP socket buffer holds (about 90 datagrams at the
// default rmem), so a Miredo starved of CPU drops bursts at its socket and our stack
// must recover from them (it does since RACK is off by default, see stack.Config.TCPRACK
// and TestClientBulkToMiredo).
const miredoEchoSize = 1 << 20

// TestClientTCPWithPeers opens TCP connections both ways across two home routers
// between the project's client and a Miredo client, and between two of the project's
// clients (1 MiB echoes): each first connection waits for the bubbles the
// server relays, and the data must then flow directly between the NATs.
func TestClientTCPWithPeers(t *testing.T) {
	for _, impl := range serverImpls {
		t.Run(impl.name, func(t *testing.T) {
			impl.require(t)
			t.Run("miredo-client", func(t *testing.T) {
				l := New(t, Options{Clients: []ClientSpec{{"a1", HomeRouter}, {"a2", HomeRouter}}, NoRelay: true, NoV6Host: true})
				srv := impl.start(t, l)
				p := startProbe(t, l.Clients["a1"], srv, probeOptions{})
				m := StartMiredoClient(t, l.Clients["a2"], srv.Primary, MiredoClientOptions{})
				serveEcho(t, m.Host, netip.AddrPortFrom(m.Addr, 7001))

				r, err := p.echo(30*time.Second, netip.AddrPortFrom(m.Addr, 7001), miredoEchoSize)
				if err != nil {
					t.Fatalf("our client → Miredo client: %v\nour client: %+v", err, p.status(t))
				}
				t.Logf("our client %s → Miredo client %s: %d bytes echoed in %d ms", r.Local, r.Remote, r.Received, r.Milliseconds)

				addr := p.listen(t, 7000)
				r, err = echoFrom(m.Host, 30*time.Second, addr, miredoEchoSize)
				if err != nil {
					t.Fatalf("Miredo client → our client: %v\nour client: %+v", err, p.status(t))
				}
				t.Logf("Miredo client %s → our client %s: %d bytes echoed in %d ms", r.Local, r.Remote, r.Received, r.Milliseconds)
				checkDirect(t, p.Host, p.Teredo.Mapped, m.Teredo.Mapped)
				checkDirect(t, m.Host, m.Teredo.Mapped, p.Teredo.Mapped)
			})
			t.Run("our-clients", func(t *testing.T) {
				l := New(t, Options{Clients: []ClientSpec{{"a1", HomeRouter}, {"a2", HomeRouter}}, NoRelay: true, NoV6Host: true})
				srv := impl.start(t, l)
				p1 := startProbe(t, l.Clients["a1"], srv, probeOptions{})
				p2 := startProbe(t, l.Clients["a2"], srv, probeOptions{})
				for _, dir := range [][2]*probeClient{{p1, p2}, {p2, p1}} {
					from, to := dir[0], dir[1]
					addr := to.listen(t, 7000)
					r, err := from.echo(30*time.Second, addr, peerEchoSize)
					if err != nil {
						t.Fatalf("%s → %s: %v\nfrom: %+v\nto: %+v", from.Host.Name, to.Host.Name, err, from.status(t), to.status(t))
					}
					t.Logf("%s %s → %s %s: %d bytes echoed in %d ms", from.Host.Name, r.Local, to.Host.Name, r.Remote, r.Received, r.Milliseconds)
				}
				checkDirect(t, p1.Host, p1.Teredo.Mapped, p2.Teredo.Mapped)
				checkDirect(t, p2.Host, p2.Teredo.Mapped, p1.Teredo.Mapped)
			})
		})
	}
}

// checkDirect checks that h's NAT holds one flow from the client's mapping straight to
// the peer's mapping: the data did not go through the server.
func checkDirect(t *testing.T, h *Host, self, peer netip.AddrPort) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	flows, err := h.NAT.ClientFlows(ctx, netip.AddrPortFrom(h.IPv4[0], 0), peer)
	if err != nil {
		t.Fatal(err)
	}
	if len(flows) != 1 || flows[0].Mapped() != self {
		t.Errorf("NAT of %s: want one direct flow to the peer's mapping %v from our mapping %v, got %+v", h.Name, peer, self, flows)
		return
	}
	// Bubbles are one or two packets; the echo is tens of kilobytes each way. UDP GSO
	// batches cross the NAT as one packet each, so conntrack counts fewer than the
	// datagrams on the wire.
	if f := flows[0]; f.OrigPackets < 10 || f.ReplyPackets < 10 {
		t.Errorf("NAT of %s: the direct flow to %v carried only %d packets out and %d in", h.Name, peer, f.OrigPackets, f.ReplyPackets)
	}
}
