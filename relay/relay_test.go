package relay

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/teredo-go/teredo/clock"
	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/udpio"
	"github.com/teredo-go/teredo/udpio/udpiotest"
)

// fakeDevice is an in-memory IPv6 side that records what the relay writes.
type fakeDevice struct {
	mu      sync.Mutex
	written [][]byte
	in      chan []byte
	closed  chan struct{}
	once    sync.Once
}

func newFakeDevice() *fakeDevice {
	return &fakeDevice{in: make(chan []byte, 16), closed: make(chan struct{})}
}

func (d *fakeDevice) ReadPacket(b []byte) (int, error) {
	select {
	case p := <-d.in:
		return copy(b, p), nil
	case <-d.closed:
		return 0, net.ErrClosed
	}
}

func (d *fakeDevice) WritePacket(p []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.written = append(d.written, append([]byte(nil), p...))
	return nil
}

func (d *fakeDevice) Close() error {
	d.once.Do(func() { close(d.closed) })
	return nil
}

func (d *fakeDevice) take() [][]byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	w := d.written
	d.written = nil
	return w
}

var (
	relayAddr  = netip.MustParseAddrPort("198.51.100.1:3544")
	serverIP   = netip.MustParseAddr("203.0.113.1")
	clientMap  = netip.MustParseAddrPort("192.0.2.10:40000")
	clientMap2 = netip.MustParseAddrPort("192.0.2.11:40001")
	native     = netip.MustParseAddr("2001:db8::1")
	native2    = netip.MustParseAddr("2001:db8:1::1")
	otherNat   = netip.MustParseAddr("2001:db8:2::7")
)

func teredoAddr(server netip.Addr, mapped netip.AddrPort) netip.Addr {
	return proto.Address{Server: server, Flags: 0x1234 & proto.RandomFlagsMask, Mapped: mapped}.Addr()
}

type harness struct {
	t      *testing.T
	clk    *clock.Fake
	net    *udpiotest.Network
	dev    *fakeDevice
	r      *Relay
	server udpio.Conn // the client's Teredo server, receiving indirect bubbles
	client udpio.Conn // a client at clientMap
	sc     scratch
}

func newHarness(t *testing.T, mod func(*Config)) *harness {
	t.Helper()
	h := &harness{t: t, clk: clock.NewFake(time.Unix(1e9, 0)), net: udpiotest.NewNetwork(), dev: newFakeDevice()}
	conn, err := h.net.Listen(relayAddr)
	if err != nil {
		t.Fatal(err)
	}
	if h.server, err = h.net.Listen(netip.AddrPortFrom(serverIP, proto.Port)); err != nil {
		t.Fatal(err)
	}
	if h.client, err = h.net.Listen(clientMap); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Conn: conn, Device: h.dev, Clock: h.clk}
	if mod != nil {
		mod(&cfg)
	}
	if h.r, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.r.Close()
		h.server.Close()
		h.client.Close()
	})
	return h
}

// recv returns the datagrams queued at c without blocking.
func recv(t *testing.T, c udpio.Conn) []udpio.Message {
	t.Helper()
	var out []udpio.Message
	for {
		c.SetReadDeadline(time.Now().Add(5 * time.Millisecond))
		msgs := []udpio.Message{{Buffers: [][]byte{make([]byte, 2048)}}}
		n, err := c.ReadBatch(msgs)
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("read: %v", err)
			}
			return out
		}
		msgs[0].Buffers[0] = msgs[0].Buffers[0][:msgs[0].N]
		out = append(out, msgs[:n]...)
	}
}

func udpPacket(src, dst netip.Addr, payload []byte) []byte {
	b := []byte{0x60, 0, 0, 0, 0, 0, proto.ProtoUDP, 64}
	l := 8 + len(payload)
	b[4], b[5] = byte(l>>8), byte(l)
	s, d := src.As16(), dst.As16()
	b = append(b, s[:]...)
	b = append(b, d[:]...)
	b = append(b, 0x30, 0x39, 0x00, 0x35, byte(l>>8), byte(l), 0, 0)
	return append(b, payload...)
}

func (h *harness) transmit(p []byte) { h.r.transmit(p, &h.sc) }
func (h *harness) receive(p []byte, from netip.AddrPort) {
	h.r.receive(p, from, &h.sc)
}
