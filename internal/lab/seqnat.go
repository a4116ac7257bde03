package lab

import (
	"fmt"
	"strings"
)

// The two symmetric NATs whose ports a client can predict (RFC 6081's
// sequential port-symmetric and port-preserving symmetric NATs). Both map
// every new flow (client endpoint, destination) to a public port of its own,
// as Symmetric does, and both sit behind homeFirewall, so that an unsolicited
// packet is dropped and leaves no conntrack entry; only the choice of port
// differs.
//
// Sequential: `snat to WAN : numgen inc mod N map {i : SeqBase+i}` gives the
// n-th flow the NAT translates (from any client behind it) port SeqBase + n mod
// N. The map is there because nft 1.0.6 hands numgen's value to the port in
// host byte order: `numgen inc mod N offset P` made consecutive flows 256
// ports apart (measured: 16540, 16796, 17052, ... for offset 40000); a map's
// values are typed inet_service and come out right (40000, 40001, ...). Only
// the first packet of a flow passes the nat chain, so the counter counts
// flows, not packets.
//
// Port-preserving: a flow keeps its client's port if no flow uses that public
// port yet, else masquerade picks a random one. The set "used" holds the public
// ports of the flows that sent a packet in the last two minutes: a filter
// chain after source NAT adds each outbound packet's (translated) source port.
// A client's first flow from a port keeps the port (its Teredo server sees
// it); its next flows from that port, to other destinations, get random ports;
// a flow from a new local port keeps that port (measured with conntrack -L: 5000
// → 5000, 5000 → 64086, 5001 → 5001).

// SeqBase and SeqPorts are the port range of a SequentialSymmetric NAT.
const (
	SeqBase  = 40000
	SeqPorts = 1024
)

// predictableRuleset returns the ruleset of a SequentialSymmetric or
// PortPreservingSymmetric NAT n.
func predictableRuleset(n *NAT) string {
	if n.Kind == SequentialSymmetric {
		var m strings.Builder
		for i := range SeqPorts {
			if i > 0 {
				m.WriteString(", ")
			}
			fmt.Fprintf(&m, "%d : %d", i, SeqBase+i)
		}
		return fmt.Sprintf(`table ip nat {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "wan" meta l4proto udp snat to %s : numgen inc mod %d map { %s }
		oifname "wan" masquerade
	}
}
`, n.WAN, SeqPorts, m.String()) + homeFirewall
	}
	return `table ip nat {
	set used {
		type inet_service
		flags dynamic,timeout
		timeout 2m
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "wan" udp sport @used masquerade fully-random
		oifname "wan" masquerade
	}
	chain inuse {
		type filter hook postrouting priority 110; policy accept;
		oifname "wan" meta l4proto udp update @used { udp sport }
	}
}
` + homeFirewall
}
