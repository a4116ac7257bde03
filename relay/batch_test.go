package relay

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/teredo-go/teredo/peer"
	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/udpio"
)

// batchDevice is a fakeDevice that hands out what is queued in one
// ReadPackets call, like a TUN device drained without blocking.
type batchDevice struct {
	*fakeDevice
	reads int // ReadPackets calls that returned packets
}

func (d *batchDevice) ReadPackets(bufs [][]byte, sizes []int) (int, error) {
	n, err := d.ReadPacket(bufs[0])
	if err != nil {
		return 0, err
	}
	sizes[0] = n
	k := 1
	for ; k < len(bufs); k++ {
		select {
		case p := <-d.in:
			sizes[k] = copy(bufs[k], p)
			continue
		default:
		}
		break
	}
	d.reads++
	return k, nil
}

// batchSlots returns buffers, sizes and message slots for transmitBatch
// holding pkts.
func batchSlots(pkts [][]byte) ([][]byte, []int, []udpio.Message) {
	bufs := make([][]byte, len(pkts))
	sizes := make([]int, len(pkts))
	msgs := make([]udpio.Message, len(pkts))
	for i, p := range pkts {
		bufs[i] = append(make([]byte, 0, 2048), p...)[:2048]
		sizes[i] = len(p)
		msgs[i].Buffers = make([][]byte, 1)
	}
	return bufs, sizes, msgs
}

// TestTransmitBatch checks that a batch is routed packet by packet with the
// transmit rules, and that the packets for trusted peers leave in order.
func TestTransmitBatch(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.IPv4Filter = proto.AnyIPv4 })
	peerAddr := teredoAddr(serverIP, clientMap)
	h.r.table.Update(peerAddr.As16(), true, h.clk.Now(), func(p *peer.Peer) { p.Trust(clientMap) })
	unknown := teredoAddr(serverIP, clientMap2)
	first := udpPacket(native, peerAddr, []byte("first"))
	second := udpPacket(native, peerAddr, []byte("second"))
	bufs, sizes, msgs := batchSlots([][]byte{
		first,
		{0x60, 0, 0},                            // malformed
		udpPacket(native, native2, []byte("x")), // not Teredo
		append(second, "trailing"...),           // trimmed to its IPv6 length
		udpPacket(native, unknown, []byte("queued")),
	})
	h.r.transmitBatch(bufs, sizes, msgs, &h.sc)

	got := recv(t, h.client)
	if len(got) != 2 || !bytes.Equal(got[0].Buffers[0], first) || !bytes.Equal(got[1].Buffers[0], second) {
		t.Fatalf("client got %d datagrams, want first and second in order", len(got))
	}
	if b := recv(t, h.server); len(b) != 1 || !proto.IsBubble(b[0].Buffers[0]) {
		t.Errorf("server got %d datagrams, want one bubble", len(b))
	}
	for c, want := range map[Counter]uint64{
		TxForwarded: 2, TxDropMalformed: 1, TxDropNotTeredo: 1, TxQueued: 1, TxErrors: 0,
	} {
		if n := h.r.Counter(c); n != want {
			t.Errorf("%v = %d, want %d", c, n, want)
		}
	}
}

// failConn refuses the datagram at index failAt of the first WriteBatch.
type failConn struct {
	nullConn
	failAt int
	calls  int
	sent   []netip.AddrPort
}

var errRefused = errors.New("refused")

func (c *failConn) WriteBatch(m []udpio.Message) (int, error) {
	c.calls++
	for i := range m {
		if c.calls == 1 && i == c.failAt {
			return i, errRefused
		}
		c.sent = append(c.sent, m[i].Addr)
	}
	return len(m), nil
}

// TestTransmitBatchWriteError checks that a refused datagram is counted and
// skipped while the rest of the batch still goes.
func TestTransmitBatchWriteError(t *testing.T) {
	conn := &failConn{failAt: 1}
	r, err := New(Config{Conn: conn, Device: &nullDevice{}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.table.Close()
	peerAddr := teredoAddr(serverIP, clientMap)
	r.table.Update(peerAddr.As16(), true, r.now(), func(p *peer.Peer) { p.Trust(clientMap) })
	pkt := udpPacket(native, peerAddr, []byte("p"))
	bufs, sizes, msgs := batchSlots([][]byte{pkt, pkt, pkt, pkt})
	var sc scratch
	r.transmitBatch(bufs, sizes, msgs, &sc)
	if r.Counter(TxForwarded) != 3 || r.Counter(TxErrors) != 1 || len(conn.sent) != 3 || conn.calls != 2 {
		t.Errorf("forwarded %d, errors %d, sent %d in %d calls; want 3, 1, 3 in 2",
			r.Counter(TxForwarded), r.Counter(TxErrors), len(conn.sent), conn.calls)
	}
}

func TestBatchSteadyStateAllocs(t *testing.T) {
	r, err := New(Config{Conn: &nullConn{}, Device: &nullDevice{}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.table.Close()
	peerAddr := teredoAddr(serverIP, clientMap)
	r.table.Update(peerAddr.As16(), true, r.now(), func(p *peer.Peer) { p.Trust(clientMap) })
	pkts := make([][]byte, DefaultBatchSize)
	for i := range pkts {
		pkts[i] = udpPacket(native, peerAddr, make([]byte, 100))
	}
	bufs, sizes, msgs := batchSlots(pkts)
	var sc scratch
	if n := testing.AllocsPerRun(200, func() { r.transmitBatch(bufs, sizes, msgs, &sc) }); n != 0 {
		t.Errorf("transmitBatch allocates %v per batch of %d", n, len(pkts))
	}
}

// TestRunBatchDevice drives the transmit loop through ReadPackets.
func TestRunBatchDevice(t *testing.T) {
	dev := &batchDevice{fakeDevice: newFakeDevice()}
	r, client := newLoopRelay(t, Config{Device: dev, IPv4Filter: proto.AnyIPv4})
	peerAddr := teredoAddr(serverIP, clientMap)
	r.table.Update(peerAddr.As16(), true, r.now(), func(p *peer.Peer) { p.Trust(clientMap) })
	const n = 10
	for i := range n { // queued before Serve, so that the first read takes them all
		dev.in <- udpPacket(native, peerAddr, []byte{byte(i)})
	}
	done := make(chan error, 1)
	go func() { done <- r.Serve(context.Background()) }()
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	msgs := []udpio.Message{{Buffers: [][]byte{make([]byte, 2048)}}}
	for i := range n {
		if _, err := client.ReadBatch(msgs); err != nil {
			t.Fatalf("client read %d: %v", i, err)
		}
		p := msgs[0].Buffers[0][:msgs[0].N]
		if p[len(p)-1] != byte(i) {
			t.Fatalf("datagram %d carries packet %d", i, p[len(p)-1])
		}
	}
	r.Close()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
	if dev.reads != 1 {
		t.Errorf("%d packets took %d ReadPackets calls, want 1", n, dev.reads)
	}
}

// writerDevice is a fakeDevice that takes delivered packets in batches and
// refuses those whose payload ends in "bad".
type writerDevice struct {
	*fakeDevice
	batches []int
}

func (d *writerDevice) WritePackets(pkts [][]byte) (int, error) {
	d.mu.Lock()
	d.batches = append(d.batches, len(pkts))
	d.mu.Unlock()
	n := 0
	var first error
	for _, p := range pkts {
		if bytes.HasSuffix(p, []byte("bad")) {
			first = cmp.Or(first, errRefused)
			continue
		}
		d.WritePacket(p)
		n++
	}
	return n, first
}

// TestRunBatchWriter checks that the packets decapsulated from one read
// batch reach a BatchWriter together, in order, and that each is counted.
func TestRunBatchWriter(t *testing.T) {
	dev := &writerDevice{fakeDevice: newFakeDevice()}
	r, client := newLoopRelay(t, Config{Device: dev, IPv4Filter: proto.AnyIPv4})
	peerAddr := teredoAddr(serverIP, clientMap)
	payloads := []string{"a", "b", "bad", "c", "to teredo", "d"}
	for _, p := range payloads { // queued before Serve, so that one read takes them all
		dst := native
		if p == "to teredo" {
			dst = teredoAddr(serverIP, clientMap2) // dropped: not served
		}
		if err := client.WriteTo(udpPacket(peerAddr, dst, []byte(p)), relayAddr); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- r.Serve(context.Background()) }()
	deadline := time.Now().Add(5 * time.Second)
	for r.Counter(RxForwarded)+r.Counter(RxErrors) < 5 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	r.Close()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
	var got []string
	for _, p := range dev.take() {
		got = append(got, string(p[proto.IPv6HeaderLen+8:]))
	}
	if !slices.Equal(got, []string{"a", "b", "c", "d"}) || !slices.Equal(dev.batches, []int{5}) {
		t.Errorf("device got %q in batches %v; want a, b, c, d in one batch of 5", got, dev.batches)
	}
	if f, e, d := r.Counter(RxForwarded), r.Counter(RxErrors), r.Counter(RxDropDstTeredo); f != 4 || e != 1 || d != 1 {
		t.Errorf("forwarded %d, errors %d, dst Teredo %d; want 4, 1, 1", f, e, d)
	}
}

// nullBatchWriter accepts every batch.
type nullBatchWriter struct{ nullDevice }

func (*nullBatchWriter) WritePackets(p [][]byte) (int, error) { return len(p), nil }

func TestBatchWriterSteadyStateAllocs(t *testing.T) {
	r, err := New(Config{Conn: &nullConn{}, Device: &nullBatchWriter{}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.table.Close()
	peerAddr := teredoAddr(serverIP, clientMap)
	r.table.Update(peerAddr.As16(), true, r.now(), func(p *peer.Peer) { p.Trust(clientMap) })
	in := udpPacket(peerAddr, native, make([]byte, 100))
	sc := scratch{bw: &nullBatchWriter{}}
	batch := func() {
		for range DefaultBatchSize {
			r.receive(in, clientMap, &sc)
		}
		r.flushDelivered(&sc)
	}
	batch() // AllocsPerRun runs it once more before counting
	if n := testing.AllocsPerRun(200, batch); n != 0 {
		t.Errorf("a batch allocates %v", n)
	}
	if got := r.Counter(RxForwarded); got != 202*DefaultBatchSize {
		t.Errorf("forwarded %d, want %d", got, 202*DefaultBatchSize)
	}
}
