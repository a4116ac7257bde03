package server

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/teredo-go/teredo/clock"
	"github.com/teredo-go/teredo/internal/ratelimit"
	"github.com/teredo-go/teredo/proto"
)

// Socket names one of the server's two UDP sockets.
type Socket uint8

// The server's sockets.
const (
	// Primary is the socket on the primary address, whose IPv4 address is
	// embedded in the prefix the server advertises and from which every
	// forwarded packet leaves.
	Primary Socket = iota
	// Secondary is the socket on the secondary address, which clients use
	// to tell a symmetric NAT from a restricted one, and from which RAs to
	// cone RSs received on the primary leave.
	Secondary
)

func (s Socket) String() string {
	switch s {
	case Primary:
		return "primary"
	case Secondary:
		return "secondary"
	}
	return fmt.Sprintf("socket(%d)", uint8(s))
}

func (s Socket) other() Socket { return 1 - s }

// Sender transmits the datagrams a Processor decides to send.
type Sender interface {
	// SendFrom sends b as one UDP datagram from the server socket sock to
	// dst. b is valid only for the duration of the call.
	SendFrom(sock Socket, b []byte, dst netip.AddrPort) error
}

// Action is what Process did with a datagram.
type Action uint8

// Actions of Process.
const (
	// Dropped: nothing was sent; Result.Reason says why.
	Dropped Action = iota
	// AnsweredRS: the datagram was a router solicitation and an RA was
	// sent (§5.3.2).
	AnsweredRS
	// ForwardedTeredo: a bubble or ICMPv6 message was relayed over UDP to
	// the mapped endpoint of its Teredo destination.
	ForwardedTeredo
	// ForwardedIPv6: an echo request was handed to the IPv6 output.
	ForwardedIPv6
)

func (a Action) String() string {
	switch a {
	case Dropped:
		return "dropped"
	case AnsweredRS:
		return "answered-rs"
	case ForwardedTeredo:
		return "forwarded-teredo"
	case ForwardedIPv6:
		return "forwarded-ipv6"
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// DropReason says why a datagram was dropped.
type DropReason uint8

// Drop reasons, in the order Process checks them. The RFC 4380 §5.3.1
// check numbers are given where one applies.
const (
	NotDropped DropReason = iota
	// DropLoop: the source is one of the server's own sockets (Miredo's
	// guard against UDP loops through the server).
	DropLoop
	// DropMalformed: not a well-formed Teredo packet (check 1).
	DropMalformed
	// DropNotBubbleOrICMPv6: neither a bubble nor ICMPv6 (check 2).
	DropNotBubbleOrICMPv6
	// DropSourceNotGlobal: the IPv4 source is not global unicast (check 3).
	DropSourceNotGlobal
	// DropNotAllowed: not an RS, not from a Teredo client at its own
	// mapping, and not from a non-Teredo host to a client of this server
	// (check 7).
	DropNotAllowed
	// DropDestNotGlobal: the IPv6 destination is unspecified, loopback,
	// link-local or multicast, which a server must not forward.
	DropDestNotGlobal
	// DropICMPv6TooBig: an ICMPv6 message of more than MaxICMPv6Payload
	// bytes, which Miredo and Microsoft servers drop so as not to be an
	// open UDP relay.
	DropICMPv6TooBig
	// DropTrailerTooLong: more than MaxTrailer bytes follow the IPv6
	// packet, more than any RFC 6081 trailers need.
	DropTrailerTooLong
	// DropMappedNotGlobal: the Teredo destination embeds a mapped address
	// that is not global unicast (or port 0).
	DropMappedNotGlobal
	// DropNativeNotEcho: to a native IPv6 destination but not an echo
	// request, the only thing clients send natively through a server.
	DropNativeNotEcho
	// DropNoIPv6Output: to a native IPv6 destination, and the server has
	// no IPv6 output.
	DropNoIPv6Output
	// DropRateLimited: the source's token bucket is empty.
	DropRateLimited
	// DropSendError: the UDP send failed.
	DropSendError
	// DropIPv6OutputError: the IPv6 output failed.
	DropIPv6OutputError
	// DropNoSecondary: a cone RS to a single-address server, which has no
	// other address or port to answer it from.
	DropNoSecondary

	// NumDropReasons is the number of drop reasons (including NotDropped).
	NumDropReasons
)

var dropNames = [NumDropReasons]string{
	NotDropped:            "none",
	DropLoop:              "loop",
	DropMalformed:         "malformed",
	DropNotBubbleOrICMPv6: "not_bubble_or_icmpv6",
	DropSourceNotGlobal:   "source_not_global",
	DropNotAllowed:        "not_allowed",
	DropDestNotGlobal:     "destination_not_global",
	DropICMPv6TooBig:      "icmpv6_too_big",
	DropTrailerTooLong:    "trailer_too_long",
	DropMappedNotGlobal:   "mapped_not_global",
	DropNativeNotEcho:     "native_not_echo_request",
	DropNoIPv6Output:      "no_ipv6_output",
	DropRateLimited:       "rate_limited",
	DropSendError:         "send_error",
	DropIPv6OutputError:   "ipv6_output_error",
	DropNoSecondary:       "no_secondary",
}

// String returns the reason's metric label, such as "malformed".
func (r DropReason) String() string {
	if r < NumDropReasons {
		return dropNames[r]
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// Result is the outcome of Process.
type Result struct {
	Action Action
	Reason DropReason // NotDropped unless Action is Dropped
}

// MaxICMPv6Payload is the largest ICMPv6 message (IPv6 payload length) the
// server forwards. Miredo's limit: enough for an echo request with a hash,
// too small to carry application traffic.
const MaxICMPv6Payload = 88

// MaxTrailer bounds the bytes after the IPv6 packet that the server
// forwards with a bubble or ICMPv6 message: RFC 6081 trailers (nonce,
// alternate addresses, neighbor discovery, random port) fit in it.
const MaxTrailer = 64

// maxOut bounds a datagram Process builds: an RA with the largest
// authentication indication, or an origin indication in front of a
// forwarded packet with its trailer.
const maxOut = proto.MaxIndicationsLen + proto.IPv6HeaderLen + 4 + 64 + 256

// Processor is the server's stateless packet-processing core: it applies
// RFC 4380 §5.3.1 and Miredo's extra rules to one datagram at a time and
// emits the replies and forwarded packets through a Sender. It owns no
// socket and reads time only from its clock, so it is driven directly in
// tests. It is safe for concurrent use.
type Processor struct {
	primary, secondary netip.AddrPort
	llAddr             netip.Addr // the server's link-local address
	mtu                uint32
	public             netip.Prefix
	global             proto.IPv4Filter
	out                IPv6Output
	clock              clock.Clock
	log                *slog.Logger
	limit              *ratelimit.Table
	scratch            sync.Pool

	received   atomic.Uint64
	answered   atomic.Uint64
	fwdTeredo  atomic.Uint64
	fwdIPv6    atomic.Uint64
	drops      [NumDropReasons]atomic.Uint64
	sendErrors atomic.Uint64
}

// NewProcessor returns the processing core for cfg, with cfg's defaults
// applied. Server uses it; tests and embedders that move datagrams
// themselves can use it directly.
func NewProcessor(cfg Config) (*Processor, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	p := &Processor{
		primary:   netip.AddrPortFrom(cfg.Primary, cfg.Port),
		secondary: cfg.secondaryAddrPort(),
		llAddr:    proto.ServerLinkLocal(cfg.Primary),
		mtu:       cfg.MTU,
		public:    cfg.PublicPrefix,
		global:    cfg.IPv4Filter,
		out:       cfg.IPv6Output,
		clock:     cfg.Clock,
		log:       cfg.Logger,
		limit:     newLimiter(cfg.RateLimit),
	}
	p.scratch.New = func() any { b := make([]byte, 0, maxOut); return &b }
	return p, nil
}

// Process handles one datagram, payload, received from src on socket sock,
// sending what it must through tx. payload is not retained.
func (p *Processor) Process(sock Socket, payload []byte, src netip.AddrPort, tx Sender) Result {
	p.received.Add(1)
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	r := p.process(sock, payload, src, tx)
	switch r.Action {
	case Dropped:
		p.drops[r.Reason].Add(1)
		if p.log.Enabled(context.Background(), slog.LevelDebug) {
			p.log.Debug("drop", "reason", r.Reason.String(), "src", src, "socket", sock.String(), "len", len(payload))
		}
	case AnsweredRS:
		p.answered.Add(1)
	case ForwardedTeredo:
		p.fwdTeredo.Add(1)
	case ForwardedIPv6:
		p.fwdIPv6.Add(1)
	}
	return r
}

func drop(r DropReason) Result { return Result{Action: Dropped, Reason: r} }

func (p *Processor) process(sock Socket, payload []byte, src netip.AddrPort, tx Sender) Result {
	if src == p.primary || src == p.secondary {
		return drop(DropLoop)
	}

	// Check 1: a well-formed IPv6 packet after the indications.
	var pkt proto.Packet
	if pkt.Parse(payload) != nil {
		return drop(DropMalformed)
	}
	ip := pkt.IPv6
	plen := len(ip) - proto.IPv6HeaderLen
	next := proto.NextHeader(ip)
	if next == proto.ProtoICMPv6 && plen < 4 {
		return drop(DropMalformed)
	}
	// Check 2: only bubbles and ICMPv6 go through a server.
	if next != proto.ProtoICMPv6 && !proto.IsBubble(ip) {
		return drop(DropNotBubbleOrICMPv6)
	}
	// Check 3. (The limiter and origin indications need IPv4, whatever
	// the filter accepts.)
	if !src.Addr().Is4() || !p.global(src.Addr()) {
		return drop(DropSourceNotGlobal)
	}

	// Check 4: a router solicitation is answered here.
	if rs, cone := proto.IsRS(ip); rs {
		return p.answerRS(sock, &pkt, src, cone, tx)
	}

	srcIP, dstIP := ip[8:24], ip[24:40]
	srcTeredo, dstTeredo := proto.IsTeredoBytes(srcIP), proto.IsTeredoBytes(dstIP)
	ours := dstTeredo && proto.ServerBytes(dstIP) == p.primary.Addr()
	switch {
	case srcTeredo && proto.MappedBytes(srcIP) == src: // check 5
	case !srcTeredo && ours: // check 6
	default: // check 7
		return drop(DropNotAllowed)
	}

	if !globalIPv6(proto.Dst(ip)) {
		return drop(DropDestNotGlobal)
	}
	if next == proto.ProtoICMPv6 && plen > MaxICMPv6Payload {
		return drop(DropICMPv6TooBig)
	}
	if !dstTeredo {
		return p.forwardIPv6(ip, src)
	}
	if len(pkt.Trailer) > MaxTrailer {
		return drop(DropTrailerTooLong)
	}
	mapped := proto.MappedBytes(dstIP)
	if mapped.Port() == 0 || !p.global(mapped.Addr()) {
		return drop(DropMappedNotGlobal)
	}
	if !p.limit.Allow(sourceKey(src.Addr()), p.clock.Now()) {
		return drop(DropRateLimited)
	}
	// The IPv6 packet and its trailer are contiguous at the end of payload.
	rest := payload[len(payload)-len(ip)-len(pkt.Trailer):]
	var err error
	if ours {
		// §5.3.1: the client learns the peer's mapping from the origin
		// indication, and sends it a direct bubble.
		bp := p.scratch.Get().(*[]byte)
		b := proto.AppendOrigin((*bp)[:0], src)
		b = append(b, rest...)
		err = tx.SendFrom(Primary, b, mapped)
		*bp = b[:0]
		p.scratch.Put(bp)
	} else {
		err = tx.SendFrom(Primary, rest, mapped)
	}
	if err != nil {
		return drop(DropSendError)
	}
	return Result{Action: ForwardedTeredo}
}

func (p *Processor) answerRS(sock Socket, pkt *proto.Packet, src netip.AddrPort, cone bool, tx Sender) Result {
	if !p.limit.Allow(sourceKey(src.Addr()), p.clock.Now()) {
		return drop(DropRateLimited)
	}
	from := sock
	if cone && !p.secondary.IsValid() {
		return drop(DropNoSecondary)
	}
	if cone {
		// §5.3.2: a cone RS is answered from the other address, so that
		// only a cone NAT lets the RA through.
		from = sock.other()
	}
	ra := proto.RAParams{
		Nonce:  pkt.Auth.Nonce,
		Server: p.primary.Addr(),
		Client: src,
		Dst:    proto.Src(pkt.IPv6),
		MTU:    p.mtu,
		Public: p.public,
	}
	bp := p.scratch.Get().(*[]byte)
	b := proto.AppendRA((*bp)[:0], &ra)
	err := tx.SendFrom(from, b, src)
	*bp = b[:0]
	p.scratch.Put(bp)
	if err != nil {
		return drop(DropSendError)
	}
	return Result{Action: AnsweredRS}
}

func (p *Processor) forwardIPv6(ip []byte, src netip.AddrPort) Result {
	if typ, _, _, _ := proto.ICMPv6(ip); proto.NextHeader(ip) != proto.ProtoICMPv6 || typ != proto.ICMPEchoRequest {
		return drop(DropNativeNotEcho)
	}
	if p.out == nil {
		return drop(DropNoIPv6Output)
	}
	if !p.limit.Allow(sourceKey(src.Addr()), p.clock.Now()) {
		return drop(DropRateLimited)
	}
	if err := p.out.WriteIPv6(ip); err != nil {
		if p.log.Enabled(context.Background(), slog.LevelDebug) {
			p.log.Debug("IPv6 output", "err", err, "dst", proto.Dst(ip))
		}
		return drop(DropIPv6OutputError)
	}
	return Result{Action: ForwardedIPv6}
}

// globalIPv6 is the RFC 4291 §2.4 test Miredo's server applies before
// forwarding: not unspecified, loopback, link-local or multicast.
func globalIPv6(a netip.Addr) bool {
	return !a.IsUnspecified() && !a.IsLoopback() && !a.IsLinkLocalUnicast() && !a.IsMulticast()
}

// countSendErrors records datagrams that Process handed to a queueing
// Sender which the socket then refused (batched sends are flushed after
// Process returned).
func (p *Processor) countSendErrors(n int) { p.sendErrors.Add(uint64(n)) }

// Stats returns a snapshot of the counters.
func (p *Processor) Stats() Stats {
	s := Stats{
		Received:        p.received.Load(),
		AnsweredRS:      p.answered.Load(),
		ForwardedTeredo: p.fwdTeredo.Load(),
		ForwardedIPv6:   p.fwdIPv6.Load(),
		SendErrors:      p.sendErrors.Load(),
		RateSources:     p.limit.Len(),
	}
	for i := range p.drops {
		s.Drops[i] = p.drops[i].Load()
		s.Dropped += s.Drops[i]
	}
	return s
}
