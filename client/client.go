// Package client is the Teredo client role (RFC 4380 §5.2, RFC 5991) as a
// deterministic state machine: qualification and maintenance with a Teredo
// server, NAT classification, the peer list with bubbles and the echo test,
// and the transmit and receive rules. It opens no sockets and starts no
// goroutines: the caller hands it datagrams and outbound IPv6 packets, and
// injects a Transport, a Clock and a Deliver callback.
//
// # Contract with the link endpoint
//
// The link endpoint calls two methods from its goroutines (the link package's
// Tunnel interface):
//
//	// Transmit routes one outbound IPv6 packet, given as a gather list whose
//	// first element holds at least the 40-byte IPv6 header.
//	// ok == true: the caller must send bufs to dst now (fast path: trusted,
//	// valid peer; last-send updated).
//	// ok == false: the client has taken care of the packet (copied and
//	// queued it, started bubbles or the echo test, dropped it, or answered
//	// with an ICMPv6 error through Deliver). The caller keeps ownership of
//	// bufs either way.
//	Transmit(bufs [][]byte) (dst netip.AddrPort, ok bool)
//
//	// Receive processes one datagram received on the client's UDP socket.
//	// It returns the IPv6 packet to inject into the stack (a sub-slice of
//	// b), or nil if the client consumed or dropped it. b is only valid
//	// during the call.
//	Receive(b []byte, from netip.AddrPort) []byte
//
// Everything else leaves through Config: Transport.WriteTo for control
// traffic and flushed queues, Deliver for packets delivered asynchronously
// (flushed inbound queues, locally generated ICMPv6 errors), OnEvent for
// state changes. None of them is called with the client's lock held.
//
// ICMPv6 errors the client generates come from the server's link-local
// address (proto.ServerLinkLocal), never from the client's own address,
// which gVisor would drop as a martian.
package client

import (
	"crypto/rand"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/teredo-go/teredo/clock"
	"github.com/teredo-go/teredo/internal/ratelimit"
	"github.com/teredo-go/teredo/peer"
	"github.com/teredo-go/teredo/proto"
)

// Transport sends UDP datagrams from the client's socket.
type Transport interface {
	WriteTo(b []byte, to netip.AddrPort) error
}

// DefaultMaxPeers bounds the client's peer list when Config.MaxPeers is
// zero: an application talks to a few thousand peers at most.
const DefaultMaxPeers = 4096

// Config configures a Client.
type Config struct {
	// Transport sends control traffic (RS, bubbles, echo requests) and
	// flushed queues. Required.
	Transport Transport
	// Deliver hands an IPv6 packet to the stack outside of Receive. The
	// callee must copy it. Required.
	Deliver func(ipv6 []byte)
	// Clock defaults to the real clock.
	Clock clock.Clock
	// Logger defaults to a logger that discards.
	Logger *slog.Logger
	// Rand supplies keys and nonces; defaults to crypto/rand.
	Rand io.Reader
	// IPv4Filter decides which IPv4 addresses may be servers and mapped
	// addresses; defaults to proto.IsGlobalUnicastIPv4.
	IPv4Filter proto.IPv4Filter
	// Servers are the primary server IPv4 addresses, tried in order. It
	// may be empty if the caller supplies them later with SetServers (a
	// caller still resolving server names); the client then waits offline.
	Servers []netip.Addr
	// Secondary is the second address of Servers[0]; other servers use
	// their address + 1, as Windows and Miredo assume.
	Secondary netip.Addr
	// SecondaryPort is the port of Servers[0]'s secondary; zero means
	// ServerPort. A single-address server (a teredo-gateway with
	// -secondary-port) offers its secondary role on another port of its
	// primary address: set SecondaryPort to that port (Secondary zero
	// then means Servers[0]). Other servers use ServerPort.
	SecondaryPort uint16
	// ServerPort defaults to 3544.
	ServerPort uint16
	// MaxPeers bounds the peer list (default DefaultMaxPeers).
	MaxPeers int
	// InboundEchoRate (tests per second, default DefaultInboundEchoRate)
	// and InboundEchoBurst (default DefaultInboundEchoBurst) bound, for the
	// whole client, the echo tests that received packets from unverified
	// sources start (RFC 4380 §5.2.3 case 6); a packet over the limit is
	// dropped as "echo-rate-limit" and creates no peer entry. Echo tests
	// for the application's own outbound packets are not counted. Zero
	// means the default; a negative rate turns the limit off, as for every
	// rate limit of this module.
	InboundEchoRate  float64
	InboundEchoBurst int
	// ConeProbe adds a cone RS to the NAT classification (diagnostic only).
	ConeProbe bool
	// BubbleTTL is the IPv4 TTL of the first direct bubbles to a Teredo
	// peer, which open our NAT but must not reach the peer's (see
	// hoplimit.go). Zero means DefaultBubbleTTL; negative sends every
	// bubble with the socket's TTL. It needs a Transport that implements
	// TTLTransport; others send every bubble with the socket's TTL.
	BubbleTTL int
	// FixedRelay, if set, carries every packet to a non-Teredo destination
	// and is trusted as their source, instead of the echo test.
	FixedRelay netip.AddrPort
	// PeerRelay carries the traffic of a Teredo peer that direct bubbles
	// cannot reach through a Teredo relay (FixedRelay, or the relay the
	// last native echo test found), and accepts a Teredo peer's packets
	// from a relay once an echo test through the peer's server proves that
	// path (see peerrelay.go). Off, the client follows RFC 4380 alone.
	PeerRelay bool
	// LocalDiscovery turns on RFC 4380 §5.2.8: discovery bubbles are sent
	// through Transport to 224.0.0.253:3544 every 200-300 s, and the caller
	// passes datagrams received on its discovery socket (joined to
	// 224.0.0.253, port 3544) to ReceiveDiscovery.
	LocalDiscovery bool
	// LocalAddrs, if set, returns the client's local UDP endpoints (at
	// most proto.MaxAltAddresses are used) for RFC 6081's hairpinning
	// extension: indirect bubbles to a peer behind the same public IPv4
	// carry them in an Alternate Address trailer (see hairpin.go).
	LocalAddrs func() []netip.AddrPort
	// MappedEndpoint, if set, gives the public endpoint the Teredo address
	// carries, given the one the server saw (the RA's origin indication).
	// A NAT port mapping (package portmap) sets it: on a symmetric NAT the
	// server sees a random port, while peers reach the client at the mapped
	// one (RFC 6081's UPnP-enabled symmetric NAT case).
	MappedEndpoint func(serverSaw netip.AddrPort) netip.AddrPort
	// PortMapping, if set, returns the external endpoint of a port mapping
	// of the client's socket on its NAT (package portmap), or the zero
	// AddrPort. Before each qualification the client then has its server
	// reach it through the mapping first, so that its own flow to the
	// server leaves from the mapped port on a NAT that does not keep
	// ports; and while its address carries the mapping it sends no direct
	// bubbles of its own (see portmapped.go).
	PortMapping func() netip.AddrPort
	// PortProbe, if set, lets the client tell how a symmetric NAT picks
	// ports and predict them behind a sequential one (RFC 6081; see
	// portpredict.go).
	PortProbe PortProbe
	// OnEvent receives state changes, in order, without locks held. It must
	// not call Receive or Transmit synchronously.
	OnEvent func(Event)
	// OnBackoff, if set, is called without locks held each time every
	// server has failed (or there is none) and the client waits delay
	// before the next cycle through the list: the moment for a caller that
	// resolves server names to resolve them again and call SetServers. It
	// must not block.
	OnBackoff func(delay time.Duration)
}

// Event is one of Qualified, AddressChanged, Offline, NATClassified.
type Event interface{ event() }

// Qualified reports that the client has a usable Teredo address: on every
// transition to qualified (first time, after Offline) and when the server
// changes the advertised MTU.
type Qualified struct {
	Addr   netip.Addr
	Server netip.Addr
	Mapped netip.AddrPort
	MTU    int
	// Public is the address the IPv6 internet sees, if the server is a
	// teredo-gateway that announced its public prefix; zero otherwise.
	Public netip.Addr
}

// AddressChanged reports that, while qualified, the NAT mapping and so the
// address changed. The peer list was flushed.
type AddressChanged struct{ Old, New netip.Addr }

// Offline reports that the client lost (or could not get) qualification;
// Addr reports false until the next Qualified.
type Offline struct{ Reason error }

// NATClassified reports the result of the background NAT classification.
type NATClassified struct{ Type NATType }

func (Qualified) event()      {}
func (AddressChanged) event() {}
func (Offline) event()        {}
func (NATClassified) event()  {}

// ErrNoReply is the Offline reason when the server did not answer.
var ErrNoReply = errors.New("teredo client: no reply from server")

// ErrNoServer is the reason the client waits offline while its server
// list is empty.
var ErrNoServer = errors.New("teredo client: no server address (yet)")

// ErrClosed is returned by Start after Close.
var ErrClosed = errors.New("teredo client: closed")

// State is the client's qualification state.
type State int

const (
	StateIdle       State = iota // before Start
	StateQualifying              // waiting for the first RA from a server
	StateQualified               // has an address
	StateOffline                 // every try failed; waiting to try again
	StateClosed
)

func (s State) String() string {
	if s < 0 || s > StateClosed {
		return fmt.Sprintf("State(%d)", int(s))
	}
	return [...]string{"idle", "qualifying", "qualified", "offline", "closed"}[s]
}

// NATType is the result of NAT classification.
type NATType int

const (
	NATUnknown    NATType = iota // not classified (yet), or the secondary did not answer
	NATRestricted                // same mapping towards both server addresses
	NATSymmetric                 // the secondary server saw another mapping
	NATCone                      // an RA from the other server address got through
)

func (n NATType) String() string {
	if n < 0 || n > NATCone {
		return fmt.Sprintf("NATType(%d)", int(n))
	}
	return [...]string{"unknown", "restricted", "symmetric", "cone"}[n]
}

// Status is a snapshot of the client.
type Status struct {
	State State
	NAT   NATType
	// NATPorts says how a symmetric NAT picks ports (portpredict.go).
	NATPorts NATPorts
	Server   netip.Addr
	Addr     netip.Addr
	Mapped   netip.AddrPort
	MTU      int
	Peers    int
	Counters Counters

	// PublicAddr is the address the IPv6 internet sees, when the server
	// is a teredo-gateway: Addr's interface identifier in the public /64
	// the gateway announced in its RA (proto.OptPublicPrefix). Zero for
	// other servers, whose clients are seen at Addr.
	PublicAddr netip.Addr
}

// Counters are cumulative packet counts. TxFast counts packets handed back
// to the caller to send, TxQueued packets queued for a pending peer and
// TxFlushed those later sent from a queue; RxHeldDelivered counts inbound
// packets released by an echo test. Drops is keyed by reason
// ("malformed", "not-our-address", "queue-full", "unreachable",
// "echo-rate-limit", ...). RelayFailovers counts native peers whose relay
// went silent and was forgotten for a new echo test (see failover.go).
type Counters struct {
	TxFast, TxQueued, TxFlushed    uint64
	RxDelivered, RxHeldDelivered   uint64
	RS, RA, Bubbles, BubbleReplies uint64
	EchoRequests, ICMPErrors       uint64
	RelayFailovers                 uint64
	PeerTable                      peer.Stats
	Drops                          map[string]uint64

	// TTLBubbles counts direct bubbles sent with Config.BubbleTTL.
	TTLBubbles uint64

	// Config.PeerRelay (peerrelay.go): Teredo peers whose traffic moved to
	// a relay after direct bubbles went unanswered; packets sent to a
	// Teredo peer's relay outside the fast path; relay paths to a Teredo
	// peer proved by an echo test; echo requests from a Teredo peer
	// relayed by our server and delivered.
	PeerRelayFallbacks, PeerRelayTx, PeerRelayProved, PeerRelayServerEchoes uint64

	// Config.PortMapping (portmapped.go): bubbles sent through the server
	// to the port mapping before a qualification, and those that came back
	// from the server's port, so that the server's flow is the mapping's.
	PortMapOpens, PortMapOpened uint64
	// Port prediction behind a sequential NAT (portpredict.go): ports
	// predicted by a probe, probes that failed; indirect bubbles sent with
	// a Random Port trailer; answers sent to a peer's Random Port.
	PortPredictions, PortPredictionFailures uint64
	RandomPortBubbles, RandomPortAnswers    uint64
}

// PeerState reports what the client knows about reaching dst, for a dialer
// that wants a prompt error: peer.Reachable, Pending, Unreachable or Unknown.
// A non-Teredo destination with a fixed relay, or in the public /64 of our
// gateway, is Reachable while qualified.
func (c *Client) PeerState(dst netip.Addr) peer.State {
	if !dst.Is6() {
		return peer.Unreachable
	}
	l := c.up.Load()
	if l == nil {
		return peer.Unreachable
	}
	if a := dst.As16(); !proto.IsTeredo(dst) && (c.cfg.FixedRelay.IsValid() || l.inPublic(&a)) {
		return peer.Reachable
	}
	return c.peers.State(dst.As16(), c.clk.Now())
}

// Client is the Teredo client role. Its methods are safe for concurrent use.
type Client struct {
	cfg       Config
	clk       clock.Clock
	log       *slog.Logger
	glob      proto.IPv4Filter
	port      uint16
	key       [32]byte
	bubbleKey [32]byte // proto.BubbleSource secret, derived from key

	peers  *peer.Table
	up     atomic.Pointer[link] // nil unless qualified
	closed atomic.Bool

	mu       sync.Mutex
	servers  []netip.Addr // Config.Servers until SetServers
	primary  netip.Addr   // Config.Servers[0], whose secondary Config.Secondary is
	q        qualState
	nat      natState
	disc     clock.Timer
	evs      []Event
	out      []datagram
	backoffs []time.Duration // OnBackoff calls to make once c.mu is released

	evMu sync.Mutex // serializes OnEvent calls

	icmpLimit *ratelimit.Limiter // ICMPv6 errors we deliver
	echoLimit *ratelimit.Limiter // echo tests started by inbound packets
	pingMax   int                // echo requests in a series (the peer table's limit)

	replyMu   sync.Mutex
	seed      maphash.Seed
	replySeen [replySlots]replySlot

	ctr    counters
	prelay peerRelay // Config.PeerRelay's state (peerrelay.go)
	pred   predictor // Config.PortProbe's state (portpredict.go)
	ttl    hopLimiter
	// answerLimit bounds, client-wide, the answers to direct bubbles.
	answerLimit *ratelimit.Limiter
	// opening is the last bubble sent through the server to our port
	// mapping (portmapped.go); nil if none.
	opening atomic.Pointer[opener]
}

// link is the immutable snapshot of a qualified client that the data path
// reads without locks.
type link struct {
	addr     [16]byte
	ip       netip.Addr
	mapped   netip.AddrPort
	saw      netip.AddrPort // the mapping the server saw (mapped, unless Config.MappedEndpoint changed it)
	server   netip.Addr
	serverAP netip.AddrPort
	mtu      int
	errSrc   netip.Addr // source of the ICMPv6 errors we generate
	public   netip.Addr // see Status.PublicAddr
	// portMapped: mapped is the NAT port mapping (Config.PortMapping),
	// which lets every peer in; no direct bubbles are sent.
	portMapped bool
}

// New validates cfg and returns a client; Start begins qualification.
func New(cfg Config) (*Client, error) {
	if cfg.Transport == nil {
		return nil, errors.New("teredo client: Config.Transport is required")
	}
	if cfg.Deliver == nil {
		return nil, errors.New("teredo client: Config.Deliver is required")
	}
	if cfg.IPv4Filter == nil {
		cfg.IPv4Filter = proto.IsGlobalUnicastIPv4
	}
	if err := checkServers(cfg.Servers, cfg.IPv4Filter); err != nil {
		return nil, err
	}
	if cfg.SecondaryPort != 0 && !cfg.Secondary.IsValid() && len(cfg.Servers) > 0 {
		cfg.Secondary = cfg.Servers[0]
	}
	if cfg.Secondary.IsValid() && !cfg.Secondary.Is4() {
		return nil, fmt.Errorf("teredo client: secondary %v is not IPv4", cfg.Secondary)
	}
	if cfg.FixedRelay.IsValid() && !cfg.FixedRelay.Addr().Is4() {
		return nil, fmt.Errorf("teredo client: fixed relay %v is not IPv4", cfg.FixedRelay)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.ServerPort == 0 {
		cfg.ServerPort = proto.Port
	}
	if cfg.MaxPeers <= 0 {
		cfg.MaxPeers = DefaultMaxPeers
	}
	if cfg.InboundEchoRate == 0 || cfg.InboundEchoRate != cfg.InboundEchoRate { // zero or NaN
		cfg.InboundEchoRate = DefaultInboundEchoRate
	}
	if cfg.InboundEchoBurst <= 0 {
		cfg.InboundEchoBurst = DefaultInboundEchoBurst
	}
	c := &Client{cfg: cfg, clk: cfg.Clock, log: cfg.Logger, glob: cfg.IPv4Filter, port: cfg.ServerPort}
	c.servers = slices.Clone(cfg.Servers)
	if len(c.servers) > 0 {
		c.primary = c.servers[0]
	}
	if _, err := io.ReadFull(cfg.Rand, c.key[:]); err != nil {
		return nil, fmt.Errorf("teredo client: reading key: %w", err)
	}
	c.bubbleKey = c.mac("bubble")
	c.peers = peer.New(peer.Config{
		MaxPeers: cfg.MaxPeers,
		Clock:    cfg.Clock,
		OnTimer:  c.onPeerTimer,
	})
	c.icmpLimit = ratelimit.NewLimiter(ratelimit.Rate{PerSecond: icmpRate, Burst: icmpBurst})
	c.echoLimit = ratelimit.NewLimiter(ratelimit.Rate{PerSecond: cfg.InboundEchoRate, Burst: cfg.InboundEchoBurst})
	c.pingMax = c.peers.Config().Ping.Max
	c.seed = maphash.MakeSeed()
	c.ttl.init(cfg.Transport, cfg.BubbleTTL)
	c.answerLimit = ratelimit.NewLimiter(ratelimit.Rate{PerSecond: answerRate, Burst: answerBurst})
	return c, nil
}

// Start begins qualification with the first server.
func (c *Client) Start() error {
	c.mu.Lock()
	switch c.q.state {
	case StateClosed:
		c.mu.Unlock()
		return ErrClosed
	case StateIdle:
		if len(c.servers) == 0 {
			c.q.offline = true
			c.emit(Offline{Reason: ErrNoServer})
			c.backoff(ErrNoServer)
			break
		}
		c.log.Info("teredo client: qualifying", "server", c.servers[0])
		c.startRound(0)
	}
	c.unlock()
	return nil
}

func checkServers(servers []netip.Addr, isGlobal proto.IPv4Filter) error {
	for _, s := range servers {
		if !s.Is4() || !isGlobal(s) {
			return fmt.Errorf("teredo client: server %v is not a global unicast IPv4 address", s)
		}
	}
	return nil
}

// SetServers replaces the server list, for a caller that resolves server
// names again (see Config.OnBackoff). A client qualified or qualifying
// with a server keeps it until it fails, then goes on with the new list; a
// client waiting between cycles starts the next one at the new list's
// first server, and at once if it had no server at all.
func (c *Client) SetServers(servers []netip.Addr) error {
	if err := checkServers(servers, c.glob); err != nil {
		return err
	}
	c.mu.Lock()
	q := &c.q
	if slices.Equal(servers, c.servers) || q.state == StateClosed {
		c.mu.Unlock()
		return nil
	}
	had := len(c.servers) > 0
	c.servers = slices.Clone(servers)
	c.log.Info("teredo client: server list changed", "servers", servers)
	switch {
	case len(servers) == 0:
		q.idx, q.tried = 0, 0
	case q.state == StateIdle:
		q.idx, q.tried = 0, 0
	case q.state == StateOffline:
		q.idx, q.tried = 0, 0
		if !had {
			c.startRound(0)
		}
	default:
		// The current server's place in the new list, or -1 (its failure
		// then leads to the new list's first server and counts for none).
		q.idx = slices.Index(servers, q.srv)
		q.tried = min(q.idx, 0)
	}
	c.unlock()
	return nil
}

// Close stops every timer and drops all queued packets. The client answers
// nothing afterwards.
func (c *Client) Close() {
	c.mu.Lock()
	c.closed.Store(true)
	c.q.state = StateClosed
	c.up.Store(nil)
	c.stopTimers()
	c.mu.Unlock()
	c.peers.Close()
}

// Addr returns the client's Teredo address while it is qualified.
func (c *Client) Addr() (netip.Addr, bool) {
	if l := c.up.Load(); l != nil {
		return l.ip, true
	}
	return netip.Addr{}, false
}

// MTU returns the link MTU advertised by the server (1280 by default).
func (c *Client) MTU() int {
	if l := c.up.Load(); l != nil {
		return l.mtu
	}
	return proto.MinMTU
}

// Status returns a snapshot of the client.
func (c *Client) Status() Status {
	c.mu.Lock()
	s := Status{
		State:  c.q.state,
		NAT:    c.nat.result,
		Server: c.q.server(),
		MTU:    proto.MinMTU,
	}
	c.mu.Unlock()
	if l := c.up.Load(); l != nil {
		s.Addr, s.Mapped, s.MTU, s.PublicAddr = l.ip, l.mapped, l.mtu, l.public
	}
	s.Counters = c.ctr.snapshot()
	c.prelay.snapshot(&s.Counters)
	c.pred.snapshot(&s.Counters)
	s.NATPorts = c.natPorts()
	s.Counters.PeerTable = c.peers.Stats()
	s.Peers = s.Counters.PeerTable.Peers
	return s
}

// emit queues an event; call with c.mu held.
func (c *Client) emit(e Event) { c.evs = append(c.evs, e) }

// flushEvents delivers queued events in order; call without c.mu.
func (c *Client) flushEvents() {
	if c.cfg.OnEvent == nil {
		c.mu.Lock()
		c.evs = c.evs[:0]
		c.mu.Unlock()
		return
	}
	c.evMu.Lock()
	defer c.evMu.Unlock()
	for {
		c.mu.Lock()
		evs := c.evs
		c.evs = nil
		c.mu.Unlock()
		if len(evs) == 0 {
			return
		}
		for _, e := range evs {
			c.cfg.OnEvent(e)
		}
	}
}

// datagram is a control message built under the lock and sent after it.
type datagram struct {
	b  []byte
	to netip.AddrPort
}

// queue adds a datagram to send once c.mu is released; call with c.mu held.
func (c *Client) queue(b []byte, to netip.AddrPort) { c.out = append(c.out, datagram{b, to}) }

// unlock releases c.mu, then sends the queued datagrams and delivers the
// queued events, so that no lock is held across a syscall or a callback.
func (c *Client) unlock() {
	out := c.out
	c.out = nil
	ev := len(c.evs) > 0
	backoffs := c.backoffs
	c.backoffs = nil
	c.mu.Unlock()
	c.send(out)
	if ev {
		c.flushEvents()
	}
	if c.cfg.OnBackoff != nil {
		for _, d := range backoffs {
			c.cfg.OnBackoff(d)
		}
	}
}

func (c *Client) send(out []datagram) {
	for _, d := range out {
		c.write(d.b, d.to)
	}
}

func (c *Client) write(b []byte, to netip.AddrPort) {
	if err := c.cfg.Transport.WriteTo(b, to); err != nil {
		c.ctr.drop(dropSendError)
		c.log.Debug("teredo client: send failed", "to", to, "err", err)
	}
}
