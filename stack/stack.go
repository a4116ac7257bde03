// Package stack assembles an unprivileged Teredo IPv6 host: a UDP socket,
// the Teredo client role, the link endpoint and a gVisor network stack that
// owns the Teredo address, with its lifecycle, status and address-change
// events.
package stack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/qdisc/fifo"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/teredo-go/teredo/client"
	"github.com/teredo-go/teredo/clock"
	"github.com/teredo-go/teredo/dialer"
	tcp "github.com/teredo-go/teredo/internal/gvtcp"
	"github.com/teredo-go/teredo/link"
	"github.com/teredo-go/teredo/peer"
	"github.com/teredo-go/teredo/portmap"
	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/udpio"
)

// NIC is the id of the stack's only NIC, the Teredo link.
const NIC tcpip.NICID = 1

// TCP buffer defaults: large enough for a fast path with tens of
// milliseconds of round trip, as Tailscale's netstack uses.
const (
	DefaultTCPReceiveBufferMax = 8 << 20
	DefaultTCPSendBufferMax    = 6 << 20
)

// Config configures a Stack.
type Config struct {
	// Servers are the Teredo servers' primary IPv4 addresses, tried in
	// order. Servers or ServerNames is required.
	Servers []netip.Addr
	// ServerNames are more servers, tried after Servers in order: host
	// names or IPv4 literals. Names are looked up (one IPv4 address each)
	// through Resolver when the stack starts and again each time every
	// server failed, so a server that moves, or a name that did not
	// resolve at boot, is picked up without a restart.
	ServerNames []string
	// Secondary is the second address of Servers[0]; zero means its
	// address + 1.
	Secondary netip.Addr
	// SecondaryPort, for a single-address server (teredo-gateway
	// -secondary-port), is the port of the secondary on Secondary (or, if
	// Secondary is zero, on Servers[0]); zero means ServerPort.
	SecondaryPort uint16
	// ServerPort defaults to 3544.
	ServerPort uint16

	// LocalAddr is the UDP socket's local address; the zero value means
	// any address and an ephemeral port.
	LocalAddr netip.AddrPort
	// Socket tunes the UDP socket opened for LocalAddr; its DisableGSO and
	// DisableGRO turn off the kernel's UDP offloads, which are on otherwise
	// where the kernel has them.
	Socket udpio.Options
	// Conn, if set, is used instead of opening a socket (tests inject an
	// in-memory one). The Stack closes it on Close either way.
	Conn udpio.Conn

	// IPv4Filter decides which IPv4 addresses may be servers and mapped
	// addresses; nil means the RFC 4380 rule. Tests on loopback use
	// proto.AnyIPv4.
	IPv4Filter proto.IPv4Filter
	// MaxPeers bounds the peer list; zero means the client's default.
	MaxPeers int
	// ConeProbe adds a cone RS to the background NAT classification.
	ConeProbe bool
	// NoHairpinning keeps the client's local endpoints out of its bubbles
	// (RFC 6081's Alternate Address trailer, client.Config.LocalAddrs),
	// which lets two clients behind one NAT that does not hairpin find each
	// other without local discovery. The trailer only goes to peers behind
	// the client's own public IPv4.
	NoHairpinning bool
	// BubbleTTL is client.Config.BubbleTTL: the IPv4 TTL of the first
	// direct bubbles to a Teredo peer (0: client.DefaultBubbleTTL,
	// negative: the socket's TTL for every bubble).
	BubbleTTL int
	// FixedRelay, if set, carries all traffic to non-Teredo destinations.
	FixedRelay netip.AddrPort
	// PeerRelay is client.Config.PeerRelay: a Teredo peer that direct
	// bubbles cannot reach (behind a port-restricted NAT while this client
	// is behind a symmetric one) is reached through a relay (FixedRelay, or
	// the one the echo test found for native traffic), and peers that
	// reach this client through a relay are accepted once an echo test
	// proves that path.
	PeerRelay bool
	// LocalDiscovery turns on RFC 4380 §5.2.8 local discovery: discovery
	// bubbles to 224.0.0.253:3544 every 200-300 s, and a shared socket on
	// UDP port 3544 that finds Teredo clients behind the same NAT. If that
	// socket cannot be opened, a warning is logged and the stack runs
	// without it (see Stack.LocalDiscovery).
	LocalDiscovery bool
	// DiscoveryInterface names the only interface that joins 224.0.0.253
	// and sends discovery bubbles. Empty means every interface that is up,
	// multicast-capable, not loopback and has an IPv4 address, listed
	// again at each discovery bubble (on Linux; elsewhere, the one the
	// routing table picks).
	DiscoveryInterface string

	// TCPReceiveBufferMax and TCPSendBufferMax bound TCP's auto-tuned
	// buffers; zero means the defaults above.
	TCPReceiveBufferMax, TCPSendBufferMax int
	// DisableGSO turns off gVisor's in-stack segmentation offload and
	// DisableGRO the coalescing of received TCP segments (see
	// link.Options).
	DisableGSO, DisableGRO bool
	// TCPRACK turns gVisor's RACK-TLP loss detection back on. It is off by
	// default: at our gVisor pin (which predates the upstream RACK fix that
	// Tailscale waited for before re-enabling RACK), a burst of losses,
	// such as a Miredo peer's full socket buffer, can make RACK loop
	// RTO → SACK recovery → RTO for seconds. Measured in the lab (1 MiB
	// echoes to a Miredo client, 100 per setting): RACK on, 8 of 100 took
	// 2-21 s (137 s in total); off, none above 0.6 s (28 s in total).
	// BenchmarkTCPStream, six interleaved runs each: median about 1.6
	// Gbit/s either way.
	TCPRACK bool
	// TCPCongestion names TCP's congestion control: TCPCongestionRate (the
	// default when empty), "cubic" or "reno". Rate keeps its rate on paths
	// with random loss, where CUBIC and Reno halve it on every loss; see
	// TCPCongestionRate.
	TCPCongestion string

	// PortMapping asks the NAT for a mapping of the client's UDP port
	// (PCP, NAT-PMP, UPnP-IGD) before qualifying, keeps it renewed and
	// deletes it on Close; see package portmap. PortMap sets its gateway,
	// sockets, ports and timeouts; the stack fills in the port and peers.
	PortMapping bool
	PortMap     portmap.Config
	// NoPortPrediction turns off RFC 6081's port prediction behind a
	// sequential symmetric NAT (client.Config.PortProbe): the probes from
	// a new socket, and the NAT's port pattern in client.Status.NATPorts.
	NoPortPrediction bool

	// Resolver resolves ServerNames and the names given to Dial,
	// DialContext and HTTPClient; nil means the host's
	// (net.DefaultResolver). teredotest.Internet.Resolver knows the test
	// hosts' names.
	Resolver dialer.Resolver

	// Clock, Logger and Rand default to the real clock, a discarding
	// logger and crypto/rand.
	Clock  clock.Clock
	Logger *slog.Logger
	Rand   io.Reader
}

// Event is a state change of the Teredo client: client.Qualified,
// client.AddressChanged, client.Offline or client.NATClassified.
type Event = client.Event

// Status is a snapshot of a Stack.
type Status struct {
	// Client is the Teredo client's state: qualification, NAT type,
	// server, mapped endpoint, peer count and counters.
	Client client.Status
	// Link counts the packets the link endpoint moved and dropped.
	Link link.Stats
	// Discovery counts local discovery's work per interface.
	Discovery DiscoveryStats
	// PortMap is the port mapping's state; nil when Config.PortMapping is off.
	PortMap *PortMapStatus `json:",omitempty"`
	// LastError says why the stack is not qualified: the client's last
	// Offline reason, or why no server name resolved. Nil while qualified
	// and before the first failure.
	LastError error
}

// Stack is a Teredo IPv6 host. Its methods are safe for concurrent use.
type Stack struct {
	cfg  Config
	log  *slog.Logger
	conn udpio.Conn
	// prober opens the client's port probes (portprobe.go); nil if off.
	prober *portProber
	ep     *link.Endpoint
	cl     *client.Client
	ns     *gstack.Stack
	disc   *discoverySocket    // nil unless local discovery runs
	dt     *discoveryTransport // nil unless discovery runs on every interface
	pm     *portMap            // nil unless Config.PortMapping

	// Events from the client are queued here and applied, in order, by
	// the event goroutine (or by New while it waits for qualification).
	qmu    sync.Mutex
	queue  []Event
	wake   chan struct{}
	quit   chan struct{}
	evDone chan struct{}

	mu        sync.Mutex
	addr      netip.Addr
	closed    bool
	subs      map[int]func(Event)
	nextSubID int

	// Qualification as Start follows it: see start.go.
	names     *nameResolver // nil without Config.ServerNames
	qualified chan struct{} // closed at the first client.Qualified
	qualOnce  sync.Once
	lastErr   error // why not qualified; guarded by mu
	ready     bool  // the address is in place and the client qualified; guarded by mu
}

// Start opens the socket, builds the network stack and starts qualifying
// with the configured servers, and returns at once: it fails only for
// local reasons (a bad Config, a socket that cannot be opened). The stack
// keeps trying every server, backing off, until Close (with PortMapping,
// Start first waits a few seconds at most for a port mapping), resolving
// ServerNames again before each cycle; until it is qualified, Dial and
// Listen through it fail with ErrNotQualified. Subscribe tells when it is
// qualified (client.Qualified), and Status why it is not yet; events from
// before a Subscribe are not replayed, so check Ready (or wait on
// Qualified) after subscribing.
func Start(cfg Config) (*Stack, error) {
	if len(cfg.Servers) == 0 && len(cfg.ServerNames) == 0 {
		return nil, errors.New("stack: no Teredo server configured")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.IPv4Filter == nil {
		cfg.IPv4Filter = proto.IsGlobalUnicastIPv4
	}
	s := &Stack{
		cfg:       cfg,
		log:       cfg.Logger,
		wake:      make(chan struct{}, 1),
		quit:      make(chan struct{}),
		evDone:    make(chan struct{}),
		subs:      make(map[int]func(Event)),
		qualified: make(chan struct{}),
	}
	servers, err := s.initNames()
	if err != nil {
		return nil, err
	}
	s.conn = cfg.Conn
	if s.conn == nil {
		c, err := udpio.Listen(cfg.LocalAddr, cfg.Socket)
		if err != nil {
			return nil, fmt.Errorf("stack: %w", err)
		}
		s.conn = c
	}
	if cfg.PortMapping {
		// The one wait of Start: a mapping first, bounded by
		// portMapBudget, so that the address carries it.
		s.startPortMap(context.Background())
	}
	s.ep = link.New(s.conn, nil, link.Options{Logger: cfg.Logger, DisableGSO: cfg.DisableGSO, DisableGRO: cfg.DisableGRO})
	var tr client.Transport = s.conn
	if s.dt = s.newDiscoveryTransport(); s.dt != nil {
		tr = s.dt
	}
	cl, err := client.New(client.Config{
		Transport:  tr,
		Deliver:    s.ep.Deliver,
		Clock:      cfg.Clock,
		Logger:     cfg.Logger,
		Rand:       cfg.Rand,
		IPv4Filter: cfg.IPv4Filter,
		Servers:    servers,
		Secondary:  cfg.Secondary,
		ServerPort: cfg.ServerPort,
		MaxPeers:   cfg.MaxPeers,
		ConeProbe:  cfg.ConeProbe,
		FixedRelay: cfg.FixedRelay,
		PeerRelay:  cfg.PeerRelay,
		OnEvent:    s.enqueue,
		OnBackoff:  s.onBackoff,

		LocalDiscovery: cfg.LocalDiscovery,
		BubbleTTL:      cfg.BubbleTTL,
		LocalAddrs:     s.localAddrs(),
		SecondaryPort:  cfg.SecondaryPort,

		MappedEndpoint: s.mappedEndpointFunc(),
		PortMapping:    s.portMappingFunc(),
		PortProbe:      s.portProbe(),
	})
	if err != nil {
		s.conn.Close()
		return nil, fmt.Errorf("stack: %w", err)
	}
	s.cl = cl
	s.startDiscovery(proto.Port)
	s.ep.SetTunnel(cl)
	if err := s.build(); err != nil {
		s.abort()
		return nil, err
	}
	s.ep.Start()
	go s.eventLoop()
	s.startResolver()
	if err := cl.Start(); err != nil {
		s.Close()
		return nil, fmt.Errorf("stack: %w", err)
	}
	return s, nil
}

// abort undoes a New that failed before the network stack existed.
func (s *Stack) abort() {
	s.closePortMap()
	s.stopDiscovery()
	s.cl.Close()
	s.prober.close()
	s.ep.Close()
	s.conn.Close()
}

func (s *Stack) enqueue(ev Event) {
	s.qmu.Lock()
	s.queue = append(s.queue, ev)
	s.qmu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *Stack) dequeue() []Event {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	evs := s.queue
	s.queue = nil
	return evs
}

// build creates the gVisor stack; the Teredo address comes with the
// client.Qualified event.
func (s *Stack) build() error {
	ns := gstack.New(gstack.Options{
		NetworkProtocols:   []gstack.NetworkProtocolFactory{ipv6.NewProtocol},
		TransportProtocols: []gstack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol6},
	})
	rcv, snd := s.cfg.TCPReceiveBufferMax, s.cfg.TCPSendBufferMax
	if rcv <= 0 {
		rcv = DefaultTCPReceiveBufferMax
	}
	if snd <= 0 {
		snd = DefaultTCPSendBufferMax
	}
	// SACK is gVisor's default at our pin; it is set anyway so that a
	// future default cannot silently turn it off. RACK is off unless asked
	// for (see Config.TCPRACK): SACK recovery without it still handles loss.
	sack := tcpip.TCPSACKEnabled(true)
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	var recovery tcpip.TCPRecovery
	if s.cfg.TCPRACK {
		recovery = tcpip.TCPRACKLossDetection
	}
	cc := tcpip.CongestionControlOption(s.cfg.TCPCongestion)
	if cc == "" {
		cc = TCPCongestionRate
	}
	opts := []tcpip.SettableTransportProtocolOption{
		&cc,
		&sack,
		&recovery,
		&moderate,
		&tcpip.TCPReceiveBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: tcp.DefaultReceiveBufferSize, Max: rcv},
		&tcpip.TCPSendBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: tcp.DefaultSendBufferSize, Max: snd},
	}
	for _, o := range opts {
		if err := ns.SetTransportProtocolOption(tcp.ProtocolNumber, o); err != nil {
			ns.Destroy()
			return fmt.Errorf("stack: TCP option %T: %s", o, err)
		}
	}
	if err := ns.CreateNICWithOptions(NIC, s.ep, gstack.NICOptions{
		Name:  "teredo",
		QDisc: fifo.New(s.ep, 1, queueLength),
	}); err != nil {
		ns.Destroy()
		return fmt.Errorf("stack: create NIC: %s", err)
	}
	ns.SetRouteTable([]tcpip.Route{{Destination: header.IPv6EmptySubnet, NIC: NIC}})
	s.ns = ns
	return nil
}

// TCPCongestionRate is the default congestion control: a delivery-rate
// model after BBR (Cardwell et al., 2016) carried in the module's copy of
// gVisor's TCP, which has only Reno and CUBIC. It sets the window to twice
// the measured bandwidth-delay product and does not shrink it on loss, so a
// Teredo path with 0.5-2 % random loss is not held to the Mathis rate (0.4
// MB/s at 50 ms and 0.5 %) that loss-based algorithms reach there. Without
// pacing it keeps up to one bandwidth-delay product queued at the
// bottleneck, as BBR does in its cwnd-limited mode.
const TCPCongestionRate = "rate"

// queueLength is the fifo queueing discipline's capacity in packets. gVisor
// TCP counts a packet the full queue refused as sent, so an overflow is a
// self-inflicted loss followed by a SACK recovery whose cost grows with the
// window. The queue holds a full TCP send buffer (DefaultTCPSendBufferMax in
// 1220-byte segments, about 5200) so that one connection cannot overflow it;
// 1000 overflowed in the lab's upload benchmark.
const queueLength = 8192

func addAddr(ns *gstack.Stack, a netip.Addr) error {
	pa := tcpip.ProtocolAddress{
		Protocol:          ipv6.ProtocolNumber,
		AddressWithPrefix: tcpip.AddrFrom16(a.As16()).WithPrefix(),
	}
	if err := ns.AddProtocolAddress(NIC, pa, gstack.AddressProperties{}); err != nil {
		return fmt.Errorf("stack: add address %v: %s", a, err)
	}
	return nil
}

func (s *Stack) eventLoop() {
	defer close(s.evDone)
	for {
		for _, ev := range s.dequeue() {
			s.apply(ev)
		}
		select {
		case <-s.wake:
		case <-s.quit:
			return
		}
	}
}

// apply acts on one client event, then tells subscribers.
func (s *Stack) apply(ev Event) {
	switch ev := ev.(type) {
	case client.Qualified:
		if ev.MTU >= proto.MinMTU {
			s.ep.SetMTU(uint32(ev.MTU))
		}
		s.setAddr(ev.Addr)
		s.setQualified(ev)
	case client.AddressChanged:
		s.setAddr(ev.New)
	case client.Offline:
		s.setOffline(ev.Reason)
	}
	s.mu.Lock()
	subs := make([]func(Event), 0, len(s.subs))
	for _, f := range s.subs {
		subs = append(subs, f)
	}
	s.mu.Unlock()
	for _, f := range subs {
		f(ev)
	}
}

// setAddr moves the stack to address a: the old /128 goes, and so do the
// connections bound to it, which could never be reached again. Listeners,
// bound to the NIC rather than an address, keep accepting.
func (s *Stack) setAddr(a netip.Addr) {
	s.mu.Lock()
	old := s.addr
	if old == a || s.closed {
		s.mu.Unlock()
		return
	}
	s.addr = a
	s.mu.Unlock()
	if old.IsValid() {
		s.log.Info("teredo: address changed", "old", old, "new", a)
	}
	if err := addAddr(s.ns, a); err != nil {
		s.log.Error("teredo: address change", "err", err)
	}
	if old.IsValid() {
		oldAddr := tcpip.AddrFrom16(old.As16())
		if err := s.ns.RemoveAddress(NIC, oldAddr); err != nil {
			s.log.Warn("teredo: remove old address", "addr", old, "err", err)
		}
		for _, ep := range s.ns.RegisteredEndpoints() {
			e, ok := ep.(interface{ Info() tcpip.EndpointInfo })
			if !ok {
				continue
			}
			info, ok := e.Info().(*gstack.TransportEndpointInfo)
			if ok && info.ID.LocalAddress == oldAddr {
				ep.Abort()
			}
		}
	}
}

// Subscribe calls f for every client event, in order, from the stack's
// event goroutine after the stack has acted on it (for an address change:
// the new address is in place and connections on the old one are closed).
// f must not block for long and must not call Close, which waits for the
// event goroutine. The returned function cancels the subscription.
func (s *Stack) Subscribe(f func(Event)) (cancel func()) {
	s.mu.Lock()
	id := s.nextSubID
	s.nextSubID++
	s.subs[id] = f
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		delete(s.subs, id)
		s.mu.Unlock()
	}
}

// Addr returns the current Teredo address.
func (s *Stack) Addr() netip.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Status returns a snapshot of the client and link.
func (s *Stack) Status() Status {
	st := Status{Client: s.cl.Status(), Link: s.ep.Stats(), Discovery: s.discoveryStats(), LastError: s.lastError()}
	st.PortMap = s.portMapStatus(st.Client.Addr)
	return st
}

// Netstack returns the gVisor stack, for code that needs more than
// packages dialer and listener offer.
func (s *Stack) Netstack() *gstack.Stack { return s.ns }

// NICID returns the Teredo NIC's id.
func (s *Stack) NICID() tcpip.NICID { return NIC }

// LocalAddr returns the UDP socket's local address.
func (s *Stack) LocalAddr() netip.AddrPort { return s.conn.LocalAddr() }

// PeerState reports what the Teredo client knows about reaching dst.
func (s *Stack) PeerState(dst netip.Addr) peer.State { return s.cl.PeerState(dst) }

// Unreachable reports whether the client has given up on reaching dst.
func (s *Stack) Unreachable(dst netip.Addr) bool {
	return s.cl.PeerState(dst) == peer.Unreachable
}

// Closed reports whether Close has been called; dialer and listener
// refuse a closed stack with net.ErrClosed.
func (s *Stack) Closed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Close shuts the stack down: connections end, the client stops, the
// socket closes, and no goroutine of the stack is left when it returns.
func (s *Stack) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.stopDiscovery()
	s.cl.Close()
	s.prober.close()
	close(s.quit)
	<-s.evDone
	s.stopResolver()
	// Destroy detaches the link (stopping its reader), closes the queueing
	// discipline and waits for the protocol goroutines.
	s.ns.Destroy()
	s.closePortMap()
	return s.conn.Close()
}
