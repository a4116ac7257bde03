package socksd

import (
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/teredo-go/teredo/clock"
	"github.com/teredo-go/teredo/proto"
)

// PathCheckInterval is how often -ipv6 auto asks the kernel again whether
// the host has a global IPv6 route, so that native IPv6 arriving (or
// leaving) moves new connections within a minute.
const PathCheckInterval = 30 * time.Second

// ipv6Path decides whether IPv6 destinations go through the host's native
// IPv6 or through Teredo (-ipv6): RFC 4380 §5.5 says a host with native
// IPv6 connectivity must not use Teredo for it. Connections keep the path
// they started on.
type ipv6Path struct {
	mode     string // "auto", "teredo", "direct"
	probe    func() bool
	clk      clock.Clock
	log      *slog.Logger
	onChange func(native bool) // when auto changes path, after the first check

	route atomic.Bool // the last probe found a global IPv6 route

	mu      sync.Mutex
	timer   clock.Timer
	stopped bool
}

func newIPv6Path(mode string, probe func() bool, clk clock.Clock, log *slog.Logger, onChange func(native bool)) *ipv6Path {
	p := &ipv6Path{mode: mode, probe: probe, clk: clk, log: log, onChange: onChange}
	switch mode {
	case "teredo":
	case "direct":
		// Always native; the probe only tells /healthz whether that works.
		p.check(true)
	default:
		p.mode = "auto"
		p.check(true)
	}
	return p
}

// check asks the kernel, then schedules the next check.
func (p *ipv6Path) check(first bool) {
	has := p.probe != nil && p.probe()
	changed := p.route.Swap(has) != has
	if changed || first {
		p.log.Info("IPv6 route", "global", has, "mode", p.mode)
	}
	if changed && !first && p.onChange != nil && p.mode == "auto" {
		p.onChange(has)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.stopped {
		p.timer = p.clk.AfterFunc(PathCheckInterval, func() { p.check(false) })
	}
}

// native reports whether IPv6 goes through the host now.
func (p *ipv6Path) native() bool {
	return p.mode == "direct" || p.mode == "auto" && p.route.Load()
}

// up reports whether the native path works: the host had a global IPv6
// route at the last check.
func (p *ipv6Path) up() bool { return p.route.Load() }

// String is the path in use, for /status: "native" or "teredo".
func (p *ipv6Path) String() string { return pathName(p.native()) }

func pathName(native bool) string {
	if native {
		return "native"
	}
	return "teredo"
}

func (p *ipv6Path) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopped = true
	if p.timer != nil {
		p.timer.Stop()
	}
}

// routeProbe is a global unicast address (K root's) whose route tells
// whether the host has global IPv6: connecting a UDP socket to it makes
// the kernel pick a route and a source address, and sends nothing.
var routeProbe = netip.MustParseAddrPort("[2001:7fd::1]:53")

// HostHasIPv6Route reports whether the kernel routes global IPv6 from a
// native global address: not a Teredo address (another Teredo client on
// the host), not a unique-local or link-local one.
func HostHasIPv6Route() bool {
	c, err := net.DialUDP("udp6", nil, net.UDPAddrFromAddrPort(routeProbe))
	if err != nil {
		return false
	}
	defer c.Close()
	la, ok := c.LocalAddr().(*net.UDPAddr)
	return ok && nativeSource(la.AddrPort().Addr())
}

// nativeSource reports whether a is a source address fit for native IPv6.
func nativeSource(a netip.Addr) bool {
	return a.Is6() && !a.Is4In6() && a.IsGlobalUnicast() && !a.IsPrivate() && !proto.IsTeredo(a)
}
