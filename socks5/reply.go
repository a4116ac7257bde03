package socks5

import (
	"context"
	"errors"
	"net"
	"os"
	"syscall"
)

// ErrNotAllowed is returned, wrapped, by Server.Dial, Server.ListenPacket
// or a datagram destination check when policy forbids a destination, for
// example an IPv4 address on a proxy that only reaches IPv6. The client
// then gets reply 0x02 ("connection not allowed by ruleset").
var ErrNotAllowed = errors.New("socks5: destination not allowed")

// ReplyFor maps a dial error to the reply that tells the client most
// precisely what went wrong. It relies on errors.Is, so dialers must wrap
// (with %w) the errors below rather than flatten them into strings:
//
//	ErrNotAllowed                                          0x02 not allowed
//	syscall.ENETUNREACH, syscall.ENETDOWN                  0x03 network unreachable
//	syscall.EHOSTUNREACH, syscall.EHOSTDOWN,
//	  *net.DNSError with IsNotFound                        0x04 host unreachable
//	syscall.ECONNREFUSED                                   0x05 connection refused
//	os.ErrDeadlineExceeded, context.DeadlineExceeded,
//	  syscall.ETIMEDOUT, a net.Error whose Timeout is true 0x06 TTL expired
//	anything else, including nil                           0x01 general failure
//
// RFC 1928 has no "timed out" reply; 0x06 is what curl and most servers
// use for it.
func ReplyFor(err error) Reply {
	if err == nil {
		return ReplyGeneralFailure
	}
	if errors.Is(err, ErrNotAllowed) {
		return ReplyNotAllowed
	}
	if errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.ENETDOWN) {
		return ReplyNetworkUnreachable
	}
	if errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.EHOSTDOWN) {
		return ReplyHostUnreachable
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return ReplyConnectionRefused
	}
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, syscall.ETIMEDOUT) {
		return ReplyTTLExpired
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return ReplyTTLExpired
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
		return ReplyHostUnreachable
	}
	return ReplyGeneralFailure
}
