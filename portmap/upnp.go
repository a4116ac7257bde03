package portmap

import (
	"bufio"
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/huin/goupnp"
	"github.com/huin/goupnp/dcps/internetgateway2"
	"github.com/huin/goupnp/soap"
)

const (
	ssdpPort = 1900
	// igdTarget is the SSDP search target; an IGD:2 device answers it too.
	igdTarget = "urn:schemas-upnp-org:device:InternetGatewayDevice:1"
	// maxDescription bounds the device description read from the gateway.
	maxDescription = 256 << 10
	upnpDesc       = "teredo"
)

// igdConn is what WANIPConnection1, WANIPConnection2 and WANPPPConnection1
// have in common.
type igdConn interface {
	AddPortMappingCtx(ctx context.Context, remoteHost string, externalPort uint16, protocol string,
		internalPort uint16, internalClient string, enabled bool, desc string, lease uint32) error
	DeletePortMappingCtx(ctx context.Context, remoteHost string, externalPort uint16, protocol string) error
	GetExternalIPAddressCtx(ctx context.Context) (string, error)
	GetServiceClient() *goupnp.ServiceClient
}

// upnpClient keeps one UPnP-IGD port mapping.
type upnpClient struct {
	m     *Mapper
	gw    netip.Addr
	conn  igdConn
	local netip.Addr
	ext   netip.AddrPort
	// permanent is set when the gateway only takes lease duration 0
	// (UPnP error 725); the mapping is then re-added at each renewal anyway.
	permanent bool
}

func newUPnP(m *Mapper, gw netip.Addr) *upnpClient { return &upnpClient{m: m, gw: gw} }

func (c *upnpClient) protocol() Protocol { return UPnP }

// search sends one SSDP M-SEARCH by unicast to the gateway and returns the
// LOCATION of the first matching answer.
func (c *upnpClient) search(ctx context.Context) (*url.URL, error) {
	conn, err := c.m.cfg.Dial(ctx, "udp4", net.JoinHostPort(c.gw.String(), strconv.Itoa(int(c.m.cfg.SSDPPort))))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ap, err := netip.ParseAddrPort(conn.LocalAddr().String())
	if err != nil {
		return nil, fmt.Errorf("portmap: local address: %w", err)
	}
	c.local = ap.Addr().Unmap()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	conn.SetDeadline(ctxDeadline(ctx, c.m.cfg.Timeout))
	msg := fmt.Sprintf("M-SEARCH * HTTP/1.1\r\nHOST: %s\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\nST: %s\r\n\r\n",
		net.JoinHostPort(c.gw.String(), strconv.Itoa(int(c.m.cfg.SSDPPort))), igdTarget)
	buf := make([]byte, 2048)
	for rto := initialRTO; ; rto *= 2 {
		if _, err := conn.Write([]byte(msg)); err != nil {
			return nil, err
		}
		conn.SetReadDeadline(minTime(time.Now().Add(rto), ctxDeadline(ctx, c.m.cfg.Timeout)))
		for {
			n, err := conn.Read(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil {
					break
				}
				if ctx.Err() != nil {
					return nil, fmt.Errorf("portmap: no SSDP answer from %v: %w", c.gw, ctx.Err())
				}
				return nil, err
			}
			loc, err := parseSSDPResponse(buf[:n], c.gw)
			if err != nil {
				c.m.log.Debug("portmap: SSDP answer dropped", "err", err)
				continue
			}
			return loc, nil
		}
	}
}

// parseSSDPResponse checks an SSDP answer and returns its LOCATION, which
// must point at the gateway itself: the description and SOAP requests go
// nowhere else.
func parseSSDPResponse(b []byte, gw netip.Addr) (*url.URL, error) {
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(b)), nil)
	if err != nil {
		return nil, fmt.Errorf("portmap: SSDP: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("portmap: SSDP status %d", resp.StatusCode)
	}
	if st := resp.Header.Get("ST"); !strings.HasPrefix(st, "urn:schemas-upnp-org:device:InternetGatewayDevice:") {
		return nil, fmt.Errorf("portmap: SSDP search target %q", st)
	}
	loc, err := url.Parse(resp.Header.Get("LOCATION"))
	if err != nil {
		return nil, fmt.Errorf("portmap: SSDP location: %w", err)
	}
	if loc.Scheme != "http" {
		return nil, fmt.Errorf("portmap: SSDP location %q is not http", loc)
	}
	if h, err := netip.ParseAddr(loc.Hostname()); err != nil || h.Unmap() != gw {
		return nil, fmt.Errorf("portmap: SSDP location %q is not on the gateway %v", loc, gw)
	}
	return loc, nil
}

// discover finds the gateway's WAN connection service.
func (c *upnpClient) discover(ctx context.Context) error {
	loc, err := c.search(ctx)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, loc.String(), nil)
	if err != nil {
		return err
	}
	resp, err := c.m.cfg.HTTPClient.Do(req)
	if err != nil {
		return fmt.Errorf("portmap: UPnP description: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("portmap: UPnP description: %s", resp.Status)
	}
	root := new(goupnp.RootDevice)
	dec := xml.NewDecoder(io.LimitReader(resp.Body, maxDescription))
	dec.DefaultSpace = goupnp.DeviceXMLNamespace
	if err := dec.Decode(root); err != nil {
		return fmt.Errorf("portmap: UPnP description: %w", err)
	}
	root.SetURLBase(loc)
	var conns []igdConn
	if cs, err := internetgateway2.NewWANIPConnection2ClientsFromRootDevice(root, loc); err == nil {
		for _, x := range cs {
			conns = append(conns, x)
		}
	}
	if cs, err := internetgateway2.NewWANIPConnection1ClientsFromRootDevice(root, loc); err == nil {
		for _, x := range cs {
			conns = append(conns, x)
		}
	}
	if cs, err := internetgateway2.NewWANPPPConnection1ClientsFromRootDevice(root, loc); err == nil {
		for _, x := range cs {
			conns = append(conns, x)
		}
	}
	for _, x := range conns {
		sc := x.GetServiceClient()
		if h, err := netip.ParseAddr(sc.SOAPClient.EndpointURL.Hostname()); err != nil || h.Unmap() != c.gw {
			continue // control URL off the gateway: not ours to call
		}
		sc.SOAPClient.HTTPClient = *c.m.cfg.HTTPClient
		c.conn = x
		return nil
	}
	return errors.New("portmap: UPnP gateway has no WAN connection service on its own address")
}

func (c *upnpClient) add(ctx context.Context, lifetime time.Duration) (Mapping, error) {
	if c.conn == nil {
		if err := c.discover(ctx); err != nil {
			return Mapping{}, err
		}
	}
	extIP, err := c.conn.GetExternalIPAddressCtx(ctx)
	if err != nil {
		return Mapping{}, upnpErr(err)
	}
	ea, err := netip.ParseAddr(extIP)
	if err != nil || !ea.Is4() || ea.IsUnspecified() {
		return Mapping{}, fmt.Errorf("portmap: UPnP external address %q", extIP)
	}
	port := c.ext.Port()
	if port == 0 {
		port = c.m.cfg.InternalPort
	}
	lease := seconds(lifetime)
	if c.permanent {
		lease = 0
	}
	err = c.conn.AddPortMappingCtx(ctx, "", port, "UDP", c.m.cfg.InternalPort, c.local.String(), true, upnpDesc, lease)
	if code := soapCode(err); code == 725 && lease != 0 {
		// OnlyPermanentLeasesSupported (IGD:1 routers): lease 0, renewed
		// (re-added) on our schedule and deleted on Close.
		c.permanent = true
		err = c.conn.AddPortMappingCtx(ctx, "", port, "UDP", c.m.cfg.InternalPort, c.local.String(), true, upnpDesc, 0)
	}
	if err != nil {
		return Mapping{}, upnpErr(err)
	}
	c.ext = netip.AddrPortFrom(ea, port)
	return Mapping{
		Protocol: UPnP,
		Gateway:  c.gw,
		Internal: netip.AddrPortFrom(c.local, c.m.cfg.InternalPort),
		External: c.ext,
		Lifetime: lifetime,
	}, nil
}

func (c *upnpClient) remove(ctx context.Context) error {
	if c.conn == nil || !c.ext.IsValid() {
		return nil
	}
	return upnpErr(c.conn.DeletePortMappingCtx(ctx, "", c.ext.Port(), "UDP"))
}

// errUPnP marks errors from the SOAP exchange.
var errUPnP = errors.New("portmap: UPnP")

func upnpErr(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%w: %w", errUPnP, err)
}

// soapCode is the UPnP error code of a SOAP fault, or 0.
func soapCode(err error) int {
	var se *soap.SOAPFaultError
	if !errors.As(err, &se) {
		return 0
	}
	return se.Detail.UPnPError.Errorcode
}
