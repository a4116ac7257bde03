// Package relay is the Teredo relay role (RFC 4380 §5.4) and the
// host-specific relay: it forwards IPv6 packets between native IPv6 hosts,
// reached through a Device, and Teredo clients, reached over UDP/IPv4.
//
// The relay is a state machine driven by two readers (the UDP socket and the
// Device) and a clock; the peer table (package peer) holds one entry per
// Teredo client it talks to. Its transmit rules (§5.4.1): a packet to a
// trusted peer is encapsulated to the peer's mapped endpoint; a packet to an
// unknown peer is queued while bubbles go to the peer's server every 2 s, up
// to 3 repeats, and if none is answered the queue is discarded with an ICMPv6
// "address unreachable" (rate-limited) towards the IPv6 side. Its receive
// rules (§5.4.2): the source must be a Teredo address whose embedded mapping
// equals the UDP source, or, as Miredo allows for clients behind symmetric
// NATs, a bubble addressed to the nonce-derived link-local source of our own
// bubbles to that client; only destinations the relay serves go to the
// Device. See README.md in this directory for how to run one.
package relay

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/teredo-go/teredo/clock"
	"github.com/teredo-go/teredo/internal/ratelimit"
	"github.com/teredo-go/teredo/peer"
	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/udpio"
)

// Device is the relay's IPv6 side: a TUN interface (package relay/tun) or
// an embedded netstack (package relay/netstack).
//
// ReadPacket and WritePacket may be called concurrently with each other, and
// WritePacket from several goroutines at once.
type Device interface {
	// ReadPacket blocks until an IPv6 packet routed to the relay is
	// available and copies it into b, returning its length. After Close it
	// returns an error wrapping net.ErrClosed.
	ReadPacket(b []byte) (int, error)
	// WritePacket hands one IPv6 packet to the IPv6 side. It does not keep
	// pkt after returning.
	WritePacket(pkt []byte) error
	// Close releases the device and unblocks ReadPacket.
	Close() error
}

// BatchDevice is a Device that can return several packets per read, as
// package relay/tun's does. The relay then routes each batch and sends the
// packets for Teredo peers with one WriteBatch, so that the socket can
// coalesce a bulk stream to one peer into few sends (UDP GSO, see
// udpio.Options.DisableGSO).
type BatchDevice interface {
	Device
	// ReadPackets blocks until at least one packet is available, then
	// copies up to len(bufs) packets into bufs, storing their lengths in
	// sizes, and returns how many it read. After Close it returns an error
	// wrapping net.ErrClosed.
	ReadPackets(bufs [][]byte, sizes []int) (int, error)
}

// BatchWriter is a Device that takes the decapsulated packets of one read
// batch together, as package relay/tun's does: it may merge consecutive TCP
// segments of a flow into one offloaded write, so that the kernel forwards
// a bulk upload once per super-segment rather than once per packet. The
// relay hands it the packets of each batch of datagrams it reads.
type BatchWriter interface {
	Device
	// WritePackets hands pkts to the IPv6 side, keeping the order of the
	// packets of each flow (packets of different flows may be reordered).
	// It returns how many it accepted; the others are dropped, and err
	// describes the first failure. It keeps no reference to pkts or their
	// bytes after returning.
	WritePackets(pkts [][]byte) (int, error)
}

// CountingDevice is a Device that counts its own work, as package
// relay/tun's offload does; Status and WritePrometheus include its counters.
type CountingDevice interface {
	Device
	// DeviceCounters returns cumulative counters by snake_case name.
	DeviceCounters() map[string]uint64
}

// Defaults for Config fields left zero.
const (
	DefaultMaxPeers     = 65536                  // Miredo's relay
	DefaultExpiry       = 30 * time.Second       // RFC 4380 §5.4: the peer validity
	DefaultICMPInterval = 100 * time.Millisecond // Miredo: 10 errors per second
	DefaultSourceRate   = 100                    // slow-path packets per second per source
	DefaultSourceBurst  = 200
	DefaultBatchSize    = 32
	DefaultMaxPacket    = 8192
)

// sourceTableSize bounds each per-source rate-limit table; sources beyond
// it that are still limited share one overflow bucket.
const sourceTableSize = 4096

// ErrServing is returned by a second call to Serve.
var ErrServing = errors.New("relay: Serve already called")

// Config configures a Relay.
type Config struct {
	// Conn is the Teredo side, usually bound to port 3544. The relay owns it
	// and closes it.
	Conn udpio.Conn
	// Device is the IPv6 side. The relay owns it and closes it.
	Device Device

	// Clock drives the bubble timers and the table sweep; nil means the
	// real clock.
	Clock clock.Clock
	// Logger receives debug and warning messages; nil discards them.
	Logger *slog.Logger

	// Prefix is the Teredo prefix; the zero value means 2001::/32, the only
	// one RFC 4380 allows. Other values are for tests.
	Prefix netip.Prefix
	// IPv4Filter decides which embedded server and mapped IPv4 addresses are
	// acceptable; nil means proto.IsGlobalUnicastIPv4 (RFC 4380 §5.4.1).
	// Tests on loopback use proto.AnyIPv4.
	IPv4Filter proto.IPv4Filter

	// HostSpecific makes a host-specific relay: decapsulated packets go to
	// the Device only if IsLocal reports their destination as one of this
	// host's own addresses.
	HostSpecific bool
	IsLocal      func(netip.Addr) bool

	// Other, if set, receives the datagrams a relay does not forward
	// itself: those with an authentication or origin indication (router
	// solicitations), those from non-Teredo sources and those to Teredo
	// destinations, which the relay would drop. A Teredo gateway hands
	// them to the server that shares the relay's socket. It runs on the
	// receive goroutine; b and its bytes are valid only during the call.
	Other func(b []byte, from netip.AddrPort)

	// DropUnknownPeers drops data from Teredo clients that have no table
	// entry even when their mapping checks out, as Miredo does. By default
	// such a packet creates a trusted entry: RFC 4380 §5.4.2 allows either,
	// and accepting keeps clients working across a relay restart or an
	// expired entry.
	DropUnknownPeers bool
	// Hairpin relays between Teredo clients (see hairpin.go): a packet
	// from a client to a Teredo address goes back out to that client, as
	// it would if the relay handed it to an IPv6 side that routes
	// 2001::/32 to the relay, and a client whose packets come from another
	// mapping than its address's (behind a symmetric NAT) is bubbled so
	// that its answer makes it trusted there. Off, such packets are
	// dropped (RxDropDstTeredo, RxDropMappingMismatch), as RFC 4380 and
	// Miredo do.
	Hairpin bool
	// DirectBubbles also sends each bubble to the peer's mapped endpoint,
	// not only through its server. It is off by default: on conntrack NATs
	// an unsolicited packet can make the NAT remap the client's next
	// outbound packet.
	DirectBubbles bool

	// MaxPeers bounds the peer table (default 65536); Expiry is how long
	// an idle entry lives (default 30 s).
	MaxPeers int
	Expiry   time.Duration
	// QueuePackets and QueueBytes bound each peer's queue (peer defaults).
	QueuePackets, QueueBytes int
	// Bubble is the bubble schedule toward a new peer, as peer.Config.Bubble
	// (zero Max means peer.DefaultBubbleLimit: one every 2 s, 4 in all).
	// After the last one goes unanswered for Bubble.Interval, the entry is
	// dropped.
	Bubble peer.Limit
	// ICMPInterval is the minimum spacing of ICMPv6 errors (default 100 ms).
	ICMPInterval time.Duration
	// ICMPSource is the source of ICMPv6 errors. The relay owns no address
	// of its own on the Teredo side; the zero value uses the unreachable
	// destination, which is routable back through the relay.
	ICMPSource netip.Addr
	// SourceRate and SourceBurst limit the slow path per source: packets
	// from Teredo clients that are not trusted yet (per UDP source IPv4)
	// and packets to new peers (per IPv6 source /64). Negative disables.
	SourceRate, SourceBurst int

	// BatchSize is the number of datagrams, or packets from a BatchDevice,
	// read per call; MaxPacket the
	// largest datagram and IPv6 packet handled (default 8192: Teredo's MTU
	// is 1280, larger ones are counted as malformed).
	BatchSize, MaxPacket int
}

func (c *Config) setDefaults() error {
	if c.Conn == nil || c.Device == nil {
		return errors.New("relay: Conn and Device are required")
	}
	if c.Clock == nil {
		c.Clock = clock.Real{}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if !c.Prefix.IsValid() {
		c.Prefix = proto.Prefix
	}
	if !c.Prefix.Addr().Is6() || c.Prefix.Bits() != 32 {
		return fmt.Errorf("relay: prefix %v is not an IPv6 /32", c.Prefix)
	}
	c.Prefix = c.Prefix.Masked()
	if c.IPv4Filter == nil {
		c.IPv4Filter = proto.IsGlobalUnicastIPv4
	}
	if c.HostSpecific && c.IsLocal == nil {
		return errors.New("relay: host-specific mode needs IsLocal")
	}
	if c.HostSpecific && c.Hairpin {
		return errors.New("relay: a host-specific relay serves its own addresses only, not other Teredo clients (Hairpin)")
	}
	if c.MaxPeers <= 0 {
		c.MaxPeers = DefaultMaxPeers
	}
	if c.Expiry <= 0 {
		c.Expiry = DefaultExpiry
	}
	if c.Bubble.Max <= 0 || c.Bubble.Interval <= 0 {
		c.Bubble = peer.DefaultBubbleLimit
	}
	if c.ICMPInterval <= 0 {
		c.ICMPInterval = DefaultICMPInterval
	}
	if c.SourceRate == 0 {
		c.SourceRate = DefaultSourceRate
	}
	if c.SourceBurst <= 0 {
		c.SourceBurst = DefaultSourceBurst
	}
	if c.BatchSize <= 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.MaxPacket <= 0 {
		c.MaxPacket = DefaultMaxPacket
	}
	c.MaxPacket = max(c.MaxPacket, proto.MinMTU+proto.MaxIndicationsLen)
	return nil
}

// Relay is a running Teredo relay. Create it with New, run it with Serve and
// stop it with Close or by cancelling Serve's context.
type Relay struct {
	cfg    Config
	conn   udpio.Conn
	dev    Device
	table  *peer.Table
	log    *slog.Logger
	prefix [4]byte
	secret [32]byte
	epoch  time.Time

	started time.Time
	ctr     counters

	rxLimit *ratelimit.Table // per UDP source IPv4, receive slow path
	txLimit *ratelimit.Table // per IPv6 source /64, new peers

	icmpLimit *ratelimit.Limiter // ICMPv6 errors, one per ICMPInterval

	timerPool sync.Pool // *[]byte scratch for timer callbacks

	closeOnce sync.Once
	closed    chan struct{}
	runMu     sync.Mutex
	running   bool
	done      chan struct{}
}

// New returns a relay for cfg. It does no I/O until Serve.
func New(cfg Config) (*Relay, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	r := &Relay{
		cfg:    cfg,
		conn:   cfg.Conn,
		dev:    cfg.Device,
		log:    cfg.Logger,
		epoch:  cfg.Clock.Now(),
		closed: make(chan struct{}),
		done:   make(chan struct{}),
	}
	r.started = r.epoch
	copy(r.prefix[:], cfg.Prefix.Addr().AsSlice()[:4])
	if _, err := rand.Read(r.secret[:]); err != nil {
		return nil, fmt.Errorf("relay: nonce secret: %w", err)
	}
	src := ratelimit.Rate{PerSecond: float64(cfg.SourceRate), Burst: cfg.SourceBurst}
	r.rxLimit = ratelimit.NewTable(src, sourceTableSize)
	r.txLimit = ratelimit.NewTable(src, sourceTableSize)
	r.icmpLimit = ratelimit.NewLimiter(ratelimit.Rate{PerSecond: float64(time.Second) / float64(cfg.ICMPInterval), Burst: 1})
	r.table = peer.New(peer.Config{
		MaxPeers:     cfg.MaxPeers,
		Expiry:       cfg.Expiry,
		QueuePackets: cfg.QueuePackets,
		QueueBytes:   cfg.QueueBytes,
		Bubble:       cfg.Bubble,
		Clock:        cfg.Clock,
		OnTimer:      r.onTimer,
	})
	return r, nil
}

// Addr returns the Teredo side's local address.
func (r *Relay) Addr() netip.AddrPort { return r.conn.LocalAddr() }

// Serve forwards packets until ctx is done or Close is called, then closes
// the socket and the device. It returns nil after a normal stop, the error
// that stopped a reader, ErrServing if called twice, or net.ErrClosed if
// called after Close (as server.Server.Serve).
func (r *Relay) Serve(ctx context.Context) error {
	r.runMu.Lock()
	select {
	case <-r.closed:
		r.runMu.Unlock()
		return net.ErrClosed
	default:
	}
	if r.running {
		r.runMu.Unlock()
		return ErrServing
	}
	r.running = true
	r.runMu.Unlock()
	defer close(r.done)

	errc := make(chan error, 2)
	go func() { errc <- r.readTeredo() }()
	go func() { errc <- r.readDevice() }()

	var err error
	pending := 2
	select {
	case <-ctx.Done():
	case <-r.closed:
	case err = <-errc:
		pending--
	}
	r.shutdown()
	for ; pending > 0; pending-- {
		<-errc
	}
	select {
	case <-ctx.Done():
		return nil
	case <-r.closed:
		if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) {
			return nil // Close raced with the reader noticing it
		}
	default:
	}
	return err
}

// shutdown closes the socket, the device and the table.
func (r *Relay) shutdown() {
	r.closeOnce.Do(func() { close(r.closed) })
	r.conn.Close()
	r.dev.Close()
	r.table.Close()
}

// Close stops Run and waits for it to return. If Run was never called, it
// releases the socket and the device.
func (r *Relay) Close() error {
	r.runMu.Lock()
	running := r.running
	r.running = true // a later Serve must not start
	r.runMu.Unlock()
	r.shutdown()
	if running {
		<-r.done
	}
	return nil
}

func (r *Relay) now() time.Time { return r.cfg.Clock.Now() }

// inPrefix reports whether the 16-byte address a is in the Teredo prefix.
func (r *Relay) inPrefix(a []byte) bool {
	return a[0] == r.prefix[0] && a[1] == r.prefix[1] && a[2] == r.prefix[2] && a[3] == r.prefix[3]
}

// bubbleSource is the link-local source of our bubbles to the peer at addr
// (see proto.BubbleSource).
func (r *Relay) bubbleSource(addr *[16]byte) netip.Addr {
	return proto.BubbleSource(&r.secret, addr)
}

// readTeredo is the receive loop.
func (r *Relay) readTeredo() error {
	n, size := r.cfg.BatchSize, r.cfg.MaxPacket
	if o, ok := r.conn.(interface{ Offload() (gso, gro bool) }); ok {
		if _, gro := o.Offload(); gro {
			// A coalesced message holds up to 64 KiB of datagrams.
			n, size = min(n, 16), max(size, udpio.MaxGROSize)
		}
	}
	msgs := make([]udpio.Message, n)
	bufs := make([]byte, n*size)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{bufs[i*size : (i+1)*size]}
	}
	var sc scratch
	// Decapsulated packets stay in msgs' buffers until the next ReadBatch,
	// so a BatchWriter gets them all at once.
	sc.bw, _ = r.dev.(BatchWriter)
	for {
		k, err := r.conn.ReadBatch(msgs)
		if err != nil {
			return fmt.Errorf("relay: read: %w", err)
		}
		for i := range k {
			m := &msgs[i]
			b := m.Buffers[0][:m.N]
			if m.SegmentSize <= 0 {
				r.receive(b, m.Addr, &sc)
				continue
			}
			for len(b) > 0 { // datagrams the socket coalesced (UDP GRO)
				var d []byte
				d, b = udpio.NextSegment(b, m.SegmentSize)
				r.receive(d, m.Addr, &sc)
			}
		}
		r.flushDelivered(&sc)
	}
}

// readDevice is the transmit loop.
func (r *Relay) readDevice() error {
	bd, batched := r.dev.(BatchDevice)
	n, size := 1, r.cfg.MaxPacket
	if batched {
		n = r.cfg.BatchSize
	}
	mem := make([]byte, n*size)
	bufs := make([][]byte, n)
	sizes := make([]int, n)
	gather := make([][]byte, n)
	msgs := make([]udpio.Message, n)
	for i := range n {
		bufs[i] = mem[i*size : (i+1)*size : (i+1)*size]
		msgs[i].Buffers = gather[i : i+1 : i+1]
	}
	var sc scratch
	for {
		var (
			k   int
			err error
		)
		if batched {
			k, err = bd.ReadPackets(bufs, sizes)
		} else {
			sizes[0], err = r.dev.ReadPacket(bufs[0])
			k = 1
		}
		if err != nil {
			return fmt.Errorf("relay: device read: %w", err)
		}
		r.transmitBatch(bufs[:k], sizes[:k], msgs, &sc)
	}
}

// transmitBatch routes the packets bufs[i][:sizes[i]] and sends those for
// trusted peers with one WriteBatch. msgs has a one-element Buffers per slot
// and at least len(bufs) slots.
func (r *Relay) transmitBatch(bufs [][]byte, sizes []int, msgs []udpio.Message, sc *scratch) {
	m := 0
	for i := range bufs {
		pkt, to := r.route(bufs[i][:sizes[i]], sc)
		if !to.IsValid() {
			continue
		}
		msgs[m].Buffers[0] = pkt
		msgs[m].Addr = to
		m++
	}
	r.sendBatch(msgs[:m])
}

// sendBatch sends msgs, counting each as forwarded or as an error; a
// datagram the socket refuses is dropped and the rest still go.
func (r *Relay) sendBatch(msgs []udpio.Message) {
	for len(msgs) > 0 {
		n, err := r.conn.WriteBatch(msgs)
		n = min(max(n, 0), len(msgs))
		r.ctr.add(TxForwarded, uint64(n))
		if n == len(msgs) {
			return
		}
		if err != nil {
			r.log.Debug("teredo send failed", "to", msgs[n].Addr, "err", err)
		}
		r.ctr.inc(TxErrors)
		msgs = msgs[n+1:]
	}
}

// scratch is per-goroutine working memory, so that the slow paths reuse
// their buffers.
type scratch struct {
	pkts []peer.Packet
	buf  []byte

	// bw, if set, takes the packets deliver collects in out.
	bw  BatchWriter
	out [][]byte
}
