// Package netstack is a relay.Device backed by an embedded gVisor network
// stack: an unprivileged "IPv6 internet" for tests and demos, where the
// stack's hosts reach Teredo clients through the relay.
//
// New adds a NIC to a caller's stack. Packets the stack routes out of that
// NIC (give it a route for the Teredo prefix) are what the relay reads;
// packets the relay writes are delivered to the stack as if received on the
// NIC, so the stack's addresses on that NIC are reachable from clients.
package netstack

import (
	"context"
	"errors"
	"fmt"
	"github.com/teredo-go/teredo/proto"
	"net"
	"sync"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// QueueLen is how many outbound packets wait for the relay before the stack
// sees drops.
const QueueLen = 1024

// ErrTooLarge reports a packet that does not fit the reader's buffer.
var ErrTooLarge = errors.New("netstack: packet larger than the read buffer")

// Device is a NIC of a gVisor stack seen from the relay. It is safe for
// concurrent use.
type Device struct {
	s     *stack.Stack
	nicID tcpip.NICID
	ep    *channel.Endpoint

	ctx    context.Context
	cancel context.CancelFunc
	once   sync.Once
}

// New creates NIC nicID in s with MTU 1280 whose traffic goes to and from
// the relay. The caller adds addresses and routes to the NIC.
func New(s *stack.Stack, nicID tcpip.NICID) (*Device, error) {
	ep := channel.New(QueueLen, proto.MinMTU, "")
	if err := s.CreateNIC(nicID, ep); err != nil {
		ep.Close()
		return nil, fmt.Errorf("netstack: create NIC %d: %s", nicID, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Device{s: s, nicID: nicID, ep: ep, ctx: ctx, cancel: cancel}, nil
}

// NICID returns the NIC's id in the stack.
func (d *Device) NICID() tcpip.NICID { return d.nicID }

// ReadPacket implements relay.Device: it waits for a packet the stack sent
// out of the NIC.
func (d *Device) ReadPacket(b []byte) (int, error) {
	pkt := d.ep.ReadContext(d.ctx)
	if pkt == nil {
		return 0, fmt.Errorf("netstack: read: %w", net.ErrClosed)
	}
	defer pkt.DecRef()
	n := 0
	for _, s := range pkt.AsSlices() {
		if n+len(s) > len(b) {
			return 0, ErrTooLarge
		}
		n += copy(b[n:], s)
	}
	return n, nil
}

// WritePacket implements relay.Device: the packet enters the stack as if
// received on the NIC. It is an alias of WriteIPv6.
func (d *Device) WritePacket(p []byte) error {
	if d.ctx.Err() != nil {
		return fmt.Errorf("netstack: write: %w", net.ErrClosed)
	}
	if len(p) == 0 || p[0]>>4 != 6 {
		return errors.New("netstack: not an IPv6 packet")
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(p)})
	d.ep.InjectInbound(ipv6.ProtocolNumber, pkt)
	pkt.DecRef()
	return nil
}

// WriteIPv6 injects a packet into the stack; with it the Device is also the
// IPv6 output of an in-process Teredo server (server.IPv6Output), so that
// echo requests of the relay-discovery test reach the stack's hosts.
func (d *Device) WriteIPv6(p []byte) error { return d.WritePacket(p) }

// Close unblocks ReadPacket and removes the NIC from the stack.
func (d *Device) Close() error {
	d.once.Do(func() {
		d.cancel()
		d.s.RemoveNIC(d.nicID)
		d.ep.Close()
	})
	return nil
}
