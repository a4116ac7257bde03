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
	// ourRelay runs the project's teredo-relay with -hairpin instead of a Miredo
	// relay, and peerRelay turns on our clients' peer relay (stack.Config.PeerRelay):
	// together what a teredo-socks user gets by default.
	ourRelay, peerRelay bool
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
	{name: "c+peer-relay", opts: Options{Clients: []ClientSpec{{"x", Symmetric}, {"p", HomeRouter}, {"m", HomeRouter}}}, ourRelay: true, peerRelay: true},
	{name: "d", opts: Options{Clients: []ClientSpec{{"x", FullCone}, {"p", HomeRouter}, {"m", HomeRouter}}}},
	{name: "same-nat", opts: Options{Clients: []ClientSpec{{"x", HomeRouter}}, Behind: map[string]string{"p": "x", "m": "x"}}},
	{name: "fw0", opts: Options{Clients: []ClientSpec{{"x", OpenMasquerade}, {"p", OpenMasquerade}, {"m", OpenMasquerade}}, Transit: []string{"x", "p", "m"}}},
}

// TestNATMatrix measures, for each NAT case, whether our client reaches our client,
// a Miredo client and the IPv6-only host, and whether each reaches it: TCP echoes
// of 64 KiB (12 s each way) and a 1 MiB download through the row's relay. Every
// cell starts from fresh clients and empty conntrack tables on every NAT, so that
// no cell opens (or poisons) the way for the next. It only logs the table
// (failures are results here, several are expected: DESIGN.md says why), so it
// runs only with LAB_MATRIX=1:
//
//	LAB_MATRIX=1 flock /tmp/teredo-lab.lock go test -count=1 -run TestNATMatrix -v ./internal/lab
//
// LAB_MATRIX_ROWS=a,fw0 picks rows (the whole matrix takes about 6 minutes; run it
// in two halves to keep each hold of the lab lock short). Local discovery is on for
// our clients.
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

// matrixEnv is one row's lab with the clients of the current cell.
type matrixEnv struct {
	t    *testing.T
	row  matrixRow
	l    *Lab
	srv  *TeredoServer
	file *FileServer
	x, p *probeClient
	m    *MiredoClient
}

// fresh stops the previous cell's clients, empties the conntrack table of every
// client NAT, and starts x (always), p and m as asked: each cell meets NATs that
// know nothing of the others, and clients with empty peer lists. With the peer
// relay on, our clients first learn their relay from a native download, as a
// teredo-socks user's client does from the first native destination it reaches
// (the relay its echo test found), unless the cell is itself about native IPv6.
func (e *matrixEnv) fresh(withP, withM, primeRelay bool) {
	t := e.t
	t.Helper()
	for _, pc := range []*probeClient{e.x, e.p} {
		if pc != nil {
			pc.Proc.Stop(5 * time.Second)
		}
	}
	if e.m != nil {
		e.m.Proc.Stop(5 * time.Second)
	}
	e.x, e.p, e.m = nil, nil, nil
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	seen := map[*Host]bool{}
	for _, h := range e.l.Clients {
		if h.NAT == nil || seen[h.NAT.Router] {
			continue
		}
		seen[h.NAT.Router] = true
		if out, err := h.NAT.Router.Run(ctx, "conntrack", "-F"); err != nil {
			t.Fatalf("conntrack -F on %s: %v: %s", h.NAT.Router.Name, err, out)
		}
	}
	flags := []string{"-local-discovery"}
	if e.row.peerRelay {
		flags = append(flags, "-peer-relay")
	}
	xFlags := flags
	if e.row.upnp {
		xFlags = append([]string{"-portmap"}, flags...)
	}
	e.x = startProbe(t, e.l.Clients["x"], e.srv, probeOptions{Extra: xFlags})
	if e.row.upnp {
		requireMappedAddress(t, e.x)
	}
	if withP {
		e.p = startProbe(t, e.l.Clients["p"], e.srv, probeOptions{Extra: flags, Control: 7901})
	}
	if withM {
		e.m = StartMiredoClient(t, e.l.Clients["m"], e.srv.Primary, MiredoClientOptions{})
	}
	if primeRelay && e.row.peerRelay {
		for _, pc := range []*probeClient{e.x, e.p} {
			if pc == nil {
				continue
			}
			if _, _, err := pc.get(15*time.Second, e.file.URL); err != nil {
				t.Logf("%s's native download (to learn its relay): %v", pc.Host.Name, err)
			}
		}
	}
}

// diagnose logs, for the rows about one NAT's fixes, what the failed cell left:
// x's counters and its NAT's conntrack table.
func (e *matrixEnv) diagnose(what string) {
	if !e.row.upnp && !e.row.peerRelay {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := e.l.Clients["x"].NAT.Router.Run(ctx, "conntrack", "-L", "-p", "udp")
	e.t.Logf("%s failed: conntrack on x's NAT (%v):\n%s", what, err, out)
	e.t.Logf("%s failed: x's counters: %s", what, e.x.status(e.t).Counters)
	if e.p != nil {
		e.t.Logf("%s failed: p's counters: %s", what, e.p.status(e.t).Counters)
	}
}

func measureRow(t *testing.T, row matrixRow) []string {
	const size = 64 << 10
	e := &matrixEnv{t: t, row: row, l: New(t, row.opts)}
	e.srv = ourServer(t, e.l)
	if row.ourRelay {
		requireOurRelay(t)
		startOurRelay(t, e.l.Relay, "-hairpin")
	} else {
		StartMiredoRelay(t, e.l.Relay, MiredoRelayOptions{})
	}
	e.file = e.l.V6Host.ServeFile(t, netip.AddrPortFrom(V6HostAddr, 8080), 1<<20)
	if row.upnp {
		StartMiniUPnPd(t, e.l.Clients["x"].NAT)
	}
	// One listener on m's host for every Miredo client of the row.
	serveEcho(t, e.l.Clients["m"], netip.AddrPortFrom(netip.IPv6Unspecified(), 7001))
	run := func(what string, f func() (time.Duration, error)) string {
		c := cell(t, what, f)
		if strings.HasPrefix(c, "fail") {
			e.diagnose(what)
		}
		return c
	}
	echoIn := func(from *Host, to netip.AddrPort) (time.Duration, error) {
		r, err := echoFrom(from, 12*time.Second, to, size)
		return time.Duration(r.Milliseconds) * time.Millisecond, err
	}
	echoOut := func(pc *probeClient, to netip.AddrPort) (time.Duration, error) {
		r, err := pc.echo(12*time.Second, to, size)
		return time.Duration(r.Milliseconds) * time.Millisecond, err
	}
	var cells []string
	e.fresh(true, false, true)
	cells = append(cells, run("x → p", func() (time.Duration, error) { return echoOut(e.x, e.p.listen(t, 7002)) }))
	e.fresh(true, false, true)
	cells = append(cells, run("p → x", func() (time.Duration, error) { return echoOut(e.p, e.x.listen(t, 7003)) }))
	e.fresh(false, true, true)
	cells = append(cells, run("x → Miredo", func() (time.Duration, error) {
		return echoOut(e.x, netip.AddrPortFrom(e.m.Addr, 7001))
	}))
	e.fresh(false, true, true)
	cells = append(cells, run("Miredo → x", func() (time.Duration, error) { return echoIn(e.m.Host, e.x.listen(t, 7004)) }))
	e.fresh(false, false, false)
	cells = append(cells, run("x → IPv6 host", func() (time.Duration, error) {
		got, took, err := e.x.get(15*time.Second, e.file.URL)
		if err == nil {
			err = e.file.Verify(got)
		}
		return took, err
	}))
	e.fresh(false, false, false)
	cells = append(cells, run("IPv6 host → x", func() (time.Duration, error) { return echoIn(e.l.V6Host, e.x.listen(t, 7005)) }))
	return cells
}

// requireMappedAddress fails the row unless x's Teredo address carries the port
// mapping it made on its NAT, so that the row measures the mapping and not the bare
// symmetric NAT again. It logs what the server saw: the mapped port too, once the
// client had the server reach it through the mapping (client/portmapped.go).
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
