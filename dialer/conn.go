package dialer

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
)

// TCPConn is a gonet TCP connection whose errors work with errors.Is:
// syscall errnos for gVisor's errors, net.ErrClosed after Close and
// os.ErrDeadlineExceeded when a deadline passes.
type TCPConn struct {
	c      *gonet.TCPConn
	closed atomic.Bool
}

// NewTCPConn wraps c.
func NewTCPConn(c *gonet.TCPConn) *TCPConn { return &TCPConn{c: c} }

var _ net.Conn = (*TCPConn)(nil)

func (c *TCPConn) err(op string, err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	if c.closed.Load() {
		return &net.OpError{Op: op, Net: "tcp", Source: c.c.LocalAddr(), Addr: c.c.RemoteAddr(), Err: net.ErrClosed}
	}
	return TranslateError(err)
}

// Read implements net.Conn.
func (c *TCPConn) Read(b []byte) (int, error) {
	if c.closed.Load() {
		return 0, c.err("read", errClosed)
	}
	n, err := c.c.Read(b)
	return n, c.err("read", err)
}

// Write implements net.Conn.
func (c *TCPConn) Write(b []byte) (int, error) {
	if c.closed.Load() {
		return 0, c.err("write", errClosed)
	}
	n, err := c.c.Write(b)
	return n, c.err("write", err)
}

// errClosed stands in for the error of an operation refused before it
// reached gVisor; err turns it into net.ErrClosed.
var errClosed = errors.New("use of closed connection")

// Close implements net.Conn. Closing twice returns net.ErrClosed.
func (c *TCPConn) Close() error {
	if c.closed.Swap(true) {
		return c.err("close", errClosed)
	}
	return c.c.Close()
}

// CloseRead shuts down the reading side.
func (c *TCPConn) CloseRead() error { return c.err("close", c.c.CloseRead()) }

// CloseWrite shuts down the writing side, sending FIN.
func (c *TCPConn) CloseWrite() error { return c.err("close", c.c.CloseWrite()) }

// LocalAddr implements net.Conn.
func (c *TCPConn) LocalAddr() net.Addr { return c.c.LocalAddr() }

// RemoteAddr implements net.Conn.
func (c *TCPConn) RemoteAddr() net.Addr { return c.c.RemoteAddr() }

// SetDeadline implements net.Conn.
func (c *TCPConn) SetDeadline(t time.Time) error { return c.c.SetDeadline(t) }

// SetReadDeadline implements net.Conn.
func (c *TCPConn) SetReadDeadline(t time.Time) error { return c.c.SetReadDeadline(t) }

// SetWriteDeadline implements net.Conn.
func (c *TCPConn) SetWriteDeadline(t time.Time) error { return c.c.SetWriteDeadline(t) }

// UDPConn is a gonet UDP socket (connected or not) whose errors work with
// errors.Is, like TCPConn's.
type UDPConn struct {
	c      *gonet.UDPConn
	closed atomic.Bool
}

// NewUDPConn wraps c.
func NewUDPConn(c *gonet.UDPConn) *UDPConn { return &UDPConn{c: c} }

var (
	_ net.Conn       = (*UDPConn)(nil)
	_ net.PacketConn = (*UDPConn)(nil)
)

func (c *UDPConn) err(op string, err error) error {
	if err == nil {
		return nil
	}
	if c.closed.Load() {
		return &net.OpError{Op: op, Net: "udp", Source: c.c.LocalAddr(), Err: net.ErrClosed}
	}
	return TranslateError(err)
}

// Read implements net.Conn.
func (c *UDPConn) Read(b []byte) (int, error) {
	if c.closed.Load() {
		return 0, c.err("read", errClosed)
	}
	n, err := c.c.Read(b)
	return n, c.err("read", err)
}

// ReadFrom implements net.PacketConn.
func (c *UDPConn) ReadFrom(b []byte) (int, net.Addr, error) {
	if c.closed.Load() {
		return 0, nil, c.err("read", errClosed)
	}
	n, addr, err := c.c.ReadFrom(b)
	return n, addr, c.err("read", err)
}

// Write implements net.Conn.
func (c *UDPConn) Write(b []byte) (int, error) {
	if c.closed.Load() {
		return 0, c.err("write", errClosed)
	}
	n, err := c.c.Write(b)
	return n, c.err("write", err)
}

// WriteTo implements net.PacketConn.
func (c *UDPConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if c.closed.Load() {
		return 0, c.err("write", errClosed)
	}
	n, err := c.c.WriteTo(b, addr)
	return n, c.err("write", err)
}

// Close implements net.Conn. Closing twice returns net.ErrClosed.
func (c *UDPConn) Close() error {
	if c.closed.Swap(true) {
		return c.err("close", errClosed)
	}
	return c.c.Close()
}

// LocalAddr implements net.Conn.
func (c *UDPConn) LocalAddr() net.Addr { return c.c.LocalAddr() }

// RemoteAddr implements net.Conn; it is nil for an unconnected socket.
func (c *UDPConn) RemoteAddr() net.Addr { return c.c.RemoteAddr() }

// SetDeadline implements net.Conn.
func (c *UDPConn) SetDeadline(t time.Time) error { return c.c.SetDeadline(t) }

// SetReadDeadline implements net.Conn.
func (c *UDPConn) SetReadDeadline(t time.Time) error { return c.c.SetReadDeadline(t) }

// SetWriteDeadline implements net.Conn.
func (c *UDPConn) SetWriteDeadline(t time.Time) error { return c.c.SetWriteDeadline(t) }
