// Package proto is the Teredo wire format: addresses, the origin and
// authentication indications, the IPv6 packets Teredo itself builds (bubbles,
// router solicitations and advertisements, echo tests, ICMPv6 errors) and the
// RFC 6081 trailers.
//
// Scope: RFC 4380 §4 and §5.1, RFC 5991 (random flag bits, no cone bit) and
// the trailer layout of RFC 6081. The package does no I/O, reads no clock and
// keeps no state, so every function is safe for concurrent use.
//
// Parsing on the data path allocates nothing: Packet.Parse and the IPv6
// accessors return slices of the caller's buffer, which stay valid only as
// long as that buffer does. The Append* builders append to a caller-supplied
// slice, in the style of strconv.AppendInt, so a caller that reuses its
// buffer builds packets without allocating.
package proto
