// Package portmaptest runs small in-process port mapping gateways for tests:
// a PCP and NAT-PMP responder on one UDP socket, as miniupnpd has, and a
// UPnP-IGD device (SSDP responder plus SOAP control over HTTP). They keep a
// mapping table and speak the real wire formats, on loopback only.
package portmaptest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Mapping is one entry of a responder's table.
type Mapping struct {
	Internal netip.AddrPort
	External uint16
	Lifetime uint32
	Nonce    [12]byte // PCP only
	// Peers are PCP PEER remotes pinned to External.
	Peers []netip.AddrPort
}

// Server is a PCP and NAT-PMP responder (RFC 6887, RFC 6886).
type Server struct {
	// External is the public address reported to clients.
	External netip.Addr

	conn net.PacketConn
	done chan struct{}

	mu sync.Mutex
	// PCP false makes the server answer PCP requests as a NAT-PMP-only
	// gateway does (version 0, UNSUPP_VERSION); NATPMP false makes it
	// answer NAT-PMP requests with UNSUPP_VERSION as a PCP-only one does.
	pcp, natpmp bool
	// FailCode, if set, is the result code of every MAP answer.
	failCode uint8
	mappings map[netip.AddrPort]*Mapping
	epoch    uint32
	start    time.Time
	nextPort uint16
	requests []string
	drops    int
}

// NewServer listens on addr (e.g. "127.0.0.1:0"; NAT-PMP clients need port
// 5351) and answers until Close.
func NewServer(addr string, external netip.Addr) (*Server, error) {
	c, err := net.ListenPacket("udp4", addr)
	if err != nil {
		return nil, err
	}
	s := &Server{
		External: external,
		conn:     c,
		done:     make(chan struct{}),
		pcp:      true,
		natpmp:   true,
		mappings: make(map[netip.AddrPort]*Mapping),
		start:    time.Now(),
		nextPort: 40000,
	}
	go s.serve()
	return s, nil
}

// Addr is the server's address.
func (s *Server) Addr() netip.AddrPort { return s.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// Close stops the server.
func (s *Server) Close() error {
	err := s.conn.Close()
	<-s.done
	return err
}

// SetProtocols turns PCP and NAT-PMP support on or off.
func (s *Server) SetProtocols(pcp, natpmp bool) {
	s.mu.Lock()
	s.pcp, s.natpmp = pcp, natpmp
	s.mu.Unlock()
}

// SetFailure makes every MAP answer carry result code (0: succeed).
func (s *Server) SetFailure(code uint8) {
	s.mu.Lock()
	s.failCode = code
	s.mu.Unlock()
}

// Reboot forgets every mapping and restarts the epoch, as a rebooted
// gateway does, and gives the external ports held so far to another host,
// so that the next mapping of each client gets a new port.
func (s *Server) Reboot() {
	s.mu.Lock()
	old := s.mappings
	s.mappings = make(map[netip.AddrPort]*Mapping)
	for _, m := range old {
		key := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), m.External)
		s.mappings[key] = &Mapping{Internal: key, External: m.External, Lifetime: m.Lifetime}
	}
	s.start = time.Now()
	s.mu.Unlock()
}

// Expire drops every mapping, as their lifetimes ending would.
func (s *Server) Expire() {
	s.mu.Lock()
	s.mappings = make(map[netip.AddrPort]*Mapping)
	s.mu.Unlock()
}

// Mappings returns a copy of the table.
func (s *Server) Mappings() []Mapping {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Mapping
	for _, m := range s.mappings {
		c := *m
		c.Peers = append([]netip.AddrPort(nil), m.Peers...)
		out = append(out, c)
	}
	return out
}

// Requests lists the requests served, e.g. "pcp MAP lifetime=3600".
func (s *Server) Requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.requests...)
}

// Drops counts malformed datagrams.
func (s *Server) Drops() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.drops
}

func (s *Server) serve() {
	defer close(s.done)
	buf := make([]byte, 1500)
	for {
		n, from, err := s.conn.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		src := from.(*net.UDPAddr).AddrPort()
		resp := s.handle(buf[:n], netip.AddrPortFrom(src.Addr().Unmap(), src.Port()))
		if resp != nil {
			s.conn.WriteTo(resp, from)
		}
	}
}

func (s *Server) handle(b []byte, from netip.AddrPort) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(b) < 2 {
		s.drops++
		return nil
	}
	epoch := uint32(time.Since(s.start) / time.Second)
	switch b[0] {
	case 0:
		if !s.natpmp {
			return natpmpAnswer(b[1], 1, epoch, nil)
		}
		return s.handleNATPMP(b, from, epoch)
	case 2:
		if !s.pcp {
			// A NAT-PMP-only gateway: version 0, UNSUPP_VERSION.
			return natpmpAnswer(b[1]&0x7f, 1, epoch, nil)
		}
		return s.handlePCP(b, from, epoch)
	default:
		s.drops++
		return nil
	}
}

func natpmpAnswer(op uint8, code uint16, epoch uint32, body []byte) []byte {
	r := []byte{0, op | 0x80, 0, 0}
	binary.BigEndian.PutUint16(r[2:], code)
	r = binary.BigEndian.AppendUint32(r, epoch)
	return append(r, body...)
}

func (s *Server) handleNATPMP(b []byte, from netip.AddrPort, epoch uint32) []byte {
	switch {
	case b[1] == 0 && len(b) == 2:
		s.requests = append(s.requests, "nat-pmp external-address")
		a := s.External.As4()
		return natpmpAnswer(0, 0, epoch, a[:])
	case b[1] == 1 && len(b) == 12:
		internal := binary.BigEndian.Uint16(b[4:])
		suggested := binary.BigEndian.Uint16(b[6:])
		life := binary.BigEndian.Uint32(b[8:])
		s.requests = append(s.requests, fmt.Sprintf("nat-pmp map internal=%d suggested=%d lifetime=%d", internal, suggested, life))
		key := netip.AddrPortFrom(from.Addr(), internal)
		var ext uint16
		if s.failCode != 0 {
			return natpmpAnswer(1, uint16(s.failCode), epoch, make([]byte, 8))
		}
		if life == 0 {
			delete(s.mappings, key)
		} else {
			ext = s.assign(key, suggested, life).External
		}
		body := binary.BigEndian.AppendUint16(nil, internal)
		body = binary.BigEndian.AppendUint16(body, ext)
		body = binary.BigEndian.AppendUint32(body, life)
		return natpmpAnswer(1, 0, epoch, body)
	default:
		s.drops++
		return natpmpAnswer(b[1], 5, epoch, nil) // unsupported opcode
	}
}

// assign finds or creates the mapping for key: the suggested port if it is
// free, else the next port from 40000.
func (s *Server) assign(key netip.AddrPort, suggested uint16, life uint32) *Mapping {
	if m, ok := s.mappings[key]; ok {
		m.Lifetime = life
		return m
	}
	ext := suggested
	for _, m := range s.mappings {
		if m.External == ext {
			ext = 0
		}
	}
	if ext == 0 {
		ext = s.nextPort
		s.nextPort++
	}
	m := &Mapping{Internal: key, External: ext, Lifetime: life}
	s.mappings[key] = m
	return m
}

const pcpHdr = 24

func (s *Server) handlePCP(b []byte, from netip.AddrPort, epoch uint32) []byte {
	op := b[1]
	if op&0x80 != 0 || len(b) < pcpHdr || len(b)%4 != 0 {
		s.drops++
		return nil
	}
	life := binary.BigEndian.Uint32(b[4:])
	client := netip.AddrFrom16([16]byte(b[8:24])).Unmap()
	answer := func(code uint8, life uint32, data []byte) []byte {
		r := []byte{2, op | 0x80, 0, code}
		r = binary.BigEndian.AppendUint32(r, life)
		r = binary.BigEndian.AppendUint32(r, epoch)
		r = append(r, make([]byte, 12)...)
		return append(r, data...)
	}
	d := b[pcpHdr:]
	need := 36
	if op == 2 {
		need = 56
	} else if op != 1 {
		return answer(4, 0, nil) // UNSUPP_OPCODE
	}
	if len(d) < need {
		s.drops++
		return answer(3, 0, nil) // MALFORMED_REQUEST
	}
	data := append([]byte(nil), d[:need]...)
	if client != from.Addr() {
		return answer(12, 0, data) // ADDRESS_MISMATCH
	}
	if d[12] != 17 {
		return answer(9, 0, data) // UNSUPP_PROTOCOL
	}
	var nonce [12]byte
	copy(nonce[:], d[:12])
	internal := binary.BigEndian.Uint16(d[16:])
	suggested := binary.BigEndian.Uint16(d[18:])
	key := netip.AddrPortFrom(client, internal)
	name := map[uint8]string{1: "MAP", 2: "PEER"}[op]
	s.requests = append(s.requests, fmt.Sprintf("pcp %s internal=%d suggested=%d lifetime=%d", name, internal, suggested, life))
	if s.failCode != 0 {
		return answer(s.failCode, 0, data)
	}
	m, ok := s.mappings[key]
	if ok && m.Nonce != nonce {
		return answer(2, 0, data) // NOT_AUTHORIZED: someone else's mapping
	}
	if op == 2 {
		if !ok {
			return answer(8, 0, data) // NO_RESOURCES: PEER needs a MAP here
		}
		remote := netip.AddrPortFrom(netip.AddrFrom16([16]byte(d[40:56])).Unmap(), binary.BigEndian.Uint16(d[36:]))
		m.Peers = removePeer(m.Peers, remote)
		if life != 0 {
			m.Peers = append(m.Peers, remote)
		}
		binary.BigEndian.PutUint16(data[18:], m.External)
		copy(data[20:36], s.extAddr16())
		return answer(0, life, data)
	}
	if life == 0 {
		delete(s.mappings, key)
		return answer(0, 0, data)
	}
	m = s.assign(key, suggested, life)
	m.Nonce = nonce
	binary.BigEndian.PutUint16(data[18:], m.External)
	copy(data[20:36], s.extAddr16())
	return answer(0, life, data)
}

func (s *Server) extAddr16() []byte {
	a := netip.AddrFrom16(s.External.As16()).As16()
	return a[:]
}

func removePeer(ps []netip.AddrPort, p netip.AddrPort) []netip.AddrPort {
	out := ps[:0]
	for _, x := range ps {
		if x != p {
			out = append(out, x)
		}
	}
	return out
}

// Reserve gives external port to another host, so that a client asking for
// it gets another one.
func (s *Server) Reserve(port uint16) {
	s.mu.Lock()
	key := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), port)
	s.mappings[key] = &Mapping{Internal: key, External: port, Lifetime: 1 << 31}
	s.mu.Unlock()
}
