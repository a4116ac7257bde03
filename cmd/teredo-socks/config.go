package main

import (
	"errors"
	"flag"
	"fmt"
	"github.com/teredo-go/teredo/socks5"
	"github.com/teredo-go/teredo/stack"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/teredo-go/teredo/internal/cli"
	"github.com/teredo-go/teredo/internal/socksd"
)

// DefaultServer is Miredo's default Teredo server. Public servers come and
// go; when it does not answer, the user is told to pick one with -server.
const DefaultServer = "teredo.remlab.net"

// name is the command's name in messages and environment variables.
const name = "teredo-socks"

// envPrefix prefixes the environment variable of every flag:
// -listen is also TEREDO_SOCKS_LISTEN (see cli.EnvName).
var envPrefix = cli.EnvPrefix(name)

// Forward exposes a local TCP service on a port of the Teredo address.
type Forward = socksd.Forward

// Config is the parsed command line: what the serving loop needs, and the
// command's own switches.
type Config struct {
	socksd.Config
	Demo bool
	cli.Common
}

type forwardList []Forward

func (f *forwardList) String() string {
	parts := make([]string, len(*f))
	for i, fw := range *f {
		parts[i] = fmt.Sprintf("%d=%s", fw.Port, fw.Target)
	}
	return strings.Join(parts, ",")
}

// Set accepts PORT=HOST:PORT, or several separated by commas (the form the
// environment variable uses).
func (f *forwardList) Set(s string) error {
	for _, one := range strings.Split(s, ",") {
		one = strings.TrimSpace(one)
		if one == "" {
			continue
		}
		fw, err := parseForward(one)
		if err != nil {
			return err
		}
		*f = append(*f, fw)
	}
	return nil
}

func parseForward(s string) (Forward, error) {
	portStr, target, ok := strings.Cut(s, "=")
	if !ok {
		return Forward{}, fmt.Errorf("forward %q: want PORT=HOST:PORT", s)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return Forward{}, fmt.Errorf("forward %q: bad port %q", s, portStr)
	}
	host, tport, err := net.SplitHostPort(target)
	if err != nil || host == "" {
		return Forward{}, fmt.Errorf("forward %q: target must be HOST:PORT", s)
	}
	if p, err := strconv.ParseUint(tport, 10, 16); err != nil || p == 0 {
		return Forward{}, fmt.Errorf("forward %q: bad target port %q", s, tport)
	}
	return Forward{Port: uint16(port), Target: target}, nil
}

// parseConfig parses args, with each flag's environment variable as its
// default. Errors are meant for the user, as they are.
func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (*Config, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		c         Config
		servers   string
		bind      string
		fwds      forwardList
		secondary string
		relay     string
	)
	fs.StringVar(&c.Listen, "listen", "127.0.0.1:1080", "SOCKS5 listen `address`; a non-loopback address needs -user and -pass")
	fs.StringVar(&servers, "server", DefaultServer, "Teredo server `host[,host...]`, tried in order, retried with backoff until stopped; names are resolved again before each round")
	fs.Func("secondary-port", "`port` of a teredo-gateway's -secondary-port on the first server's address, to tell a symmetric NAT from others", func(v string) error {
		p, err := strconv.ParseUint(v, 10, 16)
		if err != nil || p == 0 {
			return fmt.Errorf("want a port 1-65535")
		}
		c.SecondaryPort = uint16(p)
		return nil
	})
	fs.StringVar(&bind, "bind", "", "local UDP endpoint `IPv4:port` of the Teredo client (default: any address, random port)")
	fs.StringVar(&c.User, "user", "", "SOCKS5 user name (RFC 1929)")
	fs.StringVar(&c.Pass, "pass", "", "SOCKS5 password (RFC 1929)")
	fs.StringVar(&c.IPv4, "ipv4", "direct", "IPv4 destinations: `direct` through the host, or reject")
	fs.StringVar(&c.Prefer, "prefer", "ipv4", "family tried first for names with A and AAAA records: `ipv4` or ipv6")
	fs.StringVar(&c.IPv6, "ipv6", "auto", "IPv6 destinations: `auto` (the host's own IPv6 while it has a global route, Teredo otherwise; checked every 30 s), teredo, or direct (the host's only)")
	fs.Var(&fwds, "forward", "accept TCP on the Teredo address's `PORT=HOST:PORT` and forward it (repeatable)")
	fs.StringVar(&c.Status, "status", "", "serve GET /status (JSON), /healthz (200 while IPv6 works, else 503) and /metrics (Prometheus) on `address`; no authentication, so keep it on loopback")
	fs.IntVar(&c.MaxSessions, "max-sessions", socks5.DefaultMaxConns, "most concurrent SOCKS5 sessions; more are closed at once")
	fs.StringVar(&c.TCPCongestion, "tcp-congestion", stack.TCPCongestionRate, "TCP congestion control of Teredo connections: `rate` (delivery-rate model, keeps its rate under random loss), cubic or reno")
	fs.BoolVar(&c.Demo, "demo", false, "run against a built-in in-process Teredo internet (no root, no network)")
	c.Common.Register(fs)
	fs.BoolVar(&c.PortMap, "portmap", true, "ask the NAT for a mapping of the client's UDP port (PCP, NAT-PMP, UPnP-IGD); -portmap=false turns it off")
	fs.BoolVar(&c.LocalDiscovery, "local-discovery", false, "find Teredo peers on the same LAN by multicast bubbles (RFC 4380 local discovery)")
	fs.BoolVar(&c.ConeProbe, "cone-probe", false, "after qualifying, probe whether the NAT is a cone NAT (a reply from the server's second address)")
	fs.BoolVar(&c.PortPrediction, "port-prediction", true, "behind a NAT that gives each new flow the next port (nat_ports sequential in /status), predict the port a bubble to a new Teredo peer leaves from and tell the peer (RFC 6081 Random Port trailer); -port-prediction=false turns it off")
	fs.BoolVar(&c.PeerRelay, "peer-relay", true, "reach a Teredo peer that bubbles cannot (you behind a symmetric NAT, it behind a home router) through a relay (-relay, or the one found for native IPv6), and accept peers that come through a relay once an echo test proves it; -peer-relay=false turns it off")
	fs.StringVar(&relay, "relay", "", "a Teredo relay `IPv4[:port]` that carries all native IPv6 traffic instead of the one the echo test finds, and Teredo peers' traffic with -peer-relay")
	fs.StringVar(&secondary, "secondary", "", "the Teredo server's second `IPv4` address (default: the first server's address + 1)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: teredo-socks [flags]\n\nA SOCKS5 proxy that gives any program IPv6 through a user-space Teredo client.\nEvery flag can also be set with the environment variable %s<NAME>, e.g. %sLISTEN.\n\n", envPrefix, envPrefix)
		fs.PrintDefaults()
	}

	// Environment first, so that flags given on the command line win.
	if err := cli.SetFromEnv(fs, getenv); err != nil {
		return nil, err
	}
	envForwards := len(fwds)
	if err := cli.ParseArgs(fs, args); err != nil {
		return nil, err
	}
	if c.Version {
		return &c, nil
	}
	if err := c.Common.Check(); err != nil {
		return nil, err
	}
	// Forwards given on the command line replace those from the environment.
	if len(fwds) > envForwards && envForwards > 0 {
		fwds = fwds[envForwards:]
	}
	c.Forwards = fwds

	// name says where a bad value came from: the flag, or its environment
	// variable when that is what set it.
	name := func(flagName string) string {
		env := envName(flagName)
		if v := getenv(env); v != "" && fs.Lookup(flagName).Value.String() == v {
			return env
		}
		return "-" + flagName
	}

	for _, s := range strings.Split(servers, ",") {
		if s = strings.TrimSpace(s); s != "" {
			c.Servers = append(c.Servers, s)
		}
	}
	if len(c.Servers) == 0 && !c.Demo {
		return nil, fmt.Errorf("%s: at least one Teredo server is needed", name("server"))
	}
	if bind != "" {
		ap, err := netip.ParseAddrPort(bind)
		if err != nil || !ap.Addr().Is4() {
			return nil, fmt.Errorf("%s %q: want IPv4:port", name("bind"), bind)
		}
		c.Bind = ap
	}
	if c.MaxSessions < 1 {
		return nil, fmt.Errorf("%s %d: want at least 1", name("max-sessions"), c.MaxSessions)
	}
	if secondary != "" {
		a, err := netip.ParseAddr(secondary)
		if err != nil || !a.Is4() {
			return nil, fmt.Errorf("%s %q: want an IPv4 address", name("secondary"), secondary)
		}
		c.Secondary = a
	}
	if relay != "" {
		ap, err := parseRelay(relay)
		if err != nil {
			return nil, fmt.Errorf("%s %q: %w", name("relay"), relay, err)
		}
		c.FixedRelay = ap
	}
	switch c.IPv4 {
	case "direct", "reject":
	default:
		return nil, fmt.Errorf("%s %q: want direct or reject", name("ipv4"), c.IPv4)
	}
	switch c.TCPCongestion {
	case stack.TCPCongestionRate, "cubic", "reno":
	default:
		return nil, fmt.Errorf("%s %q: want rate, cubic or reno", name("tcp-congestion"), c.TCPCongestion)
	}
	switch c.Prefer {
	case "ipv4", "ipv6":
	default:
		return nil, fmt.Errorf("%s %q: want ipv4 or ipv6", name("prefer"), c.Prefer)
	}
	switch c.IPv6 {
	case "auto", "teredo":
	case "direct":
		if len(c.Forwards) > 0 {
			return nil, fmt.Errorf("-forward listens on the Teredo address, which %s direct does not have", name("ipv6"))
		}
		if c.Demo {
			return nil, fmt.Errorf("-demo needs Teredo; %s direct turns it off", name("ipv6"))
		}
	default:
		return nil, fmt.Errorf("%s %q: want auto, teredo or direct", name("ipv6"), c.IPv6)
	}
	if (c.User == "") != (c.Pass == "") {
		return nil, errors.New("-user and -pass go together")
	}
	host, _, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return nil, fmt.Errorf("%s %q: %w", name("listen"), c.Listen, err)
	}
	if !isLoopback(host) && c.User == "" {
		return nil, fmt.Errorf("%s %q is not a loopback address: refusing to run an open proxy; set -user and -pass", name("listen"), c.Listen)
	}
	seen := map[uint16]bool{}
	for _, f := range c.Forwards {
		if seen[f.Port] {
			return nil, fmt.Errorf("-forward: port %d given twice", f.Port)
		}
		seen[f.Port] = true
	}
	return &c, nil
}

// parseRelay accepts IPv4 or IPv4:port (default port 3544).
func parseRelay(s string) (netip.AddrPort, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		if !a.Is4() {
			return netip.AddrPort{}, errors.New("want an IPv4 address")
		}
		return netip.AddrPortFrom(a, 3544), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil || !ap.Addr().Is4() || ap.Port() == 0 {
		return netip.AddrPort{}, errors.New("want IPv4 or IPv4:port")
	}
	return ap, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// envName is the environment variable of a flag: -local-discovery is
// TEREDO_SOCKS_LOCAL_DISCOVERY.
func envName(flagName string) string { return cli.EnvName(name, flagName) }
