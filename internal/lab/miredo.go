package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/teredo-go/teredo/proto"
)

// Miredo is Debian's Miredo 1.2.6, the lab's reference peer. Each instance gets its own
// configuration and pid file (a second instance would otherwise fail on the default
// pid file's lock) and runs in the foreground, logging to standard error.

// DefaultQualifyTimeout bounds Miredo's qualification: 3 router solicitations 4 s
// apart, plus start-up.
const DefaultQualifyTimeout = 20 * time.Second

// TeredoServer is a Teredo server running on a lab host: Miredo's or the project's.
type TeredoServer struct {
	Impl               string // "miredo-server" or "teredo-server"
	Primary, Secondary netip.Addr
	Proc               *Proc
	Host               *Host
}

// MiredoClientOptions tune StartMiredoClient; the zero value is a default client.
type MiredoClientOptions struct {
	// BindPort is the client's local UDP port; 0 lets the system choose, except behind
	// a FullCone NAT, where it defaults to the NAT's cone port.
	BindPort uint16
	// InterfaceName of the tunnel; default "teredo".
	InterfaceName string
	// ServerAddress2 is the server's secondary address; Miredo's default is primary+1.
	ServerAddress2 netip.Addr
	// Timeout bounds qualification; default DefaultQualifyTimeout.
	Timeout time.Duration
}

// MiredoClient is a qualified Miredo client.
type MiredoClient struct {
	Proc      *Proc
	Host      *Host
	Interface string
	Addr      netip.Addr    // the Teredo address
	Teredo    proto.Address // Addr decoded
	Local     uint16        // the client's UDP port, when bound explicitly (0 otherwise)
	Started   time.Time     // just before the process was started
}

// miredoUser returns the extra flags miredo needs to drop privileges: Debian's binary
// refuses to keep root and switches to the "miredo" user its package creates; where
// that user is missing, "nobody" serves.
func miredoUser() []string {
	if _, err := user.Lookup("miredo"); err == nil {
		return nil
	}
	return []string{"-u", "nobody"}
}

// writeConf writes a Miredo configuration file into a per-test directory.
func writeConf(t testing.TB, name string, lines ...string) (conf, pid string) {
	t.Helper()
	dir := t.TempDir()
	conf = filepath.Join(dir, name+".conf")
	if err := os.WriteFile(conf, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return conf, filepath.Join(dir, name+".pid")
}

// StartMiredoServer runs miredo-server on h, which must have two IPv4 addresses (the
// lab's server host has ServerPrimary and ServerSecondary), and waits until it listens
// on UDP 3544 of both.
func StartMiredoServer(t testing.TB, h *Host) *TeredoServer {
	t.Helper()
	Require(t, "miredo-server", "ss")
	if len(h.IPv4) < 2 {
		t.Fatalf("lab: %s needs two IPv4 addresses for a Teredo server", h.Name)
	}
	conf, pid := writeConf(t, "miredo-server",
		"ServerBindAddress "+h.IPv4[0].String(),
		"ServerBindAddress2 "+h.IPv4[1].String())
	args := append([]string{"-f", "-p", pid, "-c", conf}, miredoUser()...)
	s := &TeredoServer{Impl: "miredo-server", Primary: h.IPv4[0], Secondary: h.IPv4[1], Host: h}
	s.Proc = h.Start(t, "miredo-server", args...)
	if err := h.WaitUDPListening(s.Proc, 10*time.Second, netip.AddrPortFrom(s.Primary, proto.Port), netip.AddrPortFrom(s.Secondary, proto.Port)); err != nil {
		t.Fatalf("lab: miredo-server: %v", err)
	}
	return s
}

// ListenRE matches the readiness line of the project's teredo-server.
var ListenRE = regexp.MustCompile(`teredo-server: listening on (\S+):(\d+) and (\S+):(\d+)`)

// StartTeredoServer runs the project's teredo-server binary (see BuildCommand) on h's
// first two IPv4 addresses with extra flags, and waits for its readiness line and
// its sockets.
func StartTeredoServer(t testing.TB, h *Host, bin string, extra ...string) *TeredoServer {
	t.Helper()
	Require(t, "ss")
	if len(h.IPv4) < 2 {
		t.Fatalf("lab: %s needs two IPv4 addresses for a Teredo server", h.Name)
	}
	s := &TeredoServer{Impl: "teredo-server", Primary: h.IPv4[0], Secondary: h.IPv4[1], Host: h}
	args := append([]string{"-primary", s.Primary.String(), "-secondary", s.Secondary.String()}, extra...)
	s.Proc = h.Start(t, bin, args...)
	if _, err := s.Proc.WaitLine(ListenRE, 10*time.Second); err != nil {
		t.Fatalf("lab: teredo-server: %v", err)
	}
	if err := h.WaitUDPListening(s.Proc, 5*time.Second, netip.AddrPortFrom(s.Primary, proto.Port), netip.AddrPortFrom(s.Secondary, proto.Port)); err != nil {
		t.Fatalf("lab: teredo-server: %v", err)
	}
	return s
}

// WaitUDPListening waits up to timeout until UDP sockets are bound to every address in
// h's namespace (per `ss`), or until p (if not nil) exits.
func (h *Host) WaitUDPListening(p *Proc, timeout time.Duration, addrs ...netip.AddrPort) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		out, err := h.Run(ctx, "ss", "-H", "-u", "-l", "-n")
		if err == nil {
			all := true
			for _, a := range addrs {
				if !strings.Contains(out, " "+a.String()+" ") {
					all = false
				}
			}
			if all {
				return nil
			}
		}
		if p != nil && !p.Running() {
			return fmt.Errorf("%w before binding %v: %v\n%s", ErrExited, addrs, p.err, tail(p.Output()))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: UDP %v not bound in %s after %v (last ss: %v)\n%s", ErrTimeout, addrs, h.Name, timeout, err, strings.TrimSpace(out))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// StartMiredoClient runs a Miredo client on h towards the Teredo server at server and
// returns once its tunnel interface carries a Teredo address. It fails t if the client
// does not qualify within the timeout.
func StartMiredoClient(t testing.TB, h *Host, server netip.Addr, opts MiredoClientOptions) *MiredoClient {
	t.Helper()
	Require(t, "miredo")
	if opts.InterfaceName == "" {
		opts.InterfaceName = "teredo"
	}
	if opts.Timeout == 0 {
		opts.Timeout = DefaultQualifyTimeout
	}
	if opts.BindPort == 0 && h.NAT != nil && h.NAT.Kind == FullCone {
		opts.BindPort = h.NAT.ConePort
	}
	lines := []string{
		"RelayType client",
		"InterfaceName " + opts.InterfaceName,
		"ServerAddress " + server.String(),
	}
	if opts.ServerAddress2.IsValid() {
		lines = append(lines, "ServerAddress2 "+opts.ServerAddress2.String())
	}
	if opts.BindPort != 0 {
		lines = append(lines, fmt.Sprintf("BindPort %d", opts.BindPort))
	}
	conf, pid := writeConf(t, "miredo-"+opts.InterfaceName, lines...)
	c := &MiredoClient{Host: h, Interface: opts.InterfaceName, Local: opts.BindPort}
	c.Started = time.Now()
	c.Proc = h.Start(t, "miredo", append([]string{"-f", "-p", pid, "-c", conf}, miredoUser()...)...)
	if err := c.WaitQualified(opts.Timeout); err != nil {
		t.Fatalf("lab: miredo client on %s: %v", h.Name, err)
	}
	return c
}

// WaitQualified waits up to timeout until the client's interface carries a Teredo
// address, and records it in c.Addr and c.Teredo.
func (c *MiredoClient) WaitQualified(timeout time.Duration) error {
	a, err := c.Host.WaitTeredoAddr(c.Proc, c.Interface, timeout)
	if err != nil {
		return err
	}
	c.Addr = a
	c.Teredo, _ = proto.ParseAddress(a)
	return nil
}

// TeredoAddr returns the Teredo address currently on ifname in h, if any.
func (h *Host) TeredoAddr(ctx context.Context, ifname string) (netip.Addr, bool, error) {
	out, err := h.Run(ctx, "ip", "-6", "-o", "addr", "show", "dev", ifname, "scope", "global")
	if err != nil {
		return netip.Addr{}, false, err
	}
	for _, f := range strings.Fields(out) {
		p, err := netip.ParsePrefix(f)
		if err != nil {
			continue
		}
		if proto.IsTeredo(p.Addr()) {
			return p.Addr(), true, nil
		}
	}
	return netip.Addr{}, false, nil
}

// WaitTeredoAddr polls ifname in h until it carries a Teredo address, for at most
// timeout, or until p (if not nil) exits.
func (h *Host) WaitTeredoAddr(p *Proc, ifname string, timeout time.Duration) (netip.Addr, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var lastErr error
	for {
		a, ok, err := h.TeredoAddr(ctx, ifname)
		if ok {
			return a, nil
		}
		lastErr = err
		if p != nil && !p.Running() {
			return netip.Addr{}, fmt.Errorf("%w before a Teredo address appeared on %s: %v\n%s", ErrExited, ifname, p.err, tail(p.Output()))
		}
		select {
		case <-ctx.Done():
			out := ""
			if p != nil {
				out = tail(p.Output())
			}
			return netip.Addr{}, fmt.Errorf("%w: no Teredo address on %s in %s after %v (last error: %v)\n%s", ErrTimeout, ifname, h.Name, timeout, lastErr, out)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// MiredoRelayOptions tune StartMiredoRelay.
type MiredoRelayOptions struct {
	// BindPort is the relay's UDP port; 0 lets the system choose.
	BindPort uint16
	// InterfaceName of the tunnel; default "teredo".
	InterfaceName string
}

// MiredoRelay is a Miredo relay (RelayType cone) on a host with IPv4 and native IPv6.
type MiredoRelay struct {
	Proc      *Proc
	Host      *Host
	Interface string
}

// StartMiredoRelay runs Miredo as a cone relay on h (the lab's relay host has IPv6
// forwarding on) and waits until its tunnel routes the Teredo prefix.
func StartMiredoRelay(t testing.TB, h *Host, opts MiredoRelayOptions) *MiredoRelay {
	t.Helper()
	Require(t, "miredo")
	if len(h.IPv4) == 0 {
		t.Fatalf("lab: a relay needs an IPv4 address")
	}
	if opts.InterfaceName == "" {
		opts.InterfaceName = "teredo"
	}
	lines := []string{
		"RelayType cone",
		"InterfaceName " + opts.InterfaceName,
		"BindAddress " + h.IPv4[0].String(),
	}
	if opts.BindPort != 0 {
		lines = append(lines, fmt.Sprintf("BindPort %d", opts.BindPort))
	}
	conf, pid := writeConf(t, "miredo-relay-"+opts.InterfaceName, lines...)
	r := &MiredoRelay{Host: h, Interface: opts.InterfaceName}
	r.Proc = h.Start(t, "miredo", append([]string{"-f", "-p", pid, "-c", conf}, miredoUser()...)...)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		out, _ := h.Run(ctx, "ip", "-6", "route", "show", "dev", opts.InterfaceName)
		if strings.Contains(out, "2001::/32") {
			return r
		}
		if !r.Proc.Running() {
			t.Fatalf("lab: miredo relay exited: %v\n%s", r.Proc.err, tail(r.Proc.Output()))
		}
		select {
		case <-ctx.Done():
			t.Fatalf("lab: miredo relay on %s: no 2001::/32 route on %s after 10s (routes: %q)\n%s", h.Name, opts.InterfaceName, out, tail(r.Proc.Output()))
		case <-time.After(100 * time.Millisecond):
		}
	}
}
