package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/teredo-go/teredo/internal/lab/internal/echo"
	"github.com/teredo-go/teredo/proto"
)

// portmapStatusAddr is where teredo-socks serves /status in TestPortMapSymmetric.
const portmapStatusAddr = "127.0.0.1:9547"

// socksPortMap is the "portmap" object of teredo-socks's /status.
type socksPortMap struct {
	Protocol  string            `json:"protocol"`
	External  string            `json:"external"`
	Lifetime  float64           `json:"lifetime_seconds"`
	InAddress bool              `json:"in_address"`
	ServerSaw string            `json:"server_saw"`
	Tried     map[string]string `json:"tried"`
}

// TestPortMapSymmetric: teredo-socks behind the symmetric NAT, whose router runs
// miniupnpd (UPnP-IGD, NAT-PMP, PCP), maps its UDP port (port mapping is on by
// default), and its Teredo address carries the mapped port; so does what the server
// saw, although the NAT is symmetric: before qualifying, the client had the server
// reach it through the mapping (client/portmapped.go), so its own flow to the server
// is that translation and leaves from the mapped port, while its flow to the
// server's secondary address gets a random one ("NAT type: symmetric"). A client
// of the project behind a home router (a1) then reaches the
// -forward service of the symmetric NAT's client, a TCP echo of 1 MiB, directly
// through the mapping. When teredo-socks stops, the mapping is gone from the NAT; run
// again with -portmap=false, the same client is out of a1's reach (the control).
func TestPortMapSymmetric(t *testing.T) {
	impl := serverImpls[1] // the project's server
	impl.require(t)
	requireOurSocks(t)
	l := New(t, Options{Clients: []ClientSpec{{"a1", HomeRouter}, {"c", Symmetric}}, NoRelay: true, NoV6Host: true})
	srv := impl.start(t, l)
	c, a1 := l.Clients["c"], l.Clients["a1"]
	mu := StartMiniUPnPd(t, c.NAT)

	local, err := c.Listen("tcp4", "127.0.0.1:9000")
	if err != nil {
		t.Fatal(err)
	}
	es := echo.Serve(local, 20*time.Second)
	t.Cleanup(func() { es.Close() })
	s := startSocks(t, c, srv.Primary, "-forward", "8000=127.0.0.1:9000", "-status", portmapStatusAddr, "-v")
	ta, _ := proto.ParseAddress(s.Addr)
	t.Logf("teredo-socks behind the symmetric NAT qualified in %v as %v (mapped %v)", s.Qualified.Round(time.Millisecond), s.Addr, ta.Mapped)

	pm := socksPortMapStatus(t, c)
	t.Logf("/status portmap: %+v", pm)
	if pm.Protocol != "pcp" || pm.External != ta.Mapped.String() || !pm.InAddress || pm.Lifetime <= 0 {
		t.Fatalf("portmap status %+v, address carries %v", pm, ta.Mapped)
	}
	if ta.Mapped.Addr() != c.NAT.WAN {
		t.Fatalf("address carries %v, not the NAT's WAN address %v", ta.Mapped, c.NAT.WAN)
	}
	// The server saw the mapped port: its flow is the mapping's.
	if saw, err := netip.ParseAddrPort(pm.ServerSaw); err != nil || saw != ta.Mapped {
		t.Errorf("server saw %q, want the mapped %v", pm.ServerSaw, ta.Mapped)
	}
	// The NAT is still symmetric: the secondary address saw a random port.
	if _, err := s.Proc.WaitLine(regexp.MustCompile(`NAT type: symmetric`), 10*time.Second); err != nil {
		t.Errorf("teredo-socks did not classify the NAT as symmetric: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dnat := fmt.Sprintf("dport %d dnat ip to %s:", ta.Mapped.Port(), c.IPv4[0])
	if rs, err := mu.Ruleset(ctx); err != nil || !strings.Contains(rs, dnat) {
		t.Fatalf("miniupnpd has no %q (%v):\n%s", dnat, err, rs)
	}

	p := startProbe(t, a1, srv, probeOptions{})
	dst := netip.AddrPortFrom(s.Addr, 8000)
	r, err := p.echo(30*time.Second, dst, 1<<20)
	if err != nil {
		dumpPortMapState(t, c, a1)
		t.Fatalf("a1 → %v (symmetric NAT, port mapping): %v\nteredo-socks:\n%s", dst, err, s.Proc.Output())
	}
	if es.Accepted.Load() != 1 {
		t.Errorf("the forwarded service accepted %d connections, want 1", es.Accepted.Load())
	}
	t.Logf("a1 → [%v]:8000 → c 127.0.0.1:9000: %d bytes echoed in %d ms", s.Addr, r.Received, r.Milliseconds)
	// The data went straight through the mapping: the NAT's entry from a1's public
	// address to the mapped port carried it.
	flows, err := c.NAT.UDPFlows(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var through bool
	for _, f := range flows {
		if f.Orig.Src.Addr() == a1.NAT.WAN && f.Orig.Dst == ta.Mapped && f.OrigPackets > 10 {
			through = true
		}
	}
	if !through {
		t.Errorf("no conntrack entry from %v to %v carried the echo: %+v", a1.NAT.WAN, ta.Mapped, flows)
	}

	s.Proc.Stop(5 * time.Second)
	if rs, err := mu.Ruleset(ctx); err != nil || strings.Contains(rs, dnat) {
		t.Errorf("mapping left after teredo-socks stopped (%v):\n%s", err, rs)
	}

	// The control: without port mapping the same client is out of a1's reach.
	off := startSocks(t, c, srv.Primary, "-forward", "8000=127.0.0.1:9000", "-portmap=false")
	if _, err := p.echo(8*time.Second, netip.AddrPortFrom(off.Addr, 8000), 1<<10); err == nil {
		t.Errorf("a1 reached %v behind the symmetric NAT without port mapping", off.Addr)
	} else {
		t.Logf("without port mapping: %v", err)
	}
}

func socksPortMapStatus(t testing.TB, h *Host) socksPortMap {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+portmapStatusAddr+"/status", nil)
	resp, err := h.HTTPClient().Do(req)
	if err != nil {
		t.Fatalf("teredo-socks /status: %v", err)
	}
	defer resp.Body.Close()
	var st struct {
		PortMap *socksPortMap `json:"portmap"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || st.PortMap == nil {
		t.Fatalf("teredo-socks /status: no portmap (%v)", err)
	}
	return *st.PortMap
}

// dumpPortMapState logs what the NATs and teredo-socks saw, for a failed test.
func dumpPortMapState(t testing.TB, hs ...*Host) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, h := range hs {
		out, err := h.NAT.Router.Run(ctx, "conntrack", "-L", "-p", "udp")
		t.Logf("conntrack on %s (%v):\n%s", h.NAT.Router.Name, err, out)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+portmapStatusAddr+"/status", nil)
	if resp, err := hs[0].HTTPClient().Do(req); err == nil {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		t.Logf("teredo-socks /status:\n%s", b)
	}
}
