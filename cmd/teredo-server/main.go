// Command teredo-server runs a Teredo server (RFC 4380 §5.3) on two IPv4
// addresses, as an ordinary user.
//
// Usage:
//
//	teredo-server -primary 198.18.0.1 [-secondary 198.18.0.2 | -single-address [-secondary-port 3545]] [-port 3544]
//	              [-mtu 1280] [-status 127.0.0.1:9544] [-rate 50] [-burst 100]
//	              [-raw] [-v]
//
// -rate and -burst size the token bucket of each source IPv4 address, so
// that nobody can make the server send more than -burst datagrams at once
// or -rate per second on average: each RA or relayed packet costs a token
// of the source that caused it. -rate 0 turns the limit off (and -burst
// with it), for a server that only trusted clients reach.
//
// When its sockets are bound it prints one line to standard output,
// "teredo-server: listening on <primary>:<port> and <secondary>:<port>"
// ("... on <primary>:<port> only" with -single-address);
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
	"strconv"
	"syscall"
	"time"

	"github.com/teredo-go/teredo/internal/cli"
	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/server"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// rawMode is whether to use the raw IPv6 output.
type rawMode int

const (
	rawAuto rawMode = iota // if it can be opened
	rawOn                  // required
	rawOff
)

// options are the parsed command line.
type options struct {
	primary, secondary netip.Addr
	single             bool
	secondaryPort      uint16
	port               uint16
	mtu                uint32
	status             string
	raw                rawMode
	verbose            bool
	anyIPv4            bool
	rate               float64 // per second; 0 means no limit
	burst              int
}

// Bounds of -rate and -burst: beyond them the values are typos rather
// than policies.
const (
	minRate  = 0.01 // one token per 100 s
	maxRate  = 1_000_000
	maxBurst = 1_000_000
)

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("teredo-server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	primary := fs.String("primary", "", "primary IPv4 `address` (required)")
	secondary := fs.String("secondary", "", "secondary IPv4 `address` (default primary+1)")
	port := fs.Uint("port", proto.Port, "UDP `port` on both addresses")
	fs.BoolVar(&o.single, "single-address", false, "run on -primary alone (a host with one IPv4 address): clients cannot detect a symmetric NAT\nand report it as unknown; cone RSs are dropped")
	secPort := fs.Uint("secondary-port", 0, "with -single-address, also listen on this `port` of -primary as the secondary\n(an extension: only clients configured with it, teredo-socks -secondary-port, use it)")
	mtu := fs.Uint("mtu", proto.MinMTU, "link MTU advertised to clients (at least 1280)")
	fs.StringVar(&o.status, "status", "", "serve GET /status (JSON) and /metrics (Prometheus) on this TCP `address`")
	raw := fs.Bool("raw", false, "send clients' echo requests to native IPv6 hosts through a raw IPv6 socket\n(needs root or CAP_NET_RAW; default: if it can be opened)")
	fs.Float64Var(&o.rate, "rate", server.DefaultRatePerSecond, "at most `N` datagrams per second, on average, that one source IPv4 address\ncan make the server send (0: no limit)")
	fs.IntVar(&o.burst, "burst", server.DefaultRateBurst, "at most `N` datagrams at once that one source IPv4 address can make the server send")
	fs.BoolVar(&o.verbose, "v", false, "debug logging, including every dropped packet")
	fs.BoolVar(&o.anyIPv4, "any-ipv4", false, "treat every IPv4 address as global unicast\n(for tests on loopback or private networks only)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, cli.Usagef("unexpected argument %q", fs.Arg(0))
	}
	o.raw = rawAuto
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "raw" {
			o.raw = map[bool]rawMode{true: rawOn, false: rawOff}[*raw]
		}
	})
	global := proto.IsGlobalUnicastIPv4
	if o.anyIPv4 {
		global = proto.AnyIPv4
	}

	var err error
	if *primary == "" {
		return o, cli.Usagef("-primary is required")
	}
	if o.primary, err = parseIPv4("primary", *primary, global); err != nil {
		return o, err
	}
	if *secPort != 0 && !o.single {
		return o, cli.Usagef("-secondary-port needs -single-address")
	}
	if o.single {
		if *secondary != "" {
			return o, cli.Usagef("-secondary and -single-address exclude each other")
		}
		if *secPort > 65535 || (*secPort != 0 && *secPort == *port) {
			return o, cli.Usagef("-secondary-port %d must be a port other than -port", *secPort)
		}
		o.secondaryPort = uint16(*secPort)
	} else if *secondary == "" {
		if o.secondary = o.primary.Next(); !o.secondary.IsValid() {
			return o, cli.Usagef("-primary %v has no next address; set -secondary", o.primary)
		}
		if !global(o.secondary) {
			return o, cli.Usagef("the default -secondary %v (primary+1) is not a global unicast IPv4 address", o.secondary)
		}
	} else if o.secondary, err = parseIPv4("secondary", *secondary, global); err != nil {
		return o, err
	}
	if !o.single && o.secondary == o.primary {
		return o, cli.Usagef("-secondary must differ from -primary (%v)", o.primary)
	}
	if *port < 1 || *port > 65535 {
		return o, cli.Usagef("-port %d is outside 1..65535", *port)
	}
	o.port = uint16(*port)
	if *mtu < proto.MinMTU || *mtu > 65535 {
		return o, cli.Usagef("-mtu %d is outside 1280..65535", *mtu)
	}
	o.mtu = uint32(*mtu)
	// Written so that NaN fails too.
	if !(o.rate == 0 || o.rate >= minRate && o.rate <= maxRate) {
		return o, cli.Usagef("-rate %s is outside %g..%d (0 disables the limit)", strconv.FormatFloat(o.rate, 'f', -1, 64), minRate, maxRate)
	}
	if o.burst < 1 || o.burst > maxBurst {
		return o, cli.Usagef("-burst %d is outside 1..%d", o.burst, maxBurst)
	}
	return o, nil
}

// config is the server configuration the options ask for.
func (o options) config(log *slog.Logger) server.Config {
	cfg := server.Config{
		Primary:       o.primary,
		Secondary:     o.secondary,
		SingleAddress: o.single,
		SecondaryPort: o.secondaryPort,
		Port:          o.port,
		MTU:           o.mtu,
		RateLimit:     server.RateLimit{PerSecond: o.rate, Burst: o.burst},
		Logger:        log,
	}
	if o.rate == 0 {
		cfg.RateLimit = server.RateLimit{PerSecond: -1}
	}
	if o.anyIPv4 {
		cfg.IPv4Filter = proto.AnyIPv4
	}
	return cfg
}

func parseIPv4(name, s string, global proto.IPv4Filter) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return a, cli.Usagef("-%s %q is not an IPv4 address", name, s)
	}
	if !global(a) {
		return a, cli.Usagef("-%s %v is not a global unicast IPv4 address (clients would refuse it; -any-ipv4 allows it for tests)", name, a)
	}
	return a, nil
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
			fmt.Fprintf(stderr, "teredo-server: %v (see -h)\n", ue)
		} // else the flag package has printed the error and the usage.
		return 2
	}

	level := slog.LevelInfo
	if o.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	cfg := o.config(log)
	if o.rate == 0 {
		log.Warn("no rate limit: any source can make the server send as fast as it receives")
	}
	if o.raw != rawOff {
		raw, err := server.OpenRawIPv6()
		switch {
		case err == nil:
			defer raw.Close()
			cfg.IPv6Output = raw
			log.Info("raw IPv6 output open: relay-discovery echo requests go to native IPv6")
		case o.raw == rawOn:
			log.Error("cannot open the raw IPv6 output", "err", err)
			return 1
		default:
			log.Warn("raw IPv6 output unavailable (needs root or CAP_NET_RAW)", "err", err)
		}
	}

	srv, err := server.New(cfg)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	defer srv.Close()

	if o.status != "" {
		ln, err := net.Listen("tcp", o.status)
		if err != nil {
			log.Error("cannot serve status", "err", err)
			return 1
		}
		hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}
		log.Info("status", "addr", ln.Addr().String())
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := hs.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				log.Error("status server", "err", err)
			}
		}()
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			hs.Shutdown(sctx)
			hs.Close()
			<-done
		}()
	}

	if primary, secondary := srv.Addrs(); secondary.IsValid() {
		fmt.Fprintf(stdout, "teredo-server: listening on %v and %v\n", primary, secondary)
	} else {
		fmt.Fprintf(stdout, "teredo-server: listening on %v only\n", primary)
	}
	if err := srv.Serve(ctx); err != nil {
		log.Error("server stopped", "err", err)
		return 1
	}
	log.Info("stopped")
	return 0
}
