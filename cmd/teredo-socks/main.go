// Command teredo-socks is a SOCKS5 proxy that gives every program on the
// machine IPv6 through a user-space Teredo client, with no privileges.
//
// IPv6 destinations go through Teredo; IPv4 ones straight through the host
// (or are refused with -ipv4 reject); names with both kinds of records are
// raced Happy-Eyeballs style, IPv4 first unless -prefer ipv6. Try it with no
// network and no root:
//
//	go run ./cmd/teredo-socks -demo
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
	"strings"
	"time"

	"github.com/teredo-go/teredo/clock"
	"github.com/teredo-go/teredo/internal/cli"
	"github.com/teredo-go/teredo/internal/forward"
	"github.com/teredo-go/teredo/socks5"
)

func main() {
	os.Exit(realMain(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

func realMain(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cfg, err := parseConfig(args, getenv, stderr)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			err = cli.UsageError(err.Error()) // every configuration error is the user's to fix
		}
		return cli.Exit(stderr, name, err)
	}
	if cfg.Version {
		fmt.Fprintln(stdout, cli.Version(name))
		return cli.ExitOK
	}
	// The lines a user needs go to stdout; the log (stderr) is for the
	// service manager's journal.
	log := cfg.Logger(stderr)
	ctx, stop := cli.SignalContext()
	defer stop()

	e := hostEnv(stdout, stderr, log)
	e.servers = strings.Join(cfg.Servers, ", ")
	if cfg.Demo {
		e.servers = "the demo's in-process server"
		e.start = demoStarter(cfg, log)
		e.lookup = demoLookup(e.lookup)
		e.hint = demoHint
	} else {
		e.start = realStarter(cfg, log, e.lookup)
	}
	return run(ctx, cfg, e)
}

// teredoNet is what the command needs from a qualified Teredo stack.
type teredoNet interface {
	// Dial connects to an IPv6 destination; network is "tcp6" or "udp6".
	Dial(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error)
	// ListenPacket opens a UDP socket on the Teredo address, any port.
	ListenPacket(ctx context.Context) (net.PacketConn, error)
	// Listen accepts TCP on port of the Teredo address.
	Listen(port uint16) (net.Listener, error)
	Status() teredoStatus
	// ServerName names a server address as the user gave it.
	ServerName(netip.Addr) string
	Close() error
}

type eventKind int

const (
	evQualified      eventKind = iota // (again) has Addr via Server
	evAddressChanged                  // Old → Addr
	evOffline                         // lost connectivity because of Err
	evNAT                             // the NAT type is known: NAT
)

// stackEvent is a change of the Teredo stack's state, as the command
// reports it.
type stackEvent struct {
	Kind      eventKind
	Addr, Old netip.Addr
	Server    netip.Addr
	NAT       string
	Err       error
}

// startFunc qualifies a Teredo stack. It returns when the stack has an
// address, with a message fit for the user on failure. onEvent must not
// block.
type startFunc func(ctx context.Context, onEvent func(stackEvent)) (teredoNet, error)

// env is what run needs from the world, so tests can swap each part.
type env struct {
	stdout io.Writer // the lines a user reads
	stderr io.Writer // why it could not start
	// servers names the Teredo servers for the "qualifying" line.
	servers string
	log     *slog.Logger
	clock   clock.Clock
	start   startFunc
	// lookup resolves destination names (A and AAAA), as net.Resolver.
	lookup func(ctx context.Context, network, host string) ([]netip.Addr, error)
	// dial4 and listen4 reach IPv4 destinations through the host.
	dial4   dialFunc
	listen4 func(ctx context.Context) (net.PacketConn, error)
	// dialHost reaches -forward targets.
	dialHost func(ctx context.Context, network, address string) (net.Conn, error)
	// hint, if set, gives lines to print after the qualified one (the
	// demo's commands to try), given the SOCKS5 listen address.
	hint func(listen string) []string
}

func hostEnv(stdout, stderr io.Writer, log *slog.Logger) env {
	var d net.Dialer
	return env{
		stdout: stdout,
		stderr: stderr,
		log:    log,
		clock:  clock.Real{},
		lookup: net.DefaultResolver.LookupNetIP,
		dial4: func(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error) {
			return d.DialContext(ctx, network, dst.String())
		},
		listen4: func(ctx context.Context) (net.PacketConn, error) {
			var lc net.ListenConfig
			return lc.ListenPacket(ctx, "udp4", "0.0.0.0:0")
		},
		dialHost: d.DialContext,
	}
}

// shutdownTimeout bounds the graceful part of shutdown, as for every
// command.
const shutdownTimeout = cli.ShutdownGrace

// run serves until ctx is cancelled and returns the exit code.
func run(ctx context.Context, cfg *Config, e env) (code int) {
	say := func(format string, args ...any) { fmt.Fprintf(e.stdout, "teredo-socks: "+format+"\n", args...) }
	fail := func(format string, args ...any) int {
		fmt.Fprintf(e.stderr, "teredo-socks: "+format+"\n", args...)
		return 1
	}

	// Take the ports first: qualification can take a while, and a busy
	// port should fail at once.
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
			fmt.Fprintf(e.stderr, "teredo-socks: warning: -status %s is not a loopback address; the status page has no authentication\n", cfg.Status)
		}
	}
	closeListeners := func() {
		socksLn.Close()
		if statusLn != nil {
			statusLn.Close()
		}
	}

	if e.servers != "" {
		say("qualifying with %s...", e.servers)
	}
	events := make(chan stackEvent, 32)
	t, err := e.start(ctx, func(ev stackEvent) {
		select {
		case events <- ev:
		default:
			e.log.Debug("event dropped: too many at once", "kind", ev.Kind)
		}
	})
	if err != nil {
		closeListeners()
		if ctx.Err() != nil {
			say("interrupted before qualification")
			return 0
		}
		return fail("%v", err)
	}
	defer func() {
		if err := t.Close(); err != nil {
			e.log.Warn("closing the Teredo stack", "err", err)
		}
	}()

	r := &router{
		dial6:    t.Dial,
		dial4:    e.dial4,
		listen6:  t.ListenPacket,
		listen4:  e.listen4,
		lookup:   e.lookup,
		direct:   cfg.IPv4 == "direct",
		preferV6: cfg.Prefer == "ipv6",
		clock:    e.clock,
	}
	srv := &socks5.Server{
		Dial:         r.Dial,
		ListenPacket: r.ListenPacket,
		Resolve:      r.Resolve,
		Username:     cfg.User,
		Password:     cfg.Pass,
		MaxConns:     cfg.MaxSessions,
		Logger:       e.log,
	}
	var forwards []*forward.Forwarder
	defer func() {
		for _, f := range forwards {
			f.Close()
		}
	}()
	for _, fw := range cfg.Forwards {
		ln, err := t.Listen(fw.Port)
		if err != nil {
			closeListeners()
			return fail("-forward %d=%s: cannot listen on the Teredo address: %v", fw.Port, fw.Target, err)
		}
		forwards = append(forwards, forward.New(ln, fw.Target, e.dialHost, e.log))
	}

	serveErr := make(chan error, 2)
	go func() { serveErr <- srv.Serve(socksLn) }()
	defer func() {
		srv.Close()
		if err := <-serveErr; !errors.Is(err, socks5.ErrServerClosed) {
			e.log.Warn("SOCKS5 server", "err", err)
		}
	}()
	var httpSrv *http.Server
	if statusLn != nil {
		src := &statusSource{teredo: t.Status, socks: srv.Stats, serverName: t.ServerName,
			listen: socksLn.Addr().String(), started: e.clock.Now(), now: e.clock.Now}
		httpSrv = &http.Server{Handler: src.handler(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(e.log.Handler(), slog.LevelDebug)}
		go httpSrv.Serve(statusLn)
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
			defer cancel()
			httpSrv.Shutdown(sctx)
		}()
	}

	st := t.Status()
	say("qualified as %s via %s; SOCKS5 on %s", st.Addr, t.ServerName(st.Server), socksLn.Addr())
	if st.Public.IsValid() {
		say("public address %s (the gateway maps %s to it)", st.Public, st.Addr)
	}
	if statusLn != nil {
		say("status on http://%s/status and /metrics", statusLn.Addr())
	}
	for _, fw := range cfg.Forwards {
		say("forwarding [%s]:%d to %s", st.Addr, fw.Port, fw.Target)
		if st.Public.IsValid() {
			say("forwarding [%s]:%d to %s", st.Public, fw.Port, fw.Target)
		}
	}
	if e.hint != nil {
		for _, h := range e.hint(socksLn.Addr().String()) {
			say("%s", h)
		}
	}
	rep := reporter{say: say, addr: st.Addr, online: true, nat: st.NAT}
	if st.NAT != "" && st.NAT != "unknown" {
		say("NAT type: %s", st.NAT)
	}
	for {
		select {
		case ev := <-events:
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

// reporter turns stack events into the one-line messages a user reads,
// saying each change once.
type reporter struct {
	say    func(format string, args ...any)
	addr   netip.Addr
	online bool
	nat    string
}

func (r *reporter) report(ev stackEvent, serverName func(netip.Addr) string) {
	switch ev.Kind {
	case evQualified:
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
	case evAddressChanged:
		if ev.Addr == r.addr {
			return
		}
		r.say("address changed from %s to %s", r.addr, ev.Addr)
		r.addr, r.online = ev.Addr, true
	case evOffline:
		if !r.online {
			return
		}
		r.online = false
		r.say("lost Teredo connectivity (%v); retrying", ev.Err)
	case evNAT:
		if ev.NAT == r.nat || ev.NAT == "" || ev.NAT == "unknown" {
			return
		}
		r.nat = ev.NAT
		r.say("NAT type: %s", ev.NAT)
	}
}
