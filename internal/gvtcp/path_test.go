package tcp_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/teredo-go/teredo/clock"
	tcp "github.com/teredo-go/teredo/internal/gvtcp"
	"github.com/teredo-go/teredo/internal/lab/impair"
)

// pathMTU is a Teredo link's MTU.
const pathMTU = 1280

// bottleneck is a link of fixed rate with a drop-tail buffer: what a real
// path has and the impairment line does not, so that a congestion control
// that ignores random loss is also seen to respect a full queue.
type bottleneck struct {
	Rate   float64 // bytes per second; zero: none
	Buffer int     // packets queued before drop-tail
}

// wire carries one direction of the emulated path: the bottleneck (if any),
// then the impairment line's delay and loss.
type wire struct {
	line *impair.Line
	bn   bottleneck

	mu      sync.Mutex
	free    time.Time // when the bottleneck finishes the last queued packet
	dropped int
	data    int // TCP segments with payload offered to the wire
	acks    int // TCP segments without payload (pure ACKs, SYN, FIN)
}

func (w *wire) send(b []byte) {
	if ip := header.IPv6(b); len(b) >= header.IPv6MinimumSize && ip.TransportProtocol() == header.TCPProtocolNumber {
		if tcpHdr := header.TCP(ip.Payload()); len(tcpHdr) >= header.TCPMinimumSize {
			w.mu.Lock()
			if len(tcpHdr) > int(tcpHdr.DataOffset()) {
				w.data++
			} else {
				w.acks++
			}
			w.mu.Unlock()
		}
	}
	if w.bn.Rate > 0 {
		now := time.Now()
		w.mu.Lock()
		if w.free.Before(now) {
			w.free = now
		}
		backlog := w.free.Sub(now).Seconds() * w.bn.Rate / float64(len(b))
		if int(backlog) >= w.bn.Buffer {
			w.dropped++
			w.mu.Unlock()
			return
		}
		w.free = w.free.Add(time.Duration(float64(len(b)) / w.bn.Rate * float64(time.Second)))
		wait := w.free.Sub(now)
		w.mu.Unlock()
		// Serialisation delay: the packet leaves the bottleneck when the
		// ones before it have.
		time.AfterFunc(wait, func() { w.line.Send(b) })
		return
	}
	w.line.Send(b)
}

// path is two gVisor stacks, each with this package's TCP, joined by an
// emulated wide-area path.
type path struct {
	a, b     *stack.Stack
	addrA    tcpip.FullAddress
	addrB    tcpip.FullAddress
	wires    [2]*wire
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	closeAll func()
}

var (
	ipA = tcpip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: 1})
	ipB = tcpip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: 2})
)

func newStack(t testing.TB, cc string, ep stack.LinkEndpoint, addr tcpip.Address) *stack.Stack {
	t.Helper()
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	opt := tcpip.CongestionControlOption(cc)
	sack := tcpip.TCPSACKEnabled(true)
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: tcp.DefaultSendBufferSize, Max: 8 << 20}
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: tcp.DefaultReceiveBufferSize, Max: 8 << 20}
	var recovery tcpip.TCPRecovery // RACK off, as package stack has it
	for _, o := range []tcpip.SettableTransportProtocolOption{&opt, &sack, &moderate, &snd, &rcv, &recovery} {
		if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, o); err != nil {
			t.Fatalf("option %T: %s", o, err)
		}
	}
	if err := s.CreateNIC(1, ep); err != nil {
		t.Fatalf("create NIC: %s", err)
	}
	if err := s.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: ipv6.ProtocolNumber, AddressWithPrefix: addr.WithPrefix()}, stack.AddressProperties{}); err != nil {
		t.Fatalf("add address: %s", err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv6EmptySubnet, NIC: 1}})
	return s
}

// newPath joins two stacks running congestion control cc over a path with
// profile p and, in the direction from a to b, bottleneck bn.
func newPath(t testing.TB, cc string, p impair.Profile, bn bottleneck, seed uint64) *path {
	t.Helper()
	epA := channel.New(8192, pathMTU, "")
	epB := channel.New(8192, pathMTU, "")
	pt := &path{
		a:     newStack(t, cc, epA, ipA),
		b:     newStack(t, cc, epB, ipB),
		addrA: tcpip.FullAddress{NIC: 1, Addr: ipA},
		addrB: tcpip.FullAddress{NIC: 1, Addr: ipB, Port: 80},
	}
	deliver := func(to *channel.Endpoint) func([]byte) {
		return func(b []byte) {
			to.InjectInbound(header.IPv6ProtocolNumber, stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)}))
		}
	}
	lineAB := impair.NewLine(clock.Real{}, p, seed, deliver(epB))
	lineBA := impair.NewLine(clock.Real{}, p, seed+1, deliver(epA))
	pt.wires = [2]*wire{{line: lineAB, bn: bn}, {line: lineBA}}
	ctx, cancel := context.WithCancel(context.Background())
	pt.cancel = cancel
	pump := func(from *channel.Endpoint, w *wire) {
		defer pt.wg.Done()
		for {
			pkt := from.ReadContext(ctx)
			if pkt == nil {
				return
			}
			v := pkt.ToView()
			b := append([]byte(nil), v.AsSlice()...)
			v.Release()
			pkt.DecRef()
			w.send(b)
		}
	}
	pt.wg.Add(2)
	go pump(epA, pt.wires[0])
	go pump(epB, pt.wires[1])
	t.Cleanup(func() {
		cancel()
		pt.wg.Wait()
		lineAB.Close()
		lineBA.Close()
		pt.a.Close()
		pt.b.Close()
		epA.Close()
		epB.Close()
	})
	return pt
}

// upload sends from a to b for at most d or n bytes, whichever ends first,
// and returns the bytes b received and whether their SHA-256 matched.
func (pt *path) upload(t testing.TB, n int64, d time.Duration) (int64, bool) {
	t.Helper()
	l, err := gonet.ListenTCP(pt.b, pt.addrB, ipv6.ProtocolNumber)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer l.Close()
	type result struct {
		n   int64
		sum [32]byte
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer c.Close()
		h := sha256.New()
		n, err := io.Copy(h, c)
		var r result
		r.n, r.err = n, err
		copy(r.sum[:], h.Sum(nil))
		got <- r
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	c, err := gonet.DialContextTCP(ctx, pt.a, pt.addrB, ipv6.ProtocolNumber)
	cancel()
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	rng := rand.NewChaCha8([32]byte{1})
	h := sha256.New()
	chunk := make([]byte, 64<<10)
	deadline := time.Now().Add(d)
	var sent int64
	for sent < n && time.Now().Before(deadline) {
		rng.Read(chunk)
		m := min(int64(len(chunk)), n-sent)
		c.SetWriteDeadline(deadline)
		w, err := c.Write(chunk[:m])
		h.Write(chunk[:w])
		sent += int64(w)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || isTimeout(err) {
				break
			}
			t.Fatalf("write: %v", err)
		}
	}
	// Close queues a FIN behind the data: the receiver reads everything
	// sent, what arrived within d plus what was in flight.
	c.Close()
	select {
	case r := <-got:
		if r.err != nil {
			t.Fatalf("receive: %v", r.err)
		}
		var want [32]byte
		copy(want[:], h.Sum(nil))
		return r.n, r.n == sent && r.sum == want
	case <-time.After(d + 60*time.Second):
		t.Fatalf("receiver did not finish within %v after the sender", d+60*time.Second)
		return 0, false
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
