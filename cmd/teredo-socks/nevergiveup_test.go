package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/teredo-go/teredo/client"
	"github.com/teredo-go/teredo/clock"
	"github.com/teredo-go/teredo/internal/echotest"
	"github.com/teredo-go/teredo/internal/socksd"
	"github.com/teredo-go/teredo/socks5"
	"github.com/teredo-go/teredo/stack"
)

// lookup is one server-name lookup, answered by the test.
type lookup struct {
	host  string
	reply chan []netip.Addr // nil: "no such host"
}

// stepResolver hands the stack's server-name lookups to the test, which
// so decides what each round of qualification sees and knows when it
// happened.
type stepResolver chan lookup

func (r stepResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	l := lookup{host: host, reply: make(chan []netip.Addr, 1)}
	select {
	case r <- l:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case addrs := <-l.reply:
		if addrs == nil {
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		}
		return addrs, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (r stepResolver) next(t *testing.T) lookup {
	t.Helper()
	select {
	case l := <-r:
		return l
	case <-time.After(10 * time.Second):
		t.Fatal("no lookup of the server name")
		return lookup{}
	}
}

var hintRe = regexp.MustCompile(`^teredo-socks: not qualified yet \(no Teredo server address: resolve teredo.test: lookup teredo.test: no such host\); still trying, with backoff. .* -server`)

var servingRe = regexp.MustCompile(`^teredo-socks: SOCKS5 on (\S+); IPv6 destinations get "network unreachable" until Teredo qualifies$`)

// healthz returns /healthz's status code and body.
func healthz(t *testing.T, status string) (int, string) {
	t.Helper()
	res, err := (&http.Client{Timeout: ioTimeout}).Get("http://" + status + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(body)
}

func statusOf(t *testing.T, status string) map[string]any {
	t.Helper()
	res, err := (&http.Client{Timeout: ioTimeout}).Get("http://" + status + "/status")
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

// TestProxyNeverGivesUp starts the proxy with a Teredo server name that
// does not resolve: it serves at once, answers IPv6 requests with 0x03 at
// once while IPv4 goes through, and /healthz says 503. At the next backoff
// (on the stack's fake clock) the name is looked up again, resolves to the
// in-process server, and the proxy qualifies: /healthz says 200 and the
// IPv6-only host answers.
func TestProxyNeverGivesUp(t *testing.T) {
	in := newDemoInternet(t)
	tcpEcho := echotest.StartTCP(t)
	cfg, err := parseConfig([]string{"-listen", "127.0.0.1:0", "-status", "127.0.0.1:0", "-server", "teredo.test"}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	out := newLineWriter()
	log := slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	fake := clock.NewFake(time.Now())
	res := make(stepResolver)
	e := socksd.HostEnv(out, out, log)
	e.Servers = "teredo.test"
	e.Start = socksd.StackStarter(stack.Config{
		ServerNames: cfg.Servers,
		Resolver:    res,
		Secondary:   in.SecondaryAddr(),
		IPv4Filter:  in.IPv4Filter(),
		LocalAddr:   netip.MustParseAddrPort("127.0.0.1:0"),
		Clock:       fake,
		Logger:      log,
	}, nil, nil)
	e.Lookup = demoLookup(fakeLookup(map[string][]string{"local.test": {"127.0.0.1"}}))
	e.NativeIPv6 = func() bool { return false }
	e.Clock = fake

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() { done <- socksd.Run(ctx, &cfg.Config, e) }()
	defer func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("exit %d after cancel", code)
			}
		case <-time.After(15 * time.Second):
			t.Error("Run did not return after cancel")
		}
	}()
	listen := out.wait(t, servingRe, 10*time.Second)[1]
	status := out.wait(t, statusRe, time.Second)[1]

	// The first lookup fails; the next comes after the client's backoff,
	// so the first round is over once it arrives.
	l := res.next(t)
	if l.host != "teredo.test" {
		t.Fatalf("looked up %q", l.host)
	}
	l.reply <- nil
	fake.Advance(client.MinRetryDelay)
	l = res.next(t)

	start := time.Now()
	c, rep, _, err := socksRequest(listen, 1, demoHostAddr.String(), demoWebPort)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if rep != socks5.ReplyNetworkUnreachable {
		t.Fatalf("CONNECT to IPv6 while qualifying: reply %v, want network unreachable", rep)
	}
	t.Logf("IPv6 CONNECT refused in %v", time.Since(start))
	c, err = socksConnect(listen, "local.test", tcpEcho.Port())
	if err != nil {
		t.Fatalf("IPv4 CONNECT while qualifying: %v", err)
	}
	c.Close()
	if code, body := healthz(t, status); code != 503 || !strings.Contains(body, "no such host") {
		t.Fatalf("/healthz while qualifying: %d %q", code, body)
	}
	if st := statusOf(t, status); st["state"] == "qualified" || !strings.Contains(st["last_error"].(string), "no such host") || st["ipv6_path"] != "teredo" {
		t.Fatalf("status while qualifying: %v", st)
	}

	// The user watching the terminal is told why, once.
	fake.Advance(socksd.HintDelay)
	out.wait(t, hintRe, 10*time.Second)

	// The name resolves now.
	l.reply <- []netip.Addr{in.ServerAddr()}
	m := out.wait(t, qualifiedRe, 10*time.Second)
	if m[2] != listen {
		t.Fatalf("SOCKS5 moved from %s to %s", listen, m[2])
	}
	if code, body := healthz(t, status); code != 200 {
		t.Fatalf("/healthz once qualified: %d %q", code, body)
	}
	if st := statusOf(t, status); st["state"] != "qualified" || st["last_error"] != "" || st["server_name"] != "teredo.test ("+in.ServerAddr().String()+")" {
		t.Fatalf("status once qualified: %v", st)
	}
	body := httpGet(t, &proxy{listen: listen}, demoHostAddr.String(), demoWebPort, "/")
	if !strings.Contains(body, "Hello over IPv6") || !strings.Contains(body, m[1]) {
		t.Fatalf("page:\n%s", body)
	}
}
