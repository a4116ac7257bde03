package ndproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// pollInterval bounds how long Run takes to notice its context ending
// while no packet arrives.
const pollInterval = 500 * time.Millisecond

// Stats counts what a Proxy did.
type Stats struct {
	Answered  uint64 // advertisements sent
	OtherDest uint64 // solicitations for targets not wanted
	DAD       uint64 // duplicate address detection probes, not answered
	Malformed uint64 // malformed solicitations
	SendErrs  uint64
}

// Proxy answers neighbor solicitations for a prefix on one interface.
// It needs CAP_NET_RAW.
type Proxy struct {
	fd   int
	ifi  *net.Interface
	want func(netip.Addr) bool
	log  *slog.Logger

	answered, other, dad, malformed, sendErrs atomic.Uint64
}

// Open starts listening on the Ethernet interface ifname for solicitations
// of the addresses for which want reports true. The interface is put in
// all-multicast mode while the proxy is open. Run must be called: it
// closes the socket when it returns.
func Open(ifname string, want func(netip.Addr) bool, log *slog.Logger) (*Proxy, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, err
	}
	if len(ifi.HardwareAddr) != 6 {
		return nil, fmt.Errorf("ndproxy: %s has no Ethernet address", ifname)
	}
	proto := int(htons(unix.ETH_P_IPV6))
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return nil, fmt.Errorf("ndproxy: packet socket: %w", err)
	}
	p := &Proxy{fd: fd, ifi: ifi, want: want, log: log}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IPV6), Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("ndproxy: bind to %s: %w", ifname, err)
	}
	mreq := unix.PacketMreq{Ifindex: int32(ifi.Index), Type: unix.PACKET_MR_ALLMULTI}
	if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mreq); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("ndproxy: all-multicast on %s: %w", ifname, err)
	}
	tv := unix.NsecToTimeval(pollInterval.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("ndproxy: receive timeout: %w", err)
	}
	return p, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// Serve answers solicitations until ctx is done, then closes the socket.
func (p *Proxy) Serve(ctx context.Context) error {
	defer unix.Close(p.fd)
	buf := make([]byte, 1500)
	out := make([]byte, 0, 128)
	for ctx.Err() == nil {
		n, from, err := unix.Recvfrom(p.fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("ndproxy: read: %w", err)
		}
		ll, ok := from.(*unix.SockaddrLinklayer)
		if !ok || ll.Pkttype == unix.PACKET_OUTGOING || n < 40 || buf[6] != 58 || n < 41 || buf[40] != typeNS {
			continue // not a solicitation: most of what all-multicast brings
		}
		ns, err := ParseNS(buf[:n])
		switch {
		case errors.Is(err, ErrDAD):
			p.dad.Add(1)
			continue
		case err != nil:
			p.malformed.Add(1)
			continue
		case !p.want(ns.Target):
			p.other.Add(1)
			continue
		}
		dst := ns.SourceLL
		if dst == nil && ll.Halen == 6 {
			dst = net.HardwareAddr(ll.Addr[:6])
		}
		if dst == nil {
			p.malformed.Add(1)
			continue
		}
		out = AppendNA(out[:0], &ns, p.ifi.HardwareAddr)
		to := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IPV6), Ifindex: p.ifi.Index, Halen: 6}
		copy(to.Addr[:], dst)
		if err := unix.Sendto(p.fd, out, 0, to); err != nil {
			p.sendErrs.Add(1)
			p.log.Debug("ndproxy: send", "to", ns.Src, "err", err)
			continue
		}
		p.answered.Add(1)
	}
	return nil
}

// Stats returns the proxy's counters.
func (p *Proxy) Stats() Stats {
	return Stats{
		Answered: p.answered.Load(), OtherDest: p.other.Load(), DAD: p.dad.Load(),
		Malformed: p.malformed.Load(), SendErrs: p.sendErrs.Load(),
	}
}
