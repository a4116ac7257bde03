package client

import (
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/teredo-go/teredo/clock"
	"github.com/teredo-go/teredo/peer"
	"github.com/teredo-go/teredo/proto"
)

var (
	t0        = time.Unix(1_700_000_000, 0)
	server1   = netip.MustParseAddr("198.18.0.1")
	server1b  = netip.MustParseAddr("198.18.0.2") // default secondary of server1
	server2   = netip.MustParseAddr("198.18.0.10")
	mappedUs  = netip.MustParseAddrPort("198.51.100.7:40000")
	mappedUs2 = netip.MustParseAddrPort("198.51.100.7:40001")

	peerServer = netip.MustParseAddr("198.18.0.20")
	peerMapped = netip.MustParseAddrPort("203.0.113.5:5000")
	peerAddr   = proto.Address{Server: peerServer, Flags: 0x1234 & proto.RandomFlagsMask, Mapped: peerMapped}.Addr()
	nativeDst  = netip.MustParseAddr("2600:1::80")
	relayAP    = netip.MustParseAddrPort("192.88.98.1:3544") // global, outside 192.88.99/24
	relay2AP   = netip.MustParseAddrPort("203.0.113.99:3544")
)

func ap(a netip.Addr) netip.AddrPort { return netip.AddrPortFrom(a, proto.Port) }

type sent struct {
	b   []byte
	to  netip.AddrPort
	ttl int // IPv4 TTL given with WriteToTTL (ttlNet); 0: the socket's
}

// fakeNet is the client's Transport: it records every datagram.
type fakeNet struct {
	mu   sync.Mutex
	sent []sent
	// respond, if set, sees every datagram first and reports whether it
	// consumed it (a fake server answering refreshes).
	respond func(d sent) bool
}

func (f *fakeNet) WriteTo(b []byte, to netip.AddrPort) error {
	return f.record(sent{b: append([]byte(nil), b...), to: to})
}

func (f *fakeNet) record(d sent) error {
	if f.respond != nil && f.respond(d) {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sent = append(f.sent, d)
	return nil
}

// serve makes a fake server1 answer every refresh RS with mappedUs.
func (h *harness) serve() {
	h.net.respond = func(d sent) bool {
		r, ok := parseRS(d)
		if !ok || d.to != ap(server1) {
			return false
		}
		h.c.Receive(ra(r, server1, mappedUs, 0), ap(server1))
		return true
	}
}

// take returns and forgets the recorded datagrams.
func (f *fakeNet) take() []sent {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.sent
	f.sent = nil
	return s
}

type harness struct {
	t         *testing.T
	clk       *clock.Fake
	net       *fakeNet
	c         *Client
	events    []Event
	delivered [][]byte
}

func newHarness(t *testing.T, mod func(*Config)) *harness {
	t.Helper()
	h := &harness{t: t, clk: clock.NewFake(t0), net: &fakeNet{}}
	cfg := Config{
		Transport: h.net,
		Deliver:   func(b []byte) { h.delivered = append(h.delivered, append([]byte(nil), b...)) },
		Clock:     h.clk,
		Rand:      rand.NewChaCha8([32]byte{1, 2, 3}),
		Servers:   []netip.Addr{server1},
		OnEvent:   func(e Event) { h.events = append(h.events, e) },
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.c = c
	t.Cleanup(func() {
		c.Close()
		if n := h.clk.Pending(); n != 0 {
			t.Errorf("%d timers pending after Close", n)
		}
	})
	return h
}

func (h *harness) advance(d time.Duration) { h.clk.Advance(d) }

func (h *harness) takeEvents() []Event {
	e := h.events
	h.events = nil
	return e
}

func (h *harness) takeDelivered() [][]byte {
	d := h.delivered
	h.delivered = nil
	return d
}

// rs is a router solicitation the client sent.
type rs struct {
	nonce [8]byte
	cone  bool
	src   netip.Addr
	to    netip.AddrPort
}

// parseRS decodes d as an RS, or reports false.
func parseRS(d sent) (rs, bool) {
	var p proto.Packet
	if p.Parse(d.b) != nil || !p.HasAuth {
		return rs{}, false
	}
	ok, cone := proto.IsRS(p.IPv6)
	if !ok {
		return rs{}, false
	}
	return rs{p.Auth.Nonce, cone, proto.Src(p.IPv6), d.to}, true
}

// takeRS returns the RSs sent since the last take, failing on other
// datagrams unless allowOther.
func (h *harness) takeRS() []rs {
	h.t.Helper()
	var out []rs
	for _, d := range h.net.take() {
		r, ok := parseRS(d)
		if !ok {
			h.t.Fatalf("unexpected datagram to %v: %x", d.to, d.b)
		}
		out = append(out, r)
	}
	return out
}

// ra builds the server's answer to r.
func ra(r rs, server netip.Addr, mapped netip.AddrPort, mtu uint32) []byte {
	return proto.AppendRA(nil, &proto.RAParams{Nonce: r.nonce, Server: server, Client: mapped, Dst: r.src, MTU: mtu})
}

// qualify runs a successful qualification and answers the NAT probe with
// the same mapping, leaving the client qualified with a restricted NAT.
func (h *harness) qualify() netip.Addr {
	h.t.Helper()
	if err := h.c.Start(); err != nil {
		h.t.Fatal(err)
	}
	r := h.takeRS()
	if len(r) != 1 {
		h.t.Fatalf("want 1 RS, got %d", len(r))
	}
	h.c.Receive(ra(r[0], server1, mappedUs, 0), ap(server1))
	a, ok := h.c.Addr()
	if !ok {
		h.t.Fatalf("not qualified: %+v", h.c.Status())
	}
	probe := h.takeRS()
	if len(probe) != 1 || probe[0].to != ap(server1b) {
		h.t.Fatalf("NAT probe %+v", probe)
	}
	h.c.Receive(ra(probe[0], server1, mappedUs, 0), ap(server1b))
	h.takeEvents()
	return a
}

// bubbles splits recorded datagrams into bubbles and others.
func bubbles(ds []sent) (bub []sent, other []sent) {
	for _, d := range ds {
		var p proto.Packet
		if p.Parse(d.b) == nil && proto.IsBubble(p.IPv6) {
			bub = append(bub, d)
		} else {
			other = append(other, d)
		}
	}
	return
}

// ipPacket builds an IPv6 UDP-ish packet (next header 17) with payload.
func ipPacket(src, dst netip.Addr, payload string) []byte {
	b := []byte{0x60, 0, 0, 0, 0, byte(len(payload)), proto.ProtoUDP, 64}
	s, d := src.As16(), dst.As16()
	b = append(b, s[:]...)
	b = append(b, d[:]...)
	return append(b, payload...)
}

// icmpErr decodes a delivered ICMPv6 error: type, code and the quoted packet.
func icmpErr(t *testing.T, b []byte) (typ, code uint8, quote []byte) {
	t.Helper()
	if !proto.ValidICMPv6Checksum(b) {
		t.Fatalf("bad ICMPv6 checksum in %x", b)
	}
	typ, code, body, ok := proto.ICMPv6(b)
	if !ok || len(body) < 4 {
		t.Fatalf("not ICMPv6: %x", b)
	}
	return typ, code, body[4:]
}

func (h *harness) peerState(a netip.Addr) peer.State { return h.c.PeerState(a) }

func (h *harness) drops(reason string) uint64 { return h.c.Status().Counters.Drops[reason] }
