package teredotest

import (
	"bytes"
	"context"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/relay"
	"github.com/teredo-go/teredo/udpio"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// rawClient is the least a Teredo client does on the wire, built from proto
// alone, so that the Internet is tested independently of package client.
type rawClient struct {
	t    *testing.T
	conn *udpio.UDPConn
	addr netip.Addr // Teredo address embedding conn's endpoint
}

func newRawClient(t *testing.T, in *Internet) *rawClient {
	t.Helper()
	conn, err := udpio.Listen(netip.MustParseAddrPort("127.0.0.1:0"), udpio.Options{DisableGSO: true, DisableGRO: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	a := proto.Address{Server: in.ServerAddr(), Flags: 0x0102, Mapped: conn.LocalAddr()}
	return &rawClient{t: t, conn: conn, addr: a.Addr()}
}

// read returns the next datagram, parsed.
func (c *rawClient) read() (proto.Packet, netip.AddrPort) {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	msgs := []udpio.Message{{Buffers: [][]byte{make([]byte, 4096)}}}
	if _, err := c.conn.ReadBatch(msgs); err != nil {
		c.t.Fatalf("client read: %v", err)
	}
	var p proto.Packet
	if err := p.Parse(msgs[0].Buffers[0][:msgs[0].N]); err != nil {
		c.t.Fatalf("client got a bad packet: %v", err)
	}
	return p, msgs[0].Addr
}

// echoTest sends an echo request to dst through the server and answers the
// relay's indirect bubble; it returns the relay's endpoint as learnt from
// the echo reply.
func (c *rawClient) echoTest(in *Internet, dst netip.Addr) netip.AddrPort {
	c.t.Helper()
	req := proto.AppendEcho(nil, c.addr, dst, 64, proto.ICMPEchoRequest, 7, 1, []byte("nonce123"))
	if err := c.conn.WriteTo(req, netip.AddrPortFrom(in.ServerAddr(), proto.Port)); err != nil {
		c.t.Fatal(err)
	}
	// The relay bubbles us through the server.
	p, from := c.read()
	if from.Addr() != in.ServerAddr() || !p.HasOrigin || !proto.IsBubble(p.IPv6) {
		c.t.Fatalf("expected an indirect bubble from the server, got %x from %v", p.IPv6, from)
	}
	if p.Origin != in.RelayAddr() {
		c.t.Fatalf("origin %v, want the relay %v", p.Origin, in.RelayAddr())
	}
	ans := proto.AppendBubble(nil, c.addr, proto.Src(p.IPv6), 0)
	if err := c.conn.WriteTo(ans, p.Origin); err != nil {
		c.t.Fatal(err)
	}
	p, from = c.read()
	typ, _, body, ok := proto.ICMPv6(p.IPv6)
	if !ok || typ != proto.ICMPEchoReply || proto.Src(p.IPv6) != dst || !bytes.Equal(body[4:], []byte("nonce123")) {
		c.t.Fatalf("expected the echo reply, got %x from %v", p.IPv6, from)
	}
	return from
}

func TestEchoTestAndUDP(t *testing.T) {
	in := New(t)
	h, err := in.AddHost(netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	port, err := h.ServeUDPEcho(7)
	if err != nil {
		t.Fatal(err)
	}
	c := newRawClient(t, in)
	relayAP := c.echoTest(in, h.Addr())
	if relayAP != in.RelayAddr() {
		t.Fatalf("echo reply from %v, want the relay %v", relayAP, in.RelayAddr())
	}
	// Data now flows straight through the relay, both ways.
	udp := udpPacket(c.addr, h.Addr(), 40000, port, []byte("ping over teredo"))
	if err := c.conn.WriteTo(udp, relayAP); err != nil {
		t.Fatal(err)
	}
	p, from := c.read()
	if from != relayAP || proto.NextHeader(p.IPv6) != proto.ProtoUDP || !bytes.HasSuffix(p.IPv6, []byte("ping over teredo")) {
		t.Fatalf("no UDP echo: %x from %v", p.IPv6, from)
	}
	// The relay counts a packet after handing it on: poll briefly.
	for i := 0; i < 100 && in.Relay().Counter(relay.RxForwarded) != 1; i++ {
		time.Sleep(5 * time.Millisecond)
	}
	st := in.Relay().Status()
	if st.Counters[relay.RxForwarded.String()] != 1 || st.Counters[relay.TxFlushed.String()] != 1 {
		t.Errorf("relay counters: %v", st.Counters)
	}
}

func TestHostDialsClient(t *testing.T) {
	in := New(t)
	h, err := in.AddHost(netip.MustParseAddr("2001:db8:5::5"))
	if err != nil {
		t.Fatal(err)
	}
	c := newRawClient(t, in)
	// A host sends to the client first: the relay queues and bubbles.
	conn, err := h.DialUDP(netip.AddrPortFrom(c.addr, 9999))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write([]byte("hello client")); err != nil {
		t.Fatal(err)
	}
	p, from := c.read()
	if !p.HasOrigin || !proto.IsBubble(p.IPv6) || from.Addr() != in.ServerAddr() {
		t.Fatalf("expected an indirect bubble, got %x", p.IPv6)
	}
	c.conn.WriteTo(proto.AppendBubble(nil, c.addr, proto.Src(p.IPv6), 0), p.Origin)
	p, _ = c.read()
	if !bytes.HasSuffix(p.IPv6, []byte("hello client")) || proto.Src(p.IPv6) != h.Addr() {
		t.Fatalf("queued datagram not delivered: %x", p.IPv6)
	}
}

func TestTwoInternets(t *testing.T) {
	a, b := New(t), New(t)
	if a.ServerAddr() == b.ServerAddr() {
		t.Fatal("two internets share a server address")
	}
	if _, err := a.AddHost(netip.MustParseAddr("2001::1")); err == nil {
		t.Error("a host inside the Teredo prefix was accepted")
	}
	h, _ := a.AddHost(netip.Addr{})
	if _, err := a.AddHost(h.Addr()); err == nil {
		t.Error("a duplicate host was accepted")
	}
}

func TestHTTPAndData(t *testing.T) {
	in := New(t)
	h, _ := in.AddHost(netip.Addr{})
	url, err := h.ServeHTTP(80, DataHandler())
	if err != nil {
		t.Fatal(err)
	}
	if want := "http://[" + h.Addr().String() + "]:80"; url != want {
		t.Errorf("url %q, want %q", url, want)
	}
	// Another host of the same internet fetches it over the netstack.
	h2, _ := in.AddHost(netip.Addr{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := h2.DialTCP(ctx, netip.AddrPortFrom(h.Addr(), 80))
	if err != nil {
		t.Fatal(err)
	}
	conn.Write([]byte("GET /data?n=3&seed=1 HTTP/1.0\r\n\r\n"))
	var buf bytes.Buffer
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf.ReadFrom(conn)
	if !bytes.Contains(buf.Bytes(), []byte("X-Content-Sha256")) {
		t.Errorf("response: %q", buf.String())
	}
}

func udpPacket(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	l := 8 + len(payload)
	b := []byte{0x60, 0, 0, 0, byte(l >> 8), byte(l), proto.ProtoUDP, 64}
	s, d := src.As16(), dst.As16()
	b = append(b, s[:]...)
	b = append(b, d[:]...)
	b = append(b, byte(sport>>8), byte(sport), byte(dport>>8), byte(dport), byte(l>>8), byte(l), 0, 0)
	b = append(b, payload...)
	cs := proto.Checksum(src, dst, proto.ProtoUDP, b[40:])
	b[46], b[47] = byte(cs>>8), byte(cs)
	return b
}

func TestHostSpecific(t *testing.T) {
	in := New(t, WithHostSpecific())
	h, _ := in.AddHost(netip.Addr{})
	port, err := h.ServeUDPEcho(7)
	if err != nil {
		t.Fatal(err)
	}
	c := newRawClient(t, in)
	relayAP := c.echoTest(in, h.Addr())
	// An address that is not one of the hosts is not served.
	c.conn.WriteTo(udpPacket(c.addr, netip.MustParseAddr("2001:db8:ffff::1"), 40000, 7, []byte("x")), relayAP)
	c.conn.WriteTo(udpPacket(c.addr, h.Addr(), 40000, port, []byte("served")), relayAP)
	p, _ := c.read()
	if !bytes.HasSuffix(p.IPv6, []byte("served")) {
		t.Fatalf("got %x", p.IPv6)
	}
	if n := in.Relay().Counter(relay.RxDropDstNotServed); n != 1 {
		t.Errorf("not-served drops = %d, want 1", n)
	}
}
