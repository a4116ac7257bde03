package lab

import (
	"net/netip"
	"testing"
	"time"
)

// TestClientViaMiredoRelay has the project's client, behind home routers, reach the
// IPv6-only host through a Miredo relay (an HTTP download found by the echo test), and
// the IPv6-only host open a TCP connection to a listener on a client that never
// talked to it (the relay bubbles the client through its server; the client checks
// the relay with the echo test before it accepts the packet).
func TestClientViaMiredoRelay(t *testing.T) {
	for _, impl := range serverImpls {
		t.Run(impl.name, func(t *testing.T) {
			impl.require(t)
			l := New(t, Options{Clients: []ClientSpec{{"a1", HomeRouter}, {"a2", HomeRouter}}})
			srv := impl.start(t, l)
			StartMiredoRelay(t, l.Relay, MiredoRelayOptions{})
			f := l.V6Host.ServeFile(t, netip.AddrPortFrom(V6HostAddr, 8080), 4<<20)
			t.Run("download", func(t *testing.T) {
				p := startProbe(t, l.Clients["a1"], srv, probeOptions{})
				checkDownload(t, p, f)
			})
			t.Run("inbound", func(t *testing.T) {
				p := startProbe(t, l.Clients["a2"], srv, probeOptions{})
				checkInbound(t, l.V6Host, p, miredoEchoSize) // echoed into the Miredo relay's socket
			})
		})
	}
}

// checkDownload downloads f through the client's tunnel and verifies it.
func checkDownload(t *testing.T, p *probeClient, f *FileServer) {
	t.Helper()
	got, took, err := p.get(40*time.Second, f.URL)
	if err != nil {
		t.Fatalf("download %s through %v: %v\nclient status: %+v", f.URL, p.Addr, err, p.status(t))
	}
	if err := f.Verify(got); err != nil {
		t.Fatal(err)
	}
	t.Logf("%v downloaded %d bytes from %v in %v (%.1f MB/s)", p.Addr, got.Size, f.Addr, took, float64(got.Size)/took.Seconds()/1e6)
}

// checkInbound has from open a TCP connection to an echo listener on the client and
// checks size bytes both ways.
func checkInbound(t *testing.T, from *Host, p *probeClient, size int64) {
	t.Helper()
	addr := p.listen(t, 7000)
	if addr.Addr() != p.Addr {
		t.Fatalf("listener on %v, want the Teredo address %v", addr, p.Addr)
	}
	r, err := echoFrom(from, 40*time.Second, addr, size)
	if err != nil {
		t.Fatalf("%s → %v: %v\nclient status: %+v", from.Name, addr, err, p.status(t))
	}
	if st := p.status(t); st.Listeners["7000"].Accepted != 1 {
		t.Errorf("client's listener accepted %d connections, want 1", st.Listeners["7000"].Accepted)
	}
	t.Logf("%s (%s) → %v: %d bytes echoed in %d ms", from.Name, r.Local, addr, r.Received, r.Milliseconds)
}
