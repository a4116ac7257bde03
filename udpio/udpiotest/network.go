// Package udpiotest provides an in-memory UDP/IPv4 network of udpio.Conn
// endpoints for tests of the packages above udpio, in the spirit of
// wireguard-go's conn/bindtest.
//
// Datagrams are copied on send and queued at the destination endpoint; a
// full queue or a missing destination drops the datagram and counts it, as
// a real network would. A Hook sees every datagram in flight and may drop
// or rewrite it, for example to model loss or a NAT.
package udpiotest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/teredo-go/teredo/udpio"
)

// DefaultQueueLen is the receive queue length of an endpoint, in datagrams,
// when Network.QueueLen is zero.
const DefaultQueueLen = 1024

// MaxDatagram is the largest UDP/IPv4 payload (65535 − 20 − 8 bytes).
const MaxDatagram = 65507

// Errors returned by Listen and WriteBatch.
var (
	ErrAddrInUse   = errors.New("udpiotest: address already in use")
	ErrUnspecified = errors.New("udpiotest: unspecified address")
	ErrTooLarge    = errors.New("udpiotest: datagram too large")
)

// Packet is a datagram in flight, handed to a Hook.
type Packet struct {
	Src, Dst netip.AddrPort
	// Data is the payload; it is valid only during the Hook call.
	Data []byte
	// TTL is the IPv4 time-to-live the sender gave the datagram: DefaultTTL
	// unless it was sent with WriteToTTL. A hook that models routers between
	// the endpoints drops the datagram when it is too small.
	TTL int
}

// DefaultTTL is the TTL of datagrams not sent with WriteToTTL, Linux's default.
const DefaultTTL = 64

// Hook inspects a datagram before delivery and returns false to drop it.
// It may rewrite p, including p.Data, which is a copy of the sender's
// buffer. It is called from the sending goroutine, concurrently for
// concurrent senders.
type Hook func(p *Packet) bool

// Stats counts the fate of datagrams sent on a Network.
type Stats struct {
	Delivered     uint64 // queued at the destination
	DroppedFull   uint64 // destination queue full
	DroppedNoDest uint64 // no endpoint at the destination
	DroppedByHook uint64 // the Hook returned false
}

// Network is an in-memory UDP/IPv4 switch. Its zero value is not usable;
// call NewNetwork.
type Network struct {
	// QueueLen is the receive queue length of endpoints created afterwards;
	// zero means DefaultQueueLen.
	QueueLen int

	mu        sync.RWMutex
	endpoints map[netip.AddrPort]*endpoint
	nextPort  uint16

	hook    atomic.Pointer[Hook]
	scratch sync.Pool // *[]byte copies of datagrams for the hook

	delivered, droppedFull, droppedNoDest, droppedByHook atomic.Uint64
}

// NewNetwork returns an empty network.
func NewNetwork() *Network {
	return &Network{
		endpoints: make(map[netip.AddrPort]*endpoint),
		nextPort:  firstEphemeral,
		scratch:   sync.Pool{New: func() any { return new([]byte) }},
	}
}

const firstEphemeral = 49152

// SetHook installs h for datagrams sent from now on; nil removes it.
func (n *Network) SetHook(h Hook) {
	if h == nil {
		n.hook.Store(nil)
		return
	}
	n.hook.Store(&h)
}

// Stats returns the network's counters.
func (n *Network) Stats() Stats {
	return Stats{
		Delivered:     n.delivered.Load(),
		DroppedFull:   n.droppedFull.Load(),
		DroppedNoDest: n.droppedNoDest.Load(),
		DroppedByHook: n.droppedByHook.Load(),
	}
}

// Listen creates an endpoint at addr, which must have a specified IPv4
// address; port 0 picks a free ephemeral port.
func (n *Network) Listen(addr netip.AddrPort) (udpio.Conn, error) {
	a := addr.Addr().Unmap()
	if !a.Is4() {
		return nil, fmt.Errorf("udpiotest: listen %v: %w", addr, udpio.ErrNotIPv4)
	}
	if a.IsUnspecified() {
		return nil, fmt.Errorf("udpiotest: listen %v: %w", addr, ErrUnspecified)
	}
	addr = netip.AddrPortFrom(a, addr.Port())
	qlen := n.QueueLen
	if qlen <= 0 {
		qlen = DefaultQueueLen
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if addr.Port() == 0 {
		p, ok := n.freePort(a)
		if !ok {
			return nil, fmt.Errorf("udpiotest: listen %v: %w", addr, ErrAddrInUse)
		}
		addr = netip.AddrPortFrom(a, p)
	}
	if _, ok := n.endpoints[addr]; ok {
		return nil, fmt.Errorf("udpiotest: listen %v: %w", addr, ErrAddrInUse)
	}
	e := &endpoint{
		net:    n,
		addr:   addr,
		queue:  make([]queued, qlen),
		ready:  make(chan struct{}, 1),
		closed: make(chan struct{}),
	}
	e.rdl.init()
	n.endpoints[addr] = e
	return e, nil
}

// freePort finds an unused ephemeral port on a; n.mu must be held.
func (n *Network) freePort(a netip.Addr) (uint16, bool) {
	for range 65536 - firstEphemeral {
		p := n.nextPort
		n.nextPort++
		if n.nextPort == 0 {
			n.nextPort = firstEphemeral
		}
		if _, ok := n.endpoints[netip.AddrPortFrom(a, p)]; !ok {
			return p, true
		}
	}
	return 0, false
}

// send delivers one datagram from src.
func (n *Network) send(src, dst netip.AddrPort, data []byte, ttl int) {
	if h := n.hook.Load(); h != nil {
		n.sendHooked(*h, src, dst, data, ttl)
		return
	}
	n.deliver(src, dst, data)
}

// sendHooked runs the hook on a copy, so that it may scribble on Data
// without touching the sender's buffer. It is apart from send because the
// Packet escapes to the heap here.
func (n *Network) sendHooked(h Hook, src, dst netip.AddrPort, data []byte, ttl int) {
	bp := n.scratch.Get().(*[]byte)
	defer n.scratch.Put(bp)
	*bp = append((*bp)[:0], data...)
	p := Packet{Src: src, Dst: dst, Data: *bp, TTL: ttl}
	if !h(&p) {
		n.droppedByHook.Add(1)
		return
	}
	n.deliver(p.Src, p.Dst, p.Data)
}

func (n *Network) deliver(src, dst netip.AddrPort, data []byte) {
	n.mu.RLock()
	e := n.endpoints[dst]
	n.mu.RUnlock()
	switch {
	case e == nil:
		n.droppedNoDest.Add(1)
	case !e.enqueue(src, data):
		n.droppedFull.Add(1)
	default:
		n.delivered.Add(1)
	}
}

func (n *Network) remove(e *endpoint) {
	n.mu.Lock()
	if n.endpoints[e.addr] == e {
		delete(n.endpoints, e.addr)
	}
	n.mu.Unlock()
}

// queued is one slot of an endpoint's ring; data keeps its capacity across
// uses so that a steady flow does not allocate.
type queued struct {
	src  netip.AddrPort
	data []byte
}

type endpoint struct {
	net  *Network
	addr netip.AddrPort

	mu     sync.Mutex // guards the ring
	queue  []queued
	head   int
	count  int
	ready  chan struct{} // holds a token while the ring may be non-empty
	closed chan struct{}
	once   sync.Once

	wmu    sync.Mutex // guards gather
	gather []byte

	rdl deadline
}

var (
	_ udpio.Conn      = (*endpoint)(nil)
	_ udpio.TTLWriter = (*endpoint)(nil)
)

func (e *endpoint) enqueue(src netip.AddrPort, data []byte) bool {
	e.mu.Lock()
	select {
	case <-e.closed:
		e.mu.Unlock()
		return false
	default:
	}
	if e.count == len(e.queue) {
		e.mu.Unlock()
		return false
	}
	q := &e.queue[(e.head+e.count)%len(e.queue)]
	q.src = src
	q.data = append(q.data[:0], data...)
	e.count++
	e.mu.Unlock()
	e.signal()
	return true
}

func (e *endpoint) signal() {
	select {
	case e.ready <- struct{}{}:
	default:
	}
}

func (e *endpoint) ReadBatch(msgs []udpio.Message) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	for {
		select {
		case <-e.closed:
			return 0, e.opError("read", netip.AddrPort{}, net.ErrClosed)
		case <-e.rdl.expired():
			return 0, e.opError("read", netip.AddrPort{}, os.ErrDeadlineExceeded)
		default:
		}
		if n := e.dequeue(msgs); n > 0 {
			return n, nil
		}
		select {
		case <-e.ready:
		case <-e.closed:
		case <-e.rdl.expired():
		}
	}
}

func (e *endpoint) dequeue(msgs []udpio.Message) int {
	e.mu.Lock()
	n := 0
	for n < len(msgs) && e.count > 0 {
		q := &e.queue[e.head]
		m := &msgs[n]
		m.N = scatter(m.Buffers, q.data)
		m.Addr = q.src
		e.head = (e.head + 1) % len(e.queue)
		e.count--
		n++
	}
	more := e.count > 0
	e.mu.Unlock()
	if more {
		e.signal() // another reader may take the rest
	}
	return n
}

func scatter(bufs [][]byte, data []byte) int {
	n := 0
	for _, b := range bufs {
		n += copy(b, data[n:])
	}
	return n
}

func (e *endpoint) WriteBatch(msgs []udpio.Message) (int, error) {
	for i := range msgs {
		m := &msgs[i]
		if len(m.Buffers) == 1 {
			if err := e.WriteTo(m.Buffers[0], m.Addr); err != nil {
				return i, err
			}
			m.N = len(m.Buffers[0])
			continue
		}
		e.wmu.Lock()
		e.gather = e.gather[:0]
		for _, b := range m.Buffers {
			e.gather = append(e.gather, b...)
		}
		err := e.WriteTo(e.gather, m.Addr)
		m.N = len(e.gather)
		e.wmu.Unlock()
		if err != nil {
			m.N = 0
			return i, err
		}
	}
	return len(msgs), nil
}

func (e *endpoint) WriteTo(b []byte, addr netip.AddrPort) error {
	return e.write(b, addr, DefaultTTL)
}

// WriteToTTL implements udpio.TTLWriter: the hook sees ttl in Packet.TTL.
func (e *endpoint) WriteToTTL(b []byte, addr netip.AddrPort, ttl int) error {
	if ttl < 1 || ttl > 255 {
		return e.opError("write", addr, udpio.ErrBadTTL)
	}
	return e.write(b, addr, ttl)
}

func (e *endpoint) write(b []byte, addr netip.AddrPort, ttl int) error {
	select {
	case <-e.closed:
		return e.opError("write", addr, net.ErrClosed)
	default:
	}
	dst := netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	if !dst.Addr().Is4() {
		return e.opError("write", addr, udpio.ErrNotIPv4)
	}
	if len(b) > MaxDatagram {
		return e.opError("write", addr, ErrTooLarge)
	}
	e.net.send(e.addr, dst, b, ttl)
	return nil
}

func (e *endpoint) LocalAddr() netip.AddrPort { return e.addr }

func (e *endpoint) SetReadDeadline(t time.Time) error {
	select {
	case <-e.closed:
		return e.opError("set", netip.AddrPort{}, net.ErrClosed)
	default:
	}
	e.rdl.set(t)
	return nil
}

func (e *endpoint) Close() error {
	err := e.opError("close", netip.AddrPort{}, net.ErrClosed)
	e.once.Do(func() {
		err = nil
		e.mu.Lock()
		close(e.closed)
		e.mu.Unlock()
		e.net.remove(e)
		e.rdl.set(time.Time{})
	})
	return err
}

func (e *endpoint) opError(op string, addr netip.AddrPort, err error) error {
	oe := &net.OpError{Op: op, Net: "udp4", Source: net.UDPAddrFromAddrPort(e.addr), Err: err}
	if addr.IsValid() {
		oe.Addr = net.UDPAddrFromAddrPort(addr)
	}
	return oe
}

// deadline is a settable point in time whose expiry closes a channel, like
// net.Pipe's deadlines.
type deadline struct {
	mu     sync.Mutex
	timer  *time.Timer
	cancel chan struct{} // closed when the deadline passes
}

func (d *deadline) init() { d.cancel = make(chan struct{}) }

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.cancel // the timer fired: wait for it to close cancel
	}
	d.timer = nil
	closed := isClosed(d.cancel)
	if t.IsZero() {
		if closed {
			d.cancel = make(chan struct{})
		}
		return
	}
	if dur := time.Until(t); dur > 0 {
		if closed {
			d.cancel = make(chan struct{})
		}
		cancel := d.cancel
		d.timer = time.AfterFunc(dur, func() { close(cancel) })
		return
	}
	if !closed {
		close(d.cancel)
	}
}

func (d *deadline) expired() chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cancel
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
