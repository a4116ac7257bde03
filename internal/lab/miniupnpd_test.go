package lab

import (
	"context"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/teredo-go/teredo/portmap"
)

// TestMiniUPnPd maps a port of the client behind the symmetric NAT with the project's
// portmap package against a real miniupnpd, by PCP (MAP, and PEER towards the Teredo
// server), NAT-PMP and UPnP-IGD, from the client's namespace: the NAT's nftables rules
// show the DNAT of each mapping (and PCP's SNAT towards the server) while it lives,
// and no DNAT after Close.
func TestMiniUPnPd(t *testing.T) {
	l := New(t, Options{Clients: []ClientSpec{{"c", Symmetric}}, NoRelay: true, NoV6Host: true})
	c := l.Clients["c"]
	mu := StartMiniUPnPd(t, c.NAT)
	server := netip.AddrPortFrom(ServerPrimary, 3544)
	for i, p := range []portmap.Protocol{portmap.PCP, portmap.NATPMP, portmap.UPnP} {
		t.Run(string(p), func(t *testing.T) {
			port := uint16(40001 + i)
			m, err := portmap.New(portmap.Config{
				InternalPort: port,
				Peers:        []netip.AddrPort{server},
				Protocols:    []portmap.Protocol{p},
				Gateway:      func() (netip.Addr, error) { return c.NAT.Gateway, nil },
				Dial:         c.DialContext,
				HTTPClient:   c.HTTPClient(),
				Lifetime:     10 * time.Minute,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			// go-nat-pmp opens its own socket: in the client's namespace, as
			// Start and Close run on a thread switched into it.
			var mp portmap.Mapping
			if err := inNetns(c.NS, func() (err error) { mp, err = m.Start(ctx); return err }); err != nil {
				t.Fatalf("%v\nminiupnpd:\n%s", err, mu.Proc.Output())
			}
			t.Logf("%s mapping: %+v", p, mp)
			if mp.External != netip.AddrPortFrom(c.NAT.WAN, port) || mp.Internal != netip.AddrPortFrom(c.IPv4[0], port) {
				t.Fatalf("mapping %+v, want %v:%d → %v:%d", mp, c.NAT.WAN, port, c.IPv4[0], port)
			}
			dnat := fmt.Sprintf("dport %d dnat ip to %s:%d", port, c.IPv4[0], port)
			// miniupnpd 2.3.1 writes its PEER rule for the reverse direction (from
			// the peer to the client: "th dport <client port> th sport <peer port>"),
			// which is why the stack asks for no PEER mapping; the rule is checked
			// as it is, so that a fixed miniupnpd shows up here.
			snat := fmt.Sprintf("snat ip to %s:%d", c.NAT.WAN, port)
			rs, err := mu.Ruleset(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(rs, dnat) {
				t.Fatalf("no %q in miniupnpd's rules:\n%s", dnat, rs)
			}
			if p == portmap.PCP && (!strings.Contains(rs, snat) || len(mp.Peers) != 1) {
				t.Fatalf("PCP PEER: no %q in miniupnpd's rules (peers %v):\n%s", snat, mp.Peers, rs)
			}
			if p == portmap.PCP {
				for _, line := range strings.Split(rs, "\n") {
					if strings.Contains(line, snat) {
						t.Logf("PEER rule: %s", strings.TrimSpace(line))
					}
				}
			}
			if err := inNetns(c.NS, m.Close); err != nil {
				t.Fatal(err)
			}
			if rs, err = mu.Ruleset(ctx); err != nil {
				t.Fatal(err)
			}
			if strings.Contains(rs, dnat) {
				t.Fatalf("mapping left after Close:\n%s", rs)
			}
			if strings.Contains(rs, snat) {
				t.Logf("PCP PEER rule left after Close (miniupnpd 2.3.1 cannot delete it): %s", snat)
			}
		})
	}
	// One raw PCP exchange, logged as the wire bytes the portmap package's vectors
	// were checked against.
	t.Run("pcp-wire", func(t *testing.T) {
		conn, err := c.DialContext(context.Background(), "udp4", netip.AddrPortFrom(c.NAT.Gateway, 5351).String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		req, _ := hex.DecodeString("0201000000000e1000000000000000000000ffffc0a80102" +
			"0102030405060708090a0b0c110000000dd80dd800000000000000000000ffff00000000")
		conn.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := conn.Write(req); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1100)
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("request  %x\nresponse %x", req, buf[:n])
		if n != 60 || buf[0] != 2 || buf[1] != 0x81 || buf[3] != 0 || hex.EncodeToString(buf[24:36]) != "0102030405060708090a0b0c" {
			t.Fatalf("response %x", buf[:n])
		}
		req[4], req[5], req[6], req[7] = 0, 0, 0, 0 // delete
		conn.Write(req)
		conn.Read(buf)
	})
}
