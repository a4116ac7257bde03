package portmap

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	natpmp "github.com/jackpal/go-nat-pmp"
)

// natpmpClient keeps one NAT-PMP mapping through go-nat-pmp, which opens
// its own socket to the gateway's port 5351 and retransmits on the wall
// clock; the attempt's context bounds it through the library's timeout.
type natpmpClient struct {
	m     *Mapper
	gw    netip.Addr
	local netip.Addr
	ext   netip.AddrPort
}

func newNATPMP(m *Mapper, gw netip.Addr) *natpmpClient { return &natpmpClient{m: m, gw: gw} }

func (c *natpmpClient) protocol() Protocol { return NATPMP }

func (c *natpmpClient) client(ctx context.Context) (*natpmp.Client, error) {
	if !c.local.IsValid() {
		// A connected UDP socket (no datagram sent) tells which of our
		// addresses the gateway sees.
		conn, err := c.m.cfg.Dial(ctx, "udp4", net.JoinHostPort(c.gw.String(), strconv.Itoa(pcpPort)))
		if err != nil {
			return nil, err
		}
		ap, err := netip.ParseAddrPort(conn.LocalAddr().String())
		conn.Close()
		if err != nil {
			return nil, fmt.Errorf("portmap: local address: %w", err)
		}
		c.local = ap.Addr().Unmap()
	}
	timeout := time.Until(ctxDeadline(ctx, c.m.cfg.Timeout))
	if timeout <= 0 {
		return nil, context.DeadlineExceeded
	}
	return natpmp.NewClientWithLocalAndTimeout(c.gw.AsSlice(), c.local.AsSlice(), timeout), nil
}

func (c *natpmpClient) add(ctx context.Context, lifetime time.Duration) (Mapping, error) {
	cl, err := c.client(ctx)
	if err != nil {
		return Mapping{}, err
	}
	ea, err := cl.GetExternalAddress()
	if err != nil {
		return Mapping{}, natpmpErr(err)
	}
	cl, err = c.client(ctx)
	if err != nil {
		return Mapping{}, err
	}
	want := c.ext.Port()
	if want == 0 {
		want = c.m.cfg.InternalPort
	}
	r, err := cl.AddPortMapping("udp", int(c.m.cfg.InternalPort), int(want), int(seconds(lifetime)))
	if err != nil {
		return Mapping{}, natpmpErr(err)
	}
	ext := netip.AddrPortFrom(netip.AddrFrom4(ea.ExternalIPAddress), r.MappedExternalPort)
	if r.InternalPort != c.m.cfg.InternalPort || r.MappedExternalPort == 0 || r.PortMappingLifetimeInSeconds == 0 {
		return Mapping{}, fmt.Errorf("portmap: NAT-PMP answer does not match the request: %+v", r)
	}
	c.ext = ext
	return Mapping{
		Protocol: NATPMP,
		Gateway:  c.gw,
		Internal: netip.AddrPortFrom(c.local, c.m.cfg.InternalPort),
		External: ext,
		Lifetime: time.Duration(r.PortMappingLifetimeInSeconds) * time.Second,
	}, nil
}

func (c *natpmpClient) remove(ctx context.Context) error {
	cl, err := c.client(ctx)
	if err != nil {
		return err
	}
	// External port 0 and lifetime 0 delete the mapping (RFC 6886 §3.4).
	_, err = cl.AddPortMapping("udp", int(c.m.cfg.InternalPort), 0, 0)
	return natpmpErr(err)
}

// errNATPMP wraps go-nat-pmp's string errors so callers can branch.
var errNATPMP = errors.New("portmap: NAT-PMP")

func natpmpErr(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%w: %w", errNATPMP, err)
}
