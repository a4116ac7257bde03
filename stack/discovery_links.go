package stack

// Discovery on every interface. Without Config.DiscoveryInterface, the
// client's discovery bubbles go out once on each suitable interface (up,
// multicast-capable, not loopback, with an IPv4 address), as Miredo sends
// them on every interface, and the discovery socket joins the group on each
// of them: a host on two LANs (wired and Wi-Fi, a VM bridge) finds local
// peers on both. The interface list is read again at every discovery
// bubble, so interfaces that come and go are followed at the bubble
// interval without any goroutine or socket of their own.

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/teredo-go/teredo/client"
	"github.com/teredo-go/teredo/proto"
)

// discoveryLink is a network interface as local discovery sees it.
type discoveryLink struct {
	Index int
	Name  string
	Flags net.Flags
	IPv4  []netip.Addr
}

// hostLinks lists the host's interfaces with their IPv4 addresses. An
// interface whose addresses cannot be read is listed without any, which
// makes it unsuitable rather than failing the whole list.
func hostLinks() ([]discoveryLink, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	links := make([]discoveryLink, 0, len(ifs))
	for _, ifi := range ifs {
		l := discoveryLink{Index: ifi.Index, Name: ifi.Name, Flags: ifi.Flags}
		addrs, _ := ifi.Addrs()
		for _, a := range addrs {
			n, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap().Is4() {
				l.IPv4 = append(l.IPv4, ip.Unmap())
			}
		}
		links = append(links, l)
	}
	return links, nil
}

// suitableLinks keeps the interfaces discovery bubbles go out on and the
// group is joined on: up, multicast-capable, not loopback (which reaches no
// neighbour), with an IPv4 address (without one the kernel has no source
// for the bubble).
func suitableLinks(all []discoveryLink) []discoveryLink {
	var out []discoveryLink
	for _, l := range all {
		if l.Flags&net.FlagUp == 0 || l.Flags&net.FlagMulticast == 0 || l.Flags&net.FlagLoopback != 0 || len(l.IPv4) == 0 {
			continue
		}
		out = append(out, l)
	}
	return out
}

// DiscoveryStats counts local discovery's work. Delivered and Refused
// count while the discovery socket runs; the others only when discovery
// runs on every suitable interface (no Config.DiscoveryInterface).
type DiscoveryStats struct {
	// Delivered counts datagrams the discovery socket handed to the
	// client, which judges them (its own bubbles, heard through multicast
	// loopback, among them); Refused those it dropped: not sent to the
	// group, or in on another interface than the configured one.
	Delivered, Refused uint64
	// Interfaces names the interfaces the last discovery bubble went out
	// on.
	Interfaces []string
	// Sent counts discovery bubbles sent, one per interface.
	Sent uint64
	// SendErrors counts sends that failed on one interface; the other
	// interfaces still got theirs.
	SendErrors uint64
	// JoinErrors counts interfaces where joining the discovery group
	// failed; discovery bubbles from there go unheard.
	JoinErrors uint64
	// ListErrors counts failures to list the host's interfaces, after
	// which the bubble went out where the routing table sends it.
	ListErrors uint64
}

// discoveryTransport is the client's transport when discovery runs on
// every suitable interface: a datagram to the discovery group goes out once
// per interface, everything else straight through.
type discoveryTransport struct {
	conn client.Transport
	// links lists the host's interfaces (hostLinks outside tests).
	links func() ([]discoveryLink, error)
	// sendOn sends b to the group out of the interface ifindex, from the
	// service socket.
	sendOn func(b []byte, to netip.AddrPort, ifindex int) error
	// follow, when set, makes the discovery socket join the group on
	// exactly these interfaces; it is called before the bubbles leave.
	follow atomic.Pointer[func([]discoveryLink)]
	log    *slog.Logger

	sent, sendErrors, listErrors atomic.Uint64

	mu   sync.Mutex
	last []string
}

// WriteTo implements client.Transport.
func (t *discoveryTransport) WriteTo(b []byte, to netip.AddrPort) error {
	if to != netip.AddrPortFrom(proto.DiscoveryGroup, proto.Port) {
		return t.conn.WriteTo(b, to)
	}
	all, err := t.links()
	if err != nil {
		t.listErrors.Add(1)
		t.log.Debug("teredo: local discovery: cannot list interfaces; sending where the routing table says", "err", err)
		return t.conn.WriteTo(b, to)
	}
	links := suitableLinks(all)
	if f := t.follow.Load(); f != nil {
		(*f)(links)
	}
	if len(links) == 0 {
		// Nothing suitable: leave it to the routing table, as with a
		// single interface; the send fails if there is no multicast route.
		t.setLast(nil)
		return t.conn.WriteTo(b, to)
	}
	names := make([]string, 0, len(links))
	var errs []error
	for _, l := range links {
		if err := t.sendOn(b, to, l.Index); err != nil {
			t.sendErrors.Add(1)
			t.log.Debug("teredo: local discovery: bubble not sent on one interface", "interface", l.Name, "err", err)
			errs = append(errs, err)
			continue
		}
		t.sent.Add(1)
		names = append(names, l.Name)
	}
	t.setLast(names)
	if len(names) == 0 {
		// Only when every interface failed is it the caller's failure.
		return errors.Join(errs...)
	}
	return nil
}

func (t *discoveryTransport) setLast(names []string) {
	t.mu.Lock()
	t.last = names
	t.mu.Unlock()
}

// stats returns the counters; joins come from the discovery socket.
func (t *discoveryTransport) stats() DiscoveryStats {
	t.mu.Lock()
	last := slices.Clone(t.last)
	t.mu.Unlock()
	return DiscoveryStats{
		Interfaces: last,
		Sent:       t.sent.Load(),
		SendErrors: t.sendErrors.Load(),
		ListErrors: t.listErrors.Load(),
	}
}
