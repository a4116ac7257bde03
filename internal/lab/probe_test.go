package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/teredo-go/teredo/internal/lab/internal/echo"
	"github.com/teredo-go/teredo/proto"
)

// probeCmd is the lab's driver of the project's client library (stack, dialer,
// listener), run inside a client namespace and steered over HTTP on its loopback.
const probeCmd = "./internal/lab/internal/cmd/teredo-probe"

var probeReadyRE = regexp.MustCompile(`teredo-probe: ready (\{.*\})`)

// probeOptions tune startProbe.
type probeOptions struct {
	ConeProbe bool
	// Bind is the client's UDP port; 0 picks one, except behind a FullCone NAT,
	// where it defaults to the cone port.
	Bind  uint16
	Relay netip.AddrPort // fixed relay; zero means the echo test
	// Control is the control API's port on the host's loopback; default 7900.
	Control uint16
	// Extra flags, e.g. "-tcp-recovery", "0".
	Extra []string
}

// probeClient is a qualified client of the project's library running in a lab host.
type probeClient struct {
	Proc    *Proc
	Host    *Host
	Addr    netip.Addr
	Teredo  proto.Address
	Local   netip.AddrPort
	control string
	hc      *http.Client
}

// startProbe runs teredo-probe on h against srv and waits until it is qualified.
func startProbe(t testing.TB, h *Host, srv *TeredoServer, o probeOptions) *probeClient {
	t.Helper()
	if o.Control == 0 {
		o.Control = 7900
	}
	if o.Bind == 0 && h.NAT != nil && h.NAT.Kind == FullCone {
		o.Bind = h.NAT.ConePort
	}
	args := []string{"-server", srv.Primary.String(), "-secondary", srv.Secondary.String(),
		"-bind", fmt.Sprintf("0.0.0.0:%d", o.Bind), "-control", fmt.Sprintf("127.0.0.1:%d", o.Control), "-v"}
	if o.ConeProbe {
		args = append(args, "-cone-probe")
	}
	if o.Relay.IsValid() {
		args = append(args, "-relay", o.Relay.String())
	}
	args = append(args, o.Extra...)
	p := &probeClient{Host: h, control: fmt.Sprintf("http://127.0.0.1:%d", o.Control), hc: h.HTTPClient()}
	start := time.Now()
	p.Proc = h.Start(t, BuildCommand(t, probeCmd), args...)
	m, err := p.Proc.WaitLine(probeReadyRE, DefaultQualifyTimeout+5*time.Second)
	if err != nil {
		t.Fatalf("teredo-probe on %s: %v", h.Name, err)
	}
	var ready struct {
		Addr  netip.Addr
		Local netip.AddrPort
	}
	if err := json.Unmarshal([]byte(m[1]), &ready); err != nil {
		t.Fatalf("teredo-probe on %s: ready line %q: %v", h.Name, m[1], err)
	}
	p.Addr, p.Local = ready.Addr, ready.Local
	var ok bool
	if p.Teredo, ok = proto.ParseAddress(p.Addr); !ok {
		t.Fatalf("teredo-probe on %s: %v is not a Teredo address", h.Name, p.Addr)
	}
	t.Logf("our client on %s (%s NAT) qualified in %v as %v (mapped %v, local %v)", h.Name, natKind(h), time.Since(start).Round(time.Millisecond), p.Addr, p.Teredo.Mapped, p.Local)
	return p
}

func natKind(h *Host) string {
	if h.NAT == nil {
		return "no"
	}
	return h.NAT.Kind.String()
}

// call GETs path from the control API into v, bounded by timeout plus a margin.
func (p *probeClient) call(timeout time.Duration, path string, q url.Values, v any) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout+5*time.Second)
	defer cancel()
	if q == nil {
		q = url.Values{}
	}
	q.Set("timeout", timeout.String())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.control+path+"?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	resp, err := p.hc.Do(req)
	if err != nil {
		return fmt.Errorf("probe %s %s: %w", p.Host.Name, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error   string
			Partial json.RawMessage
		}
		json.NewDecoder(resp.Body).Decode(&e)
		return fmt.Errorf("probe %s %s: %s (partial result %s)", p.Host.Name, path, e.Error, e.Partial)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// probeStatus is the part of the probe's /status that tests read.
type probeStatus struct {
	State     string
	NAT       string
	Addr      netip.Addr
	Mapped    netip.AddrPort
	Peers     int
	Counters  json.RawMessage
	Link      json.RawMessage
	TCP       map[string]uint64
	Listeners map[string]struct{ Accepted, Echoed int64 }
}

func (p *probeClient) status(t testing.TB) probeStatus {
	t.Helper()
	var st probeStatus
	if err := p.call(5*time.Second, "/status", nil, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// waitNAT polls the client until its background NAT classification has a result.
func (p *probeClient) waitNAT(t testing.TB, timeout time.Duration) probeStatus {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := p.status(t)
		if st.NAT != "unknown" || time.Now().After(deadline) {
			return st
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// get downloads url through the client's tunnel.
func (p *probeClient) get(timeout time.Duration, url string) (Digest, time.Duration, error) {
	var r struct {
		Size   int64
		SHA256 string
		MS     int64
	}
	err := p.call(timeout, "/get", map[string][]string{"url": {url}}, &r)
	return Digest{Size: r.Size, SHA256: r.SHA256}, time.Duration(r.MS) * time.Millisecond, err
}

// echo has the client dial addr over TCP and check an echo of size bytes.
func (p *probeClient) echo(timeout time.Duration, addr netip.AddrPort, size int64) (echo.Result, error) {
	var r echo.Result
	err := p.call(timeout, "/echo", url.Values{"addr": {addr.String()}, "size": {strconv.FormatInt(size, 10)}, "seed": {"42"}}, &r)
	return r, err
}

// listen makes the client echo TCP connections on port of its Teredo address.
func (p *probeClient) listen(t testing.TB, port uint16) netip.AddrPort {
	t.Helper()
	var r struct{ Addr string }
	if err := p.call(5*time.Second, "/listen", url.Values{"port": {strconv.Itoa(int(port))}}, &r); err != nil {
		t.Fatal(err)
	}
	a, err := netip.ParseAddrPort(r.Addr)
	if err != nil {
		t.Fatalf("listen: %q: %v", r.Addr, err)
	}
	return a
}

// echoFrom dials addr from h (a kernel socket in h's namespace) and checks an echo of
// size bytes.
func echoFrom(h *Host, timeout time.Duration, addr netip.AddrPort, size int64) (echo.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := h.DialContext(ctx, "tcp6", addr.String())
	if err != nil {
		return echo.Result{}, err
	}
	return echo.Check(ctx, c, size, 7)
}

// serveEcho echoes TCP connections on addr in h's namespace until the test ends.
func serveEcho(t testing.TB, h *Host, addr netip.AddrPort) *echo.Server {
	t.Helper()
	ln, err := h.Listen("tcp6", addr.String())
	if err != nil {
		t.Fatalf("echo server on %s: %v", h.Name, err)
	}
	s := echo.Serve(ln, 20*time.Second)
	t.Cleanup(func() { s.Close() })
	return s
}

// contextWithTimeout bounds a check's lab commands.
func contextWithTimeout() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Second)
}
