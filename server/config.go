package server

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/teredo-go/teredo/clock"
	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/udpio"
)

// Config configures a Server (or a Processor). Only Primary is required.
type Config struct {
	// Primary is the server's primary IPv4 address: the one clients are
	// configured with and embed in their Teredo addresses.
	Primary netip.Addr
	// Secondary is the second IPv4 address. The zero value means
	// Primary+1, which Windows clients assume.
	Secondary netip.Addr
	// Port is the UDP port on both addresses; zero means proto.Port (3544).
	Port uint16
	// SingleAddress runs the server on Primary alone, as on a host with one
	// IPv4 address: Secondary is ignored. Qualification works unchanged;
	// clients cannot tell a symmetric NAT from a restricted one (they
	// report it as unknown), and cone RSs are dropped, since no other
	// address can answer them, so clients fall back to restricted
	// qualification.
	SingleAddress bool
	// SecondaryPort, in single-address mode, opens a second socket on
	// Primary at this port to play the secondary's role. It is an
	// extension: only clients configured with that address and port (ours,
	// client.Config.SecondaryPort) use it to detect a symmetric NAT, which
	// maps each destination port apart; a port-restricted cone NAT blocks
	// the cone RA from it while an address-restricted one lets it in.
	SecondaryPort uint16
	// PublicPrefix, if valid, is the /64 a gateway maps its clients'
	// Teredo addresses to; RAs then carry it in a proto.OptPublicPrefix
	// option, from which clients compute their public address.
	PublicPrefix netip.Prefix
	// MTU is the link MTU advertised in RAs; zero means proto.MinMTU
	// (1280). It must be at least 1280.
	MTU uint32

	// IPv4Filter decides which IPv4 addresses count as global unicast: the
	// server's own addresses, the sources it accepts and the mapped
	// addresses it forwards to. Nil means proto.IsGlobalUnicastIPv4; tests
	// on loopback use proto.AnyIPv4.
	IPv4Filter proto.IPv4Filter
	// IPv6Output carries echo requests from clients to native IPv6 hosts
	// (relay discovery). Nil means such packets are dropped and counted.
	// The server does not close it.
	IPv6Output IPv6Output
	// RateLimit bounds what each source IPv4 address can make the server
	// send. Its zero value means the defaults (DefaultRatePerSecond,
	// DefaultRateBurst); a negative PerSecond disables the limit.
	RateLimit RateLimit

	// Clock is the time source of the rate limit; nil means the real clock.
	Clock clock.Clock
	// Logger receives start-up notes and, at debug level, every drop.
	// Nil discards.
	Logger *slog.Logger
	// Listen opens a socket; nil means udpio.Listen with default options.
	// Tests plug in udpiotest.Network.Listen.
	Listen func(laddr netip.AddrPort) (udpio.Conn, error)
}

// ErrConfig is wrapped by every configuration error.
var ErrConfig = errors.New("server: invalid configuration")

func (c Config) withDefaults() (Config, error) {
	if !c.Primary.Is4() && !c.Primary.Is4In6() {
		return c, fmt.Errorf("%w: primary address %v is not IPv4", ErrConfig, c.Primary)
	}
	c.Primary = c.Primary.Unmap()
	if c.Port == 0 {
		c.Port = proto.Port
	}
	if c.SingleAddress {
		c.Secondary = netip.Addr{}
		if c.SecondaryPort == c.Port {
			return c, fmt.Errorf("%w: secondary port %d equals the port", ErrConfig, c.Port)
		}
	} else if c.SecondaryPort != 0 {
		return c, fmt.Errorf("%w: a secondary port needs single-address mode", ErrConfig)
	}
	if c.SingleAddress {
		// No secondary address to check.
	} else if !c.Secondary.IsValid() {
		c.Secondary = c.Primary.Next()
		if !c.Secondary.IsValid() {
			return c, fmt.Errorf("%w: primary %v has no next address for the secondary", ErrConfig, c.Primary)
		}
	}
	if !c.SingleAddress {
		if !c.Secondary.Is4() && !c.Secondary.Is4In6() {
			return c, fmt.Errorf("%w: secondary address %v is not IPv4", ErrConfig, c.Secondary)
		}
		c.Secondary = c.Secondary.Unmap()
		if c.Secondary == c.Primary {
			return c, fmt.Errorf("%w: secondary address equals primary %v", ErrConfig, c.Primary)
		}
	}
	switch {
	case c.MTU == 0:
		c.MTU = proto.MinMTU
	case c.MTU < proto.MinMTU || c.MTU > 65535:
		return c, fmt.Errorf("%w: MTU %d outside 1280..65535", ErrConfig, c.MTU)
	}
	if c.IPv4Filter == nil {
		c.IPv4Filter = proto.IsGlobalUnicastIPv4
	}
	for _, a := range []netip.Addr{c.Primary, c.Secondary} {
		if a.IsValid() && !c.IPv4Filter(a) {
			return c, fmt.Errorf("%w: %v is not a global unicast IPv4 address", ErrConfig, a)
		}
	}
	if c.RateLimit.PerSecond != c.RateLimit.PerSecond { // NaN
		return c, fmt.Errorf("%w: rate limit is NaN", ErrConfig)
	}
	if c.PublicPrefix.IsValid() && (!c.PublicPrefix.Addr().Is6() || c.PublicPrefix.Bits() != 64) {
		return c, fmt.Errorf("%w: public prefix %v is not an IPv6 /64", ErrConfig, c.PublicPrefix)
	}
	if c.Clock == nil {
		c.Clock = clock.Real{}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Listen == nil {
		c.Listen = func(laddr netip.AddrPort) (udpio.Conn, error) {
			return udpio.Listen(laddr, udpio.Options{DisableGSO: true, DisableGRO: true})
		}
	}
	return c, nil
}

// secondaryAddrPort is where the secondary socket listens, or the zero
// value if the server has none.
func (c Config) secondaryAddrPort() netip.AddrPort {
	switch {
	case !c.SingleAddress:
		return netip.AddrPortFrom(c.Secondary, c.Port)
	case c.SecondaryPort != 0:
		return netip.AddrPortFrom(c.Primary, c.SecondaryPort)
	}
	return netip.AddrPort{}
}
