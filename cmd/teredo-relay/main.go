// Command teredo-relay runs a Teredo relay (RFC 4380 §5.4), or with
// -host-specific a host-specific relay, between a UDP/IPv4 socket and a
// Linux TUN interface.
//
// Usage:
//
//	teredo-relay [-bind 0.0.0.0:3544] [-tun teredo] [-host-specific]
//	             [-status 127.0.0.1:9545] [-direct-bubbles] [-hairpin] [-v]
//	             [-log-format text|json] [-log-level info] [-version]
//
// It creates the TUN interface (MTU 1280) and routes 2001::/32 into it,
// which needs CAP_NET_ADMIN; as an ordinary user it attaches to a device
// made for it with "ip tuntap add dev teredo mode tun user USER" and
// configured beforehand. When it is ready it prints one line to standard
// output, "teredo-relay: ready on <addr>:<port>, tun <name>"; logs go to
// standard error. SIGINT or SIGTERM stops it. Bad flags exit with status 2,
// failures with status 1. Every flag can also be set with the environment
// variable TEREDO_RELAY_<FLAG>, e.g. TEREDO_RELAY_BIND; flags on the
// command line win.
// See relay/README.md for what a relay needs around it (routing, IPv6
// forwarding).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"time"

	"github.com/teredo-go/teredo/internal/cli"
	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/relay"
	"github.com/teredo-go/teredo/relay/tun"
	"github.com/teredo-go/teredo/udpio"
)

func main() {
	ctx, stop := cli.SignalContext()
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const name = "teredo-relay"

// options are the parsed command line.
type options struct {
	bind         netip.AddrPort
	tun          string
	prefix       netip.Prefix
	hostSpecific bool
	status       string
	cli.Common
	anyIPv4       bool
	directBubbles bool
	hairpin       bool
	maxPeers      int
	noTunOffload  bool
}

func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	bind := fs.String("bind", "0.0.0.0:3544", "Teredo-side UDP/IPv4 `address:port`")
	fs.StringVar(&o.tun, "tun", tun.DefaultName, "TUN interface `name` (created if missing; an existing one is used as it is)")
	prefix := fs.String("prefix", proto.Prefix.String(), "Teredo `prefix` (RFC 4380 fixes 2001::/32; other values are for tests)")
	fs.BoolVar(&o.hostSpecific, "host-specific", false, "serve only this host's own IPv6 addresses (host-specific relay)")
	fs.StringVar(&o.status, "status", "", "serve GET /status (JSON) and /metrics (Prometheus) on this TCP `address`")
	fs.BoolVar(&o.anyIPv4, "any-ipv4", false, "treat every IPv4 address as global unicast\n(for tests on loopback or private networks only)")
	fs.BoolVar(&o.directBubbles, "direct-bubbles", false, "also send bubbles straight to clients' mappings\n(can make conntrack NATs remap clients; off by default)")
	fs.BoolVar(&o.hairpin, "hairpin", false, "relay between Teredo clients: send their packets for Teredo addresses back out to Teredo,\nand bubble a client whose packets come from another mapping (behind a symmetric NAT)")
	fs.IntVar(&o.maxPeers, "max-peers", relay.DefaultMaxPeers, "peer table size")
	fs.BoolVar(&o.noTunOffload, "disable-tun-offload", false, "read and write each packet on its own instead of writing clients' TCP segments to the TUN device\ncoalesced, for the kernel to split (IFF_VNET_HDR GSO), and reading TCP super-packets to split in the relay (TSO)")
	o.Common.Register(fs)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: %s [flags]\n\nA Teredo relay (RFC 4380 section 5.4) between UDP/IPv4 and a TUN device.\nEvery flag can also be set with the environment variable %s<FLAG>, e.g. %sBIND.\n\n", name, cli.EnvPrefix(name), cli.EnvPrefix(name))
		fs.PrintDefaults()
	}
	if err := cli.Parse(fs, args, getenv); err != nil {
		return o, err
	}
	if o.Version {
		return o, nil
	}
	if err := o.Common.Check(); err != nil {
		return o, err
	}
	var err error
	if o.bind, err = netip.ParseAddrPort(*bind); err != nil || !o.bind.Addr().Is4() {
		return o, cli.Usagef("-bind %q is not an IPv4 address:port", *bind)
	}
	if o.prefix, err = netip.ParsePrefix(*prefix); err != nil || !o.prefix.Addr().Is6() || o.prefix.Bits() != 32 {
		return o, cli.Usagef("-prefix %q is not an IPv6 /32", *prefix)
	}
	o.prefix = o.prefix.Masked()
	if o.tun == "" || len(o.tun) > 15 {
		return o, cli.Usagef("-tun %q: the name must have 1 to 15 characters", o.tun)
	}
	if o.maxPeers < 1 {
		return o, cli.Usagef("-max-peers %d must be positive", o.maxPeers)
	}
	return o, nil
}

// run is the whole command; it returns the exit status.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, getenv, stderr)
	if err != nil {
		return cli.Exit(stderr, name, err)
	}
	if o.Version {
		fmt.Fprintln(stdout, cli.Version(name))
		return cli.ExitOK
	}
	return cli.Exit(stderr, name, serve(ctx, o, o.Logger(stderr), stdout))
}

// Warnings about the TUN device, which operators (and tests) look for.
const (
	msgAsIs      = "using the TUN device as it is: its MTU and routes were set by its owner"
	msgNoVnetHdr = "the TUN device has no IFF_VNET_HDR: packets are written one by one"
	msgNoReadTSO = "the TUN device refused TSO on reads: the kernel segments before the relay reads"
)

// relayReadBuffer is the Teredo socket's receive buffer (see serve).
const relayReadBuffer = 16 << 20

func serve(ctx context.Context, o options, log *slog.Logger, stdout io.Writer) error {
	// GSO coalesces the batches the relay forwards to one client into few
	// sends; GRO does the same for what clients send to the relay. The
	// receive buffer is four times the default: one lost datagram of a bulk
	// upload costs the sender a recovery over its whole window, and the lab
	// benchmark saw a few overflow 4 MiB on a busy 2-core machine.
	conn, err := udpio.Listen(o.bind, udpio.Options{ReadBuffer: relayReadBuffer})
	if err != nil {
		return err
	}
	dev, err := tun.Open(tun.Config{Name: o.tun, Routes: []netip.Prefix{o.prefix}, DisableOffload: o.noTunOffload})
	if err != nil {
		conn.Close()
		return err
	}
	if !dev.Configured() {
		log.Warn(msgAsIs, "tun", dev.Name())
	}
	if st := dev.Stats(); !o.noTunOffload && !st.Offload {
		log.Warn(msgNoVnetHdr, "tun", dev.Name())
	} else if !o.noTunOffload && !st.ReadOffload {
		log.Warn(msgNoReadTSO, "tun", dev.Name())
	}
	cfg := relay.Config{
		Conn:          conn,
		Device:        dev,
		Logger:        log,
		Prefix:        o.prefix,
		DirectBubbles: o.directBubbles,
		Hairpin:       o.hairpin,
		MaxPeers:      o.maxPeers,
	}
	if o.anyIPv4 {
		cfg.IPv4Filter = proto.AnyIPv4
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if o.hostSpecific {
		local := newLocalAddrs(log)
		go local.refresh(ctx, 10*time.Second)
		cfg.HostSpecific, cfg.IsLocal = true, local.contains
	}
	r, err := relay.New(cfg)
	if err != nil {
		conn.Close()
		dev.Close()
		return err
	}
	defer r.Close()

	var srv *http.Server
	srvDone := make(chan struct{})
	if o.status != "" {
		l, err := net.Listen("tcp", o.status)
		if err != nil {
			return fmt.Errorf("status listener: %w", err)
		}
		srv = &http.Server{Handler: r.Handler(), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			defer close(srvDone)
			srv.Serve(l)
		}()
		log.Info("status", "url", "http://"+l.Addr().String()+"/status")
	} else {
		close(srvDone)
	}
	fmt.Fprintf(stdout, "teredo-relay: ready on %v, tun %s\n", r.Addr(), dev.Name())
	log.Info("relay running", "addr", r.Addr(), "tun", dev.Name(), "prefix", o.prefix, "host_specific", o.hostSpecific)
	err = r.Serve(ctx)
	if srv != nil {
		sctx, scancel := context.WithTimeout(context.Background(), cli.ShutdownGrace)
		srv.Shutdown(sctx)
		scancel()
	}
	<-srvDone
	log.Info("relay stopped")
	return err
}
