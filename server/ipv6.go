package server

import "errors"

// IPv6Output is where the server sends packets from its clients to native
// IPv6 hosts: the ICMPv6 echo requests of the relay-discovery test (RFC 4380
// §5.2.9), whose replies come back through the relay nearest the host.
//
// The contract, which every implementation must keep:
//   - pkt is one complete IPv6 packet (the 40-byte fixed header and its
//     payload, no Teredo encapsulation and no trailer) with a native,
//     global destination, as checked by the server;
//   - the packet leaves unchanged: in particular its source, the client's
//     Teredo address, is not rewritten, so that the reply goes to the client
//     through a relay and not back to the server;
//   - pkt is valid only during the call: an implementation that queues it
//     copies it;
//   - WriteIPv6 is called concurrently from the server's receive loops and
//     must not block for long; a failure is returned, not retried forever,
//     and the server counts it.
//
// RawIPv6 implements it with a raw socket; teredotest plugs in a gVisor
// netstack.
type IPv6Output interface {
	WriteIPv6(pkt []byte) error
}

// IPv6OutputFunc adapts a function to IPv6Output.
type IPv6OutputFunc func(pkt []byte) error

// WriteIPv6 calls f(pkt).
func (f IPv6OutputFunc) WriteIPv6(pkt []byte) error { return f(pkt) }

// ErrRawUnsupported is returned by OpenRawIPv6 on systems where a raw IPv6
// socket does not take a caller-built header.
var ErrRawUnsupported = errors.New("server: raw IPv6 output is supported on Linux only")
