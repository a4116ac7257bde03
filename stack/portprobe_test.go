package stack

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestPortProber checks a probe on loopback: it comes from a new socket, the
// answer from its destination is returned, a silent destination gives nil
// after the timeout, and close ends a probe under way at once.
func TestPortProber(t *testing.T) {
	srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	to := srv.LocalAddr().(*net.UDPAddr).AddrPort()
	// The client's own socket, really bound, so that a probe leaving from
	// it (not from a new socket) would fail the check below.
	own, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	main := own.LocalAddr().(*net.UDPAddr).AddrPort()
	p := &portProber{local: func() netip.AddrPort { return main }, sem: make(chan struct{}, maxPortProbes)}
	p.ctx, p.cancel = t.Context(), func() {}
	if p.LocalPort() != main.Port() {
		t.Fatalf("LocalPort %d", p.LocalPort())
	}
	got := make(chan []byte, 1)
	p.Probe([]byte("ping"), to, 5*time.Second, func(b []byte) { got <- b })
	buf := make([]byte, 100)
	srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := srv.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "ping" || from.Port() == main.Port() {
		t.Fatalf("probe %q from %v: %v", buf[:n], from, err)
	}
	srv.WriteToUDPAddrPort([]byte("pong"), from)
	if b := <-got; string(b) != "pong" {
		t.Fatalf("reply %q", b)
	}

	// No answer: nil after the timeout.
	start := time.Now()
	p.Probe([]byte("ping"), to, 100*time.Millisecond, func(b []byte) { got <- b })
	if b := <-got; b != nil || time.Since(start) > 3*time.Second {
		t.Fatalf("silent destination: %q after %v", b, time.Since(start))
	}

	// close ends a long probe at once, and later probes fail at once.
	q := &portProber{local: p.local, sem: make(chan struct{}, 1)}
	q.ctx, q.cancel = context.WithCancel(context.Background())
	q.Probe([]byte("ping"), to, time.Minute, func(b []byte) { got <- b })
	q.close()
	if b := <-got; b != nil {
		t.Fatalf("closed probe: %q", b)
	}
	q.Probe([]byte("ping"), to, time.Minute, func(b []byte) { got <- b })
	if b := <-got; b != nil {
		t.Fatalf("probe after close: %q", b)
	}
}
