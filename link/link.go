// Package link is the gVisor link endpoint of the Teredo client: it hands
// outbound IPv6 packets to a Tunnel, which decides where they go, and injects
// the IPv6 packets the Tunnel extracts from received UDP datagrams, moving
// datagrams in batches through a udpio.Conn.
package link

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"

	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/udpio"
)

// Tunnel is the Teredo client role as the link sees it: it routes outbound
// packets and unwraps inbound datagrams. Implementations must be safe for
// concurrent use by one reader and one writer.
type Tunnel interface {
	// Transmit routes one outbound IPv6 packet, given as a gather list whose
	// first element holds at least the 40-byte IPv6 header.
	// ok == true: the caller must send bufs to dst now (fast path).
	// ok == false: the tunnel has taken care of the packet (copied, queued,
	// dropped, or answered with ICMPv6 through its Deliver callback).
	// The caller keeps ownership of bufs either way.
	Transmit(bufs [][]byte) (dst netip.AddrPort, ok bool)

	// Receive processes one datagram received on the UDP socket and returns
	// the IPv6 packet to inject (a sub-slice of b) or nil. b is only valid
	// during the call.
	Receive(b []byte, from netip.AddrPort) []byte
}

// Defaults for Options fields left zero.
const (
	// DefaultBatchSize matches fifo.BatchSize rounded up, so that one batch
	// of the fifo queueing discipline fits one sendmmsg.
	DefaultBatchSize = 64
	// DefaultReadBufferSize holds a 1280-byte IPv6 packet with the largest
	// indications in front, and IPv6 packets up to 4 KiB from peers whose
	// MTU is larger than ours.
	DefaultReadBufferSize = 4096
)

// Options tunes an Endpoint.
type Options struct {
	// MTU is the IPv6 link MTU; zero means 1280.
	MTU uint32
	// BatchSize is the number of datagrams moved per system call.
	BatchSize int
	// ReadBufferSize is the size of each receive buffer; longer datagrams
	// are truncated by the socket and then dropped by the tunnel.
	ReadBufferSize int
	// The offloads are on by default; the Disable switches turn them off,
	// as everywhere in this module.
	//
	// GSO advertises gVisor's software segmentation offload, so that TCP
	// hands large segments to the stack's own splitter, which is cheaper than
	// building each MSS-sized segment separately.
	DisableGSO bool
	// GRO coalesces the TCP segments of each receive batch with gVisor's
	// generic receive offload before they enter the stack. The endpoint
	// then claims RX checksum offload and verifies UDP, ICMPv6 and
	// unmerged TCP checksums itself (see validChecksum).
	DisableGRO bool
	// Logger receives unexpected socket errors; nil discards them.
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.MTU == 0 {
		o.MTU = proto.MinMTU
	}
	if o.BatchSize <= 0 {
		o.BatchSize = DefaultBatchSize
	}
	if o.BatchSize > udpio.MaxBatch {
		o.BatchSize = udpio.MaxBatch
	}
	if o.ReadBufferSize <= 0 {
		o.ReadBufferSize = DefaultReadBufferSize
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// Stats counts the packets an Endpoint has moved and dropped.
type Stats struct {
	RxDatagrams   uint64 // UDP datagrams received
	RxBatches     uint64 // successful receive calls (RxDatagrams/RxBatches is the mean batch)
	RxPackets     uint64 // IPv6 packets injected into the stack (including Deliver)
	RxNotAttached uint64 // IPv6 packets dropped because no stack was attached
	ReadErrors    uint64 // socket read errors other than shutdown
	RxBadChecksum uint64 // packets dropped for a bad transport checksum (GRO only)
	RxCoalesced   uint64 // received messages carrying several datagrams (UDP GRO)
	TxPackets     uint64 // IPv6 packets sent straight to a UDP destination
	TxTunnel      uint64 // IPv6 packets the tunnel took over (queued, dropped, answered)
	TxErrors      uint64 // IPv6 packets the socket refused to send
	TxBatches     uint64 // send calls
}

// Endpoint is a stack.LinkEndpoint carrying IPv6 over a Tunnel and a
// udpio.Conn. Its reader goroutine runs from Start (or the first Attach)
// until Attach(nil) or Close; the Endpoint never closes the Conn, which
// stays its creator's.
type Endpoint struct {
	conn udpio.Conn
	opts Options
	tun  atomic.Pointer[tunnelBox]
	disp atomic.Pointer[dispatcherBox]
	mtu  atomic.Uint32

	// mu guards the reader's lifecycle.
	mu       sync.Mutex
	running  bool
	stopping atomic.Bool
	done     chan struct{}
	onClose  func()

	// wmu serializes writers over the preallocated batch below; in a stack
	// with the fifo queueing discipline there is only one writer.
	wmu     sync.Mutex
	wmsgs   []udpio.Message
	scratch [][]byte // one MTU-sized buffer per slot, for packets whose header is split

	rmsgs []udpio.Message

	rxDatagrams, rxBatches, rxPackets, rxNotAttached, readErrors atomic.Uint64
	rxBadChecksum, rxCoalesced                                   atomic.Uint64
	txPackets, txTunnel, txErrors, txBatches                     atomic.Uint64
}

type tunnelBox struct{ t Tunnel }
type dispatcherBox struct{ d stack.NetworkDispatcher }

var (
	_ stack.LinkEndpoint = (*Endpoint)(nil)
	_ stack.GSOEndpoint  = (*Endpoint)(nil)
)

// New returns an Endpoint on conn. tun may be nil and set later with
// SetTunnel, because the tunnel usually needs the Endpoint's Deliver.
func New(conn udpio.Conn, tun Tunnel, opts Options) *Endpoint {
	opts = opts.withDefaults()
	e := &Endpoint{conn: conn, opts: opts}
	e.mtu.Store(opts.MTU)
	if tun != nil {
		e.SetTunnel(tun)
	}
	e.wmsgs = make([]udpio.Message, opts.BatchSize)
	e.scratch = make([][]byte, opts.BatchSize)
	for i := range e.wmsgs {
		e.wmsgs[i].Buffers = make([][]byte, 0, 4)
	}
	rbatch, rsize := opts.BatchSize, opts.ReadBufferSize
	if o, ok := conn.(offloader); ok {
		if _, gro := o.Offload(); gro {
			// Each slot must hold a coalesced message of up to 64 KiB;
			// one such message carries dozens of datagrams, so fewer
			// slots move as many per call.
			rsize = max(rsize, udpio.MaxGROSize)
			rbatch = min(rbatch, groBatchSize)
		}
	}
	e.rmsgs = make([]udpio.Message, rbatch)
	bufs := make([]byte, rbatch*rsize)
	for i := range e.rmsgs {
		b := bufs[i*rsize : (i+1)*rsize : (i+1)*rsize]
		e.rmsgs[i].Buffers = [][]byte{b}
	}
	return e
}

// offloader is implemented by a udpio.UDPConn, which may coalesce received
// datagrams.
type offloader interface{ Offload() (gso, gro bool) }

// groBatchSize is the number of receive slots on a socket with UDP GRO.
const groBatchSize = 16

// SetTunnel sets the tunnel that routes and unwraps packets.
func (e *Endpoint) SetTunnel(t Tunnel) { e.tun.Store(&tunnelBox{t}) }

// Start starts the reader goroutine, so that the tunnel receives datagrams
// (to qualify, for instance) before a stack is attached. IPv6 packets that
// arrive while no stack is attached are counted and dropped.
func (e *Endpoint) Start() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.startLocked()
}

func (e *Endpoint) startLocked() {
	if e.running && e.stopping.Load() {
		e.joinLocked()
	}
	if e.running {
		return
	}
	if e.stopping.Load() {
		// A previous stop set a past deadline; clear it.
		e.stopping.Store(false)
		_ = e.conn.SetReadDeadline(time.Time{})
	}
	e.running = true
	e.done = make(chan struct{})
	go e.readLoop(e.done)
}

// signalStopLocked asks the reader to return without waiting for it: the
// reader may be inside DeliverNetworkPacket, waiting for a stack lock that
// the caller (gVisor's NIC removal) holds.
func (e *Endpoint) signalStopLocked() {
	if !e.running || e.stopping.Load() {
		return
	}
	e.stopping.Store(true)
	// A past deadline wakes a blocked ReadBatch; the loop then sees stopping.
	_ = e.conn.SetReadDeadline(time.Now())
}

// joinLocked stops the reader and waits for it.
func (e *Endpoint) joinLocked() {
	if !e.running {
		return
	}
	e.signalStopLocked()
	<-e.done
	e.running = false
}

func (e *Endpoint) readLoop(done chan struct{}) {
	defer close(done)
	msgs := e.rmsgs
	// GRO merges consecutive TCP segments of a flow within one receive
	// batch, so that TCP processes one large segment instead of dozens.
	// It verifies TCP checksums itself before merging.
	var coalescer gro.GRO
	coalescer.Init(!e.opts.DisableGRO)
	for {
		n, err := e.readBatch()
		if e.stopping.Load() {
			return
		}
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			e.readErrors.Add(1)
			e.opts.Logger.Warn("teredo link: read", "err", err)
			// Avoid spinning on a persistent error; the stop path still
			// wakes us through the deadline within this pause.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		e.handleBatch(msgs[:n], &coalescer)
	}
}

// readBatch receives the next batch into e.rmsgs.
func (e *Endpoint) readBatch() (int, error) {
	msgs := e.rmsgs
	for i := range msgs {
		msgs[i].N = 0
	}
	return e.conn.ReadBatch(msgs)
}

// handleBatch unwraps the datagrams of one receive batch and hands the IPv6
// packets to the stack.
func (e *Endpoint) handleBatch(msgs []udpio.Message, coalescer *gro.GRO) {
	e.rxDatagrams.Add(uint64(len(msgs)))
	e.rxBatches.Add(1)
	tb := e.tun.Load()
	if tb == nil {
		return
	}
	db := e.disp.Load()
	if db != nil {
		coalescer.Dispatcher = db.d
	}
	for i := range msgs {
		m := &msgs[i]
		b := m.Buffers[0][:m.N]
		if m.SegmentSize <= 0 || m.N <= m.SegmentSize {
			e.receive(tb.t, db, coalescer, b, m.Addr)
			continue
		}
		// The socket coalesced several datagrams (udpio GRO).
		e.rxCoalesced.Add(1)
		e.rxDatagrams.Add(uint64((len(b)+m.SegmentSize-1)/m.SegmentSize - 1))
		for len(b) > 0 {
			var d []byte
			d, b = udpio.NextSegment(b, m.SegmentSize)
			e.receive(tb.t, db, coalescer, d, m.Addr)
		}
	}
	if db != nil {
		coalescer.Flush()
	}
}

// receive hands one datagram to the tunnel and queues the IPv6 packet it
// yields for the stack.
func (e *Endpoint) receive(t Tunnel, db *dispatcherBox, coalescer *gro.GRO, b []byte, from netip.AddrPort) {
	ip := t.Receive(b, from)
	if ip == nil {
		return
	}
	if db == nil {
		e.rxNotAttached.Add(1)
		return
	}
	if !e.opts.DisableGRO && !validChecksum(ip, true) {
		e.rxBadChecksum.Add(1)
		return
	}
	pkt := newPacket(ip)
	coalescer.Enqueue(pkt) // takes its own reference if it keeps pkt
	pkt.DecRef()
	e.rxPackets.Add(1)
}

// newPacket copies an inbound IPv6 packet into a packet buffer.
//
// Reading datagrams straight into pooled gVisor views instead, to save the
// copy, does not pay at our gVisor pin (measured at commit
// 49cc56e, 2026-12-06): a packet must own its chunk alone, because
// buffer.PullUp copies a shared chunk whole before the headers are parsed
// (one 64 KiB view per coalesced message made receiving three times as
// expensive), so each datagram needs its own pooled chunk all the same,
// and the pool zeroes every chunk it hands out. What the copy costs is
// that Get and zeroing, not the 1280-byte memmove: with one 2 KiB view
// per datagram, BenchmarkTCPStream's CPU per op and teredo-socks's CPU per
// 100 MiB download in BenchmarkLabVsMiredo did not improve.
func newPacket(ip []byte) *stack.PacketBuffer {
	// MakeWithData copies into a pooled chunk, so ip may be reused.
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(ip)})
	pkt.NetworkProtocolNumber = ipv6.ProtocolNumber
	return pkt
}

// Deliver injects an IPv6 packet into the attached stack; it is the
// tunnel's path for packets it releases from its queues and for the ICMPv6
// errors it generates. ipv6 is copied and may be reused on return.
func (e *Endpoint) Deliver(ipv6 []byte) { e.inject(ipv6) }

func (e *Endpoint) inject(ip []byte) {
	db := e.disp.Load()
	if db == nil {
		e.rxNotAttached.Add(1)
		return
	}
	if !e.opts.DisableGRO && !validChecksum(ip, false) {
		e.rxBadChecksum.Add(1)
		return
	}
	pkt := newPacket(ip)
	db.d.DeliverNetworkPacket(ipv6.ProtocolNumber, pkt)
	// DeliverNetworkPacket takes its own references; ours ends here.
	pkt.DecRef()
	e.rxPackets.Add(1)
}

// WritePackets implements stack.LinkWriter. It does not DecRef the packets:
// they stay the caller's (the queueing discipline releases them).
func (e *Endpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	tb := e.tun.Load()
	if tb == nil {
		return 0, &tcpip.ErrClosedForSend{}
	}
	e.wmu.Lock()
	defer e.wmu.Unlock()
	all := pkts.AsSlice()
	for len(all) > 0 {
		k := min(len(all), len(e.wmsgs))
		e.writeBatch(tb.t, all[:k])
		all = all[k:]
	}
	// Packets the tunnel took over or the socket refused are still accounted
	// as written: TCP recovers from the loss, and an error here would make
	// the stack count them twice.
	return pkts.Len(), nil
}

// writeBatch routes len(pkts) <= len(e.wmsgs) packets and sends those
// the tunnel returns as fast-path in one batch.
func (e *Endpoint) writeBatch(t Tunnel, pkts []*stack.PacketBuffer) {
	msgs := e.wmsgs
	n := 0
	var tunneled uint64
	for _, pkt := range pkts {
		m := &msgs[n]
		m.Buffers = appendSlices(m.Buffers[:0], pkt)
		if len(m.Buffers) == 0 {
			continue
		}
		if len(m.Buffers[0]) < header.IPv6MinimumSize {
			// The header straddles views; flatten into this slot's scratch
			// buffer so the tunnel sees a contiguous header.
			m.Buffers = e.flatten(n, m.Buffers)
		}
		dst, ok := t.Transmit(m.Buffers)
		if !ok {
			tunneled++
			continue
		}
		m.Addr = dst
		n++
	}
	if tunneled > 0 {
		e.txTunnel.Add(tunneled)
	}
	sent := 0
	for sent < n {
		k, err := e.conn.WriteBatch(msgs[sent:n])
		e.txBatches.Add(1)
		sent += k
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				e.txErrors.Add(uint64(n - sent))
				break
			}
			// msgs[sent] could not be sent: drop it and go on.
			e.txErrors.Add(1)
			sent++
		}
	}
	e.txPackets.Add(uint64(min(sent, n)))
	for i := range msgs[:n] {
		msgs[i].Buffers = msgs[i].Buffers[:0] // drop references to packet storage
	}
}

// appendSlices appends the views of pkt, from its first header byte on, to
// bufs without allocating (unlike PacketBuffer.AsSlices).
func appendSlices(bufs [][]byte, pkt *stack.PacketBuffer) [][]byte {
	vl, off := pkt.AsViewList()
	for v := vl.Front(); v != nil; v = v.Next() {
		b := v.AsSlice()
		if off >= len(b) {
			off -= len(b)
			continue
		}
		b = b[off:]
		off = 0
		if len(b) > 0 {
			bufs = append(bufs, b)
		}
	}
	return bufs
}

func (e *Endpoint) flatten(slot int, bufs [][]byte) [][]byte {
	total := 0
	for _, b := range bufs {
		total += len(b)
	}
	s := e.scratch[slot]
	if cap(s) < total {
		s = make([]byte, 0, max(total, int(e.MTU())))
		e.scratch[slot] = s
	}
	s = s[:0]
	for _, b := range bufs {
		s = append(s, b...)
	}
	return append(bufs[:0], s)
}

// Stats returns the endpoint's counters.
func (e *Endpoint) Stats() Stats {
	return Stats{
		RxDatagrams:   e.rxDatagrams.Load(),
		RxBatches:     e.rxBatches.Load(),
		RxPackets:     e.rxPackets.Load(),
		RxNotAttached: e.rxNotAttached.Load(),
		ReadErrors:    e.readErrors.Load(),
		RxBadChecksum: e.rxBadChecksum.Load(),
		RxCoalesced:   e.rxCoalesced.Load(),
		TxPackets:     e.txPackets.Load(),
		TxTunnel:      e.txTunnel.Load(),
		TxErrors:      e.txErrors.Load(),
		TxBatches:     e.txBatches.Load(),
	}
}

// MTU implements stack.NetworkLinkEndpoint.
func (e *Endpoint) MTU() uint32 { return e.mtu.Load() }

// SetMTU implements stack.NetworkLinkEndpoint.
func (e *Endpoint) SetMTU(mtu uint32) { e.mtu.Store(mtu) }

// MaxHeaderLength implements stack.NetworkLinkEndpoint: the Teredo and UDP
// headers are the kernel's and the tunnel's business, not the packet's.
func (e *Endpoint) MaxHeaderLength() uint16 { return 0 }

// LinkAddress implements stack.NetworkLinkEndpoint; Teredo has none.
func (e *Endpoint) LinkAddress() tcpip.LinkAddress { return "" }

// SetLinkAddress implements stack.NetworkLinkEndpoint; it is ignored.
func (e *Endpoint) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements stack.NetworkLinkEndpoint. Checksums are neither
// verified nor computed here, so the stack must do both.
func (e *Endpoint) Capabilities() stack.LinkEndpointCapabilities {
	if !e.opts.DisableGRO {
		return stack.CapabilityRXChecksumOffload
	}
	return stack.CapabilityNone
}

// GSOMaxSize implements stack.GSOEndpoint.
func (e *Endpoint) GSOMaxSize() uint32 {
	if !e.opts.DisableGSO {
		return stack.GVisorGSOMaxSize
	}
	return 0
}

// SupportedGSO implements stack.GSOEndpoint.
func (e *Endpoint) SupportedGSO() stack.SupportedGSO {
	if !e.opts.DisableGSO {
		return stack.GVisorGSOSupported
	}
	return stack.GSONotSupported
}

// Attach implements stack.NetworkLinkEndpoint. A non-nil dispatcher starts
// the reader if needed; nil tells it to stop, which Stack.Destroy relies on:
// it calls Attach(nil), Wait and, once it has released its locks, Close,
// which waits for the reader.
func (e *Endpoint) Attach(d stack.NetworkDispatcher) {
	if d == nil {
		e.disp.Store(nil)
		e.mu.Lock()
		e.signalStopLocked()
		e.mu.Unlock()
		return
	}
	e.disp.Store(&dispatcherBox{d})
	e.Start()
}

// IsAttached implements stack.NetworkLinkEndpoint.
func (e *Endpoint) IsAttached() bool { return e.disp.Load() != nil }

// Wait implements stack.NetworkLinkEndpoint. It does not block: gVisor
// calls it with the stack's lock held, which a reader delivering a packet
// may be waiting for. Close waits for the reader.
func (e *Endpoint) Wait() {}

// ARPHardwareType implements stack.NetworkLinkEndpoint.
func (e *Endpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }

// AddHeader implements stack.NetworkLinkEndpoint; there is no link header.
func (e *Endpoint) AddHeader(*stack.PacketBuffer) {}

// ParseHeader implements stack.NetworkLinkEndpoint; there is no link header.
func (e *Endpoint) ParseHeader(*stack.PacketBuffer) bool { return true }

// Close implements stack.NetworkLinkEndpoint: it stops the reader, waits
// for it, and runs the close action. The Conn stays open.
func (e *Endpoint) Close() {
	e.disp.Store(nil)
	e.mu.Lock()
	e.joinLocked()
	f := e.onClose
	e.onClose = nil
	e.mu.Unlock()
	if f != nil {
		f()
	}
}

// SetOnCloseAction implements stack.NetworkLinkEndpoint.
func (e *Endpoint) SetOnCloseAction(f func()) {
	e.mu.Lock()
	e.onClose = f
	e.mu.Unlock()
}
