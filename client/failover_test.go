package client

import (
	"bytes"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/teredo-go/teredo/peer"
	"github.com/teredo-go/teredo/proto"
)

// TCP flags used by the tests.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

// tcpPacket builds an IPv6 TCP segment (20-byte header, no options) with
// flags and payload. Only what the client reads is filled in.
func tcpPacket(src, dst netip.Addr, flags byte, payload string) []byte {
	plen := 20 + len(payload)
	b := []byte{0x60, 0, 0, 0, byte(plen >> 8), byte(plen), proto.ProtoTCP, 64}
	s, d := src.As16(), dst.As16()
	b = append(b, s[:]...)
	b = append(b, d[:]...)
	tcp := make([]byte, 20)
	tcp[0], tcp[1], tcp[2], tcp[3] = 0x9c, 0x40, 0, 80
	tcp[12] = 5 << 4
	tcp[13] = flags
	b = append(b, tcp...)
	return append(b, payload...)
}

// trustNative runs the echo test to nativeDst and answers it through relay,
// leaving the peer trusted at relay.
func (h *harness) trustNative(us netip.Addr, relay netip.AddrPort) {
	h.t.Helper()
	h.c.Transmit([][]byte{ipPacket(us, nativeDst, "first")})
	ds := h.net.take()
	if len(ds) != 1 || ds[0].to != ap(server1) {
		h.t.Fatalf("echo test sent %+v", ds)
	}
	_, _, _, body := echoRequest(h.t, ds[0])
	h.c.Receive(echoReply(nativeDst, us, body), relay)
	if h.peerState(nativeDst) != peer.Reachable {
		h.t.Fatal("native peer not trusted")
	}
	h.net.take()
}

func TestAwaitsAnswer(t *testing.T) {
	us := netip.MustParseAddr("2001:0:c612:2::1")
	for _, tt := range []struct {
		name string
		pkt  []byte
		want bool
	}{
		{"data", tcpPacket(us, nativeDst, tcpACK, "data"), true},
		{"syn", tcpPacket(us, nativeDst, tcpSYN, ""), true},
		{"fin", tcpPacket(us, nativeDst, tcpFIN|tcpACK, ""), true},
		{"pure ack", tcpPacket(us, nativeDst, tcpACK, ""), false},
		{"rst", tcpPacket(us, nativeDst, tcpRST|tcpACK, ""), false},
		{"udp", ipPacket(us, nativeDst, "data"), false},
		{"truncated tcp", tcpPacket(us, nativeDst, tcpSYN, "")[:50], false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := awaitsAnswer([][]byte{tt.pkt}); got != tt.want {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			// The same in a gather list split inside the TCP header.
			if len(tt.pkt) > 52 {
				split := [][]byte{tt.pkt[:40], tt.pkt[40:52], tt.pkt[52:]}
				if got := awaitsAnswer(split); got != tt.want {
					t.Fatalf("split: got %v, want %v", got, tt.want)
				}
			}
		})
	}
}

// TestRelayFailover: the relay of a native peer stops answering a TCP
// upload; the client forgets it, runs the echo test again, and the segment
// that noticed it goes out through the relay that answers.
func TestRelayFailover(t *testing.T) {
	h := newHarness(t, nil)
	us := h.qualify()
	h.serve()
	h.trustNative(us, relayAP)
	seg := tcpPacket(us, nativeDst, tcpACK, "upload")

	// Sent at 0, 0.2, 0.6, 1.4 s (retransmissions backing off), nothing
	// back: still through the old relay.
	var at time.Duration
	for _, next := range []time.Duration{0, 200 * time.Millisecond, 600 * time.Millisecond, 1400 * time.Millisecond} {
		h.advance(next - at)
		at = next
		if to, ok := h.c.Transmit([][]byte{seg}); !ok || to != relayAP {
			t.Fatalf("at %v: %v %v, want the old relay", at, to, ok)
		}
	}
	if n := h.c.Status().Counters.RelayFailovers; n != 0 {
		t.Fatalf("failovers %d before 3 s of silence", n)
	}
	// At 3 s the next retransmission finds the relay silent.
	h.advance(3*time.Second - at)
	if to, ok := h.c.Transmit([][]byte{seg[:40], seg[40:]}); ok {
		t.Fatalf("sent to %v through a silent relay", to)
	}
	if n := h.c.Status().Counters.RelayFailovers; n != 1 {
		t.Fatalf("failovers %d, want 1", n)
	}
	if st := h.peerState(nativeDst); st != peer.Pending {
		t.Fatalf("state %v, want pending", st)
	}
	ds := h.net.take()
	if len(ds) != 1 || ds[0].to != ap(server1) {
		t.Fatalf("want one echo request to the server, sent %+v", ds)
	}
	_, dst, _, body := echoRequest(t, ds[0])
	if dst != nativeDst {
		t.Fatalf("echo request to %v", dst)
	}
	// The old relay's packets are no longer trusted meanwhile.
	if h.c.Receive(ipPacket(nativeDst, us, "late"), relayAP) != nil {
		t.Fatal("delivered from the forgotten relay")
	}
	// The reply comes through another relay: the queued segment goes there
	// at once, and so does the traffic after it.
	h.c.Receive(echoReply(nativeDst, us, body), relay2AP)
	ds = h.net.take()
	if len(ds) != 1 || ds[0].to != relay2AP || !bytes.Equal(ds[0].b, seg) {
		t.Fatalf("flush %+v, want the segment to %v", ds, relay2AP)
	}
	if to, ok := h.c.Transmit([][]byte{seg}); !ok || to != relay2AP {
		t.Fatalf("after failover: %v %v", to, ok)
	}
	// The packet held from the old relay is not delivered (Miredo's case 6).
	if d := h.takeDelivered(); len(d) != 0 {
		t.Fatalf("%d packets from the old relay delivered", len(d))
	}
	// A second silence on the new relay fails over again.
	h.advance(time.Second)
	h.c.Transmit([][]byte{seg})
	h.advance(time.Second)
	h.c.Transmit([][]byte{seg})
	h.advance(2 * time.Second)
	if _, ok := h.c.Transmit([][]byte{seg}); ok {
		t.Fatal("second silence not noticed")
	}
	if n := h.c.Status().Counters.RelayFailovers; n != 2 {
		t.Fatalf("failovers %d, want 2", n)
	}
}

// TestRelayFailoverSameRelay: a false alarm (the peer answers the echo
// test through the same relay) costs one round trip, not the connection.
func TestRelayFailoverSameRelay(t *testing.T) {
	h := newHarness(t, nil)
	us := h.qualify()
	h.serve()
	h.trustNative(us, relayAP)
	seg := tcpPacket(us, nativeDst, tcpSYN, "")
	// A SYN retransmitted at 1 s and 3 s (gVisor's initial RTO of 1 s):
	// the third finds the relay silent.
	h.c.Transmit([][]byte{seg})
	h.advance(time.Second)
	h.c.Transmit([][]byte{seg})
	h.advance(2 * time.Second)
	if _, ok := h.c.Transmit([][]byte{seg}); ok {
		t.Fatal("silence not noticed")
	}
	_, _, _, body := echoRequest(t, h.net.take()[0])
	h.c.Receive(echoReply(nativeDst, us, body), relayAP)
	if ds := h.net.take(); len(ds) != 1 || ds[0].to != relayAP {
		t.Fatalf("flush %+v", ds)
	}
	if to, ok := h.c.Transmit([][]byte{seg}); !ok || to != relayAP {
		t.Fatalf("%v %v", to, ok)
	}
}

// TestRelayFailoverNever: flows a healthy relay carries are never re-tested.
func TestRelayFailoverNever(t *testing.T) {
	const never = time.Duration(-1)
	for _, tt := range []struct {
		name     string
		pkt      func(us netip.Addr) []byte
		every    time.Duration // one packet sent every
		answer   time.Duration // something comes back this long after each send; never: nothing
		duration time.Duration // below the 30 s validity, which has its own rule
	}{
		{"bidirectional tcp", func(us netip.Addr) []byte { return tcpPacket(us, nativeDst, tcpACK, "data") }, 10 * time.Millisecond, 50 * time.Millisecond, 25 * time.Second},
		{"tcp over a slow path", func(us netip.Addr) []byte { return tcpPacket(us, nativeDst, tcpACK, "data") }, 100 * time.Millisecond, 2900 * time.Millisecond, 25 * time.Second},
		{"one-way udp", func(us netip.Addr) []byte { return ipPacket(us, nativeDst, "stream") }, 10 * time.Millisecond, never, 25 * time.Second},
		{"pure acks", func(us netip.Addr) []byte { return tcpPacket(us, nativeDst, tcpACK, "") }, 100 * time.Millisecond, never, 25 * time.Second},
		{"rsts", func(us netip.Addr) []byte { return tcpPacket(us, nativeDst, tcpRST, "") }, 500 * time.Millisecond, never, 25 * time.Second},
		{"idle", nil, 0, never, 25 * time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, nil)
			us := h.qualify()
			h.serve()
			h.trustNative(us, relayAP)
			// The trusting echo reply counts as the last receive; keep the
			// peer valid for the whole run with one answer at the start.
			in := tcpPacket(nativeDst, us, tcpACK, "")
			const step = 10 * time.Millisecond
			var due []time.Duration // answers on their way
			for now := time.Duration(0); now < tt.duration; now += step {
				for len(due) > 0 && due[0] <= now {
					due = due[1:]
					if h.c.Receive(in, relayAP) == nil {
						t.Fatalf("at %v: answer not delivered", now)
					}
				}
				if tt.pkt != nil && now%tt.every == 0 {
					if to, ok := h.c.Transmit([][]byte{tt.pkt(us)}); !ok || to != relayAP {
						t.Fatalf("at %v: %v %v", now, to, ok)
					}
					if tt.answer != never {
						due = append(due, now+tt.answer)
					}
				}
				h.advance(step)
			}
			if n := h.c.Status().Counters.RelayFailovers; n != 0 {
				t.Fatalf("%d failovers", n)
			}
			if ds := h.net.take(); len(ds) != 0 {
				t.Fatalf("sent %d datagrams (echo tests?)", len(ds))
			}
		})
	}
}

// TestRelayFailoverFixedRelay: a fixed relay bypasses the peer list, so a
// silent one is never replaced.
func TestRelayFailoverFixedRelay(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.FixedRelay = relayAP })
	us := h.qualify()
	h.serve()
	seg := tcpPacket(us, nativeDst, tcpACK, "data")
	for range 100 {
		if to, ok := h.c.Transmit([][]byte{seg}); !ok || to != relayAP {
			t.Fatalf("%v %v", to, ok)
		}
		h.advance(100 * time.Millisecond)
	}
	if n := h.c.Status().Counters.RelayFailovers; n != 0 {
		t.Fatalf("%d failovers", n)
	}
	if ds := h.net.take(); len(ds) != 0 {
		t.Fatalf("sent %+v", ds)
	}
}

// BenchmarkTransmitNativeTCP is the fast path of TCP data to a native peer,
// which also counts the segment for relay failover.
func BenchmarkTransmitNativeTCP(b *testing.B) {
	var last []byte
	c, err := New(Config{
		Transport: transportFunc(func(p []byte, to netip.AddrPort) error { last = bytes.Clone(p); return nil }),
		Deliver:   func([]byte) {},
		Rand:      rand.NewChaCha8([32]byte{7}),
		Servers:   []netip.Addr{server1},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(c.Close)
	c.Start()
	r, _ := parseRS(sent{b: last})
	c.Receive(ra(r, server1, mappedUs, 0), ap(server1))
	us, _ := c.Addr()
	c.Transmit([][]byte{ipPacket(us, nativeDst, "x")})
	_, _, _, body := echoRequest(b, sent{b: last})
	c.Receive(echoReply(nativeDst, us, body), relayAP)
	pkt := tcpPacket(us, nativeDst, tcpACK, string(make([]byte, 1200)))
	in := tcpPacket(nativeDst, us, tcpACK, "")
	bufs := [][]byte{pkt[:40], pkt[40:]}
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	for b.Loop() {
		if _, ok := c.Transmit(bufs); !ok {
			b.Fatal("slow path")
		}
		c.Receive(in, relayAP) // the answers that keep the relay trusted
	}
}

// FuzzAwaitsAnswer reads TCP headers from any gather list that Transmit may
// be given (a first element of at least 40 bytes), split anywhere.
func FuzzAwaitsAnswer(f *testing.F) {
	us := netip.MustParseAddr("2001:0:c612:2::1")
	f.Add(tcpPacket(us, nativeDst, tcpSYN, ""), 45, 52)
	f.Add(tcpPacket(us, nativeDst, tcpACK, "data"), 40, 60)
	f.Add(ipPacket(us, nativeDst, "udp"), 41, 0)
	f.Fuzz(func(t *testing.T, b []byte, s1, s2 int) {
		if len(b) < proto.IPv6HeaderLen {
			return
		}
		bufs := [][]byte{b}
		if s1 >= proto.IPv6HeaderLen && s1 < len(b) {
			bufs = [][]byte{b[:s1], b[s1:]}
			if s2 > s1 && s2 < len(b) {
				bufs = [][]byte{b[:s1], b[s1:s2], b[s2:]}
			}
		}
		if got, whole := awaitsAnswer(bufs), awaitsAnswer([][]byte{b}); got != whole {
			t.Fatalf("split %v, whole %v", got, whole)
		}
	})
}
