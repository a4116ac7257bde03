package stack

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/teredo-go/teredo/proto"
)

// loopback returns the host's loopback interface. The unit tests join the
// discovery group there only, and send to it with multicast TTL 0, which
// Linux delivers to the host's own sockets and never transmits: nothing of
// these tests leaves the machine.
func loopback(t *testing.T) *net.Interface {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for i := range ifs {
		if ifs[i].Flags&net.FlagLoopback != 0 && ifs[i].Flags&net.FlagUp != 0 {
			return &ifs[i]
		}
	}
	t.Skip("no loopback interface up")
	return nil
}

type datagram struct {
	b    []byte
	from netip.AddrPort
}

// collector is a discovery handler that keeps copies of what it gets.
func collector() (func([]byte, netip.AddrPort), chan datagram) {
	ch := make(chan datagram, 16)
	return func(b []byte, from netip.AddrPort) {
		select {
		case ch <- datagram{bytes.Clone(b), from}:
		default:
		}
	}, ch
}

// multicastSender is a UDP socket on 127.0.0.1 whose multicast goes out of
// lo with TTL 0 and loops back to this host's listeners.
func multicastSender(t *testing.T, lo *net.Interface) (*net.UDPConn, netip.AddrPort) {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	pc := ipv4.NewPacketConn(c)
	for _, err := range []error{pc.SetMulticastInterface(lo), pc.SetMulticastTTL(0), pc.SetMulticastLoopback(true)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return c, c.LocalAddr().(*net.UDPAddr).AddrPort()
}

func receive(t *testing.T, ch chan datagram, what string) datagram {
	t.Helper()
	select {
	case d := <-ch:
		return d
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: nothing delivered within 5 s", what)
		return datagram{}
	}
}

func TestDiscoverySocket(t *testing.T) {
	lo := loopback(t)
	handle, got := collector()
	d, err := listenDiscovery(0, lo, handle, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	port := d.LocalAddr().Port()
	if a := d.LocalAddr().Addr(); !a.IsUnspecified() {
		t.Errorf("bound to %v, want 0.0.0.0", a)
	}
	snd, from := multicastSender(t, lo)
	group := net.UDPAddrFromAddrPort(netip.AddrPortFrom(proto.DiscoveryGroup, port))

	msg := []byte("discovery bubble stand-in")
	if _, err := snd.WriteToUDP(msg, group); err != nil {
		t.Fatal(err)
	}
	dg := receive(t, got, "multicast to the group")
	if !bytes.Equal(dg.b, msg) || dg.from != from {
		t.Errorf("delivered %q from %v, want %q from %v", dg.b, dg.from, msg, from)
	}

	// RFC 4380 §5.2.8: discovery bubbles that arrive by unicast are dropped.
	if _, err := snd.WriteToUDP([]byte("unicast"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port))); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for d.refused.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if d.refused.Load() != 1 {
		t.Errorf("refused %d datagrams, want the unicast one", d.refused.Load())
	}
	select {
	case dg := <-got:
		t.Errorf("unicast datagram %q delivered", dg.b)
	default:
	}
	if n := d.delivered.Load(); n != 1 {
		t.Errorf("delivered %d, want 1", n)
	}

	// Close stops the reader (goleak in TestMain checks it is gone) and may
	// be repeated.
	if err := d.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	select {
	case <-d.done:
	default:
		t.Fatal("reader still running after Close")
	}
	d.Close()
}

// TestDiscoverySocketShared checks that two discovery sockets share a port
// and both get each multicast datagram, as two clients on one host must.
func TestDiscoverySocketShared(t *testing.T) {
	lo := loopback(t)
	log := slog.New(slog.DiscardHandler)
	h1, got1 := collector()
	d1, err := listenDiscovery(0, lo, h1, log)
	if err != nil {
		t.Fatal(err)
	}
	defer d1.Close()
	port := d1.LocalAddr().Port()
	h2, got2 := collector()
	d2, err := listenDiscovery(port, lo, h2, log)
	if err != nil {
		t.Fatalf("second socket on port %d: %v", port, err)
	}
	defer d2.Close()

	snd, _ := multicastSender(t, lo)
	if _, err := snd.WriteToUDP([]byte("both"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(proto.DiscoveryGroup, port))); err != nil {
		t.Fatal(err)
	}
	for i, ch := range []chan datagram{got1, got2} {
		if dg := receive(t, ch, "shared socket"); string(dg.b) != "both" {
			t.Errorf("socket %d got %q", i+1, dg.b)
		}
	}
}

// logBuffer is a slog handler's sink safe for concurrent writes.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestDiscoveryBestEffort checks that a discovery socket that cannot be
// opened leaves a warning and a stack without discovery, never an error.
func TestDiscoveryBestEffort(t *testing.T) {
	// A socket without SO_REUSEADDR holds the port.
	hold, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close()
	port := uint16(hold.LocalAddr().(*net.UDPAddr).Port)

	for _, tc := range []struct {
		name, ifname, want string
	}{
		{"port taken", "", "address already in use"},
		{"no such interface", "no-such-if0", "discovery interface"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs logBuffer
			s := &Stack{
				cfg: Config{LocalDiscovery: true, DiscoveryInterface: tc.ifname},
				log: slog.New(slog.NewTextHandler(&logs, nil)),
			}
			s.startDiscovery(port)
			if s.LocalDiscovery() {
				s.stopDiscovery()
				t.Fatal("discovery runs")
			}
			out := logs.String()
			if !strings.Contains(out, "level=WARN") || !strings.Contains(out, tc.want) {
				t.Errorf("log %q, want a warning with %q", out, tc.want)
			}
			s.stopDiscovery() // a no-op without a socket
		})
	}

	// Off by default: no socket, no log.
	var logs logBuffer
	s := &Stack{log: slog.New(slog.NewTextHandler(&logs, nil))}
	s.startDiscovery(port)
	if s.LocalDiscovery() || logs.String() != "" {
		t.Errorf("discovery off: running %v, log %q", s.LocalDiscovery(), logs.String())
	}
}

// TestDiscoveryStopsOnClose checks that closing while the reader is
// blocked ends it promptly.
func TestDiscoveryStopsOnClose(t *testing.T) {
	lo := loopback(t)
	d, err := listenDiscovery(0, lo, func([]byte, netip.AddrPort) {}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	closed := make(chan error, 1)
	go func() { closed <- d.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("Close did not return within 5 s")
	}
}
