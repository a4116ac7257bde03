package lab

import (
	"context"
	"encoding/json"
	"net/netip"
	"testing"
	"time"
)

// ourServer is the project's Teredo server, which the NAT traversal tests use (the
// client's behaviour, not the server's, is under test).
func ourServer(t *testing.T, l *Lab) *TeredoServer {
	t.Helper()
	return serverImpls[1].start(t, l)
}

// natEchoSize is what each TCP check of the NAT traversal tests sends and gets back.
const natEchoSize = 256 << 10

// ttlBubbles reads the client's count of hop-limited bubbles from its status.
func ttlBubbles(t *testing.T, p *probeClient) uint64 {
	t.Helper()
	var c struct{ TTLBubbles uint64 }
	if err := json.Unmarshal(p.status(t).Counters, &c); err != nil {
		t.Fatal(err)
	}
	return c.TTLBubbles
}

// flushAll forgets every NAT's conntrack entries, so a subtest starts afresh.
func flushAll(t *testing.T, hosts ...*Host) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, h := range hosts {
		if err := h.NAT.FlushConntrack(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// TestClientPoisonedNATs runs TCP echoes between two of our clients behind NATs
// without an input firewall (plain masquerade), two routed hops apart through the
// transit router. With hop-limited first bubbles (the default) each side reaches the
// other, whoever starts, over the direct flow. With them off (-bubble-ttl -1) the
// first direct bubble reaches the other NAT, which takes it for itself and remaps the
// peer's answer, and the connection fails: the control that shows the test can fail.
func TestClientPoisonedNATs(t *testing.T) {
	requireOurServer(t)
	l := New(t, Options{
		Clients:  []ClientSpec{{"b1", OpenMasquerade}, {"b2", OpenMasquerade}},
		Transit:  []string{"b1", "b2"},
		NoRelay:  true,
		NoV6Host: true,
	})
	srv := ourServer(t, l)
	b1, b2 := l.Clients["b1"], l.Clients["b2"]
	for _, tc := range []struct {
		name     string
		from, to *Host
	}{{"b1-dials-b2", b1, b2}, {"b2-dials-b1", b2, b1}} {
		t.Run(tc.name, func(t *testing.T) {
			flushAll(t, b1, b2)
			from := startProbe(t, tc.from, srv, probeOptions{})
			to := startProbe(t, tc.to, srv, probeOptions{Control: 7901})
			addr := to.listen(t, 7000)
			r, err := from.echo(20*time.Second, addr, natEchoSize)
			if err != nil {
				t.Fatalf("%s → %s: %v\nfrom: %+v\nto: %+v", tc.from.Name, tc.to.Name, err, from.status(t), to.status(t))
			}
			t.Logf("%s → %s: %d bytes echoed in %d ms", r.Local, r.Remote, r.Received, r.Milliseconds)
			if n := ttlBubbles(t, from); n == 0 {
				t.Errorf("%s sent no hop-limited bubble", tc.from.Name)
			}
			checkDirect(t, from.Host, from.Teredo.Mapped, to.Teredo.Mapped)
			checkDirect(t, to.Host, to.Teredo.Mapped, from.Teredo.Mapped)
		})
	}
	t.Run("off", func(t *testing.T) {
		flushAll(t, b1, b2)
		off := probeOptions{Extra: []string{"-bubble-ttl", "-1"}}
		from := startProbe(t, b1, srv, off)
		off.Control = 7901
		to := startProbe(t, b2, srv, off)
		addr := to.listen(t, 7000)
		r, err := from.echo(12*time.Second, addr, natEchoSize)
		if err == nil {
			t.Fatalf("with full-TTL bubbles b1 reached b2 (%d bytes in %d ms): the NATs were not poisoned, so the test proves nothing", r.Received, r.Milliseconds)
		}
		t.Logf("as expected without hop-limited bubbles: %v", err)
		if n := ttlBubbles(t, from); n != 0 {
			t.Errorf("-bubble-ttl -1 still sent %d hop-limited bubbles", n)
		}
	})
}

// TestClientSameNAT runs TCP echoes both ways between two of our clients on the
// LAN of one home router, which does not hairpin: their Teredo addresses carry the
// same public IPv4, and a packet to the other's mapping dies at the router. They
// find each other's LAN endpoint with local discovery (RFC 4380 §5.2.8), or without
// it through the Alternate Address trailer of their indirect bubbles (RFC 6081
// hairpinning, verified by a bubble answer from the LAN endpoint); the data stays on
// the LAN: the NAT holds no flow from a client to its own WAN address. With neither,
// the dial fails: the control.
func TestClientSameNAT(t *testing.T) {
	requireOurServer(t)
	l := New(t, Options{
		Clients:  []ClientSpec{{"e1", HomeRouter}},
		Behind:   map[string]string{"e2": "e1"},
		NoRelay:  true,
		NoV6Host: true,
	})
	srv := ourServer(t, l)
	e1, e2 := l.Clients["e1"], l.Clients["e2"]
	for _, tc := range []struct {
		name  string
		flags []string
	}{
		{"local-discovery", []string{"-local-discovery", "-no-hairpin"}},
		{"alternate-address", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			flushAll(t, e1)
			p1 := startProbe(t, e1, srv, probeOptions{Extra: tc.flags})
			p2 := startProbe(t, e2, srv, probeOptions{Extra: tc.flags, Control: 7901})
			if p1.Teredo.Mapped.Addr() != p2.Teredo.Mapped.Addr() {
				t.Fatalf("e1 and e2 are mapped to %v and %v, want one public address", p1.Teredo.Mapped, p2.Teredo.Mapped)
			}
			for i, dir := range [][2]*probeClient{{p1, p2}, {p2, p1}} {
				from, to := dir[0], dir[1]
				addr := to.listen(t, uint16(7000+i))
				r, err := from.echo(20*time.Second, addr, natEchoSize)
				if err != nil {
					t.Fatalf("%s → %s: %v\nfrom: %+v\nto: %+v", from.Host.Name, to.Host.Name, err, from.status(t), to.status(t))
				}
				t.Logf("%s %s → %s %s: %d bytes echoed in %d ms", from.Host.Name, r.Local, to.Host.Name, r.Remote, r.Received, r.Milliseconds)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			for _, h := range []*Host{e1, e2} {
				flows, err := h.NAT.ClientFlows(ctx, netip.AddrPortFrom(h.IPv4[0], 0), netip.AddrPortFrom(h.NAT.WAN, 0))
				if err != nil {
					t.Fatal(err)
				}
				for _, f := range flows {
					if f.OrigPackets > 4 {
						t.Errorf("%s sent %d packets to the NAT's own address: %+v", h.Name, f.OrigPackets, f)
					}
				}
			}
		})
	}
	t.Run("off", func(t *testing.T) {
		flushAll(t, e1)
		p1 := startProbe(t, e1, srv, probeOptions{Extra: []string{"-no-hairpin"}})
		p2 := startProbe(t, e2, srv, probeOptions{Extra: []string{"-no-hairpin"}, Control: 7901})
		addr := p2.listen(t, 7000)
		if r, err := p1.echo(12*time.Second, addr, natEchoSize); err == nil {
			t.Fatalf("without local discovery and alternate addresses e1 reached e2 (%d bytes in %d ms): the NAT hairpins, so the test proves nothing", r.Received, r.Milliseconds)
		} else {
			t.Logf("as expected without local discovery and alternate addresses: %v", err)
		}
	})
}

// TestClientSymmetricNAT runs TCP echoes both ways between our client behind the
// symmetric NAT (c, a new random port per destination) and our client behind the
// full-cone NAT (d). c's packets to d come from a port its server never saw: d
// answers c's direct bubble where it came from (symmetric.go), and holds c's first
// data packet until c answers an indirect bubble from that same port.
//
// c and a home router (a1) cannot reach each other at all, so that pair is not here
// (see DESIGN.md, "NAT matrix"): a1's NAT lets in only the exact port it sent to, and
// nobody can know the port c's NAT will pick towards a1.
func TestClientSymmetricNAT(t *testing.T) {
	requireOurServer(t)
	l := New(t, Options{
		Clients:  []ClientSpec{{"c", Symmetric}, {"d", FullCone}},
		NoRelay:  true,
		NoV6Host: true,
	})
	srv := ourServer(t, l)
	pc := startProbe(t, l.Clients["c"], srv, probeOptions{})
	pd := startProbe(t, l.Clients["d"], srv, probeOptions{Control: 7902})
	if st := pc.waitNAT(t, 10*time.Second); st.NAT != "symmetric" {
		t.Fatalf("c classified its NAT as %q, want symmetric", st.NAT)
	}
	for i, dir := range [][2]*probeClient{{pc, pd}, {pd, pc}} {
		from, to := dir[0], dir[1]
		t.Run(from.Host.Name+"-to-"+to.Host.Name, func(t *testing.T) {
			addr := to.listen(t, uint16(7000+i))
			r, err := from.echo(12*time.Second, addr, natEchoSize)
			if err != nil {
				t.Fatalf("%s → %s: %v\nfrom: %+v\nto: %+v", from.Host.Name, to.Host.Name, err, from.status(t), to.status(t))
			}
			t.Logf("%s %s → %s %s: %d bytes echoed in %d ms", from.Host.Name, r.Local, to.Host.Name, r.Remote, r.Received, r.Milliseconds)
		})
	}
}
