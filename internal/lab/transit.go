package lab

import (
	"fmt"
	"net/netip"
	"slices"
)

// The transit router and shared LANs.
//
// On the internet a NAT is never one hop from another NAT: at least the access
// routers of both sides lie between them. Hop limits (IPv4 TTL) then mean something:
// a datagram sent with TTL 2 crosses the sender's own NAT and dies at the next
// router. The bridge alone cannot show that, since every NAT on it is one hop from
// every other. So NATs named in Options.Transit hang off the transit router ("trn",
// 198.18.0.9 on the bridge), each on its own point-to-point link, and keep their
// addresses in 198.18.0.0/24: the transit router answers ARP for them on the bridge
// and for everything else on their links (proxy ARP), so nothing else in the lab
// needs a route, hosts added later included. A transit NAT is then two routed hops
// (its own router, the transit router) from every other NAT, and from the servers.

// TransitV4 is the transit router's address on the lab internet.
var TransitV4 = netip.MustParseAddr("198.18.0.9")

// checkPlacement validates Options.Transit and Options.Behind against the client
// list and returns, by client name, which NATs go behind the transit router and
// which need a bridged LAN for more hosts.
func (l *Lab) checkPlacement(clients []ClientSpec, opts Options) (transit, shared map[string]bool, err error) {
	names := map[string]bool{}
	for _, c := range clients {
		names[c.Name] = true
	}
	transit = map[string]bool{}
	for _, n := range opts.Transit {
		if !names[n] {
			return nil, nil, fmt.Errorf("transit: no client %q", n)
		}
		transit[n] = true
	}
	shared = map[string]bool{}
	for host, parent := range opts.Behind {
		if !names[parent] {
			return nil, nil, fmt.Errorf("behind: %q: no client %q", host, parent)
		}
		if names[host] {
			return nil, nil, fmt.Errorf("behind: %q is already a client", host)
		}
		shared[parent] = true
	}
	return transit, shared, nil
}

// ensureTransit creates the transit router on first use.
func (l *Lab) ensureTransit() error {
	if l.Transit != nil {
		return nil
	}
	h, err := l.newNS("trn")
	if err != nil {
		return err
	}
	// Proxy ARP on every interface, created now or later.
	for _, kv := range []string{
		"net.ipv4.conf.all.proxy_arp=1",
		"net.ipv4.conf.default.proxy_arp=1",
		"net.ipv4.ip_forward=1",
	} {
		if err := h.sysctl(kv); err != nil {
			return err
		}
	}
	if err := l.plug(h, "uplink"); err != nil {
		return err
	}
	if err := noProxyDelay(h, "uplink"); err != nil {
		return err
	}
	if err := h.ip("addr", "add", netip.PrefixFrom(TransitV4, InternetV4.Bits()).String(), "dev", "uplink"); err != nil {
		return err
	}
	h.IPv4 = []netip.Addr{TransitV4}
	l.Transit = h
	return nil
}

// plugTransit connects router's new interface "wan" to the transit router by a
// point-to-point link and routes wan (the router's address) over it.
func (l *Lab) plugTransit(router *Host, wan netip.Addr) error {
	if err := l.ensureTransit(); err != nil {
		return err
	}
	l.ports++
	port := fmt.Sprintf("t%d", l.ports)
	if err := l.Transit.ip("link", "add", port, "type", "veth", "peer", "name", "wan", "netns", router.NS); err != nil {
		return err
	}
	if err := l.Transit.ip("link", "set", port, "up"); err != nil {
		return err
	}
	if err := noProxyDelay(l.Transit, port); err != nil {
		return err
	}
	if err := l.Transit.ip("route", "add", netip.PrefixFrom(wan, 32).String(), "dev", port); err != nil {
		return err
	}
	return router.ip("link", "set", "wan", "up")
}

// setupLANHost gives a client host its LAN address on eth0 and the default route.
func setupLANHost(h *Host, addr, gw netip.Addr) error {
	if err := h.ip("addr", "add", netip.PrefixFrom(addr, 24).String(), "dev", "eth0"); err != nil {
		return err
	}
	if err := h.ip("link", "set", "eth0", "up"); err != nil {
		return err
	}
	return h.ip("route", "add", "default", "via", gw.String())
}

// addBehind adds the hosts of Options.Behind, in name order, to the LAN of their
// client's NAT, at the next free addresses (.3, .4, …). They share the client's NAT
// (same Host.NAT); the NAT does not hairpin, so they reach each other's public
// mappings only if a client does something about it.
func (l *Lab) addBehind(behind map[string]string) error {
	hosts := make([]string, 0, len(behind))
	for h := range behind {
		hosts = append(hosts, h)
	}
	slices.Sort(hosts)
	next := map[string]int{}
	for _, name := range hosts {
		parent := l.Clients[behind[name]]
		n := next[parent.Name]
		next[parent.Name] = n + 1
		if n > 200 {
			return fmt.Errorf("behind %s: too many hosts", parent.Name)
		}
		h, err := l.newNS(name)
		if err != nil {
			return err
		}
		port := fmt.Sprintf("l%d", n+1)
		r := parent.NAT.Router
		if err := r.ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", h.NS); err != nil {
			return err
		}
		if err := r.ip("link", "set", port, "master", "lan", "up"); err != nil {
			return err
		}
		b := parent.NAT.LAN.Addr().As4()
		b[3] = byte(3 + n)
		addr := netip.AddrFrom4(b)
		if err := setupLANHost(h, addr, parent.NAT.Gateway); err != nil {
			return err
		}
		h.IPv4 = []netip.Addr{addr}
		h.NAT = parent.NAT
		l.Clients[name] = h
	}
	return nil
}

// noProxyDelay makes proxy ARP on ifname answer at once, not after a random delay of
// up to proxy_delay (0.8 s), which would slow every first packet to a transit NAT.
func noProxyDelay(h *Host, ifname string) error {
	return h.sysctl("net.ipv4.neigh." + ifname + ".proxy_delay=0")
}
