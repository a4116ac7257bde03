package main

import (
	"context"
	"fmt"
	"html"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/teredo-go/teredo/internal/socksd"
	"github.com/teredo-go/teredo/stack"
	"github.com/teredo-go/teredo/teredotest"
)

// The demo internet's IPv6-only host, its services and its name.
var (
	demoHostAddr = netip.MustParseAddr("2001:db8::80")
	demoName     = "ipv6.demo"
)

const (
	demoWebPort  = 80
	demoEchoPort = 7
)

// demoLookup answers the demo's names and passes the rest to next.
func demoLookup(next func(ctx context.Context, network, host string) ([]netip.Addr, error)) func(ctx context.Context, network, host string) ([]netip.Addr, error) {
	return func(ctx context.Context, network, host string) ([]netip.Addr, error) {
		if strings.EqualFold(strings.TrimSuffix(host, "."), demoName) {
			if network == "ip4" {
				return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
			}
			return []netip.Addr{demoHostAddr}, nil
		}
		return next(ctx, network, host)
	}
}

func demoHint(listen string) []string {
	return []string{
		fmt.Sprintf("demo: an IPv6-only web server is at [%s]:%d (also http://%s/), a UDP echo at [%s]:%d", demoHostAddr, demoWebPort, demoName, demoHostAddr, demoEchoPort),
		"demo: try   curl --socks5-hostname " + listen + " http://[" + demoHostAddr.String() + "]/",
		"demo: or    curl --socks5-hostname " + listen + " http://" + demoName + "/",
	}
}

// demoPage answers with a small page that shows the Teredo address the
// request came from: the proof that it crossed the tunnel.
func demoPage() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		from := r.RemoteAddr
		if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
			from = ap.Addr().String()
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, "<!doctype html>\n<title>teredo-socks demo</title>\n<h1>Hello over IPv6!</h1>\n<p>This page lives on an IPv6-only host, [%s]. You reached it from %s, your Teredo address, through the Teredo tunnel.</p>\n",
			demoHostAddr, html.EscapeString(from))
	})
}

// startDemoInternet starts the in-process Teredo internet with the demo's
// host and services.
func startDemoInternet(log *slog.Logger) (*teredotest.Internet, error) {
	in, err := teredotest.Start(teredotest.WithLogger(log))
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	if err := addDemoHost(in); err != nil {
		in.Close()
		return nil, err
	}
	return in, nil
}

// addDemoHost adds the IPv6-only host with its web page and UDP echo.
func addDemoHost(in *teredotest.Internet) error {
	h, err := in.AddHost(demoHostAddr)
	if err == nil {
		_, err = h.ServeHTTP(demoWebPort, demoPage())
	}
	if err == nil {
		_, err = h.ServeUDPEcho(demoEchoPort)
	}
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	return nil
}

// demoStarter starts a stack against a fresh in-process Teredo internet:
// no root, no network. The internet closes with the stack.
func demoStarter(cfg *Config, log *slog.Logger) socksd.StartFunc {
	return func(ctx context.Context, onEvent func(socksd.Event)) (socksd.Teredo, error) {
		in, err := startDemoInternet(log.With("demo", true))
		if err != nil {
			return nil, err
		}
		t, err := internetStarter(in, cfg.Bind, log, in.Close)(ctx, onEvent)
		if err != nil {
			in.Close()
			return nil, err
		}
		return t, nil
	}
}

// internetStarter starts a stack with in's server from a socket at bind
// (any free loopback port if zero); closeAlso runs after it closes.
func internetStarter(in *teredotest.Internet, bind netip.AddrPort, log *slog.Logger, closeAlso func() error) socksd.StartFunc {
	if !bind.IsValid() {
		bind = netip.MustParseAddrPort("127.0.0.1:0")
	}
	names := map[netip.Addr]string{}
	for _, a := range in.Servers() {
		names[a] = "demo server"
	}
	return socksd.StackStarter(stack.Config{
		Servers:    in.Servers(),
		Secondary:  in.SecondaryAddr(),
		LocalAddr:  bind,
		IPv4Filter: in.IPv4Filter(),
		Logger:     log,
	}, names, closeAlso)
}
