package socks5

import "sync/atomic"

// Stats is a snapshot of a server's counters, for status pages and
// metrics. Counters only grow, except the Active gauges.
type Stats struct {
	Accepted          uint64 // connections accepted, including rejected ones
	Rejected          uint64 // closed at once because MaxConns sessions were active
	Active            int64  // sessions in progress
	HandshakeFailures uint64 // bad or unacceptable greeting or request, or timeout, before a reply
	AuthFailures      uint64 // wrong username or password

	// Replies counts replies sent, indexed by Reply code.
	Replies [numReplies]uint64

	BytesUp   uint64 // CONNECT payload from clients to destinations
	BytesDown uint64 // CONNECT payload from destinations to clients

	Associations        uint64 // UDP associations established
	ActiveAssociations  int64
	ExpiredAssociations uint64 // ended by UDPIdleTimeout

	// UDPUp and UDPDown count datagrams handed to the socket towards
	// destinations and towards clients. They are counted before the
	// write, so that a client that got a datagram (or its answer) reads
	// it counted; those the socket refused are also in UDPDrop.Send and
	// UDPDrop.Reply.
	UDPUp   uint64
	UDPDown uint64
	UDPDrop UDPDrops
}

// UDPDrops counts datagrams the relay discarded, by reason.
type UDPDrops struct {
	Source     uint64 // reached the relay socket from an address other than the client's
	Malformed  uint64 // header truncated, unknown address type or invalid name
	Fragmented uint64 // FRAG != 0: reassembly is not supported
	Resolve    uint64 // destination name did not resolve (or no Resolve)
	Send       uint64 // the outbound socket refused it (policy, unreachable, …)
	NoClient   uint64 // arrived from a destination before the client's port was known
	Reply      uint64 // could not be written back to the client
	Recv       uint64 // outbound socket read errors
}

// Total sums every reason.
func (d UDPDrops) Total() uint64 {
	return d.Source + d.Malformed + d.Fragmented + d.Resolve + d.Send + d.NoClient + d.Reply + d.Recv
}

type counters struct {
	accepted, rejected, handshakeFailures, authFailures atomic.Uint64
	active                                              atomic.Int64
	replies                                             [numReplies]atomic.Uint64
	bytesUp, bytesDown                                  atomic.Uint64
	associations, expired                               atomic.Uint64
	activeAssociations                                  atomic.Int64
	udpUp, udpDown                                      atomic.Uint64
	drop                                                struct {
		source, malformed, fragmented, resolve, send, noClient, reply, recv atomic.Uint64
	}
}

// Stats returns the current counters.
func (s *Server) Stats() Stats {
	c := &s.c
	st := Stats{
		Accepted:            c.accepted.Load(),
		Rejected:            c.rejected.Load(),
		Active:              c.active.Load(),
		HandshakeFailures:   c.handshakeFailures.Load(),
		AuthFailures:        c.authFailures.Load(),
		BytesUp:             c.bytesUp.Load(),
		BytesDown:           c.bytesDown.Load(),
		Associations:        c.associations.Load(),
		ActiveAssociations:  c.activeAssociations.Load(),
		ExpiredAssociations: c.expired.Load(),
		UDPUp:               c.udpUp.Load(),
		UDPDown:             c.udpDown.Load(),
		UDPDrop: UDPDrops{
			Source:     c.drop.source.Load(),
			Malformed:  c.drop.malformed.Load(),
			Fragmented: c.drop.fragmented.Load(),
			Resolve:    c.drop.resolve.Load(),
			Send:       c.drop.send.Load(),
			NoClient:   c.drop.noClient.Load(),
			Reply:      c.drop.reply.Load(),
			Recv:       c.drop.recv.Load(),
		},
	}
	for i := range c.replies {
		st.Replies[i] = c.replies[i].Load()
	}
	return st
}
