// Package socksd is teredo-socks's serving loop: it takes the ports,
// starts the Teredo stack without waiting for it, serves SOCKS5 at once
// (IPv6 through Teredo or the host's native IPv6, IPv4 through the host,
// names raced Happy-Eyeballs style), the -forward ports once qualified,
// and the status page, and reports the stack's changes until its context
// ends. The command keeps the flags and the wiring.
package socksd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/teredo-go/teredo/clock"
	"github.com/teredo-go/teredo/happyeyeballs"
	"github.com/teredo-go/teredo/internal/cli"
	"github.com/teredo-go/teredo/socks5"
)

// Forward exposes a local TCP service on a port of the Teredo address.
type Forward struct {
	Port   uint16 // port on the Teredo address
	Target string // host:port the accepted connections are forwarded to
}

// Config is what the command's flags decide.
type Config struct {
	Listen   string
	Servers  []string
	Bind     netip.AddrPort
	User     string
	Pass     string
	IPv4     string // "direct" or "reject"
	Prefer   string // "ipv4" or "ipv6"
	IPv6     string // "auto" (the default when empty), "teredo" or "direct"
	Forwards []Forward
	Status   string

	// Teredo client options (stack.Config): PortMap is on by default.
	PortMap        bool
	LocalDiscovery bool
	ConeProbe      bool
	Secondary      netip.Addr
	// PeerRelay and FixedRelay are stack.Config's.
	PeerRelay bool
	// PortPrediction is !stack.Config.NoPortPrediction (-port-prediction).
	PortPrediction bool
	FixedRelay     netip.AddrPort

	// SecondaryPort is the secondary port of a single-address server
	// (teredo-gateway -secondary-port); zero: none.
	SecondaryPort uint16
	// MaxSessions bounds concurrent SOCKS5 sessions (socks5.Server.MaxConns);
	// zero means socks5's default.
	MaxSessions int
	// TCPCongestion is stack.Config.TCPCongestion (-tcp-congestion).
	TCPCongestion string
}

// Teredo is what the loop needs from a Teredo stack, qualified or not.
type Teredo interface {
	// Dial connects to an IPv6 destination; network is "tcp6" or "udp6".
	// It fails at once, with an error matching syscall.ENETUNREACH, while
	// the stack is not qualified.
	Dial(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error)
	// ListenPacket opens a UDP socket on the Teredo address, any port.
	ListenPacket(ctx context.Context) (net.PacketConn, error)
	// Listen accepts TCP on port of the Teredo address.
	Listen(port uint16) (net.Listener, error)
	Status() TeredoStatus
	// ServerName names a server address as the user gave it.
	ServerName(netip.Addr) string
	Close() error
}

// EventKind says what changed.
type EventKind int

const (
	EvQualified      EventKind = iota // (again) has Addr via Server
	EvAddressChanged                  // Old → Addr
	EvOffline                         // lost connectivity because of Err
	EvNAT                             // the NAT type is known: NAT
)

// Event is a change of the Teredo stack's state, as the command reports it.
type Event struct {
	Kind      EventKind
	Addr, Old netip.Addr
	Server    netip.Addr
	NAT       string
	Err       error
}

// StartFunc starts a Teredo stack and returns without waiting for it to
// qualify; it fails only for local reasons (a socket that cannot be
// opened), with a message fit for the user. onEvent must not block.
type StartFunc func(ctx context.Context, onEvent func(Event)) (Teredo, error)

// Env is what Run needs from the world, so tests can swap each part.
type Env struct {
	Stdout io.Writer // the lines a user reads
	Stderr io.Writer // why it could not start
	// Servers names the Teredo servers for the "qualifying" line.
	Servers string
	Log     *slog.Logger
	Clock   clock.Clock
	Start   StartFunc
	// Lookup resolves destination names (A and AAAA), as net.Resolver.
	Lookup func(ctx context.Context, network, host string) ([]netip.Addr, error)
	// Dial4 and Listen4 reach IPv4 destinations through the host.
	Dial4   happyeyeballs.DialFunc
	Listen4 func(ctx context.Context) (net.PacketConn, error)
	// Dial6 and Listen6 reach IPv6 destinations through the host's native
	// IPv6 (-ipv6 auto or direct), and NativeIPv6 reports whether the host
	// has a global IPv6 route now.
	Dial6      happyeyeballs.DialFunc
	Listen6    func(ctx context.Context) (net.PacketConn, error)
	NativeIPv6 func() bool
	// DialHost reaches -forward targets.
	DialHost func(ctx context.Context, network, address string) (net.Conn, error)
	// Hint, if set, gives lines to print after the qualified one (the
	// demo's commands to try), given the SOCKS5 listen address.
	Hint func(listen string) []string
}

// HostEnv is the Env of a real run: the host's resolver and sockets.
func HostEnv(stdout, stderr io.Writer, log *slog.Logger) Env {
	var d net.Dialer
	var lc net.ListenConfig
	return Env{
		Stdout: stdout,
		Stderr: stderr,
		Log:    log,
		Clock:  clock.Real{},
		Lookup: net.DefaultResolver.LookupNetIP,
		Dial4: func(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error) {
			return d.DialContext(ctx, network, dst.String())
		},
		Listen4: func(ctx context.Context) (net.PacketConn, error) {
			return lc.ListenPacket(ctx, "udp4", "0.0.0.0:0")
		},
		Dial6: func(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error) {
			return d.DialContext(ctx, network, dst.String())
		},
		Listen6: func(ctx context.Context) (net.PacketConn, error) {
			return lc.ListenPacket(ctx, "udp6", "[::]:0")
		},
		NativeIPv6: HostHasIPv6Route,
		DialHost:   d.DialContext,
	}
}

// HintDelay is how long Run waits for qualification before it tells the
// user why it has none yet: one server's three router solicitations, and
// a margin.
const HintDelay = 15 * time.Second

// shutdownTimeout bounds the graceful part of shutdown, as for every
// command.
const shutdownTimeout = cli.ShutdownGrace

// Run serves until ctx is cancelled and returns the exit code: 0 after ctx
// ends, 1 when it cannot start (a port taken, no UDP socket) or the SOCKS
// listener fails. It never gives up on Teredo: until the stack qualifies,
// SOCKS requests for IPv6 get reply 0x03 (network unreachable) at once.
func Run(ctx context.Context, cfg *Config, e Env) (code int) {
	say := func(format string, args ...any) { fmt.Fprintf(e.Stdout, "teredo-socks: "+format+"\n", args...) }
	fail := func(format string, args ...any) int {
		fmt.Fprintf(e.Stderr, "teredo-socks: "+format+"\n", args...)
		return 1
	}
	if e.Clock == nil {
		e.Clock = clock.Real{}
	}

	// Take the ports first: a busy port should fail at once.
	socksLn, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fail("cannot listen for SOCKS5: %v", err)
	}
	var statusLn net.Listener
	if cfg.Status != "" {
		if statusLn, err = net.Listen("tcp", cfg.Status); err != nil {
			socksLn.Close()
			return fail("cannot listen for -status: %v", err)
		}
		if a, ok := statusLn.Addr().(*net.TCPAddr); ok && !a.IP.IsLoopback() {
			// The page is read-only but tells anyone who reaches it the
			// Teredo address, the public mapping and the traffic counters.
			fmt.Fprintf(e.Stderr, "teredo-socks: warning: -status %s is not a loopback address; the status page has no authentication\n", cfg.Status)
		}
	}
	closeListeners := func() {
		socksLn.Close()
		if statusLn != nil {
			statusLn.Close()
		}
	}

	events := make(chan Event, 32)
	var t Teredo = disabledTeredo{}
	if cfg.IPv6 != "direct" {
		if e.Servers != "" {
			say("qualifying with %s...", e.Servers)
		}
		t, err = e.Start(ctx, func(ev Event) {
			select {
			case events <- ev:
			default:
				e.Log.Debug("event dropped: too many at once", "kind", ev.Kind)
			}
		})
		if err != nil {
			closeListeners()
			return fail("%v", err)
		}
	}
	defer func() {
		if err := t.Close(); err != nil {
			e.Log.Warn("closing the Teredo stack", "err", err)
		}
	}()
	path := newIPv6Path(cfg.IPv6, e.NativeIPv6, e.Clock, e.Log, func(native bool) {
		if native {
			say("IPv6 through the host's own route from now on")
		} else {
			say("IPv6 through Teredo from now on: the host has no global IPv6 route")
		}
	})
	defer path.stop()

	he := &happyeyeballs.Dialer{
		Dial6: func(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error) {
			if path.native() {
				return e.Dial6(ctx, network, dst)
			}
			return t.Dial(ctx, network, dst)
		},
		Lookup:     e.Lookup,
		PreferIPv6: cfg.Prefer == "ipv6",
		Clock:      e.Clock,
	}
	direct := cfg.IPv4 == "direct"
	if direct {
		he.Dial4 = e.Dial4
	}
	srv := &socks5.Server{
		Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			c, err := he.DialContext(ctx, network, address)
			return c, asNotAllowed(err)
		},
		ListenPacket: func(ctx context.Context) (net.PacketConn, error) {
			listen6 := t.ListenPacket
			if path.native() {
				listen6 = e.Listen6
			}
			var listen4 func(context.Context) (net.PacketConn, error)
			if direct {
				listen4 = e.Listen4
			}
			return listenSplit(ctx, listen6, listen4, e.Log)
		},
		Resolve: func(ctx context.Context, host string) (netip.Addr, error) {
			a, err := he.Resolve(ctx, host)
			return a, asNotAllowed(err)
		},
		Username: cfg.User,
		Password: cfg.Pass,
		MaxConns: cfg.MaxSessions,
		Logger:   e.Log,
	}
	fw := &forwards{cfg: cfg.Forwards, t: t, dial: e.DialHost, log: e.Log}
	defer fw.close()

	serveErr := make(chan error, 2)
	go func() { serveErr <- srv.Serve(socksLn) }()
	defer func() {
		srv.Close()
		if err := <-serveErr; !errors.Is(err, socks5.ErrServerClosed) {
			e.Log.Warn("SOCKS5 server", "err", err)
		}
	}()
	if statusLn != nil {
		src := &statusSource{teredo: t.Status, socks: srv.Stats, serverName: t.ServerName, ipv6Path: path.String, nativeUp: path.up,
			listen: socksLn.Addr().String(), started: e.Clock.Now(), now: e.Clock.Now}
		httpSrv := &http.Server{Handler: src.handler(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(e.Log.Handler(), slog.LevelDebug)}
		go httpSrv.Serve(statusLn)
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
			defer cancel()
			httpSrv.Shutdown(sctx)
		}()
	}

	// The first qualification is announced once, with what the user needs
	// to know then: it may have come before the event channel was read.
	rep := reporter{say: say}
	greeted := false
	hello := func(addr, server netip.Addr) {
		greeted = true
		rep.addr, rep.online = addr, true
		// The ports are open by the time the user reads the lines.
		public := t.Status().Public
		lines := fw.start(addr, public)
		say("qualified as %s via %s; SOCKS5 on %s", addr, t.ServerName(server), socksLn.Addr())
		if public.IsValid() {
			say("public address %s (the gateway maps %s to it)", public, addr)
		}
		for _, l := range lines {
			say("%s", l)
		}
		if e.Hint != nil {
			for _, h := range e.Hint(socksLn.Addr().String()) {
				say("%s", h)
			}
		}
		// Its event may have come before the subscription.
		if nat := t.Status().NAT; nat != "" && nat != "unknown" {
			rep.nat = nat
			say("NAT type: %s", nat)
		}
	}
	switch st := t.Status(); {
	case cfg.IPv6 == "direct":
		say("SOCKS5 on %s; IPv6 through the host (-ipv6 direct)", socksLn.Addr())
	case st.State == "qualified":
		hello(st.Addr, st.Server)
	case path.native():
		say("SOCKS5 on %s; IPv6 through the host's own route while it has one, Teredo qualifying meanwhile", socksLn.Addr())
	default:
		say("SOCKS5 on %s; IPv6 destinations get \"network unreachable\" until Teredo qualifies", socksLn.Addr())
	}
	if statusLn != nil {
		say("status on http://%s/status, /healthz and /metrics", statusLn.Addr())
	}
	// A user watching the terminal learns why nothing happens, once.
	stillTrying := make(chan struct{})
	if cfg.IPv6 != "direct" && !greeted {
		hint := e.Clock.AfterFunc(HintDelay, func() { close(stillTrying) })
		defer hint.Stop()
	}
	for {
		select {
		case <-stillTrying:
			stillTrying = nil
			if greeted || path.native() {
				continue // nothing the user waits for
			}
			why := t.Status().LastError
			if why == "" {
				why = "no answer yet"
			}
			say("not qualified yet (%s); still trying, with backoff. Public Teredo servers come and go: pick another with -server HOST[,HOST...], or try -demo", why)
		case ev := <-events:
			if ev.Kind == EvQualified && !greeted {
				hello(ev.Addr, ev.Server)
				continue
			}
			rep.report(ev, t.ServerName)
		case err := <-serveErr:
			// The SOCKS listener failed under us: nothing left to serve.
			serveErr <- err // for the deferred Close's receive
			return fail("SOCKS5 listener failed: %v", err)
		case <-ctx.Done():
			say("shutting down")
			return 0
		}
	}
}

// asNotAllowed turns a family the policy refuses into the SOCKS reply
// "not allowed".
func asNotAllowed(err error) error {
	if errors.Is(err, happyeyeballs.ErrRefused) {
		return fmt.Errorf("%w: %w (-ipv4 reject)", socks5.ErrNotAllowed, err)
	}
	return err
}

// reporter turns stack events into the one-line messages a user reads,
// saying each change once.
type reporter struct {
	say    func(format string, args ...any)
	addr   netip.Addr
	online bool
	nat    string
}

func (r *reporter) report(ev Event, serverName func(netip.Addr) string) {
	switch ev.Kind {
	case EvQualified:
		switch {
		case r.online && ev.Addr == r.addr:
			return // the qualification that was already announced
		case r.online:
			r.say("address changed from %s to %s", r.addr, ev.Addr)
		case ev.Addr == r.addr:
			r.say("connectivity restored: %s via %s", ev.Addr, serverName(ev.Server))
		default:
			r.say("connectivity restored with a new address: %s via %s (was %s)", ev.Addr, serverName(ev.Server), r.addr)
		}
		r.addr, r.online = ev.Addr, true
	case EvAddressChanged:
		if ev.Addr == r.addr {
			return
		}
		r.say("address changed from %s to %s", r.addr, ev.Addr)
		r.addr, r.online = ev.Addr, true
	case EvOffline:
		if !r.online {
			return
		}
		r.online = false
		r.say("lost Teredo connectivity (%v); retrying", ev.Err)
	case EvNAT:
		if ev.NAT == r.nat || ev.NAT == "" || ev.NAT == "unknown" {
			return
		}
		r.nat = ev.NAT
		r.say("NAT type: %s", ev.NAT)
	}
}
