package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/teredo-go/teredo/internal/echotest"
	"github.com/teredo-go/teredo/internal/metrics"
	"github.com/teredo-go/teredo/internal/socksd"
	"github.com/teredo-go/teredo/socks5"
	"github.com/teredo-go/teredo/teredotest"
)

// lineWriter collects what run prints and signals each complete line.
type lineWriter struct {
	mu    sync.Mutex
	buf   []byte
	lines []string
	added chan struct{}
}

func newLineWriter() *lineWriter { return &lineWriter{added: make(chan struct{}, 1)} }

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.lines = append(w.lines, string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
	w.mu.Unlock()
	select {
	case w.added <- struct{}{}:
	default:
	}
	return len(p), nil
}

// wait returns the submatches of the first line matching re.
func (w *lineWriter) wait(t *testing.T, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		w.mu.Lock()
		for _, l := range w.lines {
			if m := re.FindStringSubmatch(l); m != nil {
				w.mu.Unlock()
				return m
			}
		}
		all := strings.Join(w.lines, "\n")
		w.mu.Unlock()
		select {
		case <-w.added:
		case <-deadline:
			t.Fatalf("no line matching %q within %v; got:\n%s", re, timeout, all)
		}
	}
}

var (
	qualifiedRe = regexp.MustCompile(`^teredo-socks: qualified as (\S+) via .*; SOCKS5 on (\S+)$`)
	statusRe    = regexp.MustCompile(`^teredo-socks: status on http://(\S+)/status`)
)

// proxy is a teredo-socks run in process against a teredotest internet.
type proxy struct {
	in     *teredotest.Internet
	out    *lineWriter
	teredo netip.Addr // the proxy's Teredo address
	listen string     // SOCKS5
	status string     // -status, if given
}

// startProxy runs the command's run with args (plus -listen and -status on
// free loopback ports) against in, with the demo host on it. Names resolve
// through table and the demo's names only: no DNS.
func startProxy(t *testing.T, in *teredotest.Internet, table map[string][]string, args ...string) *proxy {
	t.Helper()
	args = append([]string{"-listen", "127.0.0.1:0", "-status", "127.0.0.1:0"}, args...)
	cfg, err := parseConfig(args, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{in: in, out: newLineWriter()}
	log := slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e := socksd.HostEnv(p.out, p.out, log)
	e.Start = internetStarter(in, netip.AddrPort{}, log, nil)
	e.Lookup = demoLookup(fakeLookup(table))
	e.Hint = demoHint
	e.NativeIPv6 = func() bool { return false } // the hosts are in, not on this host's network

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() { done <- socksd.Run(ctx, &cfg.Config, e) }()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("run exited %d after cancel", code)
			}
		case <-time.After(15 * time.Second):
			t.Error("run did not return after cancel")
		}
	})
	m := p.out.wait(t, qualifiedRe, 30*time.Second)
	p.teredo, p.listen = netip.MustParseAddr(m[1]), m[2]
	p.status = p.out.wait(t, statusRe, time.Second)[1]
	return p
}

// fakeLookup answers from a table, as a DNS with A and AAAA records would.
func fakeLookup(table map[string][]string) func(ctx context.Context, network, host string) ([]netip.Addr, error) {
	return func(ctx context.Context, network, host string) ([]netip.Addr, error) {
		recs, ok := table[host]
		if !ok {
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		}
		var out []netip.Addr
		for _, r := range recs {
			a := netip.MustParseAddr(r)
			if network == "ip" || (network == "ip4") == a.Is4() {
				out = append(out, a)
			}
		}
		return out, nil
	}
}

// udpEcho answers every datagram on a loopback socket of network and
// returns its address.
func udpEcho(t *testing.T, network, addr string) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket(network, addr)
	if err != nil {
		t.Skipf("no %s loopback here: %v", network, err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// testLogWriter sends the command's log to t.Log, so it shows on failure.
type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func newDemoInternet(t *testing.T) *teredotest.Internet {
	t.Helper()
	in := teredotest.New(t)
	if err := addDemoHost(in); err != nil {
		t.Fatal(err)
	}
	return in
}

// httpGet fetches url through the proxy's CONNECT, over one connection.
func httpGet(t *testing.T, p *proxy, host string, port uint16, path string) string {
	t.Helper()
	c, err := socksConnect(p.listen, host, port)
	if err != nil {
		t.Fatalf("CONNECT %s:%d: %v", host, port, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(ioTimeout))
	fmt.Fprintf(c, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, host)
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("GET via %s: %v", host, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("GET via %s: %d, %v", host, res.StatusCode, err)
	}
	return string(body)
}

// TestProxyDemoServices reaches the demo's IPv6-only web server by
// address and by name, its UDP echo through UDP ASSOCIATE, an IPv4 service
// directly, and reads the status page.
func TestProxyDemoServices(t *testing.T) {
	in := newDemoInternet(t)
	tcpEcho := echotest.StartTCP(t)
	udpEcho4 := udpEcho(t, "udp4", "127.0.0.1:0")
	p := startProxy(t, in, map[string][]string{"local.test": {"127.0.0.1"}})

	for _, host := range []string{demoHostAddr.String(), demoName} {
		body := httpGet(t, p, host, demoWebPort, "/")
		if !strings.Contains(body, "Hello over IPv6") || !strings.Contains(body, p.teredo.String()) {
			t.Fatalf("page via %s does not show our Teredo address %v:\n%s", host, p.teredo, body)
		}
	}

	// IPv4 goes straight through the host under the default -ipv4 direct.
	c, err := socksConnect(p.listen, "local.test", tcpEcho.Port())
	if err != nil {
		t.Fatalf("CONNECT to an IPv4 name: %v", err)
	}
	c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := c.Write([]byte("ping4")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "ping4" {
		t.Fatalf("IPv4 echo: %q %v", got, err)
	}
	c.Close()

	u, err := socksAssociate(p.listen)
	if err != nil {
		t.Fatalf("UDP ASSOCIATE: %v", err)
	}
	defer u.Close()
	for _, dst := range []struct {
		host string
		port uint16
		from netip.AddrPort
	}{
		{demoHostAddr.String(), demoEchoPort, netip.AddrPortFrom(demoHostAddr, demoEchoPort)},
		{demoName, demoEchoPort, netip.AddrPortFrom(demoHostAddr, demoEchoPort)},
		{"127.0.0.1", udpEcho4.Port(), udpEcho4},
	} {
		msg := []byte("datagram to " + dst.host)
		// The first datagram to a new peer may wait for bubbles or the
		// echo test, but is queued rather than lost; retry a few times
		// anyway, as UDP allows loss.
		var reply []byte
		var from netip.AddrPort
		for try := 0; try < 3; try++ {
			if reply, from, err = u.exchange(dst.host, dst.port, msg); err == nil {
				break
			}
		}
		if err != nil || !bytes.Equal(reply, msg) || from != dst.from {
			t.Fatalf("UDP echo via %s: %q from %v, err %v", dst.host, reply, from, err)
		}
	}

	st := getStatus(t, p)
	for _, k := range []string{"state", "version", "uptime_seconds", "counters", "drops", "address", "server", "mapped", "nat", "peers", "socks5"} {
		if _, ok := st[k]; !ok {
			t.Errorf("status has no %q: %v", k, st)
		}
	}
	if st["state"] != "qualified" || st["address"] != p.teredo.String() || st["server"] != in.ServerAddr().String() {
		t.Errorf("status: %v", st)
	}
	if peers, _ := st["peers"].(float64); peers < 1 {
		t.Errorf("peers = %v, want the demo host's relay at least", st["peers"])
	}
	counters := st["counters"].(map[string]any)
	s5 := st["socks5"].(map[string]any)
	if s5["accepted"].(float64) < 4 || s5["udp_associations"].(float64) != 1 || s5["udp_up"].(float64) < 3 {
		t.Errorf("socks5 counters: %v", s5)
	}
	if counters["tx_fast"].(float64) == 0 {
		t.Errorf("client counters: %v", counters)
	}
	res, err := (&http.Client{Timeout: ioTimeout}).Get("http://" + p.status + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metricsBody, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if !strings.Contains(string(metricsBody), "\nteredo_socks_qualified 1\n") {
		t.Errorf("metrics:\n%s", metricsBody)
	}
	if probs, err := metrics.Lint(strings.NewReader(string(metricsBody))); err != nil || len(probs) > 0 {
		t.Errorf("metrics lint: %v %v\n%s", err, probs, metricsBody)
	}
}

func getStatus(t *testing.T, p *proxy) map[string]any {
	t.Helper()
	cl := &http.Client{Timeout: ioTimeout}
	res, err := cl.Get("http://" + p.status + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var st map[string]any
	if err := json.NewDecoder(res.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestProxyIPv4Reject checks that -ipv4 reject answers 0x02 for IPv4
// literals and names with only A records, and still reaches IPv6.
func TestProxyIPv4Reject(t *testing.T) {
	in := newDemoInternet(t)
	tcpEcho := echotest.StartTCP(t)
	p := startProxy(t, in, map[string][]string{"local.test": {"127.0.0.1"}}, "-ipv4", "reject")
	for _, host := range []string{"127.0.0.1", "local.test"} {
		c, rep, _, err := socksRequest(p.listen, 1, host, tcpEcho.Port())
		if err != nil {
			t.Fatalf("%s: %v", host, err)
		}
		c.Close()
		if rep != socks5.ReplyNotAllowed {
			t.Errorf("CONNECT %s: reply %v (0x%02x), want 0x02", host, rep, byte(rep))
		}
	}
	if body := httpGet(t, p, demoName, demoWebPort, "/"); !strings.Contains(body, "Hello over IPv6") {
		t.Errorf("IPv6 under -ipv4 reject: %s", body)
	}
	st := getStatus(t, p)
	replies := st["socks5"].(map[string]any)["replies"].(map[string]any)
	if replies["not_allowed"] != 2.0 {
		t.Errorf("replies: %v", replies)
	}

	// A datagram to a name with only IPv4 addresses has nowhere to go: it
	// is dropped and counted.
	u, err := socksAssociate(p.listen)
	if err != nil {
		t.Fatalf("UDP ASSOCIATE: %v", err)
	}
	defer u.Close()
	msg := appendSOCKSAddr([]byte{0, 0, 0}, "local.test", 7)
	if _, err := u.conn.WriteToUDPAddrPort(msg, u.relay); err != nil {
		t.Fatal(err)
	}
	var drops map[string]any
	for deadline := time.Now().Add(ioTimeout); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		drops = getStatus(t, p)["socks5"].(map[string]any)["udp_drops"].(map[string]any)
		if drops["resolve"] == 1.0 {
			return
		}
	}
	t.Errorf("udp_drops: %v, want one resolve drop", drops)
}

// TestProxyForward exposes a local TCP service on the Teredo address and
// reaches it from an IPv6-only host of the internet.
func TestProxyForward(t *testing.T) {
	in := newDemoInternet(t)
	tcpEcho := echotest.StartTCP(t)
	p := startProxy(t, in, nil, "-forward", "8080="+tcpEcho.String())
	p.out.wait(t, regexp.MustCompile(`forwarding \[`+regexp.QuoteMeta(p.teredo.String())+`\]:8080 to `), time.Second)

	h, err := in.AddHost(netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	c, err := h.DialTCP(ctx, netip.AddrPortFrom(p.teredo, 8080))
	if err != nil {
		t.Fatalf("dial the forwarded port from %v: %v", h.Addr(), err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(ioTimeout))
	want := bytes.Repeat([]byte("forwarded over IPv6 "), 5000)
	go c.Write(want)
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("echo through the forward: %d bytes, %v", len(got), err)
	}
	// The service saw the connection come from the host (the forwarder).
	select {
	case from := <-tcpEcho.From:
		if !from.Addr().IsLoopback() {
			t.Errorf("service saw %v", from)
		}
	case <-time.After(ioTimeout):
		t.Error("the service saw no connection")
	}
}

// TestRunFailures covers the exits before serving: a busy port and a
// stack that cannot start (its socket cannot be opened).
func TestRunFailures(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	startErr := errors.New("cannot start the Teredo client: address already in use")
	for _, tt := range []struct {
		name, listen string
		start        socksd.StartFunc
		want         string
	}{
		{"busy port", busy.Addr().String(), nil, "cannot listen for SOCKS5"},
		{"no socket", "127.0.0.1:0", func(context.Context, func(socksd.Event)) (socksd.Teredo, error) { return nil, startErr }, startErr.Error()},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseConfig([]string{"-listen", tt.listen}, func(string) string { return "" }, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			out := newLineWriter()
			var stdout bytes.Buffer
			e := socksd.HostEnv(&stdout, out, slog.New(slog.DiscardHandler))
			e.Start = tt.start
			if code := socksd.Run(context.Background(), &cfg.Config, e); code != 1 {
				t.Errorf("exit %d, want 1", code)
			}
			out.wait(t, regexp.MustCompile(regexp.QuoteMeta(tt.want)), time.Second)
		})
	}
}

var statusWarningRe = regexp.MustCompile(`^teredo-socks: warning: -status (\S+) is not a loopback address`)

// TestStatusWarning checks that a status page reachable from other hosts is
// called out, and one on loopback is not.
func TestStatusWarning(t *testing.T) {
	in := newDemoInternet(t)
	p := startProxy(t, in, nil) // -status on 127.0.0.1
	p.out.mu.Lock()
	for _, l := range p.out.lines {
		if statusWarningRe.MatchString(l) {
			t.Errorf("warning for a loopback status page: %s", l)
		}
	}
	p.out.mu.Unlock()
	// Listening on the wildcard address sends nothing anywhere.
	q := startProxy(t, in, nil, "-status", "0.0.0.0:0")
	if m := q.out.wait(t, statusWarningRe, time.Second); m[1] != "0.0.0.0:0" {
		t.Errorf("warning names %q, want the -status value", m[1])
	}
}
