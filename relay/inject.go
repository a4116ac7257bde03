package relay

// Transmit handles the IPv6 packet pkt as if it had been read from the
// Device: to a trusted peer at once, otherwise queued behind bubbles or
// answered with ICMPv6. It is for a Device wrapper that keeps packets
// between the relay's own clients in process instead of looping them
// through the IPv6 side (package gateway's hairpin). pkt is not retained;
// Transmit is safe for concurrent use with the relay's loops.
func (r *Relay) Transmit(pkt []byte) {
	var sc scratch
	r.transmit(pkt, &sc)
}
