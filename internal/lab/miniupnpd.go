package lab

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// MiniUPnPd is a miniupnpd (Debian's miniupnpd-nftables: UPnP-IGD, NAT-PMP and PCP)
// running in a NAT's router namespace, listening on its LAN side.
type MiniUPnPd struct {
	Proc *Proc
	NAT  *NAT
	// Conf is the configuration file written for this instance.
	Conf string
}

// miniupnpdReadyRE is miniupnpd's last start-up line: its PCP/NAT-PMP socket is open.
var miniupnpdReadyRE = regexp.MustCompile(`Listening for NAT-PMP/PCP traffic on port (\d+)`)

// miniupnpdTable is the nftables table of miniupnpd's chains. It is its own table so
// that the NAT kind's ruleset stays as it is: the base chains jump to miniupnpd's
// chains, and the postrouting one runs just before the lab's masquerade (srcnat - 1),
// so a PCP PEER mapping's snat wins over masquerade.
const miniupnpdTable = "miniupnpd"

// miniupnpdRuleset creates the chains miniupnpd 2.3 fills (see its nft_init.sh):
// a filter chain jumped to from forward, and nat chains jumped to from prerouting
// and postrouting. The forward policy stays accept: the lab's NAT kinds decide what
// passes. The router's own packets keep their source port (an identity snat
// ahead of the NAT kind's masquerade, which would randomise them on the symmetric
// NAT): miniupnpd's STUN check, below, wants to see its own ports, as it does on a
// router whose own sockets are not translated.
const miniupnpdRuleset = `table inet miniupnpd {
	chain forward {
		type filter hook forward priority filter; policy accept;
		jump miniupnpd
	}
	chain miniupnpd {
	}
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		jump prerouting_miniupnpd
	}
	chain postrouting {
		type nat hook postrouting priority srcnat - 1; policy accept;
		oifname "wan" ip saddr %[1]s snat to %[1]s
		jump postrouting_miniupnpd
	}
	chain prerouting_miniupnpd {
	}
	chain postrouting_miniupnpd {
	}
}
`

// StartMiniUPnPd runs miniupnpd in n's router namespace with UPnP-IGD, NAT-PMP and
// PCP on the LAN side and the WAN address as its external address. Its configuration
// and lease file live in a per-test directory; it is stopped when the test ends.
func StartMiniUPnPd(t testing.TB, n *NAT) *MiniUPnPd {
	t.Helper()
	Require(t, "miniupnpd")
	if err := n.Router.nft(fmt.Sprintf(miniupnpdRuleset, n.WAN)); err != nil {
		t.Fatalf("miniupnpd tables on %s: %v", n.Router.Name, err)
	}
	stun := ServeSTUN(t, n.Router.lab.Server, netip.AddrPortFrom(ServerPrimary, 3478))
	dir := t.TempDir()
	var u [16]byte
	rand.Read(u[:])
	conf := filepath.Join(dir, "miniupnpd.conf")
	text := strings.Join([]string{
		"ext_ifname=wan",
		"listening_ip=lan",
		"http_port=0",
		"enable_natpmp=yes",
		"enable_upnp=yes",
		"secure_mode=yes",
		"system_uptime=no",
		"notify_interval=60",
		"clean_ruleset_interval=600",
		"min_lifetime=120",
		"max_lifetime=86400",
		fmt.Sprintf("uuid=%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16]),
		"lease_file=" + filepath.Join(dir, "leases"),
		// 198.18.0.0/15 is reserved (benchmarking), and miniupnpd 2.3 refuses to map
		// ports on a reserved external address unless STUN shows it is reachable
		// unfiltered: the lab's STUN server on the Teredo server host answers it.
		"ext_perform_stun=yes",
		"ext_stun_host=" + stun.Addr().String(),
		fmt.Sprintf("ext_stun_port=%d", stun.Port()),
		"upnp_table_name=" + miniupnpdTable,
		"upnp_nat_table_name=" + miniupnpdTable,
		"upnp_forward_chain=miniupnpd",
		"upnp_nat_chain=prerouting_miniupnpd",
		"upnp_nat_postrouting_chain=postrouting_miniupnpd",
		fmt.Sprintf("allow 1024-65535 %s 1024-65535", n.LAN),
		"deny 0-65535 0.0.0.0/0 0-65535",
		"",
	}, "\n")
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	m := &MiniUPnPd{NAT: n, Conf: conf}
	// -d: foreground, logging to standard error; -P: a pid file of its own.
	m.Proc = n.Router.Start(t, "miniupnpd", "-d", "-f", conf, "-P", filepath.Join(dir, "miniupnpd.pid"))
	if _, err := m.Proc.WaitLine(miniupnpdReadyRE, 10*time.Second); err != nil {
		t.Fatalf("miniupnpd on %s: %v", n.Router.Name, err)
	}
	return m
}

// Ruleset returns miniupnpd's nftables table as nft lists it.
func (m *MiniUPnPd) Ruleset(ctx context.Context) (string, error) {
	return m.NAT.Router.Run(ctx, "nft", "list", "table", "inet", miniupnpdTable)
}

// ServeSTUN answers STUN binding requests (RFC 5389) on addr in h's namespace with the
// source address and port it saw (MAPPED-ADDRESS, which every STUN client reads),
// from the same address whatever CHANGE-REQUEST asks, until the test ends. It serves
// miniupnpd's check of its external address.
func ServeSTUN(t testing.TB, h *Host, addr netip.AddrPort) netip.AddrPort {
	t.Helper()
	pc, err := h.ListenPacket("udp4", addr.String())
	if err != nil {
		t.Fatalf("STUN server on %s: %v", h.Name, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			if resp, ok := stunAnswer(buf[:n], from.(*net.UDPAddr).AddrPort()); ok {
				pc.WriteTo(resp, from)
			}
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	return addr
}

// stunAnswer builds the success response to a binding request b from src.
func stunAnswer(b []byte, src netip.AddrPort) ([]byte, bool) {
	const cookie = 0x2112A442
	if len(b) < 20 || binary.BigEndian.Uint16(b) != 0x0001 || binary.BigEndian.Uint32(b[4:]) != cookie ||
		int(binary.BigEndian.Uint16(b[2:]))+20 != len(b) {
		return nil, false
	}
	a := src.Addr().Unmap()
	if !a.Is4() {
		return nil, false
	}
	r := make([]byte, 0, 32)
	r = binary.BigEndian.AppendUint16(r, 0x0101)
	r = binary.BigEndian.AppendUint16(r, 12)
	r = append(r, b[4:20]...)                    // cookie and transaction id
	r = binary.BigEndian.AppendUint16(r, 0x0001) // MAPPED-ADDRESS
	r = binary.BigEndian.AppendUint16(r, 8)
	r = append(r, 0, 1) // IPv4
	r = binary.BigEndian.AppendUint16(r, src.Port())
	a4 := a.As4()
	return append(r, a4[:]...), true
}
