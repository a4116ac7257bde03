//go:build !linux || udpio_portable

package udpio

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
)

// UDPConn is a Conn on a UDP/IPv4 socket. Without recvmmsg/sendmmsg on this
// system it moves one datagram per system call. (Build with the tag
// udpio_portable to test this implementation on Linux.)
type UDPConn struct {
	pc    *net.UDPConn
	laddr netip.AddrPort

	rmu     sync.Mutex // serializes readers and guards scratch reads
	scratch []byte
	wmu     sync.Mutex // guards gather writes
	gather  []byte

	readTransient  atomic.Uint64
	writeTransient atomic.Uint64
	truncated      atomic.Uint64
}

var _ Conn = (*UDPConn)(nil)

const maxStaleRetries = 16

// Listen opens a UDP/IPv4 socket bound to laddr (the zero AddrPort means any
// address and an ephemeral port).
func Listen(laddr netip.AddrPort, opts Options) (*UDPConn, error) {
	opts = opts.withDefaults()
	la, err := listenAddr(laddr)
	if err != nil {
		return nil, err
	}
	lc := net.ListenConfig{Control: control(opts)}
	p, err := lc.ListenPacket(context.Background(), "udp4", la.String())
	if err != nil {
		return nil, fmt.Errorf("udpio: listen %v: %w", la, err)
	}
	pc := p.(*net.UDPConn)
	if opts.ReadBuffer > 0 {
		if err := pc.SetReadBuffer(opts.ReadBuffer); err != nil {
			pc.Close()
			return nil, fmt.Errorf("udpio: %w", err)
		}
	}
	if opts.WriteBuffer > 0 {
		if err := pc.SetWriteBuffer(opts.WriteBuffer); err != nil {
			pc.Close()
			return nil, fmt.Errorf("udpio: %w", err)
		}
	}
	return &UDPConn{pc: pc, laddr: localAddrPort(pc)}, nil
}

// ReadBatch implements Conn; it returns one datagram per call.
func (c *UDPConn) ReadBatch(msgs []Message) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	m := &msgs[0]
	for {
		var n int
		var ap netip.AddrPort
		var err error
		if len(m.Buffers) == 1 {
			n, ap, err = c.pc.ReadFromUDPAddrPort(m.Buffers[0])
		} else {
			if c.scratch == nil {
				c.scratch = make([]byte, 1<<16)
			}
			n, ap, err = c.pc.ReadFromUDPAddrPort(c.scratch)
			if err == nil {
				if n > datagramLen(m.Buffers) {
					c.truncated.Add(1)
				}
				n = scatter(m.Buffers, c.scratch[:n])
			}
		}
		if err != nil {
			if transient(err) {
				c.readTransient.Add(1)
				continue
			}
			return 0, err
		}
		m.N = n
		m.Addr, _ = ipv4(ap)
		return 1, nil
	}
}

func scatter(bufs [][]byte, data []byte) int {
	n := 0
	for _, b := range bufs {
		k := copy(b, data[n:])
		n += k
	}
	return n
}

func transient(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET)
}

// WriteBatch implements Conn with one system call per datagram.
func (c *UDPConn) WriteBatch(msgs []Message) (int, error) {
	for i := range msgs {
		m := &msgs[i]
		var err error
		if len(m.Buffers) == 1 {
			err = c.WriteTo(m.Buffers[0], m.Addr)
		} else {
			c.wmu.Lock()
			c.gather = c.gather[:0]
			for _, b := range m.Buffers {
				c.gather = append(c.gather, b...)
			}
			err = c.WriteTo(c.gather, m.Addr)
			c.wmu.Unlock()
		}
		if err != nil {
			return i, err
		}
		m.N = datagramLen(m.Buffers)
	}
	return len(msgs), nil
}

// Offload reports whether GSO and GRO are in use: never without Linux.
func (c *UDPConn) Offload() (gso, gro bool) { return false, false }

// SyscallConn gives access to the socket, for options this package does
// not set.
func (c *UDPConn) SyscallConn() (syscall.RawConn, error) { return c.pc.SyscallConn() }

// Stats returns counters of events handled without returning an error.
// Truncation is detected here only for reads into several Buffers.
func (c *UDPConn) Stats() Stats {
	return Stats{
		ReadTransientErrors:  c.readTransient.Load(),
		WriteTransientErrors: c.writeTransient.Load(),
		Truncated:            c.truncated.Load(),
	}
}
