package socksd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"

	"github.com/teredo-go/teredo/client"
	"github.com/teredo-go/teredo/dialer"
	"github.com/teredo-go/teredo/listener"
	"github.com/teredo-go/teredo/stack"
	"gvisor.dev/gvisor/pkg/tcpip"
)

// stackNet is a stack.Stack as the loop uses it.
type stackNet struct {
	s      *stack.Stack
	d      *dialer.Dialer
	names  map[netip.Addr]string // server address → how to call it; nil: the stack's ServerNames
	unsub  func()
	extra  func() error // closed after the stack (the demo internet)
	closed sync.Once
}

func newStackNet(s *stack.Stack, names map[netip.Addr]string, onEvent func(Event), extra func() error) *stackNet {
	n := &stackNet{s: s, d: dialer.New(s), names: names, extra: extra}
	n.unsub = s.Subscribe(func(ev stack.Event) {
		if e, ok := convertEvent(ev); ok {
			onEvent(e)
		}
	})
	return n
}

func convertEvent(ev stack.Event) (Event, bool) {
	switch ev := ev.(type) {
	case client.Qualified:
		return Event{Kind: EvQualified, Addr: ev.Addr, Server: ev.Server}, true
	case client.AddressChanged:
		return Event{Kind: EvAddressChanged, Old: ev.Old, Addr: ev.New}, true
	case client.Offline:
		return Event{Kind: EvOffline, Err: ev.Reason}, true
	case client.NATClassified:
		return Event{Kind: EvNAT, NAT: ev.Type.String()}, true
	}
	return Event{}, false
}

func (n *stackNet) Dial(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error) {
	return n.d.DialContext(ctx, network, dst.String())
}

func (n *stackNet) ListenPacket(ctx context.Context) (net.PacketConn, error) {
	return listener.ListenPacket(n.s, "udp6", ":0")
}

func (n *stackNet) Listen(port uint16) (net.Listener, error) {
	return listener.Listen(n.s, "tcp6", ":"+strconv.Itoa(int(port)))
}

func (n *stackNet) ServerName(a netip.Addr) string {
	name, ok := n.names[a]
	if !ok {
		name = n.s.ServerName(a)
	}
	if name != "" && name != a.String() {
		return name + " (" + a.String() + ")"
	}
	return a.String()
}

func (n *stackNet) Status() TeredoStatus {
	st := n.s.Status()
	c, l := st.Client, st.Link
	state := c.State.String()
	if c.State == client.StateQualified && n.s.Ready() != nil {
		// The stack has yet to put the address in place (its event
		// follows): not usable yet.
		state = client.StateQualifying.String()
	}
	out := TeredoStatus{
		State:    state,
		Addr:     c.Addr,
		Public:   c.PublicAddr,
		Server:   c.Server,
		Mapped:   c.Mapped,
		NAT:      c.NAT.String(),
		NATPorts: c.NATPorts.String(),
		Peers:    c.Peers,
		MTU:      c.MTU,
		Counters: map[string]uint64{
			"tx_fast": c.Counters.TxFast, "tx_queued": c.Counters.TxQueued, "tx_flushed": c.Counters.TxFlushed,
			"rx_delivered": c.Counters.RxDelivered, "rx_held_delivered": c.Counters.RxHeldDelivered,
			"router_solicitations": c.Counters.RS, "router_advertisements": c.Counters.RA,
			"bubbles": c.Counters.Bubbles, "bubble_replies": c.Counters.BubbleReplies,
			"ttl_bubbles":   c.Counters.TTLBubbles,
			"echo_requests": c.Counters.EchoRequests, "icmp_errors": c.Counters.ICMPErrors, "relay_failovers": c.Counters.RelayFailovers,
			"peer_relay_fallbacks": c.Counters.PeerRelayFallbacks, "peer_relay_tx": c.Counters.PeerRelayTx,
			"peer_relay_proved": c.Counters.PeerRelayProved, "peer_relay_server_echoes": c.Counters.PeerRelayServerEchoes,
			"portmap_opens": c.Counters.PortMapOpens, "portmap_opened": c.Counters.PortMapOpened,
			"port_predictions": c.Counters.PortPredictions, "port_prediction_failures": c.Counters.PortPredictionFailures,
			"random_port_bubbles": c.Counters.RandomPortBubbles, "random_port_answers": c.Counters.RandomPortAnswers,
			"peers_created": c.Counters.PeerTable.Created, "peers_evicted": c.Counters.PeerTable.Evicted,
			"peers_expired": c.Counters.PeerTable.Expired, "peer_queue_drops": c.Counters.PeerTable.QueueDrops,
			"peer_queued_dropped": c.Counters.PeerTable.Dropped,
			"link_rx_datagrams":   l.RxDatagrams, "link_rx_packets": l.RxPackets,
			"link_rx_not_attached": l.RxNotAttached, "link_read_errors": l.ReadErrors,
			"link_tx_packets": l.TxPackets, "link_tx_tunnel": l.TxTunnel, "link_tx_errors": l.TxErrors,
		},
		Drops: c.Counters.Drops,
	}
	if st.LastError != nil {
		out.LastError = st.LastError.Error()
	}
	out.PortMap = portMapJSONOf(st.PortMap)
	tcp := n.s.Netstack().Stats().TCP
	for name, v := range map[string]*tcpip.StatCounter{
		"tcp_segments_sent": tcp.SegmentsSent, "tcp_segments_received": tcp.ValidSegmentsReceived,
		"tcp_retransmits": tcp.Retransmits, "tcp_fast_retransmits": tcp.FastRetransmit,
		"tcp_fast_recoveries": tcp.FastRecovery, "tcp_sack_recoveries": tcp.SACKRecovery,
		"tcp_tlp_recoveries": tcp.TLPRecovery, "tcp_spurious_recoveries": tcp.SpuriousRecovery,
		"tcp_timeouts": tcp.Timeouts, "tcp_segment_send_errors": tcp.SegmentSendErrors,
	} {
		out.Counters[name] = v.Value()
	}
	return out
}

func (n *stackNet) Close() error {
	var err error
	n.closed.Do(func() {
		n.unsub()
		err = n.s.Close()
		if n.extra != nil {
			err = errors.Join(err, n.extra())
		}
	})
	return err
}

// LookupFunc adapts a lookup function to stack.Resolver.
type LookupFunc func(ctx context.Context, network, host string) ([]netip.Addr, error)

// LookupNetIP calls f.
func (f LookupFunc) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	return f(ctx, network, host)
}

// StackStarter starts a stack.Stack with sc, which qualifies in the
// background, never giving up. names, if not nil, says how to call server
// addresses (else the stack's ServerNames do); closeAlso, if set, runs
// after the stack closes.
func StackStarter(sc stack.Config, names map[netip.Addr]string, closeAlso func() error) StartFunc {
	return func(ctx context.Context, onEvent func(Event)) (Teredo, error) {
		s, err := stack.Start(sc)
		if err != nil {
			return nil, fmt.Errorf("cannot start the Teredo client: %w", err)
		}
		return newStackNet(s, names, onEvent, closeAlso), nil
	}
}

// RealStarter starts a stack for the -server list (names resolved again
// before each round of qualification, through lookup) on a UDP socket at
// -bind.
func RealStarter(cfg *Config, log *slog.Logger, lookup func(ctx context.Context, network, host string) ([]netip.Addr, error)) StartFunc {
	return StackStarter(StackConfig(cfg, log, lookup), nil, nil)
}

// StackConfig is the stack.Config that RealStarter starts for cfg.
func StackConfig(cfg *Config, log *slog.Logger, lookup func(ctx context.Context, network, host string) ([]netip.Addr, error)) stack.Config {
	return stack.Config{
		ServerNames:      cfg.Servers,
		Resolver:         LookupFunc(lookup),
		Secondary:        cfg.Secondary,
		SecondaryPort:    cfg.SecondaryPort,
		LocalAddr:        cfg.Bind,
		Logger:           log,
		PortMapping:      cfg.PortMap,
		LocalDiscovery:   cfg.LocalDiscovery,
		ConeProbe:        cfg.ConeProbe,
		PeerRelay:        cfg.PeerRelay,
		NoPortPrediction: !cfg.PortPrediction,
		FixedRelay:       cfg.FixedRelay,
		TCPCongestion:    cfg.TCPCongestion,
	}
}

// disabledTeredo stands in for the stack under -ipv6 direct.
type disabledTeredo struct{}

var errTeredoDisabled = errors.New("Teredo is off (-ipv6 direct)")

func (disabledTeredo) Dial(context.Context, string, netip.AddrPort) (net.Conn, error) {
	return nil, errTeredoDisabled
}
func (disabledTeredo) ListenPacket(context.Context) (net.PacketConn, error) {
	return nil, errTeredoDisabled
}
func (disabledTeredo) Listen(uint16) (net.Listener, error) { return nil, errTeredoDisabled }
func (disabledTeredo) Status() TeredoStatus {
	return TeredoStatus{State: "disabled", MTU: 1280, Counters: map[string]uint64{}, Drops: map[string]uint64{}}
}
func (disabledTeredo) ServerName(a netip.Addr) string { return a.String() }
func (disabledTeredo) Close() error                   { return nil }
