package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

// matrixRow is one NAT case of TestNATMatrix: our client "x" behind it, a peer of
// ours "p" and a Miredo client "m" placed as the case says.
type matrixRow struct {
	name string
	opts Options
	// upnp runs miniupnpd (UPnP-IGD, NAT-PMP, PCP) on x's NAT and has x map its
	// port there before it qualifies (RFC 6081's UPnP-enabled symmetric NAT).
	upnp bool
}

// natMatrixRows are the NAT cases of the matrix in DESIGN.md. The peers sit behind
// home routers, except where the case is about the peer's NAT too: two open
// masquerades (b, and FW=0 behind the transit router) and the same NAT.
var natMatrixRows = []matrixRow{
	{name: "a", opts: Options{Clients: []ClientSpec{{"x", HomeRouter}, {"p", HomeRouter}, {"m", HomeRouter}}}},
	{name: "b", opts: Options{Clients: []ClientSpec{{"x", OpenMasquerade}, {"p", OpenMasquerade}, {"m", OpenMasquerade}}}},
	{name: "c", opts: Options{Clients: []ClientSpec{{"x", Symmetric}, {"p", HomeRouter}, {"m", HomeRouter}}}},
	{name: "c-to-d", opts: Options{Clients: []ClientSpec{{"x", Symmetric}, {"p", FullCone}, {"m", FullCone}}}},
	{name: "c+upnp", opts: Options{Clients: []ClientSpec{{"x", Symmetric}, {"p", HomeRouter}, {"m", HomeRouter}}}, upnp: true},
	{name: "d", opts: Options{Clients: []ClientSpec{{"x", FullCone}, {"p", HomeRouter}, {"m", HomeRouter}}}},
	{name: "same-nat", opts: Options{Clients: []ClientSpec{{"x", HomeRouter}}, Behind: map[string]string{"p": "x", "m": "x"}}},
	{name: "fw0", opts: Options{Clients: []ClientSpec{{"x", OpenMasquerade}, {"p", OpenMasquerade}, {"m", OpenMasquerade}}, Transit: []string{"x", "p", "m"}}},
}

// TestNATMatrix measures, for each NAT case, whether our client reaches our client,
// a Miredo client and the IPv6-only host, and whether each reaches it: TCP echoes
// of 64 KiB (12 s each way) and a 1 MiB download through a Miredo relay. It only
// logs the table (failures are results here, several are expected: DESIGN.md says
// why), so it runs only with LAB_MATRIX=1:
//
//	LAB_MATRIX=1 flock /tmp/teredo-lab.lock go test -count=1 -run TestNATMatrix -v ./internal/lab
//
// LAB_MATRIX_ROWS=a,fw0 picks rows. Local discovery is on for our clients.
func TestNATMatrix(t *testing.T) {
	if os.Getenv("LAB_MATRIX") == "" {
		t.Skip("set LAB_MATRIX=1 to measure the NAT matrix (a few minutes)")
	}
	requireOurServer(t)
	Require(t, "miredo")
	var pick map[string]bool
	if s := os.Getenv("LAB_MATRIX_ROWS"); s != "" {
		pick = map[string]bool{}
		for _, r := range strings.Split(s, ",") {
			pick[r] = true
		}
	}
	table := []string{
		"| NAT case | our → our | our ← our | our → Miredo | our ← Miredo | our → IPv6 | our ← IPv6 |",
		"|---|---|---|---|---|---|---|",
	}
	for _, row := range natMatrixRows {
		if pick != nil && !pick[row.name] {
			continue
		}
		t.Run(row.name, func(t *testing.T) {
			cells := measureRow(t, row)
			table = append(table, "| "+row.name+" | "+strings.Join(cells, " | ")+" |")
		})
	}
	t.Log("NAT matrix:\n" + strings.Join(table, "\n"))
}

// cell runs one check and formats its result with the time it took, connection
// set-up (bubbles, echo tests) included.
func cell(t *testing.T, what string, f func() (time.Duration, error)) string {
	start := time.Now()
	took, err := f()
	wall := time.Since(start)
	if err != nil {
		t.Logf("%s: FAIL after %v: %v", what, wall.Round(time.Millisecond), err)
		return fmt.Sprintf("fail (%.0f s)", wall.Seconds())
	}
	t.Logf("%s: ok in %v (transfer %v)", what, wall.Round(time.Millisecond), took)
	return fmt.Sprintf("ok (%d ms)", wall.Milliseconds())
}

func measureRow(t *testing.T, row matrixRow) []string {
	const size = 64 << 10
	l := New(t, row.opts)
	srv := ourServer(t, l)
	StartMiredoRelay(t, l.Relay, MiredoRelayOptions{})
	f := l.V6Host.ServeFile(t, netip.AddrPortFrom(V6HostAddr, 8080), 1<<20)
	disc := []string{"-local-discovery"}
	xFlags := disc
	if row.upnp {
		StartMiniUPnPd(t, l.Clients["x"].NAT)
		xFlags = append([]string{"-portmap"}, disc...)
	}
	x := startProbe(t, l.Clients["x"], srv, probeOptions{Extra: xFlags})
	if row.upnp {
		requireMappedAddress(t, x)
	}
	p := startProbe(t, l.Clients["p"], srv, probeOptions{Extra: disc, Control: 7901})
	m := StartMiredoClient(t, l.Clients["m"], srv.Primary, MiredoClientOptions{})
	serveEcho(t, m.Host, netip.AddrPortFrom(m.Addr, 7001))
	echoTo := func(to netip.AddrPort) func() (time.Duration, error) {
		return func() (time.Duration, error) {
			r, err := x.echo(12*time.Second, to, size)
			return time.Duration(r.Milliseconds) * time.Millisecond, err
		}
	}
	echoIn := func(from *Host, to netip.AddrPort) func() (time.Duration, error) {
		return func() (time.Duration, error) {
			r, err := echoFrom(from, 12*time.Second, to, size)
			return time.Duration(r.Milliseconds) * time.Millisecond, err
		}
	}
	var cells []string
	cells = append(cells, cell(t, "x → p", echoTo(p.listen(t, 7002))))
	cells = append(cells, cell(t, "p → x", func() (time.Duration, error) {
		r, err := p.echo(12*time.Second, x.listen(t, 7003), size)
		return time.Duration(r.Milliseconds) * time.Millisecond, err
	}))
	cells = append(cells, cell(t, "x → Miredo", echoTo(netip.AddrPortFrom(m.Addr, 7001))))
	// A fresh Miredo client for the other direction, so that the first connection
	// does not open the way for it.
	m.Proc.Stop(5 * time.Second)
	m2 := StartMiredoClient(t, l.Clients["m"], srv.Primary, MiredoClientOptions{})
	cells = append(cells, cell(t, "Miredo → x", echoIn(m2.Host, x.listen(t, 7004))))
	cells = append(cells, cell(t, "x → IPv6 host", func() (time.Duration, error) {
		got, took, err := x.get(15*time.Second, f.URL)
		if err == nil {
			err = f.Verify(got)
		}
		return took, err
	}))
	cells = append(cells, cell(t, "IPv6 host → x", echoIn(l.V6Host, x.listen(t, 7005))))
	if row.upnp {
		// What the mapping and the symmetric NAT made of it all, for the
		// report's "why".
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		out, err := l.Clients["x"].NAT.Router.Run(ctx, "conntrack", "-L", "-p", "udp")
		t.Logf("conntrack on x's NAT (%v):\n%s", err, out)
		t.Logf("x's counters: %s", x.status(t).Counters)
		t.Logf("server: %s", srv.Proc.Output())
	}
	return cells
}

// requireMappedAddress fails the row unless x's Teredo address carries the port
// mapping it made on its NAT (the server saw another port: the NAT is symmetric), so
// that the row measures the mapping and not the bare symmetric NAT again.
func requireMappedAddress(t *testing.T, x *probeClient) {
	t.Helper()
	var st struct {
		PortMap *struct { // stack.PortMapStatus
			Mapping struct {
				Protocol string
				External netip.AddrPort
			}
			InAddress bool
			ServerSaw netip.AddrPort
		}
	}
	if err := x.call(5*time.Second, "/status", nil, &st); err != nil {
		t.Fatal(err)
	}
	pm := st.PortMap
	if pm == nil || !pm.InAddress || pm.Mapping.External != x.Teredo.Mapped {
		t.Fatalf("x's address %v (mapped %v) does not carry a port mapping: %+v", x.Addr, x.Teredo.Mapped, pm)
	}
	t.Logf("x mapped its port by %s: %v in its address, the server saw %v", pm.Mapping.Protocol, pm.Mapping.External, pm.ServerSaw)
}
