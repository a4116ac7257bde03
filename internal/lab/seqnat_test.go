package lab

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestPredictableNATs checks the two NAT kinds of seqnat.go with plain UDP and
// conntrack: the sequential NAT gives consecutive flows consecutive ports, the
// port-preserving one keeps a local port for its first flow only.
func TestPredictableNATs(t *testing.T) {
	l := New(t, Options{
		Clients:  []ClientSpec{{"s", SequentialSymmetric}, {"p", PortPreservingSymmetric}},
		NoRelay:  true,
		NoV6Host: true,
	})
	send := func(h *Host, local uint16, to ...netip.Addr) {
		t.Helper()
		c, err := h.ListenPacket("udp4", netip.AddrPortFrom(netip.IPv4Unspecified(), local).String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for _, a := range to {
			if _, err := c.WriteTo([]byte("x"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, 9))); err != nil {
				t.Fatal(err)
			}
		}
	}
	mapped := func(h *Host, local uint16, to netip.Addr) uint16 {
		t.Helper()
		ctx, cancel := contextWithTimeout()
		defer cancel()
		f, err := h.NAT.ClientFlows(ctx, netip.AddrPortFrom(h.IPv4[0], local), netip.AddrPortFrom(to, 9))
		if err != nil || len(f) != 1 {
			t.Fatalf("%s: flows from %d to %v: %+v, %v", h.Name, local, to, f, err)
		}
		return f[0].Mapped().Port()
	}
	for _, h := range []*Host{l.Clients["s"], l.Clients["p"]} {
		send(h, 5000, ServerPrimary, ServerSecondary)
		send(h, 5001, ServerPrimary)
	}
	s := l.Clients["s"]
	s1, s2, s3 := mapped(s, 5000, ServerPrimary), mapped(s, 5000, ServerSecondary), mapped(s, 5001, ServerPrimary)
	t.Logf("sequential: 5000 → %d, %d; 5001 → %d", s1, s2, s3)
	if s2 != s1+1 || s3 != s2+1 || s1 < SeqBase || s3 >= SeqBase+SeqPorts {
		t.Errorf("sequential NAT gave %d, %d, %d", s1, s2, s3)
	}
	p := l.Clients["p"]
	p1, p2, p3 := mapped(p, 5000, ServerPrimary), mapped(p, 5000, ServerSecondary), mapped(p, 5001, ServerPrimary)
	t.Logf("port-preserving: 5000 → %d, %d; 5001 → %d", p1, p2, p3)
	if p1 != 5000 || p2 == 5000 || p3 != 5001 {
		t.Errorf("port-preserving NAT gave %d, %d, %d", p1, p2, p3)
	}
}

// predictionStatus is the part of the probe's /status that port prediction shows.
type predictionStatus struct {
	NAT      string
	NATPorts string `json:"nat_ports"`
	Counters struct {
		PortPredictions, PortPredictionFailures uint64
		RandomPortBubbles, RandomPortAnswers    uint64
	}
}

func (p *probeClient) prediction(t *testing.T) predictionStatus {
	t.Helper()
	var st predictionStatus
	if err := p.call(5*time.Second, "/status", nil, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestSequentialNATPrediction: our client s behind a sequential symmetric NAT
// reaches our clients behind a home router (a, port-restricted) and a full-cone
// NAT (d) with RFC 6081's port prediction (client/portpredict.go): its
// indirect bubble tells each peer the port its NAT gave the direct bubble, and
// the peer answers there too. Without prediction (the control, first) s → a
// fails as from the random symmetric NAT c; s → d works either way (d's NAT
// lets s's direct bubble in). A client behind the port-preserving NAT (p)
// reports its NAT as such. The direction a → s is not helped (see
// portpredict.go) and not checked.
func TestSequentialNATPrediction(t *testing.T) {
	requireOurServer(t)
	l := New(t, Options{
		Clients:  []ClientSpec{{"s", SequentialSymmetric}, {"a", HomeRouter}, {"d", FullCone}, {"p", PortPreservingSymmetric}},
		NoRelay:  true,
		NoV6Host: true,
	})
	srv := ourServer(t, l)
	pa := startProbe(t, l.Clients["a"], srv, probeOptions{Control: 7901})
	pd := startProbe(t, l.Clients["d"], srv, probeOptions{Control: 7902})
	pp := startProbe(t, l.Clients["p"], srv, probeOptions{Control: 7903})
	addrA, addrD := pa.listen(t, 7000), pd.listen(t, 7000)

	t.Run("control", func(t *testing.T) {
		ps := startProbe(t, l.Clients["s"], srv, probeOptions{Control: 7904, Extra: []string{"-no-port-prediction"}})
		if st := ps.waitNAT(t, 10*time.Second); st.NAT != "symmetric" {
			t.Fatalf("s classified its NAT as %q", st.NAT)
		}
		if r, err := ps.echo(9*time.Second, addrA, natEchoSize); err == nil {
			t.Fatalf("s → a worked without port prediction: %+v", r)
		}
		if st := ps.prediction(t); st.NATPorts != "" || st.Counters.RandomPortBubbles != 0 {
			t.Fatalf("prediction off, yet %+v", st)
		}
		ps.Proc.Stop(2 * time.Second)
	})

	ps := startProbe(t, l.Clients["s"], srv, probeOptions{})
	if st := ps.waitNAT(t, 10*time.Second); st.NAT != "symmetric" {
		t.Fatalf("s classified its NAT as %q", st.NAT)
	}
	if st := ps.prediction(t); st.NATPorts != "sequential" {
		t.Fatalf("s: NAT ports %q, want sequential", st.NATPorts)
	}
	for _, to := range []struct {
		p    *probeClient
		addr netip.AddrPort
	}{{pa, addrA}, {pd, addrD}} {
		t.Run("s-to-"+to.p.Host.Name, func(t *testing.T) {
			r, err := ps.echo(9*time.Second, to.addr, natEchoSize)
			if err != nil {
				t.Fatalf("s → %s: %v\ns: %+v\n%s: %+v", to.p.Host.Name, err, ps.prediction(t), to.p.Host.Name, to.p.prediction(t))
			}
			t.Logf("s %s → %s %s: %d bytes echoed in %d ms", r.Local, to.p.Host.Name, r.Remote, r.Received, r.Milliseconds)
			// d has answered s's direct bubble at that port already (its NAT
			// let the bubble in), so the per-destination bound keeps it from
			// answering the Random Port bubble again; a could only answer that.
			if st := to.p.prediction(t); to.p == pa && st.Counters.RandomPortAnswers == 0 {
				t.Errorf("%s answered no random port: %+v", to.p.Host.Name, st)
			}
		})
	}
	st := ps.prediction(t)
	t.Logf("s: %+v", st)
	if st.Counters.PortPredictions < 2 || st.Counters.RandomPortBubbles < 2 {
		t.Errorf("s predicted %d ports, sent %d random port bubbles; want 2 each at least", st.Counters.PortPredictions, st.Counters.RandomPortBubbles)
	}
	if st := pp.waitNAT(t, 10*time.Second); st.NAT != "symmetric" {
		t.Fatalf("p classified its NAT as %q", st.NAT)
	}
	if st := pp.prediction(t); st.NATPorts != "port-preserving" {
		t.Errorf("p: NAT ports %q, want port-preserving", st.NATPorts)
	}
}
