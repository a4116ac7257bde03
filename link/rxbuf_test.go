package link

import (
	"bytes"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"

	"github.com/teredo-go/teredo/udpio"
)

// scriptConn is a udpio.Conn whose ReadBatch returns prepared messages, at
// most len(msgs) per call, the way a socket fills its receive buffers.
type scriptConn struct {
	sinkConn
	gro  bool
	msgs []scriptMsg
}

// scriptMsg is one received message: datagrams coalesced when seg > 0.
type scriptMsg struct {
	datagrams [][]byte
	seg       int
}

func (c *scriptConn) ReadBatch(msgs []udpio.Message) (int, error) {
	if len(c.msgs) == 0 {
		return 0, net.ErrClosed
	}
	n := 0
	for n < len(msgs) && len(c.msgs) > 0 {
		m := &msgs[n]
		m.N, m.SegmentSize, m.Addr = 0, c.msgs[0].seg, c.from
		for _, d := range c.msgs[0].datagrams {
			m.N += scatter(m.Buffers, m.N, d)
		}
		c.msgs = c.msgs[1:]
		n++
	}
	return n, nil
}

func (c *scriptConn) Offload() (gso, gro bool) { return false, c.gro }

// keeper is a NetworkDispatcher that holds every packet it is given, as a
// socket queue does, until release.
type keeper struct {
	mu   sync.Mutex
	pkts []*stack.PacketBuffer
}

func (k *keeper) DeliverNetworkPacket(_ tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	k.mu.Lock()
	k.pkts = append(k.pkts, pkt.Clone())
	k.mu.Unlock()
}

func (k *keeper) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

func (k *keeper) len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.pkts)
}

func (k *keeper) contents() [][]byte {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out [][]byte
	for _, p := range k.pkts {
		v := p.ToView()
		out = append(out, bytes.Clone(v.AsSlice()))
		v.Release()
	}
	return out
}

func (k *keeper) release() {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, p := range k.pkts {
		p.DecRef()
	}
	k.pkts = nil
}

// capTunnel unwraps like directTunnel but cuts the capacity of the packet
// it returns, as proto.Packet.Parse does.
type capTunnel struct{ directTunnel }

func (c *capTunnel) Receive(b []byte, from netip.AddrPort) []byte {
	ip := c.directTunnel.Receive(b, from)
	return ip[:len(ip):len(ip)]
}

// copyTunnel unwraps like directTunnel but returns a copy of the packet,
// which the endpoint cannot share.
type copyTunnel struct{ directTunnel }

func (c *copyTunnel) Receive(b []byte, from netip.AddrPort) []byte {
	return bytes.Clone(c.directTunnel.Receive(b, from))
}

// TestReceiveBuffers checks the ownership rules of the receive buffers:
// packets the stack still holds keep their bytes while the reader receives
// batch after batch into its slots, whether they went over in their
// receive buffer or were copied; which of the two happens depends on how
// full the buffer is and on the tunnel. Every buffer goes back to gVisor's
// pool once the packets are released (TestMain's leak check).
func TestReceiveBuffers(t *testing.T) {
	peer := netip.MustParseAddrPort("192.0.2.2:40001")
	seq := 0
	packets := func(n, size int) [][]byte {
		var out [][]byte
		for range n {
			seq++
			out = append(out, ipv6Packet(byte(seq), size))
		}
		return out
	}
	single := func(count, size int) []scriptMsg {
		var out []scriptMsg
		for _, p := range packets(count, size) {
			out = append(out, scriptMsg{datagrams: [][]byte{p}})
		}
		return out
	}
	coalesced := func(count, per, size int) []scriptMsg {
		var out []scriptMsg
		for range count {
			out = append(out, scriptMsg{datagrams: packets(per, size), seg: 40 + size})
		}
		return out
	}
	// A coalesced message whose last datagram is shorter, as GRO ends a
	// run with one.
	short := func(count int) []scriptMsg {
		out := coalesced(count, 10, 1240)
		for i := range out {
			out[i].datagrams = append(out[i].datagrams, packets(1, 700)...)
		}
		return out
	}
	const (
		none = iota
		some
		all
	)
	for _, tc := range []struct {
		name     string
		gro      bool
		tun      string // "copy" or "cap": a tunnel that returns copies, or cuts capacities
		msgs     []scriptMsg
		zeroCopy int
	}{
		{"full datagrams", false, "", single(20, 1240), all},
		{"small datagrams", false, "", single(20, 100), none},
		{"large datagrams", false, "", single(20, 3000), none}, // straddle view and tail
		{"tunnel copies", false, "copy", single(20, 1240), none},
		{"tunnel cuts capacity", false, "cap", single(20, 1240), all},
		{"coalesced", true, "", coalesced(10, 45, 1240), all},
		{"few coalesced", true, "", coalesced(10, 2, 1240), all},
		{"coalesced with a short last", true, "", short(10), all},
		// The first batch was laid out for 1280-byte datagrams: those
		// straddle views and are copied; the next ones fit.
		{"coalesced, other size", true, "", coalesced(10, 40, 1000), some},
		{"coalesced, other size, tunnel cuts capacity", true, "cap", coalesced(10, 40, 1000), some},
		{"coalesced, larger than a view", true, "", coalesced(10, 15, 2500), none},
		{"coalesced acks", true, "", coalesced(10, 45, 60), none},
		{"lone datagrams on a GRO socket", true, "", single(20, 1240), all},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn := &scriptConn{sinkConn: sinkConn{from: peer}, gro: tc.gro, msgs: tc.msgs}
			var want [][]byte
			for _, m := range tc.msgs {
				want = append(want, m.datagrams...)
			}
			var tun Tunnel = &directTunnel{peer: peer}
			switch tc.tun {
			case "copy":
				tun = &copyTunnel{directTunnel{peer: peer}}
			case "cap":
				tun = &capTunnel{directTunnel{peer: peer}}
			}
			// Four slots: the reader reuses or replaces each one
			// several times while the keeper holds every packet.
			ep := New(conn, tun, Options{BatchSize: 4, DisableGSO: true, DisableGRO: true})
			var k keeper
			defer k.release()
			ep.disp.Store(&dispatcherBox{&k})
			var coalescer gro.GRO
			coalescer.Init(false)
			for {
				n, err := ep.readBatch()
				if err != nil {
					break
				}
				ep.handleBatch(n, &coalescer)
			}
			ep.rx.release()
			got := k.contents()
			if len(got) != len(want) {
				t.Fatalf("%d packets delivered, want %d", len(got), len(want))
			}
			for i := range want {
				if !bytes.Equal(got[i], want[i]) {
					t.Fatalf("packet %d changed after delivery: % x..., want % x...", i, got[i][40:48], want[i][40:48])
				}
			}
			st := ep.Stats()
			got0 := none
			switch st.RxZeroCopy {
			case 0:
			case st.RxPackets:
				got0 = all
			default:
				got0 = some
			}
			if got0 != tc.zeroCopy {
				t.Errorf("%d of %d packets handed over in their receive buffer; want %v", st.RxZeroCopy, st.RxPackets, []string{"none", "some", "all"}[tc.zeroCopy])
			}
		})
	}
}

// TestReceiveBuffersReader runs the reader goroutine on a socket and keeps
// every packet delivered: the bytes of the first ones must survive the
// datagrams read after them, and stopping the reader releases its buffers.
func TestReceiveBuffersReader(t *testing.T) {
	a, b := memPair(t)
	defer a.Close()
	defer b.Close()
	ep := New(a, &directTunnel{peer: b.LocalAddr()}, Options{BatchSize: 2, DisableGSO: true, DisableGRO: true})
	k := &keeper{}
	defer k.release()
	ep.Attach(k)
	var want [][]byte
	for i := range 50 {
		p := ipv6Packet(byte(i), 1240)
		want = append(want, p)
		if err := b.WriteTo(p, a.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for k.len() < len(want) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	ep.Close()
	got := k.contents()
	if len(got) != len(want) {
		t.Fatalf("%d packets delivered, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("packet %d changed after delivery", i)
		}
	}
	if st := ep.Stats(); st.RxZeroCopy != uint64(len(want)) {
		t.Errorf("stats %+v: want every packet handed over in its receive buffer", st)
	}
}
