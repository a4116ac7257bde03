package stack

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/teredo-go/teredo/client"
)

// maxPortProbes bounds the probe sockets open at once; a probe over the
// bound fails at once (the client counts it and tries again at the next
// bubble).
const maxPortProbes = 4

// portProber is the client's PortProbe (client/portpredict.go): each probe
// is one request from a new UDP socket on the client's local address, so
// that the NAT gives it a new flow, and the first answer from the request's
// destination. It runs on a goroutine of its own, bounded by the timeout,
// and ends when the stack closes.
type portProber struct {
	local  func() netip.AddrPort
	ctx    context.Context
	cancel context.CancelFunc
	sem    chan struct{}

	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// portProbe returns the client's PortProbe, or nil when Config.NoPortPrediction
// turns it off or the socket was injected (Config.Conn: no real local address
// to open another socket on).
func (s *Stack) portProbe() client.PortProbe {
	if s.cfg.NoPortPrediction || s.cfg.Conn != nil {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.prober = &portProber{local: s.conn.LocalAddr, ctx: ctx, cancel: cancel, sem: make(chan struct{}, maxPortProbes)}
	return s.prober
}

// LocalPort is the port of the client's socket.
func (p *portProber) LocalPort() uint16 { return p.local().Port() }

// Probe implements client.PortProbe.
func (p *portProber) Probe(b []byte, to netip.AddrPort, timeout time.Duration, done func([]byte)) {
	select {
	case p.sem <- struct{}{}:
	default:
		done(nil)
		return
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		<-p.sem
		done(nil)
		return
	}
	p.wg.Add(1)
	p.mu.Unlock()
	b = append([]byte(nil), b...)
	go func() {
		defer p.wg.Done()
		reply := p.run(b, to, timeout)
		<-p.sem
		done(reply)
	}()
}

// run sends b to `to` from a new socket and returns the first datagram from
// `to` within timeout, or nil.
func (p *portProber) run(b []byte, to netip.AddrPort, timeout time.Duration) []byte {
	la := &net.UDPAddr{}
	if a := p.local().Addr().Unmap(); a.Is4() && !a.IsUnspecified() {
		la.IP = a.AsSlice()
	}
	conn, err := net.ListenUDP("udp4", la)
	if err != nil {
		return nil
	}
	defer conn.Close()
	stop := context.AfterFunc(p.ctx, func() { conn.Close() })
	defer stop()
	if conn.SetReadDeadline(time.Now().Add(timeout)) != nil {
		return nil
	}
	if _, err := conn.WriteToUDPAddrPort(b, to); err != nil {
		return nil
	}
	buf := make([]byte, 1500)
	for range 8 { // other senders' datagrams are skipped, a few of them
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return nil
		}
		if netip.AddrPortFrom(from.Addr().Unmap(), from.Port()) == to {
			return buf[:n]
		}
	}
	return nil
}

// close stops the probes under way and waits for their goroutines.
func (p *portProber) close() {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.cancel()
	p.wg.Wait()
}
