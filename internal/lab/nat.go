package lab

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// NATKind is the behaviour of the router in front of a client host.
type NATKind int

const (
	// HomeRouter is masquerade plus a home router's firewall: from the WAN only
	// established and related traffic passes, both to the router and through it. An
	// unsolicited packet is dropped before conntrack confirms it, so it leaves no state.
	HomeRouter NATKind = iota
	// OpenMasquerade is masquerade with no firewall. An unsolicited packet to the
	// router creates a conntrack entry, and the next outbound packet of the client
	// towards that sender is then remapped to a new port (see DESIGN.md).
	OpenMasquerade
	// Symmetric is `masquerade fully-random`: every new destination gets a new port.
	Symmetric
	// FullCone forwards the cone port (NAT.ConePort) of the WAN address statically to
	// the client and translates the client's outbound packets from that port to it.
	FullCone
	// SequentialSymmetric is a symmetric NAT that gives each new flow, from any
	// client, the next port of a range (RFC 6081's sequential port-symmetric NAT),
	// behind a home router's firewall; see seqnat.go.
	SequentialSymmetric
	// PortPreservingSymmetric is a symmetric NAT that keeps the client's port for a
	// flow when no other flow uses that public port yet, and picks a random one
	// otherwise (RFC 6081's port-preserving symmetric NAT), behind a home router's
	// firewall; see seqnat.go.
	PortPreservingSymmetric
)

// String returns the kind's short name.
func (k NATKind) String() string {
	switch k {
	case HomeRouter:
		return "home-router"
	case OpenMasquerade:
		return "open-masquerade"
	case Symmetric:
		return "symmetric"
	case FullCone:
		return "full-cone"
	case SequentialSymmetric:
		return "sequential-symmetric"
	case PortPreservingSymmetric:
		return "port-preserving-symmetric"
	}
	return "NATKind(" + strconv.Itoa(int(k)) + ")"
}

// DefaultConePort is the client port that a FullCone NAT forwards.
const DefaultConePort = 3545

// NAT describes the router namespace in front of a client host.
type NAT struct {
	Kind     NATKind
	Router   *Host        // the router's namespace: "wan" on the internet, "lan" to the client
	WAN      netip.Addr   // the router's public address on the lab internet
	LAN      netip.Prefix // the client network
	Gateway  netip.Addr   // the router's LAN address
	ConePort uint16       // FullCone: the forwarded port, on both sides
}

// addNATClient builds router i (WAN 198.18.0.10+i, LAN 192.168.1+i.0/24) and the client
// host behind it. The lab has no link to the root namespace, so the private LAN range
// can never leak onto a real network.
func (l *Lab) addNATClient(spec ClientSpec, i int, transit, sharedLAN bool) (*Host, error) {
	if i > 200 {
		return nil, fmt.Errorf("too many clients")
	}
	wan := netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + i)})
	lan := netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 168, byte(1 + i), 0}), 24)
	gw := netip.AddrFrom4([4]byte{192, 168, byte(1 + i), 1})
	addr := netip.AddrFrom4([4]byte{192, 168, byte(1 + i), 2})

	router, err := l.newNS("nat-" + spec.Name)
	if err != nil {
		return nil, err
	}
	if transit {
		err = l.plugTransit(router, wan)
	} else {
		err = l.plug(router, "wan")
	}
	if err != nil {
		return nil, err
	}
	if err := router.ip("addr", "add", netip.PrefixFrom(wan, InternetV4.Bits()).String(), "dev", "wan"); err != nil {
		return nil, err
	}
	router.IPv4 = []netip.Addr{wan, gw}
	if err := router.EnableForwarding(); err != nil {
		return nil, err
	}

	h, err := l.newNS(spec.Name)
	if err != nil {
		return nil, err
	}
	if sharedLAN {
		// A bridge, so that more hosts can join the LAN (Options.Behind).
		if err := router.ip("link", "add", "lan", "type", "bridge"); err != nil {
			return nil, err
		}
		if err := router.ip("link", "add", "l0", "type", "veth", "peer", "name", "eth0", "netns", h.NS); err != nil {
			return nil, err
		}
		if err := router.ip("link", "set", "l0", "master", "lan", "up"); err != nil {
			return nil, err
		}
	} else if err := router.ip("link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", h.NS); err != nil {
		return nil, err
	}
	if err := router.ip("addr", "add", netip.PrefixFrom(gw, 24).String(), "dev", "lan"); err != nil {
		return nil, err
	}
	if err := router.ip("link", "set", "lan", "up"); err != nil {
		return nil, err
	}
	if err := setupLANHost(h, addr, gw); err != nil {
		return nil, err
	}
	h.IPv4 = []netip.Addr{addr}
	h.NAT = &NAT{Kind: spec.NAT, Router: router, WAN: wan, LAN: lan, Gateway: gw}
	if spec.NAT == FullCone {
		h.NAT.ConePort = DefaultConePort
	}
	rules, err := natRuleset(h.NAT, addr)
	if err != nil {
		return nil, err
	}
	if err := router.nft(rules); err != nil {
		return nil, err
	}
	// Packet counts per flow let tests see, for instance, a client's refreshes.
	if err := router.sysctl("net.netfilter.nf_conntrack_acct=1"); err != nil {
		return nil, err
	}
	return h, nil
}

// homeFirewall is a home router's firewall: from the WAN only established and
// related traffic passes, to the router and through it.
const homeFirewall = `table inet filter {
	chain input {
		type filter hook input priority filter; policy accept;
		iifname "wan" ct state established,related accept
		iifname "wan" drop
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname "wan" ct state established,related accept
		iifname "wan" drop
	}
}
`

// natRuleset returns the nftables ruleset of a NAT kind.
func natRuleset(n *NAT, client netip.Addr) (string, error) {
	const masq = `table ip nat {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "wan" masquerade%s
	}
}
`
	switch n.Kind {
	case HomeRouter:
		return fmt.Sprintf(masq, "") + homeFirewall, nil
	case OpenMasquerade:
		return fmt.Sprintf(masq, ""), nil
	case Symmetric:
		return fmt.Sprintf(masq, " fully-random"), nil
	case FullCone:
		return fmt.Sprintf(`table ip nat {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		iifname "wan" udp dport %[3]d dnat to %[2]s:%[3]d
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "wan" ip saddr %[2]s udp sport %[3]d snat to %[1]s:%[3]d
		oifname "wan" masquerade
	}
}
`, n.WAN, client, n.ConePort), nil
	case SequentialSymmetric, PortPreservingSymmetric:
		return predictableRuleset(n), nil
	}
	return "", fmt.Errorf("unknown NAT kind %v", n.Kind)
}

// Tuple is one direction of a conntrack entry.
type Tuple struct {
	Src, Dst netip.AddrPort
}

// Flow is a UDP conntrack entry of a NAT. For a client's outbound flow, Reply.Dst is
// the mapped (public) address and port the NAT assigned.
type Flow struct {
	Orig, Reply Tuple
	Flags       []string // e.g. UNREPLIED, ASSURED
	// OrigPackets and ReplyPackets count the packets seen in each direction (the lab
	// turns conntrack accounting on in every NAT).
	OrigPackets, ReplyPackets uint64
}

// Mapped is the public address and port the NAT gave the flow's originator.
func (f Flow) Mapped() netip.AddrPort { return f.Reply.Dst }

// UDPFlows lists the NAT's UDP conntrack entries.
func (n *NAT) UDPFlows(ctx context.Context) ([]Flow, error) {
	out, err := n.Router.Run(ctx, "conntrack", "-L", "-p", "udp")
	if err != nil {
		return nil, err
	}
	return parseConntrack(out)
}

// ClientFlows returns the NAT's UDP entries whose original direction goes from client
// (any port when client's port is 0) to remote (any port when remote's port is 0).
func (n *NAT) ClientFlows(ctx context.Context, client, remote netip.AddrPort) ([]Flow, error) {
	flows, err := n.UDPFlows(ctx)
	if err != nil {
		return nil, err
	}
	var match []Flow
	for _, f := range flows {
		if f.Orig.Src.Addr() == client.Addr() && (client.Port() == 0 || f.Orig.Src.Port() == client.Port()) &&
			f.Orig.Dst.Addr() == remote.Addr() && (remote.Port() == 0 || f.Orig.Dst.Port() == remote.Port()) {
			match = append(match, f)
		}
	}
	return match, nil
}

// FlushConntrack deletes the NAT's conntrack entries, so the next packets start afresh.
func (n *NAT) FlushConntrack(ctx context.Context) error {
	_, err := n.Router.Run(ctx, "conntrack", "-F")
	return err
}

// RemapUDP makes the NAT give the client's UDP endpoint the public port port from now
// on, towards every destination: an endpoint-independent mapping, as when a rebooted
// router hands the client a new port. The rule goes first in postrouting, ahead of the
// kind's own; existing conntrack entries keep their mapping until FlushConntrack.
//
// A port range on masquerade (`masquerade to :P-Q`) also moves the mapping (on Linux
// 6.18 one port of the range for every destination), but the kernel picks the port;
// a fixed one lets a test compare the client's new address exactly.
func (n *NAT) RemapUDP(ctx context.Context, client netip.AddrPort, port uint16) error {
	if !client.Addr().Is4() || client.Port() == 0 || port == 0 {
		return fmt.Errorf("lab: cannot remap UDP %v to port %d", client, port)
	}
	_, err := n.Router.Run(ctx, "nft", "insert", "rule", "ip", "nat", "postrouting",
		"oifname", "wan", "ip", "saddr", client.Addr().String(), "udp", "sport", strconv.Itoa(int(client.Port())),
		"snat", "to", netip.AddrPortFrom(n.WAN, port).String())
	return err
}

// parseConntrack parses `conntrack -L` output lines such as
// "udp 17 29 src=A dst=B sport=1 dport=2 [UNREPLIED] src=B dst=C sport=2 dport=3 mark=0 use=1".
func parseConntrack(out string) ([]Flow, error) {
	var flows []Flow
	for line := range strings.Lines(out) {
		fields := strings.Fields(line)
		if len(fields) < 3 || (fields[0] != "udp" && fields[0] != "ipv4") {
			continue // the summary line, or another protocol
		}
		var addrs []netip.Addr
		var ports []uint16
		var packets []uint64
		var f Flow
		for _, fld := range fields {
			if strings.HasPrefix(fld, "[") {
				f.Flags = append(f.Flags, strings.Trim(fld, "[]"))
				continue
			}
			k, v, ok := strings.Cut(fld, "=")
			if !ok {
				continue
			}
			switch k {
			case "src", "dst":
				a, err := netip.ParseAddr(v)
				if err != nil {
					return nil, fmt.Errorf("lab: conntrack line %q: %w", strings.TrimSpace(line), err)
				}
				addrs = append(addrs, a)
			case "sport", "dport":
				p, err := strconv.ParseUint(v, 10, 16)
				if err != nil {
					return nil, fmt.Errorf("lab: conntrack line %q: %w", strings.TrimSpace(line), err)
				}
				ports = append(ports, uint16(p))
			case "packets":
				n, err := strconv.ParseUint(v, 10, 64)
				if err != nil {
					return nil, fmt.Errorf("lab: conntrack line %q: %w", strings.TrimSpace(line), err)
				}
				packets = append(packets, n)
			}
		}
		if len(addrs) != 4 || len(ports) != 4 {
			return nil, fmt.Errorf("lab: conntrack line %q: want 4 addresses and 4 ports", strings.TrimSpace(line))
		}
		f.Orig = Tuple{netip.AddrPortFrom(addrs[0], ports[0]), netip.AddrPortFrom(addrs[1], ports[1])}
		f.Reply = Tuple{netip.AddrPortFrom(addrs[2], ports[2]), netip.AddrPortFrom(addrs[3], ports[3])}
		if len(packets) == 2 {
			f.OrigPackets, f.ReplyPackets = packets[0], packets[1]
		}
		flows = append(flows, f)
	}
	return flows, nil
}

// counterTable is the nftables table that holds the counters tests add to a NAT.
const counterTable = "labcount"

// AddForwardCounter makes the NAT count the packets it forwards that match expr (an
// nftables match such as `ip daddr 198.18.0.12 udp dport 40000`), under name (which
// may be an nft keyword: it is prefixed internally). Unlike
// conntrack entries, which expire after 30 s, a counter keeps every packet.
func (n *NAT) AddForwardCounter(ctx context.Context, name, expr string) error {
	if strings.ContainsAny(name, " \t\n;{}\"") || strings.ContainsAny(expr, ";{}\n") {
		return fmt.Errorf("lab: bad counter %q / %q", name, expr)
	}
	rules := fmt.Sprintf(`table inet %[1]s {
	counter %[2]s { }
	chain forward {
		type filter hook forward priority filter - 10; policy accept;
		%[3]s counter name %[2]s
	}
}
`, counterTable, "lab_"+name, expr)
	// Adding to an existing table merges chains, so every counter gets its own rule.
	return n.Router.nft(rules)
}

// ForwardCounter returns the packets counted so far by the counter name.
func (n *NAT) ForwardCounter(ctx context.Context, name string) (uint64, error) {
	out, err := n.Router.Run(ctx, "nft", "list", "counter", "inet", counterTable, "lab_"+name)
	if err != nil {
		return 0, err
	}
	return parseCounter(out)
}

// parseCounter extracts "packets N" from `nft list counter` output.
func parseCounter(out string) (uint64, error) {
	f := strings.Fields(out)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "packets" {
			return strconv.ParseUint(f[i+1], 10, 64)
		}
	}
	return 0, fmt.Errorf("lab: no packet count in %q", strings.TrimSpace(out))
}
