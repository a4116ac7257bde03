package teredotest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Host is an IPv6-only host on the Internet's IPv6 side.
type Host struct {
	in   *Internet
	addr netip.Addr
}

// AddHost adds an IPv6-only host at addr; the zero Addr picks the next free
// address in HostPrefix. Teredo clients reach it through the relay.
func (in *Internet) AddHost(addr netip.Addr) (*Host, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.closed {
		return nil, net.ErrClosed
	}
	if !addr.IsValid() {
		for {
			in.next++
			b := HostPrefix.Addr().As16()
			b[12], b[13], b[14], b[15] = byte(in.next>>24), byte(in.next>>16), byte(in.next>>8), byte(in.next)
			addr = netip.AddrFrom16(b)
			if in.hosts[addr] == nil {
				break
			}
		}
	}
	if !addr.Is6() || addr.Is4In6() || !addr.IsGlobalUnicast() || in.relayServes(addr) {
		return nil, fmt.Errorf("teredotest: host address %v must be global IPv6 outside 2001::/32", addr)
	}
	if in.hosts[addr] != nil {
		return nil, fmt.Errorf("teredotest: host %v exists", addr)
	}
	pa := tcpip.ProtocolAddress{
		Protocol:          ipv6.ProtocolNumber,
		AddressWithPrefix: tcpip.AddrFrom16(addr.As16()).WithPrefix(),
	}
	if err := in.stack.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
		return nil, fmt.Errorf("teredotest: add host %v: %s", addr, err)
	}
	h := &Host{in: in, addr: addr}
	in.hosts[addr] = h
	return h, nil
}

func (in *Internet) relayServes(addr netip.Addr) bool {
	if in.gateway != nil && in.gateway.PublicPrefix().Contains(addr) {
		return true
	}
	return addr.As16()[0] == 0x20 && addr.As16()[1] == 0x01 && addr.As16()[2] == 0 && addr.As16()[3] == 0
}

// Addr returns the host's IPv6 address.
func (h *Host) Addr() netip.Addr { return h.addr }

func (h *Host) full(port uint16) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom16(h.addr.As16()), Port: port}
}

// track closes c when the Internet closes.
func (h *Host) track(c io.Closer) {
	h.in.mu.Lock()
	defer h.in.mu.Unlock()
	if h.in.closed {
		c.Close()
		return
	}
	h.in.closers = append(h.in.closers, c)
}

// ListenTCP listens on the host's address and port (0 picks one). The
// listener is closed with the Internet, if not before.
func (h *Host) ListenTCP(port uint16) (net.Listener, error) {
	l, err := gonet.ListenTCP(h.in.stack, h.full(port), ipv6.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("teredotest: listen tcp [%v]:%d: %w", h.addr, port, err)
	}
	h.track(l)
	return l, nil
}

// ListenUDP opens a UDP socket on the host's address and port (0 picks
// one), closed with the Internet if not before.
func (h *Host) ListenUDP(port uint16) (net.PacketConn, error) {
	la := h.full(port)
	c, err := gonet.DialUDP(h.in.stack, &la, nil, ipv6.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("teredotest: listen udp [%v]:%d: %w", h.addr, port, err)
	}
	h.track(c)
	return c, nil
}

// DialTCP connects from the host to raddr, for example a Teredo client's
// listener.
func (h *Host) DialTCP(ctx context.Context, raddr netip.AddrPort) (net.Conn, error) {
	ra := tcpip.FullAddress{Addr: tcpip.AddrFrom16(raddr.Addr().As16()), Port: raddr.Port()}
	c, err := gonet.DialTCPWithBind(ctx, h.in.stack, h.full(0), ra, ipv6.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("teredotest: dial tcp %v: %w", raddr, err)
	}
	h.track(c)
	return c, nil
}

// DialUDP opens a UDP socket from the host connected to raddr.
func (h *Host) DialUDP(raddr netip.AddrPort) (net.Conn, error) {
	la := h.full(0)
	ra := tcpip.FullAddress{Addr: tcpip.AddrFrom16(raddr.Addr().As16()), Port: raddr.Port()}
	c, err := gonet.DialUDP(h.in.stack, &la, &ra, ipv6.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("teredotest: dial udp %v: %w", raddr, err)
	}
	h.track(c)
	return c, nil
}

// ServeHTTP serves handler on the host's port (0 picks one) and returns
// the base URL, "http://[addr]:port". The server stops with the Internet.
func (h *Host) ServeHTTP(port uint16, handler http.Handler) (string, error) {
	l, err := h.ListenTCP(port)
	if err != nil {
		return "", err
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(l)
	}()
	h.track(closerFunc(func() error {
		err := srv.Close()
		<-done
		return err
	}))
	return "http://" + l.Addr().String(), nil
}

// ServeUDPEcho answers every datagram on the host's port (0 picks one)
// with the same bytes, and returns the port. It stops with the Internet.
func (h *Host) ServeUDPEcho(port uint16) (uint16, error) {
	c, err := h.ListenUDP(port)
	if err != nil {
		return 0, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			c.WriteTo(buf[:n], from)
		}
	}()
	h.track(closerFunc(func() error {
		err := c.Close()
		<-done
		return err
	}))
	return uint16(c.LocalAddr().(*net.UDPAddr).Port), nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// DataHandler serves deterministic pseudo-random bytes for download tests:
// GET /data?n=N&seed=S answers N bytes (at most 1 GiB) with their SHA-256
// in the X-Content-SHA256 header, so that a client can check what arrived.
func DataHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 || n > 1<<30 {
			http.Error(w, "bad n", http.StatusBadRequest)
			return
		}
		seed, _ := strconv.ParseUint(r.URL.Query().Get("seed"), 10, 64)
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		w.Header().Set("X-Content-SHA256", hex.EncodeToString(DataSum(n, seed)))
		io.Copy(w, Data(n, seed))
	})
}

// Data returns the n bytes DataHandler serves for seed.
func Data(n int64, seed uint64) io.Reader {
	return io.LimitReader(&chachaReader{r: rand.NewChaCha8(seedBytes(seed))}, n)
}

// DataSum returns the SHA-256 of Data(n, seed).
func DataSum(n int64, seed uint64) []byte {
	h := sha256.New()
	io.Copy(h, Data(n, seed))
	return h.Sum(nil)
}

func seedBytes(seed uint64) [32]byte {
	var b [32]byte
	for i := range 8 {
		b[i] = byte(seed >> (8 * i))
	}
	return b
}

type chachaReader struct{ r *rand.ChaCha8 }

func (c *chachaReader) Read(p []byte) (int, error) { return c.r.Read(p) }
