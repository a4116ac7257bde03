package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/teredo-go/teredo/client"
	"github.com/teredo-go/teredo/dialer"
	"github.com/teredo-go/teredo/listener"
	"github.com/teredo-go/teredo/stack"
	"gvisor.dev/gvisor/pkg/tcpip"
)

// qualifyTimeout is how long each configured server gets to qualify us:
// the client's three router solicitations four seconds apart, and a margin.
const qualifyTimeout = 14 * time.Second

// stackNet is a qualified stack.Stack as the command uses it.
type stackNet struct {
	s      *stack.Stack
	d      *dialer.Dialer
	names  map[netip.Addr]string // server address → the name the user gave
	unsub  func()
	extra  func() error // closed after the stack (the demo internet)
	closed sync.Once
}

func newStackNet(s *stack.Stack, names map[netip.Addr]string, onEvent func(stackEvent), extra func() error) *stackNet {
	n := &stackNet{s: s, d: dialer.New(s), names: names, extra: extra}
	n.unsub = s.Subscribe(func(ev stack.Event) {
		if e, ok := convertEvent(ev); ok {
			onEvent(e)
		}
	})
	return n
}

func convertEvent(ev stack.Event) (stackEvent, bool) {
	switch ev := ev.(type) {
	case client.Qualified:
		return stackEvent{Kind: evQualified, Addr: ev.Addr, Server: ev.Server}, true
	case client.AddressChanged:
		return stackEvent{Kind: evAddressChanged, Old: ev.Old, Addr: ev.New}, true
	case client.Offline:
		return stackEvent{Kind: evOffline, Err: ev.Reason}, true
	case client.NATClassified:
		return stackEvent{Kind: evNAT, NAT: ev.Type.String()}, true
	}
	return stackEvent{}, false
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
	if name, ok := n.names[a]; ok && name != a.String() {
		return name + " (" + a.String() + ")"
	}
	return a.String()
}

func (n *stackNet) Status() teredoStatus {
	st := n.s.Status()
	c, l := st.Client, st.Link
	out := teredoStatus{
		State:  c.State.String(),
		Addr:   c.Addr,
		Public: c.PublicAddr,
		Server: c.Server,
		Mapped: c.Mapped,
		NAT:    c.NAT.String(),
		Peers:  c.Peers,
		MTU:    c.MTU,
		Counters: map[string]uint64{
			"tx_fast": c.Counters.TxFast, "tx_queued": c.Counters.TxQueued, "tx_flushed": c.Counters.TxFlushed,
			"rx_delivered": c.Counters.RxDelivered, "rx_held_delivered": c.Counters.RxHeldDelivered,
			"router_solicitations": c.Counters.RS, "router_advertisements": c.Counters.RA,
			"bubbles": c.Counters.Bubbles, "bubble_replies": c.Counters.BubbleReplies,
			"ttl_bubbles":   c.Counters.TTLBubbles,
			"echo_requests": c.Counters.EchoRequests, "icmp_errors": c.Counters.ICMPErrors, "relay_failovers": c.Counters.RelayFailovers,
			"peers_created": c.Counters.PeerTable.Created, "peers_evicted": c.Counters.PeerTable.Evicted,
			"peers_expired": c.Counters.PeerTable.Expired, "peer_queue_drops": c.Counters.PeerTable.QueueDrops,
			"peer_queued_dropped": c.Counters.PeerTable.Dropped,
			"link_rx_datagrams":   l.RxDatagrams, "link_rx_packets": l.RxPackets,
			"link_rx_not_attached": l.RxNotAttached, "link_read_errors": l.ReadErrors,
			"link_tx_packets": l.TxPackets, "link_tx_tunnel": l.TxTunnel, "link_tx_errors": l.TxErrors,
		},
		Drops: c.Counters.Drops,
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

// serverList is the -server list resolved to IPv4.
type serverList struct {
	addrs []netip.Addr
	names map[netip.Addr]string
	given string // as the user wrote it, for messages
}

// resolveServers turns -server names into IPv4 addresses through the host
// resolver, keeping the order. A name that does not resolve is skipped with
// a warning, as long as another one does.
func resolveServers(ctx context.Context, lookup func(ctx context.Context, network, host string) ([]netip.Addr, error), hosts []string, log *slog.Logger) (serverList, error) {
	l := serverList{names: map[netip.Addr]string{}, given: strings.Join(hosts, ", ")}
	var errs []error
	for _, h := range hosts {
		if a, err := netip.ParseAddr(h); err == nil {
			if a = a.Unmap(); !a.Is4() {
				errs = append(errs, fmt.Errorf("%s is not an IPv4 address", h))
				continue
			}
			l.add(a, h)
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		found, err := lookup(rctx, "ip4", h)
		cancel()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, a := range found {
			if a = a.Unmap(); a.Is4() {
				l.add(a, h)
				break // one address per server: the client derives the secondary
			}
		}
	}
	if len(l.addrs) > 0 && len(errs) > 0 {
		log.Warn("skipping Teredo servers that do not resolve", "err", errors.Join(errs...))
	}
	if len(l.addrs) == 0 {
		return l, fmt.Errorf("cannot resolve Teredo server %s to an IPv4 address (%w).\nPick a reachable server with -server HOST, or try -demo", l.given, errors.Join(errs...))
	}
	return l, nil
}

func (l *serverList) add(a netip.Addr, name string) {
	if _, dup := l.names[a]; dup {
		return
	}
	l.addrs = append(l.addrs, a)
	l.names[a] = name
}

// realStarter qualifies with the -server list over a UDP socket at -bind.
func realStarter(cfg *Config, log *slog.Logger, lookup func(ctx context.Context, network, host string) ([]netip.Addr, error)) startFunc {
	return realStart{cfg: cfg, log: log, lookup: lookup, perServer: qualifyTimeout}.start
}

// realStart is realStarter's state; tests shorten perServer and point
// tune at a loopback server.
type realStart struct {
	cfg       *Config
	log       *slog.Logger
	lookup    func(ctx context.Context, network, host string) ([]netip.Addr, error)
	perServer time.Duration
	tune      func(*stack.Config)
}

func (r realStart) start(ctx context.Context, onEvent func(stackEvent)) (teredoNet, error) {
	servers, err := resolveServers(ctx, r.lookup, r.cfg.Servers, r.log)
	if err != nil {
		return nil, err
	}
	qctx, cancel := context.WithTimeout(ctx, r.perServer*time.Duration(len(servers.addrs)))
	defer cancel()
	sc := stack.Config{
		Servers:        servers.addrs,
		Secondary:      r.cfg.Secondary,
		LocalAddr:      r.cfg.Bind,
		Logger:         r.log,
		PortMapping:    r.cfg.PortMap,
		LocalDiscovery: r.cfg.LocalDiscovery,
		ConeProbe:      r.cfg.ConeProbe,
	}
	sc.SecondaryPort = r.cfg.SecondaryPort
	if r.tune != nil {
		r.tune(&sc)
	}
	s, err := stack.New(qctx, sc)
	if err != nil {
		if ctx.Err() != nil {
			return nil, err
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("Teredo server %s did not answer (%w).\nPublic Teredo servers come and go; pick another with -server HOST[,HOST...] (or try -demo)", servers.given, err)
		}
		return nil, fmt.Errorf("cannot start the Teredo client: %w", err)
	}
	return newStackNet(s, servers.names, onEvent, nil), nil
}
