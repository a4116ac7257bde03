package relay

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/udpio"
	"github.com/teredo-go/teredo/udpio/udpiotest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// newLoopRelay returns a relay built from cfg on an in-memory network, its
// socket at relayAddr, and a client socket at clientMap that the test's
// cleanup closes. The test runs the relay itself.
func newLoopRelay(t *testing.T, cfg Config) (*Relay, udpio.Conn) {
	t.Helper()
	nw := udpiotest.NewNetwork()
	conn, err := nw.Listen(relayAddr)
	if err != nil {
		t.Fatal(err)
	}
	client, err := nw.Listen(clientMap)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	cfg.Conn = conn
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r, client
}

// TestServe drives the relay through its two readers with the real clock:
// a packet from the IPv6 side to a client that has already talked to the
// relay, and one back.
func TestServe(t *testing.T) {
	dev := newFakeDevice()
	r, client := newLoopRelay(t, Config{Device: dev})
	done := make(chan error, 1)
	go func() { done <- r.Serve(context.Background()) }()

	peerAddr := teredoAddr(serverIP, clientMap)
	up := udpPacket(peerAddr, native, []byte("up"))
	if err := client.WriteTo(up, relayAddr); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for r.Counter(RxForwarded) == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if w := dev.take(); len(w) != 1 {
		t.Fatalf("IPv6 side got %d packets", len(w))
	}
	dev.in <- udpPacket(native, peerAddr, []byte("down"))
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	msgs := []udpio.Message{{Buffers: [][]byte{make([]byte, 2048)}}}
	if _, err := client.ReadBatch(msgs); err != nil {
		t.Fatalf("client read: %v", err)
	}
	if proto.Src(msgs[0].Buffers[0][:msgs[0].N]) != native {
		t.Errorf("client got the wrong packet")
	}
	if r.Addr() != relayAddr {
		t.Errorf("Addr = %v", r.Addr())
	}
	r.Close()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

func TestServeContext(t *testing.T) {
	nw := udpiotest.NewNetwork()
	conn, _ := nw.Listen(relayAddr)
	r, err := New(Config{Conn: conn, Device: newFakeDevice()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Serve(ctx) }()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
	// Serve closed the relay on its way out.
	if err := r.Serve(context.Background()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Serve: %v, want net.ErrClosed", err)
	}
	r.Close()
	// The socket is closed.
	if _, err := nw.Listen(relayAddr); err != nil {
		t.Errorf("socket not released: %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	nw := udpiotest.NewNetwork()
	conn, _ := nw.Listen(relayAddr)
	defer conn.Close()
	for _, cfg := range []Config{
		{},
		{Conn: conn},
		{Conn: conn, Device: newFakeDevice(), Prefix: netip.MustParsePrefix("2001::/48")},
		{Conn: conn, Device: newFakeDevice(), Prefix: netip.MustParsePrefix("10.0.0.0/8")},
		{Conn: conn, Device: newFakeDevice(), HostSpecific: true},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
}

// TestPrefix checks that a test prefix other than 2001::/32 is honoured on
// both paths.
func TestPrefix(t *testing.T) {
	pfx := netip.MustParsePrefix("3fff:1::/32")
	h := newHarness(t, func(c *Config) { c.Prefix = pfx })
	std := teredoAddr(serverIP, clientMap)
	b := std.As16()
	copy(b[:4], pfx.Addr().AsSlice()[:4])
	peerAddr := netip.AddrFrom16(b)
	h.transmit(udpPacket(native, std, nil))
	if h.r.Counter(TxDropNotTeredo) != 1 {
		t.Error("2001::/32 destination accepted under another prefix")
	}
	h.dev.take() // the ICMPv6 error
	h.transmit(udpPacket(native, peerAddr, nil))
	if len(recv(t, h.server)) != 1 {
		t.Error("no bubble for a peer in the test prefix")
	}
	h.receive(udpPacket(peerAddr, native, nil), clientMap)
	if len(h.dev.take()) != 1 {
		t.Errorf("packet from a peer in the test prefix not delivered: %v", h.r.Status().Counters)
	}
}

// TestServeAfterClose checks that Serve on a closed relay fails at once with
// net.ErrClosed, as server.Server.Serve does.
func TestServeAfterClose(t *testing.T) {
	conn, _ := udpiotest.NewNetwork().Listen(relayAddr)
	r, err := New(Config{Conn: conn, Device: newFakeDevice()})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	if err := r.Serve(context.Background()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Serve after Close: %v, want net.ErrClosed", err)
	}
}
