// Command teredo-gateway runs a Teredo server and relay on one IPv4
// address, whose clients reach the IPv6 internet from the operator's /64
// through stateless prefix translation (NPTv6): what a VPS with one IPv4
// address and one IPv6 /64 needs to give Teredo clients working IPv6.
//
// Usage:
//
//	teredo-gateway -addr 203.0.113.7 -prefix6 2001:db8:2::/64
//	               [-bind 0.0.0.0:3544] [-secondary-port 3545] [-tun teredo-gw]
//	               [-ndp-proxy eth0] [-status 127.0.0.1:9546] [-mtu 1280] [-v]
//
// Clients are configured with -addr as their server (teredo-socks
// -server 203.0.113.7; Miredo ServerAddress). Their Teredo addresses are
// 2001:0:<addr>::/64; the world sees them in -prefix6 with the same
// interface identifier, which teredo-socks reports as its public address.
//
// It creates the TUN interface (MTU 1280) and routes -prefix6 into it,
// which needs CAP_NET_ADMIN, and the host must forward IPv6
// (net.ipv6.conf.all.forwarding=1). If the provider routes the /64 to the
// VPS, nothing else is needed; if the /64 is on-link on the VPS's
// interface, -ndp-proxy makes the gateway answer neighbor solicitations
// for it there. When ready it prints one line to standard output,
// "teredo-gateway: ready on <addr>:<port>, tun <name>, <teredo /64> -> <prefix6>";
// logs go to standard error. SIGINT or SIGTERM stops it. Bad flags exit
// with status 2.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/teredo-go/teredo/gateway"
	"github.com/teredo-go/teredo/gateway/ndproxy"
	"github.com/teredo-go/teredo/internal/cli"
	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/relay/tun"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// options are the parsed command line.
type options struct {
	addr          netip.Addr
	bind          netip.AddrPort
	prefix6       netip.Prefix
	secondaryPort uint16
	tun           string
	ndpProxy      string
	status        string
	mtu           uint
	verbose       bool
	anyIPv4       bool
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("teredo-gateway", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "", "the gateway's public IPv4 `address`: the Teredo server address clients use (required)")
	bind := fs.String("bind", "", "UDP `address:port` to listen on (default: -addr:3544; use the private address where the provider maps the public one 1:1)")
	prefix6 := fs.String("prefix6", "", "the operator's IPv6 `/64` the clients appear on (required)")
	secPort := fs.Uint("secondary-port", 0, "also listen on this `port` of the same address as the server's secondary\n(an extension: only clients told about it, teredo-socks -secondary-port, can then tell a symmetric NAT)")
	fs.StringVar(&o.tun, "tun", "teredo-gw", "TUN interface `name` (created if missing)")
	fs.StringVar(&o.ndpProxy, "ndp-proxy", "", "answer neighbor solicitations for -prefix6 on this `interface` (when the /64 is on-link there rather than routed to the host)")
	fs.StringVar(&o.status, "status", "", "serve GET /status (JSON) and /metrics (Prometheus) on this TCP `address`; no authentication, keep it on loopback")
	fs.UintVar(&o.mtu, "mtu", proto.MinMTU, "link MTU advertised to clients")
	fs.BoolVar(&o.verbose, "v", false, "debug logging")
	fs.BoolVar(&o.anyIPv4, "any-ipv4", false, "treat every IPv4 address as global unicast\n(for tests on private networks only)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, cli.Usagef("unexpected argument %q", fs.Arg(0))
	}
	var err error
	if o.addr, err = netip.ParseAddr(*addr); err != nil || !o.addr.Is4() {
		return o, cli.Usagef("-addr %q is not an IPv4 address", *addr)
	}
	o.bind = netip.AddrPortFrom(o.addr, proto.Port)
	if *bind != "" {
		if o.bind, err = netip.ParseAddrPort(*bind); err != nil || !o.bind.Addr().Is4() {
			return o, cli.Usagef("-bind %q is not an IPv4 address:port", *bind)
		}
	}
	if o.prefix6, err = netip.ParsePrefix(*prefix6); err != nil || !o.prefix6.Addr().Is6() || o.prefix6.Addr().Is4In6() || o.prefix6.Bits() != 64 {
		return o, cli.Usagef("-prefix6 %q is not an IPv6 /64 (with a larger allocation, pick one /64 of it)", *prefix6)
	}
	if proto.IsTeredo(o.prefix6.Addr()) {
		return o, cli.Usagef("-prefix6 %v is inside Teredo's 2001::/32", o.prefix6)
	}
	o.prefix6 = o.prefix6.Masked()
	if *secPort > 65535 || (*secPort != 0 && uint16(*secPort) == o.bind.Port()) {
		return o, cli.Usagef("-secondary-port %d must be a port other than %d", *secPort, o.bind.Port())
	}
	o.secondaryPort = uint16(*secPort)
	if o.tun == "" || len(o.tun) > 15 {
		return o, cli.Usagef("-tun %q: the name must have 1 to 15 characters", o.tun)
	}
	if o.mtu < proto.MinMTU || o.mtu > 65535 {
		return o, cli.Usagef("-mtu %d outside 1280..65535", o.mtu)
	}
	return o, nil
}

// run is the whole command; it returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case err != nil:
		var ue cli.UsageError
		if errors.As(err, &ue) {
			fmt.Fprintf(stderr, "teredo-gateway: %v (see -h)\n", ue)
		}
		return 2
	}
	level := slog.LevelInfo
	if o.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if err := serve(ctx, o, log, stdout); err != nil {
		fmt.Fprintf(stderr, "teredo-gateway: %v\n", err)
		return 1
	}
	return 0
}

func serve(ctx context.Context, o options, log *slog.Logger, stdout io.Writer) error {
	dev, err := tun.Open(tun.Config{Name: o.tun, Routes: []netip.Prefix{o.prefix6}})
	if err != nil {
		return err
	}
	if !dev.Configured() {
		log.Warn("using the TUN device as it is: its MTU and routes were set by its owner", "tun", dev.Name())
	}
	cfg := gateway.Config{
		Addr:          o.addr,
		Bind:          o.bind,
		Prefix6:       o.prefix6,
		SecondaryPort: o.secondaryPort,
		Device:        dev,
		MTU:           uint32(o.mtu),
		Logger:        log,
	}
	if o.anyIPv4 {
		cfg.IPv4Filter = proto.AnyIPv4
	}
	g, err := gateway.New(cfg)
	if err != nil {
		dev.Close()
		return err
	}
	defer g.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	if o.ndpProxy != "" {
		p, err := ndproxy.Open(o.ndpProxy, g.MayBeClient, log)
		if err != nil {
			return fmt.Errorf("-ndp-proxy %s: %w", o.ndpProxy, err)
		}
		ndpDone := make(chan struct{})
		go func() {
			defer close(ndpDone)
			if err := p.Serve(ctx); err != nil {
				log.Error("proxy NDP stopped", "err", err)
			}
		}()
		defer func() { cancel(); <-ndpDone }()
		log.Info("proxy NDP", "interface", o.ndpProxy, "prefix", o.prefix6)
	}

	var srv *http.Server
	srvDone := make(chan struct{})
	if o.status != "" {
		l, err := net.Listen("tcp", o.status)
		if err != nil {
			return fmt.Errorf("status listener: %w", err)
		}
		srv = &http.Server{Handler: g.Handler(), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			defer close(srvDone)
			srv.Serve(l)
		}()
		log.Info("status", "url", "http://"+l.Addr().String()+"/status")
	} else {
		close(srvDone)
	}
	fmt.Fprintf(stdout, "teredo-gateway: ready on %v, tun %s, %v -> %v\n", o.bind, dev.Name(), g.TeredoPrefix(), g.PublicPrefix())
	err = g.Serve(ctx)
	if srv != nil {
		sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
		srv.Shutdown(sctx)
		scancel()
	}
	<-srvDone
	log.Info("gateway stopped")
	return err
}
