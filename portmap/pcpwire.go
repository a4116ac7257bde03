package portmap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// PCP wire format (RFC 6887). PCP shares UDP port 5351 and the first two
// header bytes (version, opcode) with NAT-PMP (RFC 6886, version 0), which
// is how a client tells the two apart: a NAT-PMP-only gateway answers a
// version 2 request with a version 0 UNSUPP_VERSION reply.
const (
	pcpVersion  = 2
	natpmpVer   = 0
	pcpPort     = 5351
	pcpOpMap    = 1
	pcpOpPeer   = 2
	pcpRespBit  = 0x80
	pcpHdrLen   = 24
	pcpMapLen   = 36 // nonce 12, protocol 1, reserved 3, ports 2+2, address 16
	pcpPeerLen  = 56 // MAP's fields, remote port 2, reserved 2, remote address 16
	pcpMaxLen   = 1100
	protocolUDP = 17
)

// PCP result codes (RFC 6887 §7.4).
const (
	pcpSuccess        = 0
	pcpUnsuppVersion  = 1
	pcpNotAuthorized  = 2
	pcpMalformed      = 3
	pcpUnsuppOpcode   = 4
	pcpNetworkFailure = 7
	pcpNoResources    = 8
	pcpCannotProvide  = 11
	pcpAddrMismatch   = 12
)

var (
	// errShort reports a datagram shorter than its opcode needs.
	errShort = errors.New("portmap: PCP message too short")
	// errNotResponse reports a datagram without the response bit.
	errNotResponse = errors.New("portmap: not a PCP response")
	// ErrUnsupportedVersion is the answer of a gateway that does not speak
	// the version asked for (a NAT-PMP-only gateway to a PCP request).
	ErrUnsupportedVersion = errors.New("portmap: gateway does not support this protocol version")
)

// ResultError is a non-zero PCP or NAT-PMP result code.
type ResultError struct {
	Protocol Protocol
	Code     uint8
}

func (e *ResultError) Error() string {
	names := map[uint8]string{
		pcpUnsuppVersion: "UNSUPP_VERSION", pcpNotAuthorized: "NOT_AUTHORIZED",
		pcpMalformed: "MALFORMED_REQUEST", pcpUnsuppOpcode: "UNSUPP_OPCODE",
		5: "UNSUPP_OPTION", 6: "MALFORMED_OPTION", pcpNetworkFailure: "NETWORK_FAILURE",
		pcpNoResources: "NO_RESOURCES", 9: "UNSUPP_PROTOCOL", 10: "USER_EX_QUOTA",
		pcpCannotProvide: "CANNOT_PROVIDE_EXTERNAL", pcpAddrMismatch: "ADDRESS_MISMATCH",
		13: "EXCESSIVE_REMOTE_PEERS",
	}
	if n, ok := names[e.Code]; ok && e.Protocol == PCP {
		return fmt.Sprintf("portmap: %s result %d (%s)", e.Protocol, e.Code, n)
	}
	return fmt.Sprintf("portmap: %s result %d", e.Protocol, e.Code)
}

// pcpRequest is a PCP MAP or PEER request for UDP.
type pcpRequest struct {
	Opcode   uint8 // pcpOpMap or pcpOpPeer
	Lifetime uint32
	Client   netip.Addr // the client's own address, as the gateway sees the source
	Nonce    [12]byte
	Internal uint16
	// SuggestedExternal may be invalid or port 0: no preference.
	SuggestedExternal netip.AddrPort
	Remote            netip.AddrPort // PEER only
}

// pcpResponse is a decoded PCP MAP or PEER response.
type pcpResponse struct {
	Opcode   uint8
	Result   uint8
	Lifetime uint32
	Epoch    uint32
	Nonce    [12]byte
	Protocol uint8
	Internal uint16
	External netip.AddrPort
	Remote   netip.AddrPort // PEER only
}

// as16 is the 16-byte PCP form of an address: IPv4 as ::ffff:a.b.c.d, the
// unspecified address as all zeros (RFC 6887 §5).
func as16(a netip.Addr) [16]byte {
	if !a.IsValid() {
		return [16]byte{}
	}
	if a.Is4() {
		return netip.AddrFrom16(a.As16()).As16()
	}
	return a.As16()
}

func from16(b []byte) netip.Addr {
	return netip.AddrFrom16([16]byte(b)).Unmap()
}

// appendPCPRequest encodes r. It fails only for an unknown opcode.
func appendPCPRequest(b []byte, r *pcpRequest) ([]byte, error) {
	if r.Opcode != pcpOpMap && r.Opcode != pcpOpPeer {
		return nil, fmt.Errorf("portmap: PCP opcode %d not supported", r.Opcode)
	}
	b = append(b, pcpVersion, r.Opcode, 0, 0)
	b = binary.BigEndian.AppendUint32(b, r.Lifetime)
	c := as16(r.Client)
	b = append(b, c[:]...)
	b = append(b, r.Nonce[:]...)
	b = append(b, protocolUDP, 0, 0, 0)
	b = binary.BigEndian.AppendUint16(b, r.Internal)
	b = binary.BigEndian.AppendUint16(b, r.SuggestedExternal.Port())
	e := as16(r.SuggestedExternal.Addr())
	b = append(b, e[:]...)
	if r.Opcode == pcpOpPeer {
		b = binary.BigEndian.AppendUint16(b, r.Remote.Port())
		b = append(b, 0, 0)
		ra := as16(r.Remote.Addr())
		b = append(b, ra[:]...)
	}
	return b, nil
}

// parsePCPResponse decodes a PCP response. A version 0 reply (NAT-PMP's
// answer to a PCP request) is ErrUnsupportedVersion. A non-success result
// is returned decoded, with the header fields valid, and no error: the
// caller decides (RFC 6887 §7.4 says error responses carry the opcode data
// copied from the request).
func parsePCPResponse(b []byte) (*pcpResponse, error) {
	if len(b) < 4 {
		return nil, errShort
	}
	if b[0] == natpmpVer {
		return nil, ErrUnsupportedVersion
	}
	if b[0] != pcpVersion {
		return nil, fmt.Errorf("portmap: PCP version %d: %w", b[0], ErrUnsupportedVersion)
	}
	if b[1]&pcpRespBit == 0 {
		return nil, errNotResponse
	}
	if len(b) < pcpHdrLen || len(b) > pcpMaxLen || len(b)%4 != 0 {
		return nil, fmt.Errorf("%w: %d bytes", errShort, len(b))
	}
	r := &pcpResponse{
		Opcode:   b[1] &^ pcpRespBit,
		Result:   b[3],
		Lifetime: binary.BigEndian.Uint32(b[4:]),
		Epoch:    binary.BigEndian.Uint32(b[8:]),
	}
	d := b[pcpHdrLen:]
	switch r.Opcode {
	case pcpOpMap:
		if len(d) < pcpMapLen {
			return nil, fmt.Errorf("%w: MAP data %d bytes", errShort, len(d))
		}
	case pcpOpPeer:
		if len(d) < pcpPeerLen {
			return nil, fmt.Errorf("%w: PEER data %d bytes", errShort, len(d))
		}
	default:
		return nil, fmt.Errorf("portmap: PCP response opcode %d not expected", r.Opcode)
	}
	copy(r.Nonce[:], d[:12])
	r.Protocol = d[12]
	r.Internal = binary.BigEndian.Uint16(d[16:])
	r.External = netip.AddrPortFrom(from16(d[20:36]), binary.BigEndian.Uint16(d[18:]))
	if r.Opcode == pcpOpPeer {
		r.Remote = netip.AddrPortFrom(from16(d[40:56]), binary.BigEndian.Uint16(d[36:]))
	}
	return r, nil
}

// parsePCPRequest decodes a PCP MAP or PEER request; the test responder
// (portmaptest) has its own copy of this layout on purpose, so this one
// exists for the fuzz round trip.
func parsePCPRequest(b []byte) (*pcpRequest, error) {
	if len(b) < pcpHdrLen {
		return nil, errShort
	}
	if b[0] != pcpVersion {
		return nil, ErrUnsupportedVersion
	}
	if b[1]&pcpRespBit != 0 {
		return nil, errors.New("portmap: not a PCP request")
	}
	r := &pcpRequest{
		Opcode:   b[1],
		Lifetime: binary.BigEndian.Uint32(b[4:]),
		Client:   from16(b[8:24]),
	}
	d := b[pcpHdrLen:]
	need := pcpMapLen
	switch r.Opcode {
	case pcpOpMap:
	case pcpOpPeer:
		need = pcpPeerLen
	default:
		return nil, fmt.Errorf("portmap: PCP opcode %d not supported", r.Opcode)
	}
	if len(d) < need {
		return nil, errShort
	}
	if d[12] != protocolUDP {
		return nil, fmt.Errorf("portmap: PCP protocol %d not supported", d[12])
	}
	copy(r.Nonce[:], d[:12])
	r.Internal = binary.BigEndian.Uint16(d[16:])
	r.SuggestedExternal = suggestion(d[20:36], binary.BigEndian.Uint16(d[18:]))
	if r.Opcode == pcpOpPeer {
		r.Remote = netip.AddrPortFrom(from16(d[40:56]), binary.BigEndian.Uint16(d[36:]))
	}
	return r, nil
}

// suggestion decodes a suggested external address and port: all zeros is
// no suggestion.
func suggestion(a []byte, port uint16) netip.AddrPort {
	if port == 0 && [16]byte(a) == [16]byte{} {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(from16(a), port)
}
