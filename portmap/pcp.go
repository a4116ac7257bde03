package portmap

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"
)

// pcpClient keeps one PCP MAP mapping and its PEER mappings.
type pcpClient struct {
	m      *Mapper
	gw     netip.Addr
	nonce  [12]byte
	client netip.Addr // our address towards the gateway, learnt on first add
	ext    netip.AddrPort
	epoch  uint32
	peers  []netip.AddrPort // granted PEER mappings, by remote
}

func newPCP(m *Mapper, gw netip.Addr) *pcpClient {
	c := &pcpClient{m: m, gw: gw}
	rand.Read(c.nonce[:])
	return c
}

func (c *pcpClient) protocol() Protocol { return PCP }

// initialRTO is the first retransmission timeout; RFC 6887 §8.1.1 starts at
// 3 s, which would spend a whole attempt's budget on one lost datagram on a
// LAN; the request is idempotent, so retransmitting sooner is harmless.
const initialRTO = 250 * time.Millisecond

// exchange sends req and waits for the response with its opcode and nonce,
// retransmitting with a doubling timeout until ctx ends.
func (c *pcpClient) exchange(ctx context.Context, req *pcpRequest) (*pcpResponse, netip.Addr, error) {
	conn, err := c.m.cfg.Dial(ctx, "udp4", net.JoinHostPort(c.gw.String(), strconv.Itoa(int(c.m.cfg.PCPPort))))
	if err != nil {
		return nil, netip.Addr{}, err
	}
	defer conn.Close()
	local, err := netip.ParseAddrPort(conn.LocalAddr().String())
	if err != nil {
		return nil, netip.Addr{}, fmt.Errorf("portmap: local address: %w", err)
	}
	req.Client = local.Addr().Unmap()
	msg, err := appendPCPRequest(make([]byte, 0, pcpHdrLen+pcpPeerLen), req)
	if err != nil {
		return nil, netip.Addr{}, err
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	deadline := ctxDeadline(ctx, c.m.cfg.Timeout)
	buf := make([]byte, pcpMaxLen+4)
	for rto := initialRTO; ; rto *= 2 {
		if _, err := conn.Write(msg); err != nil {
			return nil, netip.Addr{}, err
		}
		conn.SetReadDeadline(minTime(time.Now().Add(rto), deadline))
		for {
			n, err := conn.Read(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil && time.Now().Before(deadline) {
					break // retransmit
				}
				if ctx.Err() != nil {
					return nil, netip.Addr{}, fmt.Errorf("portmap: no PCP answer from %v: %w", c.gw, ctx.Err())
				}
				return nil, netip.Addr{}, err
			}
			resp, err := parsePCPResponse(buf[:n])
			if err != nil {
				if errors.Is(err, ErrUnsupportedVersion) {
					return nil, netip.Addr{}, err
				}
				c.m.log.Debug("portmap: PCP datagram dropped", "err", err)
				continue
			}
			if resp.Opcode != req.Opcode || resp.Nonce != req.Nonce {
				continue // a stale answer to an earlier request
			}
			if resp.Result != pcpSuccess {
				return resp, req.Client, &ResultError{Protocol: PCP, Code: resp.Result}
			}
			return resp, req.Client, nil
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func (c *pcpClient) add(ctx context.Context, lifetime time.Duration) (Mapping, error) {
	req := &pcpRequest{
		Opcode:   pcpOpMap,
		Lifetime: seconds(lifetime),
		Nonce:    c.nonce,
		Internal: c.m.cfg.InternalPort,
		// Renewals ask for the port held so far (RFC 6887 §11.2.1); the
		// first request asks for the internal port, which keeps the
		// mapping recognisable and matches what port-preserving NATs do.
		SuggestedExternal: c.ext,
	}
	if !c.ext.IsValid() {
		req.SuggestedExternal = netip.AddrPortFrom(netip.IPv4Unspecified(), c.m.cfg.InternalPort)
	}
	resp, client, err := c.exchange(ctx, req)
	if err != nil {
		return Mapping{}, err
	}
	if resp.Protocol != protocolUDP || resp.Internal != c.m.cfg.InternalPort || resp.Lifetime == 0 ||
		!resp.External.Addr().Is4() || resp.External.Port() == 0 {
		return Mapping{}, fmt.Errorf("portmap: PCP MAP answer does not match the request: %+v", resp)
	}
	if c.ext.IsValid() && resp.Epoch < c.epoch {
		// RFC 6887 §8.5: the server lost its state (rebooted); the answer
		// is a fresh mapping, and the PEER mappings must be redone too.
		c.m.log.Warn("portmap: PCP server epoch went back; mappings were lost", "old", c.epoch, "new", resp.Epoch)
	}
	c.client, c.ext, c.epoch = client, resp.External, resp.Epoch
	mp := Mapping{
		Protocol: PCP,
		Gateway:  c.gw,
		Internal: netip.AddrPortFrom(client, c.m.cfg.InternalPort),
		External: resp.External,
		Lifetime: time.Duration(resp.Lifetime) * time.Second,
	}
	c.peers = c.peers[:0]
	var errs []error
	for _, p := range c.m.cfg.Peers {
		if err := c.peer(ctx, p, lifetime); err != nil {
			errs = append(errs, fmt.Errorf("PEER %v: %w", p, err))
			continue
		}
		c.peers = append(c.peers, p)
	}
	mp.Peers = append([]netip.AddrPort(nil), c.peers...)
	if len(errs) > 0 {
		// The MAP mapping stands on its own: inbound traffic reaches the
		// host. Only the outbound port towards these peers is not pinned.
		c.m.log.Warn("portmap: PCP PEER failed", "err", errors.Join(errs...))
	}
	return mp, nil
}

// peer asks that traffic to remote leave from the mapped port.
func (c *pcpClient) peer(ctx context.Context, remote netip.AddrPort, lifetime time.Duration) error {
	req := &pcpRequest{
		Opcode:            pcpOpPeer,
		Lifetime:          seconds(lifetime),
		Nonce:             c.nonce,
		Internal:          c.m.cfg.InternalPort,
		SuggestedExternal: c.ext,
		Remote:            remote,
	}
	resp, _, err := c.exchange(ctx, req)
	if err != nil {
		return err
	}
	if resp.External != c.ext {
		return fmt.Errorf("granted %v, not the mapped %v", resp.External, c.ext)
	}
	return nil
}

func (c *pcpClient) remove(ctx context.Context) error {
	for _, p := range c.peers {
		req := &pcpRequest{Opcode: pcpOpPeer, Nonce: c.nonce, Internal: c.m.cfg.InternalPort,
			SuggestedExternal: c.ext, Remote: p}
		if _, _, err := c.exchange(ctx, req); err != nil {
			// Not fatal: the PEER mapping only pins outbound packets of a
			// host that is going away, and has a lifetime. miniupnpd 2.3.1
			// (nftables) answers every PEER delete with NO_RESOURCES: it
			// cannot find its own PEER rules again.
			c.m.log.Warn("portmap: PCP PEER delete failed", "peer", p, "err", err)
		}
	}
	// Lifetime 0 deletes (RFC 6887 §15); the suggested external fields
	// are ignored but sent as held.
	req := &pcpRequest{Opcode: pcpOpMap, Nonce: c.nonce, Internal: c.m.cfg.InternalPort, SuggestedExternal: c.ext}
	_, _, err := c.exchange(ctx, req)
	return err
}

func seconds(d time.Duration) uint32 {
	s := d / time.Second
	if s > 1<<32-1 {
		s = 1<<32 - 1
	}
	return uint32(s)
}
