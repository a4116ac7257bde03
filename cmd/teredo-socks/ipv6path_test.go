package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"testing"
	"time"

	"github.com/teredo-go/teredo/internal/socksd"
	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/socks5"
	"github.com/teredo-go/teredo/stack"
)

// startLoopback6Echo echoes TCP on [::1], standing in for a host reached
// through the host's own IPv6; it skips where the host has no IPv6
// loopback.
func startLoopback6Echo(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// runProxy runs the serving loop with args until the test ends and returns
// the SOCKS5 address from the line matching re.
func runProxy(t *testing.T, e socksd.Env, re *regexp.Regexp, args ...string) string {
	t.Helper()
	cfg, err := parseConfig(append([]string{"-listen", "127.0.0.1:0"}, args...), func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() { done <- socksd.Run(ctx, &cfg.Config, e) }()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("exit %d after cancel", code)
			}
		case <-time.After(15 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	return e.Stdout.(*lineWriter).wait(t, re, 10*time.Second)[1]
}

// TestProxyIPv6Direct runs -ipv6 direct: no Teredo stack starts, and IPv6
// destinations go through the host.
func TestProxyIPv6Direct(t *testing.T) {
	echo := startLoopback6Echo(t)
	out := newLineWriter()
	e := socksd.HostEnv(out, out, slog.New(slog.NewTextHandler(testLogWriter{t}, nil)))
	e.Start = func(context.Context, func(socksd.Event)) (socksd.Teredo, error) {
		t.Error("a Teredo stack started under -ipv6 direct")
		return nil, errors.New("no Teredo here")
	}
	listen := runProxy(t, e, regexp.MustCompile(`^teredo-socks: SOCKS5 on (\S+); IPv6 through the host \(-ipv6 direct\)$`), "-ipv6", "direct")
	c, err := socksConnect(listen, echo.Addr().String(), echo.Port())
	if err != nil {
		t.Fatalf("CONNECT to %v: %v", echo, err)
	}
	c.Close()
}

// TestProxyIPv6Auto runs -ipv6 auto with and without a native route next
// to a Teredo stack that never qualifies (its server does not exist): with
// the route, [::1] is reached through the host; without, the request goes
// to Teredo and gets "network unreachable" at once.
func TestProxyIPv6Auto(t *testing.T) {
	echo := startLoopback6Echo(t)
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadPort := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	pc.Close()
	for _, native := range []bool{true, false} {
		out := newLineWriter()
		log := slog.New(slog.NewTextHandler(testLogWriter{t}, nil))
		e := socksd.HostEnv(out, out, log)
		e.Start = socksd.StackStarter(stack.Config{
			Servers:    []netip.Addr{netip.MustParseAddr("127.0.0.1")},
			ServerPort: deadPort,
			IPv4Filter: proto.AnyIPv4,
			LocalAddr:  netip.MustParseAddrPort("127.0.0.1:0"),
			Logger:     log,
		}, nil, nil)
		e.NativeIPv6 = func() bool { return native }
		listen := runProxy(t, e, regexp.MustCompile(`^teredo-socks: SOCKS5 on ([^;\s]+);`), "-ipv6", "auto")
		c, err := socksConnect(listen, echo.Addr().String(), echo.Port())
		switch {
		case native && err != nil:
			t.Fatalf("native: CONNECT to %v: %v", echo, err)
		case native:
			c.Close()
		case err == nil:
			c.Close()
			t.Fatalf("without a route: CONNECT to %v succeeded", echo)
		case !errors.Is(err, replyError(socks5.ReplyNetworkUnreachable)):
			t.Fatalf("without a route: CONNECT to %v: %v, want network unreachable from Teredo", echo, err)
		}
	}
}
