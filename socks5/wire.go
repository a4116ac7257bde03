package socks5

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
)

// Protocol constants from RFC 1928 and RFC 1929.
const (
	socksVersion   = 0x05
	authVersion    = 0x01 // RFC 1929 sub-negotiation version
	methodNoAuth   = 0x00
	methodUserPass = 0x02
	methodNone     = 0xFF // "no acceptable methods"

	cmdConnect   = 0x01
	cmdBind      = 0x02
	cmdAssociate = 0x03

	atypIPv4   = 0x01
	atypDomain = 0x03
	atypIPv6   = 0x04

	// maxNameLen is the longest textual DNS name (RFC 1035 §2.3.4 less the
	// root dot). The one-byte length field allows 255, which no resolver
	// would accept, so longer names are refused before they reach a dialer.
	maxNameLen = 253

	// maxUDPHeaderLen is the longest SOCKS UDP request header: RSV(2)
	// FRAG(1) ATYP(1) LEN(1) NAME(255) PORT(2).
	maxUDPHeaderLen = 262
)

// Reply is the REP field of a SOCKS5 reply (RFC 1928 §6).
type Reply uint8

// The replies of RFC 1928 §6.
const (
	ReplySucceeded               Reply = 0x00
	ReplyGeneralFailure          Reply = 0x01
	ReplyNotAllowed              Reply = 0x02
	ReplyNetworkUnreachable      Reply = 0x03
	ReplyHostUnreachable         Reply = 0x04
	ReplyConnectionRefused       Reply = 0x05
	ReplyTTLExpired              Reply = 0x06
	ReplyCommandNotSupported     Reply = 0x07
	ReplyAddressTypeNotSupported Reply = 0x08
)

// numReplies sizes Stats.Replies: every reply the server sends is below it.
const numReplies = int(ReplyAddressTypeNotSupported) + 1

var replyNames = [numReplies]string{
	"succeeded",
	"general failure",
	"not allowed by ruleset",
	"network unreachable",
	"host unreachable",
	"connection refused",
	"TTL expired",
	"command not supported",
	"address type not supported",
}

func (r Reply) String() string {
	if int(r) < numReplies {
		return replyNames[r]
	}
	return "reply 0x" + strconv.FormatUint(uint64(r), 16)
}

// errMalformed marks input that breaks the protocol. The server answers
// it with a general failure when it can still frame a reply, or closes.
var errMalformed = errors.New("socks5: malformed message")

// requestError is a request the server understood well enough to answer
// with a specific reply before closing.
type requestError struct {
	reply Reply
	err   error
}

func (e *requestError) Error() string { return e.err.Error() }
func (e *requestError) Unwrap() error { return e.err }

// addr is a SOCKS address: exactly one of ip and name is set. Names that
// are IP literals are turned into ip when parsed, so a dialer never sees
// "[::1]" dressed as a host name.
type addr struct {
	ip   netip.Addr
	name string
	port uint16
}

// hostPort renders a as an address for a Dial function: "host:port" with
// the name unresolved, or an IP literal.
func (a addr) hostPort() string {
	port := strconv.Itoa(int(a.port))
	if a.name != "" {
		return net.JoinHostPort(a.name, port)
	}
	return net.JoinHostPort(a.ip.String(), port)
}

func (a addr) String() string { return a.hostPort() }

// addrFromAddrPort converts ap, unmapping IPv4-in-IPv6 so that replies
// carry ATYP 1 for IPv4 peers.
func addrFromAddrPort(ap netip.AddrPort) addr {
	return addr{ip: ap.Addr().Unmap().WithZone(""), port: ap.Port()}
}

// appendAddr appends ATYP, DST.ADDR and DST.PORT. An invalid ip with no
// name is written as 0.0.0.0, the conventional "no address".
func appendAddr(b []byte, a addr) []byte {
	switch {
	case a.name != "":
		b = append(b, atypDomain, byte(len(a.name)))
		b = append(b, a.name...)
	case a.ip.Is4():
		b = append(b, atypIPv4)
		b = append(b, a.ip.AsSlice()...)
	case a.ip.Is6():
		b = append(b, atypIPv6)
		b = append(b, a.ip.AsSlice()...)
	default:
		b = append(b, atypIPv4, 0, 0, 0, 0)
	}
	return binary.BigEndian.AppendUint16(b, a.port)
}

// readAddr reads ATYP, DST.ADDR and DST.PORT from r. scratch must hold at
// least 257 bytes; it saves an allocation per request.
func readAddr(r io.Reader, scratch []byte) (addr, error) {
	if _, err := io.ReadFull(r, scratch[:1]); err != nil {
		return addr{}, err
	}
	var a addr
	switch atyp := scratch[0]; atyp {
	case atypIPv4:
		if _, err := io.ReadFull(r, scratch[:6]); err != nil {
			return addr{}, err
		}
		a.ip = netip.AddrFrom4([4]byte(scratch[:4]))
		a.port = binary.BigEndian.Uint16(scratch[4:6])
	case atypIPv6:
		if _, err := io.ReadFull(r, scratch[:18]); err != nil {
			return addr{}, err
		}
		a.ip = netip.AddrFrom16([16]byte(scratch[:16]))
		a.port = binary.BigEndian.Uint16(scratch[16:18])
	case atypDomain:
		if _, err := io.ReadFull(r, scratch[:1]); err != nil {
			return addr{}, err
		}
		n := int(scratch[0])
		if _, err := io.ReadFull(r, scratch[:n+2]); err != nil {
			return addr{}, err
		}
		a.port = binary.BigEndian.Uint16(scratch[n : n+2])
		if err := a.setName(scratch[:n]); err != nil {
			return addr{}, err
		}
	default:
		return addr{}, &requestError{ReplyAddressTypeNotSupported,
			fmt.Errorf("%w: address type 0x%02x", errMalformed, atyp)}
	}
	return a, nil
}

// setName validates a DOMAINNAME field and stores it, or its IP literal.
func (a *addr) setName(b []byte) error {
	if ip, err := netip.ParseAddr(string(b)); err == nil && ip.Zone() == "" {
		a.ip = ip
		return nil
	}
	if !validName(b) {
		return &requestError{ReplyGeneralFailure,
			fmt.Errorf("%w: invalid host name %q", errMalformed, b)}
	}
	a.name = string(b)
	return nil
}

// validName accepts what a DNS host name can hold (letters, digits, '-',
// '_' and '.') in 1 to 253 bytes. Anything else, in particular ':', '%',
// '/', spaces and NULs, could change how a dialer splits "host:port" or
// be smuggled into logs, so it is refused rather than passed on.
func validName(b []byte) bool {
	if len(b) == 0 || len(b) > maxNameLen {
		return false
	}
	for _, c := range b {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '-', c == '_', c == '.':
		default:
			return false
		}
	}
	return true
}

// request is a SOCKS5 request (RFC 1928 §4).
type request struct {
	cmd byte
	dst addr
}

// readRequest reads a request. A returned *requestError carries the reply
// to send; any other error means the connection should just be closed.
// Unknown commands are returned without error: the caller refuses them.
func readRequest(r io.Reader) (request, error) {
	var scratch [256 + 2]byte
	if _, err := io.ReadFull(r, scratch[:3]); err != nil {
		return request{}, err
	}
	if scratch[0] != socksVersion {
		return request{}, fmt.Errorf("%w: request version 0x%02x", errMalformed, scratch[0])
	}
	req := request{cmd: scratch[1]}
	// RSV (scratch[2]) must be zero, but clients in the wild are not all
	// careful and nothing depends on it.
	var err error
	req.dst, err = readAddr(r, scratch[:])
	return req, err
}

// appendRequest marshals req; it is the inverse of readRequest.
func appendRequest(b []byte, req request) []byte {
	b = append(b, socksVersion, req.cmd, 0)
	return appendAddr(b, req.dst)
}

// appendReply marshals a reply with bound address bnd.
func appendReply(b []byte, rep Reply, bnd addr) []byte {
	b = append(b, socksVersion, byte(rep), 0)
	return appendAddr(b, bnd)
}

// parseUDPHeader splits a client datagram (RFC 1928 §7) into its
// destination and payload. Fragments are reported through frag: the
// server does not reassemble them.
func parseUDPHeader(b []byte) (dst addr, frag byte, payload []byte, err error) {
	if len(b) < 4 {
		return addr{}, 0, nil, fmt.Errorf("%w: %d-byte UDP header", errMalformed, len(b))
	}
	frag = b[2]
	var n int
	switch atyp := b[3]; atyp {
	case atypIPv4:
		n = 4 + 4 + 2
		if len(b) < n {
			return addr{}, frag, nil, fmt.Errorf("%w: truncated IPv4 UDP header", errMalformed)
		}
		dst.ip = netip.AddrFrom4([4]byte(b[4:8]))
	case atypIPv6:
		n = 4 + 16 + 2
		if len(b) < n {
			return addr{}, frag, nil, fmt.Errorf("%w: truncated IPv6 UDP header", errMalformed)
		}
		dst.ip = netip.AddrFrom16([16]byte(b[4:20]))
	case atypDomain:
		if len(b) < 5 {
			return addr{}, frag, nil, fmt.Errorf("%w: truncated UDP header", errMalformed)
		}
		l := int(b[4])
		n = 5 + l + 2
		if len(b) < n {
			return addr{}, frag, nil, fmt.Errorf("%w: truncated domain UDP header", errMalformed)
		}
		if err := dst.setName(b[5 : 5+l]); err != nil {
			return addr{}, frag, nil, err
		}
	default:
		return addr{}, frag, nil, fmt.Errorf("%w: UDP address type 0x%02x", errMalformed, atyp)
	}
	dst.port = binary.BigEndian.Uint16(b[n-2 : n])
	return dst, frag, b[n:], nil
}

// appendUDPHeader marshals the header parseUDPHeader reads, with FRAG 0.
func appendUDPHeader(b []byte, dst addr) []byte {
	b = append(b, 0, 0, 0)
	return appendAddr(b, dst)
}
