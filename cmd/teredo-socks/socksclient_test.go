package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/teredo-go/teredo/socks5"
)

// The least of a SOCKS5 client (RFC 1928) that the tests need: CONNECT with
// the raw reply code, and UDP ASSOCIATE. Every step is bounded by ioTimeout.

const ioTimeout = 20 * time.Second

// appendSOCKSAddr writes ATYP, address and port; host is an IP literal or
// a name.
func appendSOCKSAddr(b []byte, host string, port uint16) []byte {
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Is4() {
			b = append(b, 1)
			b = append(b, a.AsSlice()...)
		} else {
			b = append(b, 4)
			b = append(b, a.AsSlice()...)
		}
	} else {
		b = append(b, 3, byte(len(host)))
		b = append(b, host...)
	}
	return binary.BigEndian.AppendUint16(b, port)
}

// readSOCKSAddr reads ATYP, address and port.
func readSOCKSAddr(r io.Reader) (netip.AddrPort, error) {
	var atyp [1]byte
	if _, err := io.ReadFull(r, atyp[:]); err != nil {
		return netip.AddrPort{}, err
	}
	var n int
	switch atyp[0] {
	case 1:
		n = 4
	case 4:
		n = 16
	default:
		return netip.AddrPort{}, fmt.Errorf("reply address type %d", atyp[0])
	}
	b := make([]byte, n+2)
	if _, err := io.ReadFull(r, b); err != nil {
		return netip.AddrPort{}, err
	}
	a, _ := netip.AddrFromSlice(b[:n])
	return netip.AddrPortFrom(a, binary.BigEndian.Uint16(b[n:])), nil
}

// socksRequest greets proxy without authentication and sends one request;
// it returns the control connection, the reply code and the bound address.
func socksRequest(proxy string, cmd byte, host string, port uint16) (net.Conn, socks5.Reply, netip.AddrPort, error) {
	c, err := net.DialTimeout("tcp", proxy, ioTimeout)
	if err != nil {
		return nil, 0, netip.AddrPort{}, err
	}
	c.SetDeadline(time.Now().Add(ioTimeout))
	fail := func(err error) (net.Conn, socks5.Reply, netip.AddrPort, error) {
		c.Close()
		return nil, 0, netip.AddrPort{}, err
	}
	if _, err := c.Write([]byte{5, 1, 0}); err != nil {
		return fail(err)
	}
	var greet [2]byte
	if _, err := io.ReadFull(c, greet[:]); err != nil || greet != [2]byte{5, 0} {
		return fail(fmt.Errorf("greeting answer %x: %v", greet, err))
	}
	if _, err := c.Write(appendSOCKSAddr([]byte{5, cmd, 0}, host, port)); err != nil {
		return fail(err)
	}
	var head [3]byte
	if _, err := io.ReadFull(c, head[:]); err != nil {
		return fail(fmt.Errorf("reading the reply: %w", err))
	}
	bound, err := readSOCKSAddr(c)
	if err != nil {
		return fail(err)
	}
	c.SetDeadline(time.Time{})
	return c, socks5.Reply(head[1]), bound, nil
}

// socksConnect opens a CONNECT stream; an unsuccessful reply is an error
// that holds the code.
func socksConnect(proxy, host string, port uint16) (net.Conn, error) {
	c, rep, _, err := socksRequest(proxy, 1, host, port)
	if err != nil {
		return nil, err
	}
	if rep != socks5.ReplySucceeded {
		c.Close()
		return nil, replyError(rep)
	}
	return c, nil
}

type replyError socks5.Reply

func (e replyError) Error() string { return "SOCKS5 reply: " + socks5.Reply(e).String() }

// udpAssociation is a client's side of UDP ASSOCIATE.
type udpAssociation struct {
	ctl   net.Conn
	conn  *net.UDPConn
	relay netip.AddrPort
}

func socksAssociate(proxy string) (*udpAssociation, error) {
	conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		return nil, err
	}
	local := conn.LocalAddr().(*net.UDPAddr).AddrPort()
	ctl, rep, relay, err := socksRequest(proxy, 3, local.Addr().String(), local.Port())
	if err != nil {
		conn.Close()
		return nil, err
	}
	if rep != socks5.ReplySucceeded {
		ctl.Close()
		conn.Close()
		return nil, replyError(rep)
	}
	if relay.Addr().IsUnspecified() {
		relay = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), relay.Port())
	}
	return &udpAssociation{ctl: ctl, conn: conn, relay: relay}, nil
}

func (u *udpAssociation) Close() {
	u.ctl.Close()
	u.conn.Close()
}

// exchange sends payload to host:port through the relay and returns the
// first answer's payload and source.
func (u *udpAssociation) exchange(host string, port uint16, payload []byte) ([]byte, netip.AddrPort, error) {
	msg := append(appendSOCKSAddr([]byte{0, 0, 0}, host, port), payload...)
	if _, err := u.conn.WriteToUDPAddrPort(msg, u.relay); err != nil {
		return nil, netip.AddrPort{}, err
	}
	u.conn.SetReadDeadline(time.Now().Add(ioTimeout))
	buf := make([]byte, 2048)
	n, err := u.conn.Read(buf)
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	if n < 4 || buf[2] != 0 {
		return nil, netip.AddrPort{}, errors.New("short or fragmented reply datagram")
	}
	r := &sliceReader{b: buf[3:n]}
	from, err := readSOCKSAddr(r)
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	return r.b, from, nil
}

type sliceReader struct{ b []byte }

func (r *sliceReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}
