package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/teredo-go/teredo/clock"
	"github.com/teredo-go/teredo/internal/cli"
	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/server"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want options // compared when wantErr is ""
		// wantErr is a substring of the error.
		wantErr string
	}{
		{"defaults", []string{"-primary", "198.18.0.1"},
			options{primary: netip.MustParseAddr("198.18.0.1"), secondary: netip.MustParseAddr("198.18.0.2"), port: 3544, mtu: 1280, raw: rawAuto, rate: 50, burst: 100}, ""},
		{"everything", []string{"-primary", "198.18.0.1", "-secondary", "198.18.7.9", "-port", "4000", "-mtu", "1500", "-status", "127.0.0.1:9544", "-rate", "20", "-burst", "30", "-raw", "-v"},
			options{primary: netip.MustParseAddr("198.18.0.1"), secondary: netip.MustParseAddr("198.18.7.9"), port: 4000, mtu: 1500, status: "127.0.0.1:9544", raw: rawOn, Common: cli.Common{Verbose: true}, rate: 20, burst: 30}, ""},
		{"raw off", []string{"-primary", "198.18.0.1", "-raw=false"},
			options{primary: netip.MustParseAddr("198.18.0.1"), secondary: netip.MustParseAddr("198.18.0.2"), port: 3544, mtu: 1280, raw: rawOff, rate: 50, burst: 100}, ""},
		{"loopback with -any-ipv4", []string{"-primary", "127.0.0.2", "-any-ipv4"},
			options{primary: netip.MustParseAddr("127.0.0.2"), secondary: netip.MustParseAddr("127.0.0.3"), port: 3544, mtu: 1280, anyIPv4: true, rate: 50, burst: 100}, ""},
		{"no rate limit", []string{"-primary", "198.18.0.1", "-rate", "0"},
			options{primary: netip.MustParseAddr("198.18.0.1"), secondary: netip.MustParseAddr("198.18.0.2"), port: 3544, mtu: 1280, raw: rawAuto, rate: 0, burst: 100}, ""},
		{"fractional rate", []string{"-primary", "198.18.0.1", "-rate=0.5", "-burst=1"},
			options{primary: netip.MustParseAddr("198.18.0.1"), secondary: netip.MustParseAddr("198.18.0.2"), port: 3544, mtu: 1280, raw: rawAuto, rate: 0.5, burst: 1}, ""},
		{"smallest rate", []string{"-primary", "198.18.0.1", "-rate", "0.01"},
			options{primary: netip.MustParseAddr("198.18.0.1"), secondary: netip.MustParseAddr("198.18.0.2"), port: 3544, mtu: 1280, raw: rawAuto, rate: 0.01, burst: 100}, ""},
		{"largest rate and burst", []string{"-primary", "198.18.0.1", "-rate", "1e6", "-burst", "1000000"},
			options{primary: netip.MustParseAddr("198.18.0.1"), secondary: netip.MustParseAddr("198.18.0.2"), port: 3544, mtu: 1280, raw: rawAuto, rate: 1e6, burst: 1e6}, ""},
		{"missing primary", nil, options{}, "-primary is required"},
		{"bad primary", []string{"-primary", "198.18.0"}, options{}, `-primary "198.18.0" is not an IPv4 address`},
		{"IPv6 primary", []string{"-primary", "2001:db8::1"}, options{}, "is not an IPv4 address"},
		{"mapped primary", []string{"-primary", "::ffff:198.18.0.1"}, options{}, "is not an IPv4 address"},
		{"private primary", []string{"-primary", "10.0.0.1"}, options{}, "not a global unicast"},
		{"loopback primary", []string{"-primary", "127.0.0.2"}, options{}, "not a global unicast"},
		{"bad secondary", []string{"-primary", "198.18.0.1", "-secondary", "x"}, options{}, `-secondary "x" is not an IPv4 address`},
		{"IPv6 secondary", []string{"-primary", "198.18.0.1", "-secondary", "::1"}, options{}, "is not an IPv4 address"},
		{"secondary equals primary", []string{"-primary", "198.18.0.1", "-secondary", "198.18.0.1"}, options{}, "must differ"},
		{"no primary+1", []string{"-primary", "255.255.255.255", "-any-ipv4"}, options{}, "no next address"},
		{"primary+1 not global", []string{"-primary", "223.255.255.255"}, options{}, "the default -secondary 224.0.0.0"},
		{"port 0", []string{"-primary", "198.18.0.1", "-port", "0"}, options{}, "-port 0 is outside"},
		{"port too large", []string{"-primary", "198.18.0.1", "-port", "65536"}, options{}, "-port 65536 is outside"},
		{"port negative", []string{"-primary", "198.18.0.1", "-port", "-1"}, options{}, "invalid value"},
		{"mtu too small", []string{"-primary", "198.18.0.1", "-mtu", "1279"}, options{}, "-mtu 1279 is outside"},
		{"mtu too large", []string{"-primary", "198.18.0.1", "-mtu", "65536"}, options{}, "-mtu 65536 is outside"},
		{"rate negative", []string{"-primary", "198.18.0.1", "-rate", "-1"}, options{}, "-rate -1 is outside 0.01..1000000 (0 disables the limit)"},
		{"rate too small", []string{"-primary", "198.18.0.1", "-rate", "0.001"}, options{}, "-rate 0.001 is outside"},
		{"rate too large", []string{"-primary", "198.18.0.1", "-rate", "1000001"}, options{}, "-rate 1000001 is outside"},
		{"rate NaN", []string{"-primary", "198.18.0.1", "-rate", "NaN"}, options{}, "-rate NaN is outside"},
		{"rate infinite", []string{"-primary", "198.18.0.1", "-rate", "Inf"}, options{}, "-rate +Inf is outside"},
		{"rate not a number", []string{"-primary", "198.18.0.1", "-rate", "fast"}, options{}, `invalid value "fast" for flag -rate`},
		{"burst 0", []string{"-primary", "198.18.0.1", "-burst", "0"}, options{}, "-burst 0 is outside 1..1000000"},
		{"burst negative", []string{"-primary", "198.18.0.1", "-burst", "-1"}, options{}, "-burst -1 is outside"},
		{"burst too large", []string{"-primary", "198.18.0.1", "-burst", "1000001"}, options{}, "-burst 1000001 is outside"},
		{"burst fractional", []string{"-primary", "198.18.0.1", "-burst", "1.5"}, options{}, `invalid value "1.5" for flag -burst`},
		{"unknown flag", []string{"-primary", "198.18.0.1", "-bogus"}, options{}, "flag provided but not defined"},
		{"positional", []string{"-primary", "198.18.0.1", "extra"}, options{}, `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseFlags(tt.args, noEnv, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			tt.want.LogFormat, tt.want.LogLevel = "text", cli.DefaultLogLevel
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v\nwant %+v", got, err, tt.want)
			}
		})
	}
}

func TestRunBadFlags(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"-primary", "2001:db8::1"},
		{"-primary", "198.18.0.1", "-secondary", "198.18.0.1"},
		{"-primary", "198.18.0.1", "-port", "70000"},
		{"-primary", "198.18.0.1", "-mtu", "576"},
		{"-primary", "198.18.0.1", "-rate", "-5"},
		{"-primary", "198.18.0.1", "-rate", "NaN"},
		{"-primary", "198.18.0.1", "-burst", "0"},
		{"-primary", "198.18.0.1", "-burst", "x"},
		{"-nope"},
	} {
		var stdout, stderr strings.Builder
		if code := run(context.Background(), args, noEnv, &stdout, &stderr); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
		if stdout.Len() != 0 || !strings.Contains(stderr.String(), "teredo-server") && !strings.Contains(stderr.String(), "Usage") {
			t.Errorf("%q: stdout %q, stderr %q", args, stdout.String(), stderr.String())
		}
	}
	for flag, args := range map[string][]string{
		"-rate":  {"-primary", "198.18.0.1", "-rate", "2e6"},
		"-burst": {"-primary", "198.18.0.1", "-burst", "-3"},
	} {
		var stdout, stderr strings.Builder
		if code := run(context.Background(), args, noEnv, &stdout, &stderr); code != 2 || !strings.HasPrefix(stderr.String(), "teredo-server: "+flag+" ") {
			t.Errorf("%q: exit %d, stderr %q; want 2 and a message naming %s", args, code, stderr.String(), flag)
		}
	}
	var stdout, stderr strings.Builder
	if code := run(context.Background(), []string{"-h"}, noEnv, &stdout, &stderr); code != 0 || !strings.Contains(stderr.String(), "-primary") ||
		!strings.Contains(stderr.String(), "-rate N") || !strings.Contains(stderr.String(), "-burst N") {
		t.Errorf("-h: exit %d, stderr %q", code, stderr.String())
	}
}

// TestConfig checks that the options reach server.Config, and that the
// server then limits (or does not) as the flags say.
func TestConfig(t *testing.T) {
	primary := netip.MustParseAddr("198.18.0.1")
	tests := []struct {
		name string
		args []string
		want server.RateLimit
		// answered is how many of 10 RSs from one source, sent at the
		// same instant, get an RA.
		answered int
	}{
		{"defaults", nil, server.RateLimit{PerSecond: server.DefaultRatePerSecond, Burst: server.DefaultRateBurst}, 10},
		{"burst", []string{"-burst", "3"}, server.RateLimit{PerSecond: server.DefaultRatePerSecond, Burst: 3}, 3},
		{"rate and burst", []string{"-rate", "0.5", "-burst", "7"}, server.RateLimit{PerSecond: 0.5, Burst: 7}, 7},
		{"no limit", []string{"-rate", "0", "-burst", "1"}, server.RateLimit{PerSecond: -1}, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseFlags(append([]string{"-primary", primary.String()}, tt.args...), noEnv, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			cfg := o.config(nil)
			if cfg.Primary != primary || cfg.Secondary != primary.Next() || cfg.Port != proto.Port || cfg.MTU != proto.MinMTU || cfg.RateLimit != tt.want || cfg.IPv4Filter != nil {
				t.Fatalf("config %+v, want rate limit %+v", cfg, tt.want)
			}

			cfg.Clock = clock.NewFake(time.Unix(1e9, 0))
			p, err := server.NewProcessor(cfg)
			if err != nil {
				t.Fatal(err)
			}
			client := netip.MustParseAddrPort("203.0.113.5:40000")
			answered := 0
			for range 10 {
				if r := p.Process(server.Primary, proto.AppendRS(nil, [8]byte{1}, false), client, discardSender{}); r.Action == server.AnsweredRS {
					answered++
				} else if r.Reason != server.DropRateLimited {
					t.Fatalf("RS: %v %v", r.Action, r.Reason)
				}
			}
			if answered != tt.answered {
				t.Fatalf("%d RSs answered, want %d", answered, tt.answered)
			}
		})
	}

	o, err := parseFlags([]string{"-primary", "127.0.0.2", "-any-ipv4"}, noEnv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg := o.config(nil); cfg.IPv4Filter == nil || !cfg.IPv4Filter(netip.MustParseAddr("10.0.0.1")) {
		t.Fatal("-any-ipv4 did not reach the config")
	}
}

type discardSender struct{}

func (discardSender) SendFrom(server.Socket, []byte, netip.AddrPort) error { return nil }

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	sb strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sb.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sb.String()
}

// TestRun starts the command on loopback, checks the ready line, gets an
// RA and the status page, and stops it by cancelling the context.
func TestRun(t *testing.T) {
	base := [4]byte{127, byte(rand.IntN(200) + 20), byte(rand.IntN(250) + 1), 1}
	primary := netip.AddrFrom4(base)
	secondary := primary.Next()
	args := []string{"-primary", primary.String(), "-any-ipv4", "-raw=false", "-status", "127.0.0.1:0", "-v"}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	outR, outW := io.Pipe()
	var stderr syncBuffer
	code := make(chan int, 1)
	go func() {
		code <- run(ctx, args, noEnv, outW, &stderr)
		outW.Close()
	}()

	lines := bufio.NewScanner(outR)
	if !lines.Scan() {
		t.Fatalf("no ready line; exit %d; stderr:\n%s", <-code, stderr.String())
	}
	want := fmt.Sprintf("teredo-server: listening on %v:3544 and %v:3544", primary, secondary)
	if lines.Text() != want {
		t.Fatalf("ready line %q, want %q", lines.Text(), want)
	}

	// The server answers an RS.
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(primary, 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	nonce := [8]byte{9, 8, 7, 6, 5, 4, 3, 2}
	if _, err := c.WriteToUDPAddrPort(proto.AppendRS(nil, nonce, false), netip.AddrPortFrom(primary, proto.Port)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	var pkt proto.Packet
	if err := pkt.Parse(buf[:n]); err != nil {
		t.Fatal(err)
	}
	if ra, err := proto.ParseRA(&pkt); err != nil || ra.Nonce != nonce || ra.Server != primary {
		t.Fatalf("RA %+v: %v", ra, err)
	}

	// The status server's address is in the log.
	statusRE := regexp.MustCompile(`msg=status addr=(\S+)`)
	var m []string
	for deadline := time.Now().Add(5 * time.Second); m == nil && time.Now().Before(deadline); {
		m = statusRE.FindStringSubmatch(stderr.String())
		time.Sleep(5 * time.Millisecond)
	}
	if m == nil {
		t.Fatalf("no status address in the log:\n%s", stderr.String())
	}
	resp, err := http.Get("http://" + m[1] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `teredo_server_packets_total{direction="tx",result="router_advertisements"} 1`+"\n") {
		t.Fatalf("/metrics:\n%s", body)
	}
	if !strings.Contains(stderr.String(), "no IPv6 output") {
		t.Errorf("no warning about the missing IPv6 output:\n%s", stderr.String())
	}

	cancel()
	if got := <-code; got != 0 {
		t.Fatalf("exit %d; stderr:\n%s", got, stderr.String())
	}
	if lines.Scan() {
		t.Fatalf("more than one line on stdout: %q", lines.Text())
	}
}

func noEnv(string) string { return "" }

// TestConventions checks what every command shares: environment variables
// for flags (the command line wins), -version, the log flags and the
// form of usage errors.
func TestConventions(t *testing.T) {
	env := map[string]string{"TEREDO_SERVER_PRIMARY": "198.18.0.1", "TEREDO_SERVER_ANY_IPV4": "true", "TEREDO_SERVER_PORT": "4000"}
	o, err := parseFlags([]string{"-port", "4001"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil || o.primary != netip.MustParseAddr("198.18.0.1") || !o.anyIPv4 || o.port != 4001 {
		t.Errorf("from the environment: %+v, %v", o, err)
	}
	env["TEREDO_SERVER_PORT"] = "x"
	var stdout, stderr strings.Builder
	if code := run(context.Background(), nil, func(k string) string { return env[k] }, &stdout, &stderr); code != 2 ||
		!strings.HasPrefix(stderr.String(), "teredo-server: environment variable TEREDO_SERVER_PORT: ") ||
		!strings.HasSuffix(stderr.String(), "\nRun 'teredo-server -h' for the flags.\n") {
		t.Errorf("bad environment variable: exit %d, stderr %q", code, stderr.String())
	}
	stdout.Reset()
	stderr.Reset()
	if code := run(context.Background(), []string{"-version"}, noEnv, &stdout, &stderr); code != 0 ||
		!strings.HasPrefix(stdout.String(), "teredo-server ") || !strings.Contains(stdout.String(), "go1.") {
		t.Errorf("-version: exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
	for _, args := range [][]string{{"-log-format", "xml"}, {"-log-level", "loud"}, {"-bogus"}} {
		stderr.Reset()
		args = append([]string{"-primary", "198.18.0.1"}, args...)
		if code := run(context.Background(), args, noEnv, io.Discard, &stderr); code != 2 || !strings.HasPrefix(stderr.String(), "teredo-server: ") ||
			strings.Contains(stderr.String(), "Usage") {
			t.Errorf("%q: exit %d, stderr %q", args, code, stderr.String())
		}
	}
}
